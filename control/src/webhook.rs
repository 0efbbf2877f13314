//! Calling a rollout's HTTP hooks: a JSON POST with the rollout's state, a timeout per attempt and a
//! few retries; any 2xx answer is success.
//!
//! Hooks are called over `http://` or `https://` (TLS by rustls with the *ring* provider, the one
//! the Kubernetes client already uses, verifying against the system's CA certificates plus those of
//! `--webhook-ca-file`). A hook's answer is taken as it is: redirects are **not** followed, a 3xx
//! is a failure that says where it pointed. Following them would let whoever answers a gate — or
//! sits in front of it — turn it into any other URL's answer (a `302` from `/gate` to a path that
//! always says 200 made a `confirmPromotion` an approval).
//!
//! The client is hyper's own rather than reqwest's: reqwest's rustls support needs a process-wide
//! crypto provider in every crate that builds a reqwest client (the CLI, the observers, the
//! tests), or pulls in aws-lc-rs; this one carries its provider in its own config.

use crate::error::{with_causes, Error, Result};
use crate::rollout::analysis_spec::WEBHOOK_RETRY_PAUSE;
use crate::rollout::{Rollout, Webhook, WebhookKind};
use crate::view::percent;
use axum::body::Bytes;
use axum::http::{header, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What a hook receives.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    /// The hook's name.
    pub hook: &'a str,
    /// When it is called.
    pub kind: WebhookKind,
    /// The rollout's name.
    pub rollout: &'a str,
    /// The filter route it changes.
    pub route: &'a str,
    /// Its phase when the hook is called, e.g. `progressing`.
    pub phase: &'static str,
    /// The stable variant.
    pub stable: &'a str,
    /// The canary variant.
    pub canary: &'a str,
    /// The canary's weight in basis points.
    pub canary_weight: u32,
    /// The same as a percentage, for people.
    pub canary_percent: String,
    /// The current step (0-based) and the number of steps.
    pub step: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// The last analysis check, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<&'a crate::rollout::CheckRecord>,
    /// The hook's metadata.
    pub metadata: &'a BTreeMap<String, String>,
}

/// Why calling a rollout's hooks failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The hook's URL is refused (a spec saved by an older version may hold anything).
    #[error("hook {hook:?}: {reason}")]
    BadUrl {
        /// The hook's name.
        hook: String,
        /// Why its URL is refused, as [`check_url`] says it.
        reason: String,
    },
    /// The payload could not be turned into JSON.
    #[error(transparent)]
    Payload(serde_json::Error),
    /// Every attempt failed; the last one says how.
    #[error("hook {hook:?} failed after {attempts} attempts: {last}")]
    Failed {
        /// The hook's name.
        hook: String,
        /// How many attempts were made (its retries plus one).
        attempts: u32,
        /// How the last attempt failed.
        #[source]
        last: AttemptError,
    },
}

/// How one attempt at calling a hook failed. `shown` is the hook's URL as it may be shown
/// ([`shown`]): without its path and query, which often carry a credential.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A 3xx: redirects are not followed.
    #[error(
        "{shown} answered {status}, a redirect{}: redirects are not followed — point the hook at the address that answers",
        to.as_deref().map(|to| format!(" to {to}")).unwrap_or_default()
    )]
    Redirect {
        /// The hook's URL, shown.
        shown: String,
        /// The answer's status.
        status: StatusCode,
        /// Where it pointed, shown as a hook's URL, if it said.
        to: Option<String>,
    },
    /// Any other answer that is not 2xx.
    #[error("{shown} answered {status}")]
    Status {
        /// The hook's URL, shown.
        shown: String,
        /// The answer's status.
        status: StatusCode,
    },
    /// No answer at all.
    #[error("{shown}: {source}")]
    NoAnswer {
        /// The hook's URL, shown.
        shown: String,
        /// What failed: the connection, TLS, or the attempt's timeout.
        #[source]
        source: NoAnswer,
    },
}

