//! gRPC upstreams standing in for the variants of a gRPC service, and a client, for the
//! end-to-end tests of how the filter classes gRPC calls.
//!
//! Both are tonic over h2c (HTTP/2 without TLS, what a sidecar speaks to its app). The service
//! `meshcanary.test.Echo` is written out by hand instead of generated from a `.proto` file, so no
//! `protoc` is needed: its messages derive `prost::Message`, and its two methods are served
//! through tonic's own `Grpc` dispatcher exactly as generated code does — `Say` (unary) and
//! `Stream` (server streaming: `messages` replies, then the status in the trailers).
//!
//! An upstream answers with its own name in every reply, and can be told to fail every n-th
//! call, or every call, with a given gRPC code: a failed unary call is a trailers-only response
//! (HTTP 200 with `grpc-status` in the headers), a failed stream sends its messages first and the
//! code in the trailers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::codegen::{http, tokio_stream};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back.
    #[prost(string, tag = "1")]
    pub text: String,
    /// How many replies `Stream` sends.
    #[prost(uint32, tag = "2")]
    pub messages: u32,
}

/// A reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The variant that answered.
    #[prost(string, tag = "1")]
    pub upstream: String,
    /// The request's text.
    #[prost(string, tag = "2")]
    pub text: String,
}

/// The unary method's path.
pub const SAY: &str = "/meshcanary.test.Echo/Say";
/// The server-streaming method's path.
pub const STREAM: &str = "/meshcanary.test.Echo/Stream";

/// What an upstream does with a call; change it while it runs.
#[derive(Debug, Default)]
pub struct GrpcBehaviour {
    /// Calls served so far.
    pub served: AtomicU64,
    /// Fail every n-th call (0: none) with `fail_code`.
    pub fail_every: AtomicU64,
    /// The gRPC code of a failed call (a `tonic::Code` as `i32`).
    pub fail_code: AtomicI32,
}

/// A running gRPC upstream on a loopback port; stops when dropped.
pub struct GrpcUpstream {
    /// The variant it plays.
    pub name: String,
    /// Its loopback port.
    pub port: u16,
    /// Its behaviour, shared with the server.
    pub behaviour: Arc<GrpcBehaviour>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    /// Starts an upstream called `name` on a free loopback port.
    pub async fn start(name: &str) -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc upstream");
        let port = listener.local_addr().expect("grpc upstream address").port();
        let behaviour = Arc::new(GrpcBehaviour::default());
        let service = EchoService {
            name: name.into(),
            behaviour: behaviour.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        GrpcUpstream {
            name: name.to_string(),
            port,
            behaviour,
            task,
        }
    }

    /// Fail every `n`-th call with `code` (`n` = 1: every call; 0: none).
    pub fn fail_every(&self, n: u64, code: Code) {
        self.behaviour
            .fail_code
            .store(code as i32, Ordering::SeqCst);
        self.behaviour.fail_every.store(n, Ordering::SeqCst);
    }

    /// Calls served so far.
    pub fn served(&self) -> u64 {
        self.behaviour.served.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct EchoService {
    name: Arc<str>,
    behaviour: Arc<GrpcBehaviour>,
}

impl EchoService {
    /// The status this call fails with, if it is one to fail.
    fn failure(&self) -> Option<Status> {
        let nth = self.behaviour.served.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.behaviour.fail_every.load(Ordering::SeqCst);
        (every > 0 && nth.is_multiple_of(every)).then(|| {
            let code = Code::from_i32(self.behaviour.fail_code.load(Ordering::SeqCst));
            Status::new(code, format!("failed by {}", self.name))
        })
    }

    fn reply(&self, request: &EchoRequest) -> EchoReply {
        EchoReply {
            upstream: self.name.to_string(),
            text: request.text.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::new());
            let response = match request.uri().path() {
                SAY => {
                    let say = tower::service_fn(move |call: Request<EchoRequest>| {
                        let service = service.clone();
                        async move {
                            match service.failure() {
                                Some(status) => Err(status),
                                None => Ok(Response::new(service.reply(call.get_ref()))),
                            }
                        }
                    });
                    grpc.unary(say, request).await
                }
                STREAM => {
                    let stream = tower::service_fn(move |call: Request<EchoRequest>| {
                        let service = service.clone();
                        async move {
                            let failure = service.failure();
                            let reply = service.reply(call.get_ref());
                            let replies =
                                (0..call.get_ref().messages).map(move |_| Ok(reply.clone()));
                            let stream: ReplyStream =
                                Box::pin(tokio_stream::iter(replies.chain(failure.map(Err))));
                            Ok::<_, Status>(Response::new(stream))
                        }
                    });
                    grpc.server_streaming(stream, request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

impl NamedService for EchoService {
    const NAME: &'static str = "meshcanary.test.Echo";
}

/// A gRPC client over one h2c connection to Envoy's listener.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

/// What a call came back with: the upstream that answered (from its last reply) and the replies
/// received, or the status it failed with.
pub type CallResult = Result<(String, usize), Status>;

impl GrpcClient {
    /// Connects to `base_url` (`http://127.0.0.1:<port>`).
    pub async fn connect(base_url: &str) -> GrpcClient {
        let channel = tonic::transport::Channel::from_shared(base_url.to_string())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connect to envoy over h2c");
        GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls `Say` with `metadata` (lowercase names: `x-user-id`, a QA header).
    pub async fn say(&self, metadata: &[(&str, &str)]) -> CallResult {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let request = with_metadata(
            EchoRequest {
                text: "hello".into(),
                messages: 1,
            },
            metadata,
        );
        let reply = grpc
            .unary(
                request,
                http::uri::PathAndQuery::from_static(SAY),
                ProstCodec::<EchoRequest, EchoReply>::new(),
            )
            .await?;
        Ok((reply.into_inner().upstream, 1))
    }

    /// Calls `Stream` for `messages` replies and reads the stream to its end.
    pub async fn stream(&self, metadata: &[(&str, &str)], messages: u32) -> CallResult {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let request = with_metadata(
            EchoRequest {
                text: "hello".into(),
                messages,
            },
            metadata,
        );
        let mut stream = grpc
            .server_streaming(
                request,
                http::uri::PathAndQuery::from_static(STREAM),
                ProstCodec::<EchoRequest, EchoReply>::new(),
            )
            .await?
            .into_inner();
        let (mut upstream, mut received) = (String::new(), 0);
        while let Some(reply) = stream.message().await? {
            upstream = reply.upstream;
            received += 1;
        }
        Ok((upstream, received))
    }
}

fn with_metadata(message: EchoRequest, metadata: &[(&str, &str)]) -> Request<EchoRequest> {
    let mut request = Request::new(message);
    for (name, value) in metadata {
        let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).expect("a valid name");
        let value = value.parse().expect("an ASCII value");
        request.metadata_mut().insert(name, value);
    }
    request
}
