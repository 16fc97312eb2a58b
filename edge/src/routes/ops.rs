//! /health and /metrics.

use std::collections::BTreeMap;

use crate::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    /// "ok", or "unavailable" when an upstream is down.
    #[schema(example = "ok")]
    status: &'static str,
    /// Each upstream: "ok", or why not.
    #[schema(example = json!({"user-svc-v1": "ok", "user-svc-v2": "ok", "order-svc": "ok"}))]
    dependencies: BTreeMap<&'static str, String>,
}

/// Health of the edge's upstreams (their gRPC health): 200 when all serve, 503 naming
/// those that do not.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Every upstream serves", body = HealthBody),
        (status = 503, description = "An upstream is down; it is named", body = HealthBody),
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let checks = state.upstreams.health().await;
    let healthy = checks.iter().all(|(_, verdict)| verdict.is_ok());
    let dependencies = checks
        .into_iter()
        .map(|(name, verdict)| (name, verdict.err().unwrap_or_else(|| "ok".to_owned())))
        .collect();
    let body = HealthBody {
        status: if healthy { "ok" } else { "unavailable" },
        dependencies,
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    tandem_serving::ops::metrics_response(&state.registry)
}