/// Why a request to a hook got no answer.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Request(#[source] axum::http::Error),
    /// An `https://` hook, and no TLS to call it with.
    #[error(transparent)]
    Https(HttpsUnavailable),
    /// Nothing came back within the attempt's timeout.
    #[error("no answer within {}", crate::time::HumanDuration(*.0))]
    Timeout(Duration),
    /// The connection or the exchange failed. Shown with its causes: hyper's "client error
    /// (Connect)" alone says little, its causes say "invalid peer certificate: UnknownIssuer" or
    /// "Connection refused".
    #[error("{}", with_causes(.0))]
    Transport(#[source] hyper_util::client::legacy::Error),
}

/// Why `https://` hooks cannot be called; `http://` hooks work regardless.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpsUnavailable {
    /// No certificate verifier: no CA certificates to verify hooks with.
    #[error("https hooks cannot be called: {0} (install the system's CA certificates, or give --webhook-ca-file)")]
    NoVerifier(#[source] rustls::Error),
    /// The TLS provider offers no protocol version that is safe to use.
    #[error("https hooks cannot be called: {0}")]
    NoProtocols(#[source] rustls::Error),
}

type Connector = HttpsConnector<HttpConnector>;
type HyperClient = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// How long an unused connection to a hook is kept for the next call.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The HTTP client hooks are called with. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    /// `Err` says why `https://` hooks cannot be called (no CA certificate to verify them
    /// with); `http://` hooks work regardless.
    http: Arc<std::result::Result<HyperClient, HttpsUnavailable>>,
    plain: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("webhook::Client")
            .field("https", &self.http.as_ref().as_ref().map(|_| "ready"))
            .finish()
    }
}

impl Default for Client {
    /// Trusts the system's CA certificates.
    fn default() -> Client {
        Client::new(Vec::new())
    }
}

impl Client {
    /// A client that trusts the system's CA certificates and `extra_roots`.
    pub fn new(extra_roots: Vec<CertificateDer<'static>>) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
                .map_err(HttpsUnavailable::NoVerifier)
                .and_then(|verifier| {
                    rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(HttpsUnavailable::NoProtocols)
                        .map(|builder| {
                            builder
                                .dangerous()
                                .with_custom_certificate_verifier(Arc::new(verifier))
                                .with_no_client_auth()
                        })
                });
        let http = tls.map(|config| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_http1()
                .build();
            builder().build(connector)
        });
        Client {
            http: Arc::new(http),
            plain: builder().build(HttpConnector::new()),
        }
    }

    /// A client that also trusts the CA certificates in the PEM file at `path` (for hooks behind
    /// a private CA); without a path, the system's only.
    pub fn with_ca_file(path: Option<&Path>) -> Result<Client> {
        let Some(path) = path else {
            return Ok(Client::default());
        };
        let pem = std::fs::read(path).map_err(|source| Error::File {
            path: path.display().to_string(),
            source,
        })?;
        let roots = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|error| {
                Error::invalid(
                    "webhook-ca-file",
                    format!("{}: not PEM certificates: {error}", path.display()),
                )
            })?;
        if roots.is_empty() {
            return Err(Error::invalid(
                "webhook-ca-file",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        let client = Client::new(roots);
        if let Err(error) = client.http.as_ref() {
            return Err(Error::invalid("webhook-ca-file", error.to_string()));
        }
        Ok(client)
    }

    /// POSTs `body` (JSON) to `url` and returns the answer's status, or why there is none, within
    /// `timeout`. Redirects are answers like any other.
    async fn post(
        &self,
        url: &Uri,
        body: Vec<u8>,
        timeout: Duration,
    ) -> std::result::Result<(StatusCode, Option<String>), NoAnswer> {
        let request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("meshcanary/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(NoAnswer::Request)?;
        let answer = match url.scheme_str() {
            Some("https") => {
                let client = self
                    .http
                    .as_ref()
                    .as_ref()
                    .map_err(|error| NoAnswer::Https(error.clone()))?;
                tokio::time::timeout(timeout, client.request(request)).await
            }
            _ => tokio::time::timeout(timeout, self.plain.request(request)).await,
        };
        let response = answer
            .map_err(|_| NoAnswer::Timeout(timeout))?
            .map_err(NoAnswer::Transport)?;
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((response.status(), location))
    }
}

fn builder() -> hyper_util::client::legacy::Builder {
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new());
    builder
}

/// A hook's URL as it may be shown (logs, a rollout's status, which anyone may read): scheme,
/// host and port, without the path and query — those often carry the credential (a Slack or
/// Teams webhook URL is its own secret).
pub fn shown(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                format!("{scheme}://{host}/…")
            }
            _ => "the hook's URL".into(),
        },
        Err(_) => "the hook's URL".into(),
    }
}

