//! The small operations HTTP port every internal process serves: `GET /metrics`
//! (Prometheus text) and `GET /healthz` (JSON; 200 when ready, 503 naming what is not).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http_error::ErrorBody;

/// The state of one thing a process depends on.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: &'static str,
    pub ok: bool,
    /// Whether the process is unready without it. An outbox relay whose broker is down
    /// is not: the API keeps working and the events wait.
    pub required: bool,
    pub detail: String,
}

impl Component {
    pub fn up(name: &'static str, required: bool) -> Self {
        Self {
            name,
            ok: true,
            required,
            detail: "ok".into(),
        }
    }

    pub fn down(name: &'static str, required: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            required,
            detail: detail.into(),
        }
    }
}

/// Reports the components of a process each time `/healthz` is asked.
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, Vec<Component>> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    health: HealthCheck,
}

pub fn router(registry: Arc<Registry>, health: HealthCheck) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(OpsState { registry, health })
}

/// Serves the ops routes until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: HealthCheck,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, health))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<OpsState>) -> Response {
    metrics_response(&state.registry)
}

/// A registry as the answer to `GET /metrics` (OpenMetrics text), or, should encoding
/// fail, the JSON error every tandem endpoint answers with. The edge serves its own
/// `/metrics` with this too.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be encoded");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(ErrorBody::new("INTERNAL", "metrics could not be encoded")),
            )
                .into_response()
        }
    }
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    components: Vec<Component>,
}

async fn healthz(State(state): State<OpsState>) -> impl IntoResponse {
    let components = (state.health)().await;
    let ready = components.iter().all(|c| c.ok || !c.required);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthBody {
        status: if ready { "ok" } else { "unavailable" },
        components,
    };
    (status, axum::Json(body))
}

/// The ops port next to a gRPC port: the same host, the port + 1000 (50051 → 51051), so
/// processes on one machine never collide when their gRPC ports differ. A gRPC port of
/// 0 (any free port) gives an ops port of 0 too: "+ 1000" of a port not yet chosen
/// would be the privileged port 1000.
pub fn default_addr(grpc: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = grpc;
    if grpc.port() != 0 {
        addr.set_port(grpc.port().saturating_add(1000));
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ops_port_follows_the_grpc_port() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(default_addr(at("0.0.0.0:50051")), at("0.0.0.0:51051"));
        assert_eq!(default_addr(at("127.0.0.1:0")), at("127.0.0.1:0"));
    }

    /// A collector that cannot be written, standing for any encoding failure.
    #[derive(Debug)]
    struct Broken;

    impl prometheus_client::collector::Collector for Broken {
        fn encode(
            &self,
            _: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            Err(std::fmt::Error)
        }
    }

    #[tokio::test]
    async fn a_metrics_failure_is_the_json_error() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Broken));
        let response = metrics_response(&registry);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "error");
        assert_eq!(body["code"], "INTERNAL");
        assert!(body["fields"].as_array().unwrap().is_empty());
    }
}
