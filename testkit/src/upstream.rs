//! Upstream HTTP servers behind Envoy, each on a loopback port and a thread of its own.
//!
//! [`Upstream::start`] plays a variant of a service: it answers every request with its own name
//! in the `x-upstream` header and in the body (or, for a request with a body, that body back),
//! echoes the variant header it received in `x-seen-variant`, and can be told to fail or slow
//! down ([`Behaviour`]). [`Upstream::plain`] is the benchmark's: a tiny `200 ok` and nothing
//! else, so that Envoy handles no more than a response must have.
//!
//! Why a thread of its own, with a single-threaded runtime: in the benchmark, the upstream's work
//! must stay off the books of the Envoy being measured and away from more than one of the
//! machine's cores (Envoy's `direct_response` on a second listener would run on the very worker
//! thread being measured); in a test, an upstream keeps answering however busy the test's own
//! runtime is.

use crate::error::{Error, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// What a variant's upstream does with a request; change it while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// The status to answer with; 0 means 200.
    pub status: AtomicU16,
    /// Milliseconds to wait before answering.
    pub delay_ms: AtomicU64,
    /// Requests served so far.
    pub served: AtomicU64,
    /// Of those, the copies a proxy mirrored here: Envoy marks a copy by appending `-shadow` to
    /// its host (`reviews-shadow`, `127.0.0.1-shadow:8080`).
    pub shadowed: AtomicU64,
    /// Answer every n-th request with 500 (0: none); see [`Upstream::set_fail_every`].
    pub fail_every: AtomicU64,
}

/// How the server answers.
enum Role {
    /// The benchmark's: `200 ok`.
    Plain,
    /// A variant called `name`.
    Variant {
        name: String,
        behaviour: Arc<Behaviour>,
    },
}

/// A running upstream; stopped (its thread joined) when dropped.
pub struct Upstream {
    /// The variant it plays (empty for a plain one).
    pub name: String,
    /// Its loopback port.
    pub port: u16,
    /// Its behaviour, shared with the server.
    pub behaviour: Arc<Behaviour>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// An upstream playing variant `name` on a free loopback port. Panics if it cannot start.
    pub fn start(name: &str) -> Upstream {
        let behaviour = Arc::new(Behaviour::default());
        let role = Role::Variant {
            name: name.to_string(),
            behaviour: behaviour.clone(),
        };
        let mut upstream = Upstream::serve(role).unwrap_or_else(|error| panic!("{error}"));
        upstream.name = name.to_string();
        upstream.behaviour = behaviour;
        upstream
    }

    /// Three upstreams playing v1, v2 and v3, the variants the standalone bootstrap routes to.
    pub fn variants() -> [Upstream; 3] {
        ["v1", "v2", "v3"].map(Upstream::start)
    }

    /// The benchmark's upstream: every request answered `200 ok`, with no header of its own.
    pub fn plain() -> Result<Upstream> {
        Upstream::serve(Role::Plain)
    }