/// Checks a hook's URL: absolute `http://` or `https://` with a host, no credentials in it.
/// Returns the reason it is refused.
pub fn check_url(url: &str) -> std::result::Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("{url:?} is not an http:// or https:// URL ({error})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    let authority = uri
        .authority()
        .filter(|authority| !authority.host().is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{} carries credentials before the host, which are not sent; put what the hook needs in its path or query",
            shown(url)
        ));
    }
    Ok(uri)
}

/// Calls every hook of `kind` of `rollout` in order; the first that fails (after its retries)
/// stops the rest and its error is returned.
pub async fn call_all(
    client: &Client,
    rollout: &Rollout,
    kind: WebhookKind,
) -> Result<(), WebhookError> {
    for hook in rollout.webhooks(kind) {
        call(client, rollout, hook).await?;
    }
    Ok(())
}

/// Calls one hook with its retries.
pub async fn call(client: &Client, rollout: &Rollout, hook: &Webhook) -> Result<(), WebhookError> {
    let payload = Payload {
        hook: &hook.name,
        kind: hook.kind,
        rollout: &rollout.spec.name,
        route: &rollout.spec.route,
        phase: rollout.status.phase.as_str(),
        stable: &rollout.spec.stable,
        canary: &rollout.spec.canary,
        canary_weight: rollout.status.canary_weight,
        canary_percent: percent(rollout.status.canary_weight),
        step: rollout.status.step,
        steps: rollout.plan.len(),
        last_check: rollout.status.analysis.checks.last(),
        metadata: &hook.metadata,
    };
    let shown = shown(&hook.url);
    // Specs are checked when created; one saved by an older version may still hold anything.
    let url = check_url(&hook.url).map_err(|reason| WebhookError::BadUrl {
        hook: hook.name.clone(),
        reason,
    })?;
    let body = serde_json::to_vec(&payload).map_err(WebhookError::Payload)?;
    let mut attempt = 0;
    loop {
        let failure = match client.post(&url, body.clone(), hook.timeout()).await {
            Ok((status, _)) if status.is_success() => return Ok(()),
            Ok((status, location)) if status.is_redirection() => AttemptError::Redirect {
                shown: shown.clone(),
                status,
                to: location.map(|to| shown_location(&url, &to)),
            },
            Ok((status, _)) => AttemptError::Status {
                shown: shown.clone(),
                status,
            },
            Err(source) => AttemptError::NoAnswer {
                shown: shown.clone(),
                source,
            },
        };
        tracing::warn!(rollout = %rollout.spec.name, hook = %hook.name, attempt, error = %failure, "webhook failed");
        if attempt >= hook.retries {
            return Err(WebhookError::Failed {
                hook: hook.name.clone(),
                attempts: hook.retries + 1,
                last: failure,
            });
        }
        attempt += 1;
        tokio::time::sleep(WEBHOOK_RETRY_PAUSE).await;
    }
}

/// Where a redirect pointed, shown like a hook's URL: the path of a redirect on the same host is
/// what a person needs to fix the hook, a foreign target only by its host.
fn shown_location(url: &Uri, location: &str) -> String {
    match location.parse::<Uri>() {
        Ok(to) if to.authority().is_none() => format!("{:?} on the same host", to.path()),
        Ok(to) if to.authority() == url.authority() => {
            format!("{:?} on the same host", to.path())
        }
        _ => shown(location),
    }
}

#[cfg(test)]
mod tests;
