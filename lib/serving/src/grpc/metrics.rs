//! Per-RPC metrics and log lines, as one tower layer around a gRPC server: every call of
//! the service is counted by method and status code and timed, and failures are logged
//! with their code; each call continues the caller's W3C trace with a span of its own
//! (exported when OTLP export is on). Handlers do not time themselves.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::Frame;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::{Code, Status};

use crate::trace::{Span, SpanKind, TraceContext};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// Request counts by method and status code, and latency by method.
#[derive(Clone)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
}

impl RpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                // 100 µs … ~3 s
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
        };
        registry.register(
            "grpc_server_requests",
            "gRPC calls handled, by method and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "grpc_server_latency_seconds",
            "gRPC call handling time, by method",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Records one finished call and logs it. Server faults are errors in the log; what
    /// the client got wrong is information. The handlers log internal causes themselves;
    /// only the status sent to the client is seen here.
    fn observe(&self, method: &'static str, started: Instant, code: Code, message: &str) {
        let elapsed = started.elapsed();
        self.requests
            .get_or_create(&RpcLabels {
                method,
                code: code_label(code),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
        match code {
            Code::Ok => tracing::debug!(method, ?elapsed, "ok"),
            code if is_server_fault(code) => {
                tracing::error!(method, ?elapsed, code = ?code, message, "failed")
            }
            _ => tracing::info!(method, ?elapsed, code = ?code, message, "refused"),
        }
    }
}

/// A status that is the server's fault, not the client's.
fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable
    )
}

/// The `code` label: the code's name as tonic spells it (`Ok`, `InvalidArgument`, …).
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Every RPC tandem defines, as (`/package.Service/Method`, `Method`), read once from the
/// descriptor set: the method labels are these strings, so counting a call allocates
/// nothing and a client cannot grow the label set with made-up paths.
fn tandem_methods() -> &'static [(String, String)] {
    static METHODS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(tandem::proto::FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a valid descriptor set");
        let mut methods = Vec::new();
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    let method = method.name.unwrap_or_default();
                    methods.push((format!("/{package}.{service_name}/{method}"), method));
                }
            }
        }
        methods
    })
}

/// The RPC a request path names, as (`package.Service/Method`, `Method`), if it is one of
/// `service` (`tandem.user.v1.UserService`); health checks and reflection are not counted.
fn method_of(path: &str, service: &str) -> Option<(&'static str, &'static str)> {
    let rest = path.strip_prefix('/')?.strip_prefix(service)?;
    rest.strip_prefix('/')?;
    tandem_methods()
        .iter()
        .find(|(full, _)| full == path)
        .map(|(full, method)| (&full[1..], method.as_str()))
}

/// The tower layer that observes every call of one service.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: RpcMetrics,
    service: &'static str,
}

impl RpcMetricsLayer {
    pub fn new(metrics: RpcMetrics, service: &'static str) -> Self {
        Self { metrics, service }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observed<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let call = method_of(request.uri().path(), self.layer.service).map(|(rpc, method)| {
            // This call's span: the caller's trace continued (or a new one). Handlers
            // find it in the request's extensions, to pass on (the outbox row).
            let trace = TraceContext::from_headers(request.headers());
            let mut span = trace.span(rpc, SpanKind::Server);
            if span.is_recording() {
                span.set("rpc.system", "grpc");
                span.set("rpc.service", self.layer.service);
                span.set("rpc.method", method);
                if let Some(id) = header(&request, tandem::REQUEST_ID) {
                    span.set("tandem.request_id", id.to_owned());
                }
            }
            let call = Call {
                method,
                started: Instant::now(),
                metrics: self.layer.metrics.clone(),
                done: false,
                request_id: header(&request, tandem::REQUEST_ID).map(str::to_owned),
                trace_id: trace.trace_id_hex(),
                span,
            };
            request.extensions_mut().insert(trace);
            call
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            // The server's per-call span (see `serve`) is current here, not in `call`.
            if let Some(call) = &call {
                tracing::Span::current().record("trace_id", call.trace_id.as_str());
            }
            let response = response.await?;
            let (parts, body) = response.into_parts();
            let mut call = call;
            // A failed call is "trailers-only": its status is in the headers. Otherwise
            // it comes in the trailers, after the body.
            if let Some(status) = Status::from_header_map(&parts.headers)
                && let Some(mut pending) = call.take()
            {
                pending.finish(status.code(), status.message());
            }
            Ok(http::Response::from_parts(
                parts,
                ObservedBody { inner: body, call },
            ))
        })
    }
}

/// A call being observed, until its status is known.
fn header<'a, B>(request: &'a http::Request<B>, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

struct Call {
    method: &'static str,
    started: Instant,
    metrics: RpcMetrics,
    done: bool,
    /// The call's request id and trace id, for the line logged when it ends (after its
    /// body, outside the handler's span).
    request_id: Option<String>,
    trace_id: String,
    /// Ends with the call.
    span: Span,
}

impl Call {
    fn finish(&mut self, code: Code, message: &str) {
        self.done = true;
        let span = tracing::info_span!(
            "rpc",
            request_id = self.request_id.as_deref().unwrap_or("-"),
            trace_id = self.trace_id.as_str(),
        );
        let _in_span = span.enter();
        self.metrics
            .observe(self.method, self.started, code, message);
        let mut trace_span = std::mem::replace(&mut self.span, Span::none());
        if trace_span.is_recording() {
            trace_span.set("rpc.grpc.status_code", code as i64);
            if is_server_fault(code) {
                trace_span.fail(message.to_owned());
            }
        }
    }
}

impl Drop for Call {
    /// The body was dropped before its trailers: the client went away.
    fn drop(&mut self) {
        if !self.done {
            self.finish(Code::Cancelled, "the response was not read to its end");
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the call's status when the trailers pass.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: http_body::Body> http_body::Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(mut call) = this.call.take() {
            match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => match Status::from_header_map(trailers) {
                        Some(status) => call.finish(status.code(), status.message()),
                        None => call.finish(Code::Unknown, "trailers without grpc-status"),
                    },
                    // Data: the status is still to come.
                    None => *this.call = Some(call),
                },
                Some(Err(_)) => call.finish(Code::Unknown, "the response body failed"),
                None => call.finish(Code::Unknown, "the response ended without a status"),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_services_own_methods_are_labelled() {
        let service = "tandem.user.v1.UserService";
        assert_eq!(
            method_of("/tandem.user.v1.UserService/CreateUser", service),
            Some(("tandem.user.v1.UserService/CreateUser", "CreateUser"))
        );
        assert_eq!(
            method_of("/tandem.user.v1.UserService/MadeUp", service),
            None
        );
        assert_eq!(method_of("/grpc.health.v1.Health/Check", service), None);
        assert_eq!(
            method_of("/tandem.order.v1.OrderService/GetOrder", service),
            None
        );
    }
}
