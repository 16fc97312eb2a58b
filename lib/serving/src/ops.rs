//! The small operations HTTP port every internal process serves: `GET /metrics`
//! (Prometheus text) and `GET /healthz` (JSON; 200 when ready, 503 naming what is not).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics could not be encoded".to_owned(),
        ),
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
/// processes on one machine never collide when their gRPC ports differ.
pub fn default_addr(grpc: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = grpc;
    addr.set_port(grpc.port().saturating_add(1000));
    addr
}

/// Binds a listener, with an error that names the address.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
