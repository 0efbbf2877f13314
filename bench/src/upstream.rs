//! The upstream every Envoy forwards to: a minimal HTTP/1.1 server answering every request with a
//! tiny 200, on one thread of its own in the bench process.
//!
//! Why not Envoy's `direct_response` on a second listener: with `--concurrency 1` that listener
//! would run on the very worker thread being measured, adding the upstream's work to every
//! configuration's CPU per request and so shrinking every ratio towards 1. In a separate Envoy it
//! would cost several times what this does per request, on a machine with only 2 cores shared by
//! wrk, the Envoy under test and the upstream. One thread of hyper keeps the upstream cheap, off
//! Envoy's books, and away from more than one core.

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// The running server; stopped (its thread joined) when dropped.
pub struct Upstream {
    /// Its loopback port.
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds an ephemeral loopback port and serves on a new thread.
    pub fn start() -> anyhow::Result<Upstream> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind upstream")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("upstream runtime")?;
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || runtime.block_on(serve(listener, stopped)))
            .context("upstream thread")?;
        Ok(Upstream {
            port,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
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

async fn serve(listener: std::net::TcpListener, mut stopped: oneshot::Receiver<()>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)> = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Connections end with the runtime when the server stops.
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}

async fn answer(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn answers_200_over_keep_alive_and_stops() {
        let upstream = Upstream::start().unwrap();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", upstream.port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut text = String::new();
        for _ in 0..2 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        let port = upstream.port;
        drop(upstream);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
