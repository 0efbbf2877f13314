//! Hooks called over real loopback sockets: plain HTTP servers that redirect, and a TLS server
//! whose certificate a test CA signed (`testdata/make.sh`).

use super::*;
use crate::time::Timestamp;
use axum::extract::State;
use axum::http::Method;
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Mutex;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/webhook/testdata")
        .join(name)
}

/// A rollout with one hook at `url`, no retries.
fn rollout_with_hook(url: &str) -> Rollout {
    let spec = serde_json::from_value(json!({
        "name": "r1", "route": "reviews", "stable": "v1", "canary": "v2",
        "steps": [{"setWeight": {"percent": 10}}],
        "webhooks": [{"name": "gate", "type": "confirmPromotion", "url": url, "retries": 0, "timeout": "5s"}]
    }))
    .unwrap();
    Rollout::new(spec, 0, Timestamp(1)).unwrap()
}

/// Every request a test server got: method and path.
type Seen = Arc<Mutex<Vec<(Method, String)>>>;

/// A plain HTTP server: `/gate` redirects to `/approved` (302), `/elsewhere` redirects off-host,
/// everything else answers 200.
async fn redirecting_server() -> (String, Seen, tokio::task::JoinHandle<()>) {
    async fn answer(
        State(seen): State<Seen>,
        method: Method,
        uri: Uri,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        seen.lock().unwrap().push((method, uri.path().to_string()));
        match uri.path() {
            "/gate" => (StatusCode::FOUND, [(header::LOCATION, "/approved")]).into_response(),
            "/elsewhere" => (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, "http://other.example:81/secret/path")],
            )
                .into_response(),
            _ => StatusCode::OK.into_response(),
        }
    }
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(seen.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}"), seen, task)
}

/// A TLS server with `testdata/server.pem` (localhost, 127.0.0.1) answering 200 to everything.
async fn tls_server() -> (u16, Seen, tokio::task::JoinHandle<()>) {
    let certs = CertificateDer::pem_file_iter(testdata("server.pem"))
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(testdata("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let recorded = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = recorded.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    seen.lock()
                        .unwrap()
                        .push((request.method().clone(), request.uri().path().to_string()));
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, seen, task)
}

/// Issue 17 item 2: a `302` from a gate used to be followed (as a GET) to a path that answered
/// 200, which turned the gate's redirect into an approval.
#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let (base, seen, server) = redirecting_server().await;
    let client = Client::default();
    let rollout = rollout_with_hook(&format!("{base}/gate"));
    let error = call_all(&client, &rollout, WebhookKind::ConfirmPromotion)
        .await
        .expect_err("a redirect must not pass a gate");
    assert!(
        matches!(
            &error,
            WebhookError::Failed {
                last: AttemptError::Redirect { .. },
                ..
            }
        ),
        "{error:?}"
    );
    let error = error.to_string();
    assert!(
        error.contains("answered 302 Found, a redirect to \"/approved\" on the same host")
            && error.contains("redirects are not followed"),
        "{error}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [(Method::POST, "/gate".to_string())],
        "only the hook itself was called"
    );

    // A redirect elsewhere is named by its host only: its path may be a credential.
    let rollout = rollout_with_hook(&format!("{base}/elsewhere"));
    let error = call_all(&client, &rollout, WebhookKind::ConfirmPromotion)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("307 Temporary Redirect, a redirect to http://other.example:81/…"),
        "{error}"
    );
    assert!(!error.contains("secret"), "{error}");
    server.abort();
}

/// Issue 17 item 2: `https://` hooks (Slack, Teams, PagerDuty) are called, verified against the
/// system's roots plus `--webhook-ca-file`; a certificate nobody vouches for is refused.
#[tokio::test]
async fn https_hooks_are_verified_against_the_trusted_cas() {
    let (port, seen, server) = tls_server().await;
    let trusting = Client::with_ca_file(Some(&testdata("ca.pem"))).unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let rollout = rollout_with_hook(&format!("https://{host}:{port}/hooks/approve"));
        call_all(&trusting, &rollout, WebhookKind::ConfirmPromotion)
            .await
            .unwrap_or_else(|error| panic!("{host}: {error}"));
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (Method::POST, "/hooks/approve".to_string()),
            (Method::POST, "/hooks/approve".to_string())
        ]
    );

    let rollout = rollout_with_hook(&format!("https://localhost:{port}/hooks/approve"));
    let error = call_all(&Client::default(), &rollout, WebhookKind::ConfirmPromotion)
        .await
        .expect_err("the test CA is not a system root")
        .to_string();
    assert!(
        error.contains(&format!("https://localhost:{port}/…"))
            && error.contains("certificate")
            && !error.contains("approve"),
        "{error}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2, "no request without trust");
    server.abort();
}

#[test]
fn the_ca_file_must_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let cases = [
        (dir.path().join("missing.pem"), "cannot read"),
        (empty, "holds no PEM certificate"),
        (garbage, "not PEM certificates"),
    ];
    for (path, expected) in cases {
        let error = Client::with_ca_file(Some(&path)).unwrap_err().to_string();
        assert!(error.contains(expected), "{}: {error}", path.display());
    }
    assert!(Client::with_ca_file(Some(&testdata("ca.pem"))).is_ok());
    assert!(Client::with_ca_file(None).is_ok());
}

#[test]
fn hook_urls() {
    let cases: [(&str, Option<&str>); 9] = [
        ("http://gate:8080/approved", None),
        ("https://hooks.slack.com/services/T0/B0/XYZ", None),
        ("https://127.0.0.1:8443", None),
        ("ftp://gate/x", Some("is not an http:// or https:// URL")),
        (
            "gate:8080/approved",
            Some("is not an http:// or https:// URL"),
        ),
        ("/approved", Some("is not an http:// or https:// URL")),
        ("http://", Some("is not an http:// or https:// URL")),
        ("https://user:pw@gate/x", Some("carries credentials")),
        ("not a url", Some("is not an http:// or https:// URL")),
    ];
    for (url, expected) in cases {
        match (check_url(url), expected) {
            (Ok(_), None) => {}
            (Err(reason), Some(part)) => assert!(reason.contains(part), "{url}: {reason}"),
            (got, _) => panic!("{url}: {got:?}"),
        }
    }
    assert_eq!(
        shown("https://hooks.slack.com/services/T0/B0/XYZ"),
        "https://hooks.slack.com/…"
    );
    assert_eq!(
        shown("https://user:pw@gate:8443/x?key=1"),
        "https://gate:8443/…"
    );
}
