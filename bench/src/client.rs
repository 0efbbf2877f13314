//! A small HTTP/1.1 client over loopback: Envoy's admin interface, the control service's API, and
//! the split-accuracy load, which needs an exact request count (wrk only runs for a duration).

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// A keep-alive connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("handshake {addr}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }

    /// `GET path` with `host`; the status and the body.
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send("GET", path, &[("host", host)], Bytes::new())
            .await
    }

    /// `method path` with `headers` and `body`; the status and the body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await.context("connection closed")?;
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).context("build request")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        // Reading the body to its end is what frees the connection for the next request.
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// One `GET` on a new connection, with a timeout; the body as text, an error unless 200.
pub async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut connection = Connection::open(addr).await?;
        connection.get("localhost", path).await
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("GET {addr}{path} timed out"))??;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        bail!("GET {addr}{path}: {status} {text}");
    }
    Ok(text)
}

/// Sends exactly `total` `GET path` requests with `headers` (`host` among them) over `connections`
/// keep-alive connections, each connection's requests one after another; returns how many were
/// answered 200.
pub async fn send_exactly(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    path: &str,
    total: u64,
    connections: u64,
) -> anyhow::Result<u64> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for index in 0..connections {
        // The first `total % connections` connections send one more.
        let count = total / connections + u64::from(index < total % connections);
        let (headers, path) = (headers.clone(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let mut connection = Connection::open(addr).await?;
            let mut ok = 0u64;
            for _ in 0..count {
                let (status, _) = connection
                    .send("GET", &path, &headers, Bytes::new())
                    .await?;
                ok += u64::from(status == 200);
            }
            anyhow::Ok(ok)
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await.context("load task")??;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcanary_testkit::upstream::Upstream;

    #[test]
    fn sends_exactly_the_requests_asked_for() {
        let upstream = Upstream::plain().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], upstream.port).into();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let headers = [("host", "h"), ("x-user-id", "u")];
            assert_eq!(
                send_exactly(addr, &headers, "/", 103, 4).await.unwrap(),
                103
            );
            assert_eq!(send_exactly(addr, &headers, "/", 7, 1).await.unwrap(), 7);
            assert_eq!(get_text(addr, "/x").await.unwrap(), "ok");
        });
    }
}