    fn serve(role: Role) -> Result<Upstream> {
        let io = |what: &'static str| move |error| Error::failed(what, error);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind upstream"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("bind upstream"))?;
        let port = listener.local_addr().map_err(io("bind upstream"))?.port();
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("upstream runtime"))?;
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || runtime.block_on(accept(listener, Arc::new(role), stopped)))
            .map_err(io("upstream thread"))?;
        Ok(Upstream {
            name: String::new(),
            port,
            behaviour: Arc::default(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Answer every request with `status`.
    pub fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// Wait `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answer every `n`-th request with 500 (`20`: 5 % failures, spread evenly, so any 20
    /// requests in a row hold exactly one); `0` stops it. Requests not picked answer as usual.
    pub fn set_fail_every(&self, n: u64) {
        self.behaviour.fail_every.store(n, Ordering::SeqCst);
    }

    /// Requests served so far (mirrored copies included).
    pub fn served(&self) -> u64 {
        self.behaviour.served.load(Ordering::SeqCst)
    }

    /// Mirrored copies served so far (see [`Behaviour::shadowed`]).
    pub fn shadowed(&self) -> u64 {
        self.behaviour.shadowed.load(Ordering::SeqCst)
    }
}

/// The ports of `upstreams`, in order (what [`crate::envoy::Envoy::start`] takes).
pub fn ports(upstreams: &[Upstream; 3]) -> [u16; 3] {
    upstreams.each_ref().map(|upstream| upstream.port)
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(
    listener: std::net::TcpListener,
    role: Arc<Role>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let role = role.clone();
        // Connections end with the runtime when the server stops.
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(role.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    role: Arc<Role>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (name, behaviour) = match &*role {
        Role::Plain => return Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
        Role::Variant { name, behaviour } => (name, behaviour),
    };
    let nth = behaviour.served.fetch_add(1, Ordering::SeqCst) + 1;
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    if host.windows(7).any(|window| window == b"-shadow") {
        behaviour.shadowed.fetch_add(1, Ordering::SeqCst);
    }
    let delay = behaviour.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail_every = behaviour.fail_every.load(Ordering::SeqCst);
    let status = match behaviour.status.load(Ordering::SeqCst) {
        _ if fail_every > 0 && nth % fail_every == 0 => StatusCode::INTERNAL_SERVER_ERROR,
        0 => StatusCode::OK,
        code => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let seen = request
        .headers()
        .get("x-meshcanary-variant")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("-"));
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let (body, content_type) = if body.is_empty() {
        (Bytes::from(name.clone()), "text/plain; charset=utf-8")
    } else {
        (body, "application/octet-stream")
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(name) {
        headers.insert("x-upstream", value);
    }
    headers.insert("x-seen-variant", seen);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Sends `requests` on one keep-alive connection; what came back.
    fn exchange(port: u16, requests: &[&str]) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut text = String::new();
        for request in requests {
            stream.write_all(request.as_bytes()).unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).unwrap();
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    #[test]
    fn a_plain_upstream_answers_200_ok_over_keep_alive_and_stops() {
        let upstream = Upstream::plain().unwrap();
        let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let text = exchange(upstream.port, &[get, get]);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(!text.contains("x-upstream"), "{text}");
        assert!(!text.contains("content-type"), "{text}");
        // Stopping closes the connections it holds. (Not "the port refuses": another test running
        // beside this one may already have bound the freed port.)
        let mut held = std::net::TcpStream::connect(("127.0.0.1", upstream.port)).unwrap();
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        held.write_all(get.as_bytes()).unwrap();
        let mut buf = [0u8; 1024];
        assert!(held.read(&mut buf).unwrap() > 0, "answered before the stop");
        drop(upstream);
        assert!(
            matches!(held.read(&mut buf), Ok(0) | Err(_)),
            "the connection outlived the upstream"
        );
    }

    #[test]
    fn a_variant_says_who_it_is_what_it_saw_and_does_as_told() {
        let upstream = Upstream::start("v2");
        let plain = exchange(
            upstream.port,
            &["GET / HTTP/1.1\r\nHost: x\r\nx-meshcanary-variant: v2\r\n\r\n"],
        );
        for part in [
            "HTTP/1.1 200 OK",
            "x-upstream: v2",
            "x-seen-variant: v2",
            "\r\n\r\nv2",
        ] {
            assert!(plain.contains(part), "{part} in {plain}");
        }
        let echoed = exchange(
            upstream.port,
            &["POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhello"],
        );
        for part in [
            "x-seen-variant: -",
            "application/octet-stream",
            "\r\n\r\nhello",
        ] {
            assert!(echoed.contains(part), "{part} in {echoed}");
        }
        upstream.set_status(503);
        let failing = exchange(upstream.port, &["GET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(failing.starts_with("HTTP/1.1 503"), "{failing}");
        upstream.set_status(0);
        upstream.set_fail_every(2);
        let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Served so far: 3; the 4th is the 2nd of every two.
        let pair = exchange(upstream.port, &[get, get]);
        assert_eq!(pair.matches("HTTP/1.1 500").count(), 1, "{pair}");
        assert_eq!(upstream.served(), 5);
        assert_eq!(upstream.shadowed(), 0);
        // Copies come with the proxy's `-shadow` host, with or without a port.
        let copies = [
            "GET / HTTP/1.1\r\nHost: reviews-shadow\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: 127.0.0.1-shadow:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: shadow\r\n\r\n",
        ];
        exchange(upstream.port, &copies);
        assert_eq!((upstream.served(), upstream.shadowed()), (8, 2));
    }
}
