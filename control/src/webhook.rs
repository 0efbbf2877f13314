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

use crate::error::{Error, Result};
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
    /// The rollout.
    pub rollout: &'a str,
    /// Its route.
    pub route: &'a str,
    /// Its phase.
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

type Connector = HttpsConnector<HttpConnector>;
type HyperClient = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// How long an unused connection to a hook is kept for the next call.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The HTTP client hooks are called with. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    /// `Err` says why `https://` hooks cannot be called (no CA certificate to verify them
    /// with); `http://` hooks work regardless.
    http: Arc<std::result::Result<HyperClient, String>>,
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
        let tls = rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots,
            provider.clone(),
        )
        .map_err(|error| {
            format!(
                "https hooks cannot be called: {error} (install the system's CA certificates, or give --webhook-ca-file)"
            )
        })
        .and_then(|verifier| {
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("https hooks cannot be called: {error}"))
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
            return Err(Error::invalid("webhook-ca-file", error.clone()));
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
    ) -> std::result::Result<(StatusCode, Option<String>), String> {
        let request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("meshcanary/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| format!("cannot build the request: {error}"))?;
        let answer = match url.scheme_str() {
            Some("https") => {
                let client = self.http.as_ref().as_ref().map_err(Clone::clone)?;
                tokio::time::timeout(timeout, client.request(request)).await
            }
            _ => tokio::time::timeout(timeout, self.plain.request(request)).await,
        };
        let response = answer
            .map_err(|_| format!("no answer within {}", crate::time::HumanDuration(timeout)))?
            .map_err(|error| causes(&error))?;
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

/// An error and its causes, outermost first: hyper's "client error (Connect)" alone says little,
/// its causes say "invalid peer certificate: UnknownIssuer" or "Connection refused".
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        cause = error.source();
    }
    parts.join(": ")
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
pub async fn call_all(client: &Client, rollout: &Rollout, kind: WebhookKind) -> Result<(), String> {
    for hook in rollout.webhooks(kind) {
        call(client, rollout, hook).await?;
    }
    Ok(())
}

/// Calls one hook with its retries.
pub async fn call(client: &Client, rollout: &Rollout, hook: &Webhook) -> Result<(), String> {
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
    let url = check_url(&hook.url).map_err(|reason| format!("hook {:?}: {reason}", hook.name))?;
    let body = serde_json::to_vec(&payload).map_err(|error| error.to_string())?;
    let mut last_error = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(WEBHOOK_RETRY_PAUSE).await;
        }
        match client.post(&url, body.clone(), hook.timeout()).await {
            Ok((status, _)) if status.is_success() => return Ok(()),
            Ok((status, location)) if status.is_redirection() => {
                last_error = format!(
                    "{shown} answered {status}, a redirect{}: redirects are not followed — point the hook at the address that answers",
                    location
                        .map(|to| format!(" to {}", shown_location(&url, &to)))
                        .unwrap_or_default()
                )
            }
            Ok((status, _)) => last_error = format!("{shown} answered {status}"),
            Err(error) => last_error = format!("{shown}: {error}"),
        }
        tracing::warn!(rollout = %rollout.spec.name, hook = %hook.name, attempt, error = %last_error, "webhook failed");
    }
    Err(format!(
        "hook {:?} failed after {} attempts: {last_error}",
        hook.name,
        hook.retries + 1
    ))
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
