//! Serving the API's connections (HTTP/1.1, hyper) so that no client can hold the service's
//! sockets for long without using them.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never ran: 600 connections that
//! sent nothing, or half a request head, stayed open for minutes and took 600 file descriptors.
//! Here every connection is served under three limits:
//!
//! - **Header-read timeout**: a connection must deliver a complete request head within it from
//!   the moment it can send one — when it opens, and again after each response. Connections that
//!   send nothing, or trickle their headers (slowloris), are closed when it runs out; it is also
//!   how long a kept-alive connection may wait for its next request. (hyper's
//!   `header_read_timeout`, which runs from the moment the connection is ready for a request.)
//! - **Idle timeout**: a connection on which no byte moves in either direction for this long
//!   while no request is being handled is closed — a client that stops reading a response it asked
//!   for, say. A request body must also arrive within it, or the request is answered 408. A
//!   request being handled is never cut off: closing the connection would drop the handler in the
//!   middle of a write.
//! - **Connection limit**: at most `max_connections` are served at once. One more is answered at
//!   once with `503` `too_many_connections` (the API's error shape, `Retry-After: 1`) and closed,
//!   rather than queued: a queued client would wait, unanswered, behind connections that may be
//!   the very ones holding the slots.
//!
//! On shutdown the listener closes, idle connections close at once and the others after the
//! response they are working on.

use crate::api::error::{ErrorBody, ErrorDetail};
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The default time a connection has to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a connection may sit with nothing moving and nothing being handled.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default number of connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Refused connections being answered at once; past this, more are closed without an answer.
const REFUSING_AT_ONCE: usize = 64;
/// How long a refused connection is given to read its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long connections may take and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to deliver a complete request head, from when the connection can send one.
    pub header_read_timeout: Duration,
    /// Time with no byte moving and no request being handled; also the time a request body has.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes, then lets the open
/// connections finish their requests and returns.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let refusal: Arc<[u8]> = refusal(limits.max_connections).into();
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            // Reap finished connections as they end, so the set stays as small as what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let app = app.clone();
                let closing = closing.clone();
                connections.spawn(async move {
                    serve_connection(stream, app, limits, closing).await;
                    drop(slot);
                });
            }
            Err(_) => match refusing.clone().try_acquire_owned() {
                Ok(turn) => {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "refusing a connection: serving the limit already"
                    );
                    let refusal = refusal.clone();
                    tokio::spawn(async move {
                        refuse(stream, &refusal).await;
                        drop(turn);
                    });
                }
                // A flood: answering each would only spend more sockets on it.
                Err(_) => drop(stream),
            },
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// After a failed accept: errors about one connection (it was reset before it was accepted) are
/// nothing to wait for; others (out of file descriptors) are given a moment to clear rather than
/// spinning on them.
async fn accept_failed(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The answer to a connection over the limit: 503 in the API's error shape, closing.
fn refusal(limit: usize) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: "too_many_connections".into(),
            message: format!(
                "the service is serving its limit of {limit} connections; retry in a moment"
            ),
            field: None,
        },
    })
    .unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// Answers `stream` with `refusal` and closes it, reading what the client sends meanwhile: a
/// socket closed with unread data is reset, and the reset could reach the client before it reads
/// the answer.
async fn refuse(mut stream: TcpStream, refusal: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(refusal).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves one connection until it ends, times out, or `closing` says the service stops.
async fn serve_connection(
    stream: TcpStream,
    app: axum::Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let handling = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = handling.busy();
        let request = request.map(|body| {
            Body::new(tower_http::timeout::DeadlineBody::new(
                limits.idle_timeout,
                body,
            ))
        });
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutting_down = *closing.borrow();
    if shutting_down {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended");
                }
                return;
            }
            _ = closing.changed(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(activity.quiet_until(limits.idle_timeout).into()) => {
                if activity.quiet_for() >= limits.idle_timeout && !activity.is_busy() {
                    tracing::debug!(idle = ?limits.idle_timeout, "closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being handled.
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened`.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    fn quiet_for(&self) -> Duration {
        self.last().elapsed()
    }

    /// When the connection will have been quiet for `limit`, unless something moves. While a
    /// request is handled the next look is a `limit` from now.
    fn quiet_until(&self, limit: Duration) -> Instant {
        if self.is_busy() {
            Instant::now() + limit
        } else {
            self.last() + limit
        }
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    /// Marks a request as being handled until the guard is dropped (also when the handler's
    /// future is dropped unfinished).
    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }
}

/// A request being handled; see [`Activity::busy`].
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        // The quiet time starts when the handling ends, not when the last byte of the request came.
        self.0.touch();
    }
}

/// A socket that records in its [`Activity`] every time a byte moves.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
