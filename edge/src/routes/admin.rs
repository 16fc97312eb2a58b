//! /admin/routing: read and turn the v1/v2 dial. Needs `Authorization: Bearer <token>`;
//! without a configured token the admin API does not exist.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::json::JsonBody;
use crate::metrics::FlavorStats;
use tandem::domain::Flavor;

use crate::routing::{Mode, RoutingConfig};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlavorsStats {
    v1: FlavorStats,
    v2: FlavorStats,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingView {
    /// Percent of user traffic to v1.
    #[serde(rename = "P")]
    p: u8,
    mode: Mode,
    /// The routing file this dial is kept in.
    routing_file: String,
    /// Traffic each flavor has served since the edge started.
    flavors: FlavorsStats,
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::not_found(
            "the admin API is disabled: start the edge with EDGE_ADMIN_TOKEN set",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.matches(presented) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "the admin API needs Authorization: Bearer <admin token>",
        )
        .with_header("www-authenticate", "Bearer"))
    }
}

fn view(state: &AppState) -> RoutingView {
    let config = state.routing.current();
    RoutingView {
        p: config.p,
        mode: config.mode,
        routing_file: state.routing.file().display().to_string(),
        flavors: FlavorsStats {
            v1: state.metrics.flavor_stats(Flavor::V1),
            v2: state.metrics.flavor_stats(Flavor::V2),
        },
    }
}

/// The routing dial and what each flavor has served.
#[utoipa::path(
    get,
    path = "/admin/routing",
    tag = "operations",
    security(("admin_token" = [])),
    responses((status = 200, description = "The dial", body = RoutingView), ErrorResponses)
)]
pub async fn get_routing(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RoutingView>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(view(&state)))
}

/// Turn the dial: takes effect at once and is written to the routing file, so a restart
/// keeps it.
#[utoipa::path(
    put,
    path = "/admin/routing",
    tag = "operations",
    security(("admin_token" = [])),
    request_body = RoutingConfig,
    responses((status = 200, description = "The dial after the change", body = RoutingView), ErrorResponses)
)]
pub async fn put_routing(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(config): JsonBody<RoutingConfig>,
) -> Result<Json<RoutingView>, ApiError> {
    authorize(&state, &headers)?;
    if let Err(e) = config.validate() {
        return Err(ApiError::invalid_field("P", &e));
    }
    state.routing.set(config).await.map_err(|cause| {
        tracing::error!(%cause, "cannot write the routing file");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the routing file could not be written; the dial is unchanged",
        )
    })?;
    Ok(Json(view(&state)))
}
