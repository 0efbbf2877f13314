//! The limits with real loopback sockets: idle and half-sent connections, a client that does not
//! read, a stalled body, the connection limit, shutdown.

use super::*;
use crate::api::extract::ApiJson;
use axum::routing::{get, post};
use std::net::SocketAddr;

/// Bytes `/big` answers: more than loopback's socket buffers hold.
const BIG: usize = 16 << 20;

/// A small API: `/ok`, a [`BIG`] `/big`, and `/echo` that reads a JSON body.
fn app() -> axum::Router {
    axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/big", get(|| async { vec![b'x'; BIG] }))
        .route(
            "/echo",
            post(|ApiJson(value): ApiJson<serde_json::Value>| async move { axum::Json(value) }),
        )
}

struct Server {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app(), limits, async {
        let _ = stopped.await;
    }));
    Server {
        address,
        stop: Some(stop),
        task,
    }
}

fn limits(header: u64, idle: u64, max: usize) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        max_connections: max,
    }
}

/// Sends `request` on a new connection and reads the answer until the server closes it.
async fn exchange(address: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn get_ok(address: SocketAddr) -> String {
    exchange(
        address,
        "GET /ok HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await
}

/// Issue 17 item 3: idle connections and half-sent request heads stayed open for minutes. Now the
/// header-read timeout closes both, and a normal client is served all along.
#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_while_clients_are_served() {
    let server = start(limits(500, 30_000, 256)).await;
    let mut held = Vec::new();
    for i in 0..60 {
        let mut stream = TcpStream::connect(server.address).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\nx-slow: ")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    let answer = get_ok(server.address).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A client that trickles a header byte every 100 ms does not extend its time.
    let mut trickler = TcpStream::connect(server.address).await.unwrap();
    trickler.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
    let trickled = tokio::spawn(async move {
        for _ in 0..40 {
            if trickler.write_all(b"x").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    for (i, stream) in held.iter_mut().enumerate() {
        assert!(
            meshcanary_testkit::closed_by_peer(stream, Duration::from_secs(3)).await,
            "connection {i} ({}) is still open",
            if i % 2 == 1 { "half a head" } else { "idle" }
        );
    }
    assert!(trickled.await.unwrap(), "the trickling client was cut off");
    let answer = get_ok(server.address).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A kept-alive connection is served again and again, then closed once it waits longer than the
/// header-read timeout for its next request.
#[tokio::test]
async fn kept_alive_connections_serve_until_they_wait_too_long() {
    let server = start(limits(400, 30_000, 256)).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 1024];
        let read = stream.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(meshcanary_testkit::closed_by_peer(&mut stream, Duration::from_secs(3)).await);
}

/// A client that asks for a large answer and stops reading is closed after the idle timeout: the
/// server's write stalls, and the header timer does not run while a response is being written.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let server = start(limits(60_000, 500, 256)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.address).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What the socket buffers held arrives; then the end, well before all of it.
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still open after {} bytes", answer.len());
    assert!(answer.len() < BIG, "{} bytes", answer.len());
}

/// A request body that stops arriving is answered 408 in the API's error shape.
#[tokio::test]
async fn a_stalled_body_is_answered_408() {
    let server = start(limits(60_000, 500, 256)).await;
    let answer = exchange(
        server.address,
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    // A body that arrives is answered as usual.
    let answer = exchange(
        server.address,
        "POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("{\"a\":1}"),
        "{answer}"
    );
}

/// Past the limit a connection is answered 503 at once and closed; when a slot frees, new
/// connections are served again.
#[tokio::test]
async fn connections_over_the_limit_are_refused_with_503() {
    let server = start(limits(60_000, 60_000, 4)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        // A request answered on each makes sure the server holds it.
        let mut stream = TcpStream::connect(server.address).await.unwrap();
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 1024];
        let read = stream.read(&mut answer).await.unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let answer = get_ok(server.address).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"]["code"], "too_many_connections", "{answer}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 4 connections"),
        "{answer}"
    );

    drop(held.pop());
    let mut served = String::new();
    for _ in 0..50 {
        served = get_ok(server.address).await;
        if served.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

/// On shutdown the listener closes, a kept-alive connection is closed, and `serve` returns.
#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let mut server = start(limits(60_000, 60_000, 16)).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    let _ = server.stop.take().unwrap().send(());
    assert!(meshcanary_testkit::closed_by_peer(&mut stream, Duration::from_secs(3)).await);
    tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(TcpStream::connect(server.address).await.is_err());
}
