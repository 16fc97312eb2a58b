//! What every tandem gRPC server and client shares: serving with health and reflection,
//! request ids in metadata, validation errors as `google.rpc.BadRequest`, and per-RPC
//! metrics.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_types::{ErrorDetails, StatusExt};

use tandem::domain::{FieldViolation, Violations};

pub use tandem::REQUEST_ID;

const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Serves `routes` (one tandem service) on `listener` together with `grpc.health.v1.Health`
/// and server reflection v1 and v1alpha (grpcurl 1.8 asks for v1alpha), until `shutdown`
/// is cancelled. Health turns NOT_SERVING as soon as draining starts; in-flight calls
/// finish.
pub async fn serve(
    service_name: &'static str,
    routes: Routes,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", service_name] {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let routes = routes
        .add_service(health_service)
        .add_service(
            reflection(service_name)
                .build_v1()
                .expect("build.rs writes a valid descriptor set"),
        )
        .add_service(
            reflection(service_name)
                .build_v1alpha()
                .expect("build.rs writes a valid descriptor set"),
        );
    let drain = async move {
        shutdown.cancelled().await;
        for name in ["", service_name] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .trace_fn(|req| {
            let request_id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("rpc", path = %req.uri().path(), request_id = %request_id)
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(no_delay(listener), drain)
        .await
}

/// The accepted connections, with Nagle's algorithm off. tonic sets TCP_NODELAY only on
/// listeners it binds itself; without it a reply written in several pieces (headers,
/// body, trailers) waits for the client's delayed ACK: 40 ms per call (measured: 22
/// ListOrders/s on one connection, each taking 44 ms).
fn no_delay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Reflection that lists only what this server really serves, although the descriptor
/// set holds every tandem service.
fn reflection(service_name: &str) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tandem::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest and friends, so grpcurl can print error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service_name)
        .with_service_name(HEALTH_SERVICE);
    for name in REFLECTION_SERVICES {
        builder = builder.with_service_name(name);
    }
    builder
}

/// INVALID_ARGUMENT carrying each violation as a `google.rpc.BadRequest` field violation,
/// so a client (the edge included) can name the bad fields.
pub fn invalid_argument(violations: Violations) -> Status {
    let message = format!("invalid request: {violations}");
    let details: Vec<tonic_types::FieldViolation> = violations
        .into_vec()
        .into_iter()
        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(details),
    )
}

/// A status with one field violation, for codes other than INVALID_ARGUMENT
/// (ALREADY_EXISTS on a taken email, FAILED_PRECONDITION on a shipped address).
pub fn status_with_field(code: Code, field: &str, description: &str) -> Status {
    Status::with_error_details(
        code,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The field violations a status carries, if any.
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_error_details()
        .bad_request()
        .map(|br| {
            br.field_violations
                .iter()
                .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The request id a caller sent in metadata, if it is printable.
pub fn request_id<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Wraps a message for a call that carries `request_id` in its metadata.
pub fn request_with_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = request_id.parse() {
        request.metadata_mut().insert(REQUEST_ID, value);
    }
    request
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: String,
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

    /// Records one finished call and logs it (failures with their cause: internal
    /// details stay in the log, never in the status sent to the client).
    pub fn observe<T>(&self, method: &'static str, started: Instant, result: &Result<T, Status>) {
        let elapsed = started.elapsed();
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.requests
            .get_or_create(&RpcLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
        match result {
            Ok(_) => tracing::debug!(method, ?elapsed, "ok"),
            Err(status) if is_server_fault(code) => {
                tracing::error!(method, ?elapsed, code = ?code, message = status.message(), "failed")
            }
            Err(status) => {
                tracing::info!(method, ?elapsed, code = ?code, message = status.message(), "refused")
            }
        }
    }
}

fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_travel_in_bad_request_details() {
        let mut v = Violations::new();
        v.add("emails[0]", "is not a valid email address");
        let status = invalid_argument(v);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&status),
            [FieldViolation::new(
                "emails[0]",
                "is not a valid email address"
            )]
        );
    }

    #[test]
    fn reflection_builds_from_the_descriptor_set() {
        assert!(reflection("tandem.user.v1.UserService").build_v1().is_ok());
        assert!(
            reflection("tandem.order.v1.OrderService")
                .build_v1alpha()
                .is_ok()
        );
    }
}
