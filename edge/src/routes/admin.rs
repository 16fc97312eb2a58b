//! The admin API: the routing dial, shadow reads, the rollout and the traffic the
//! operator's page charts. Needs `Authorization: Bearer <token>`; without a configured
//! token the admin API does not exist.

use crate::json::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tandem::domain::Flavor;
use utoipa::ToSchema;

use crate::AppState;
use crate::control::rollout::{self, Event, Rollout, RolloutPlan};
use crate::control::shadow::ShadowSettings;
use crate::control::stats::{FlavorCounts, MismatchExample};
use crate::control::{ChangeError, Draft};
use crate::error::{ApiError, ErrorResponses};
use crate::json::{JsonBody, parse_query};
use crate::metrics::FlavorStats;
use crate::routing::{Mode, RoutingConfig};

/// Proof that a request carries the admin token (or, with JWT on, a token with the
/// `tandem:admin` scope). As an extractor it runs before the body is read, so a request
/// without it is refused (401) whatever its body.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = state
            .guard
            .client_address(&parts.extensions, &parts.headers);
        state
            .guard
            .admin(state.admin_token.as_ref(), client, &parts.headers)
            .await
            .map(|()| Admin)
    }
}

/// A change the edge refused or could not save.
fn change_error(err: ChangeError) -> ApiError {
    match err {
        ChangeError::Refused(why) => {
            ApiError::new(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", why.0)
        }
        ChangeError::Save(cause) => {
            tracing::error!(%cause, "cannot save a control change");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "the change could not be saved; nothing changed",
            )
        }
    }
}

fn invalid((field, why): (String, String)) -> ApiError {
    ApiError::invalid_field(&field, &why)
}

// === the dial ===

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
    /// The rollout's state (`idle` without one).
    rollout: rollout::State,
    /// Each upstream's breaker: one that keeps failing is ejected for a while.
    ejection: crate::breaker::EjectionView,
    /// Set when this change paused a rollout in progress (a manual change wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<String>,
}

fn routing_view(state: &AppState, notice: Option<String>) -> RoutingView {
    let config = state.control.dial();
    RoutingView {
        p: config.p,
        mode: config.mode,
        routing_file: state.control.routing.file().display().to_string(),
        flavors: FlavorsStats {
            v1: state.metrics.flavor_stats(Flavor::V1),
            v2: state.metrics.flavor_stats(Flavor::V2),
        },
        rollout: state.control.rollout().state,
        ejection: state.upstreams.breakers.view(),
        notice,
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
    _: Admin,
) -> Result<Json<RoutingView>, ApiError> {
    Ok(Json(routing_view(&state, None)))
}

/// Turn the dial: takes effect at once and is written to the routing file, so a restart
/// keeps it. During a rollout it pauses the rollout (a manual change wins).
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
    _: Admin,
    JsonBody(config): JsonBody<RoutingConfig>,
) -> Result<Json<RoutingView>, ApiError> {
    if let Err(e) = config.validate() {
        return Err(ApiError::invalid_field("P", &e));
    }
    let paused = state
        .control
        .change(|draft: &mut Draft| {
            draft.dial = config;
            Ok(draft.rollout.state == rollout::State::Progressing
                && draft
                    .rollout
                    .pause(config.p, "P was set by hand", draft.now)
                    .is_ok())
        })
        .await
        .map_err(change_error)?;
    let notice = paused.then(|| {
        "the rollout in progress was paused: a manual change wins \
         (POST /admin/rollout/resume goes on from its step)"
            .to_owned()
    });
    Ok(Json(routing_view(&state, notice)))
}

// === shadow reads ===

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowView {
    /// Share of user reads also sent to the other flavor.
    fraction: f64,
    /// Field paths left out of comparisons.
    ignore: Vec<String>,
    /// Since this edge started, every replica's: reads compared,
    compared: u64,
    /// …that matched,
    matched: u64,
    /// …that differed on a field the serving flavor answers the same twice,
    mismatched: u64,
    /// …that differed only on fields the serving flavor itself does not repeat (noise),
    noise: u64,
    /// reads not shadowed because the queue was full,
    dropped: u64,
    /// and shadow calls that failed.
    failed: u64,
    /// Mismatches by field path.
    fields: std::collections::BTreeMap<String, u64>,
    /// The latest mismatches, newest first (at most 50).
    recent: Vec<MismatchExample>,
}

fn shadow_view(state: &AppState) -> ShadowView {
    let settings = state.control.shadow.settings();
    let (totals, recent) = state.control.shadow_totals();
    ShadowView {
        fraction: settings.fraction,
        ignore: settings.ignore,
        compared: totals.compared,
        matched: totals.matched,
        mismatched: totals.mismatched,
        noise: totals.noise,
        dropped: totals.dropped,
        failed: totals.failed,
        fields: totals.fields,
        recent,
    }
}

/// What shadow reads found: v2 (or v1) compared field by field with the flavor that
/// served each read.
#[utoipa::path(
    get,
    path = "/admin/shadow",
    tag = "operations",
    security(("admin_token" = [])),
    responses((status = 200, description = "Shadow settings and results", body = ShadowView), ErrorResponses)
)]
pub async fn get_shadow(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<ShadowView>, ApiError> {
    Ok(Json(shadow_view(&state)))
}

/// Set the share of reads shadowed and the fields comparisons ignore.
#[utoipa::path(
    put,
    path = "/admin/shadow",
    tag = "operations",
    security(("admin_token" = [])),
    request_body = ShadowSettings,
    responses((status = 200, description = "Shadow settings and results", body = ShadowView), ErrorResponses)
)]
pub async fn put_shadow(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(settings): JsonBody<ShadowSettings>,
) -> Result<Json<ShadowView>, ApiError> {
    settings.validate().map_err(invalid)?;
    state
        .control
        .change(|draft| {
            draft.shadow = settings;
            Ok(())
        })
        .await
        .map_err(change_error)?;
    Ok(Json(shadow_view(&state)))
}

// === the rollout ===

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// The dial now.
    #[serde(rename = "P")]
    p: u8,
    #[serde(flatten)]
    rollout: Rollout,
    /// This edge replica's id.
    replica: String,
    /// Whether this replica runs the analysis (exactly one of a cluster does).
    leader: bool,
    /// Whether this replica is connected to the other edges of its cluster.
    clustered: bool,
}

fn rollout_view(state: &AppState) -> RolloutView {
    RolloutView {
        p: state.control.dial().p,
        rollout: state.control.rollout(),
        replica: state.control.replica.clone(),
        leader: state.control.is_leader(),
        clustered: state.control.is_clustered(),
    }
}

/// The rollout: its state, its step, its checks and its history.
#[utoipa::path(
    get,
    path = "/admin/rollout",
    tag = "operations",
    security(("admin_token" = [])),
    responses((status = 200, description = "The rollout", body = RolloutView), ErrorResponses)
)]
pub async fn get_rollout(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(rollout_view(&state)))
}

/// Start a rollout from the current P: P goes to the first step below it at once, and to
/// the next after each interval in which v2 stays within the limits. Failed checks
/// (`failureThreshold` of them) set P back to 100.
#[utoipa::path(
    put,
    path = "/admin/rollout",
    tag = "operations",
    security(("admin_token" = [])),
    request_body = RolloutPlan,
    responses((status = 200, description = "The rollout, started", body = RolloutView), ErrorResponses)
)]
pub async fn put_rollout(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(plan): JsonBody<RolloutPlan>,
) -> Result<Json<RolloutView>, ApiError> {
    plan.validate().map_err(invalid)?;
    state
        .control
        .change(|draft| {
            draft.dial.p = draft.rollout.start(plan, draft.dial.p, draft.now)?;
            Ok(())
        })
        .await
        .map_err(change_error)?;
    Ok(Json(rollout_view(&state)))
}

/// One control of the rollout.
async fn control_rollout(
    state: &AppState,
    act: impl FnOnce(&mut Draft) -> Result<(), rollout::Refused>,
) -> Result<Json<RolloutView>, ApiError> {
    state.control.change(act).await.map_err(change_error)?;
    Ok(Json(rollout_view(state)))
}

/// Pause the rollout at its step: no more checks until it is resumed.
#[utoipa::path(post, path = "/admin/rollout/pause", tag = "operations", security(("admin_token" = [])),
    responses((status = 200, description = "The rollout", body = RolloutView), ErrorResponses))]
pub async fn pause_rollout(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<RolloutView>, ApiError> {
    control_rollout(&state, |d| {
        d.rollout.pause(d.dial.p, "paused by the operator", d.now)
    })
    .await
}

/// Resume a paused rollout at its step, with a fresh window.
#[utoipa::path(post, path = "/admin/rollout/resume", tag = "operations", security(("admin_token" = [])),
    responses((status = 200, description = "The rollout", body = RolloutView), ErrorResponses))]
pub async fn resume_rollout(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<RolloutView>, ApiError> {
    control_rollout(&state, |d| {
        d.dial.p = d.rollout.resume(d.now)?;
        Ok(())
    })
    .await
}

/// Abort the rollout: P goes back to where it started.
#[utoipa::path(post, path = "/admin/rollout/abort", tag = "operations", security(("admin_token" = [])),
    responses((status = 200, description = "The rollout", body = RolloutView), ErrorResponses))]
pub async fn abort_rollout(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<RolloutView>, ApiError> {
    control_rollout(&state, |d| {
        d.dial.p = d.rollout.abort(d.now)?;
        Ok(())
    })
    .await
}

/// Promote: P goes straight to the rollout's last step, and the rollout is complete.
#[utoipa::path(post, path = "/admin/rollout/promote", tag = "operations", security(("admin_token" = [])),
    responses((status = 200, description = "The rollout", body = RolloutView), ErrorResponses))]
pub async fn promote_rollout(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<RolloutView>, ApiError> {
    control_rollout(&state, |d| {
        d.dial.p = d.rollout.promote(d.now)?;
        Ok(())
    })
    .await
}

// === the traffic, over time ===

/// Query of GET /admin/stats.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Seconds per point, 1–300 (10 by default).
    #[param(minimum = 1, maximum = 300)]
    pub step: Option<u32>,
}

/// One flavor over one point.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlavorPoint {
    requests: u64,
    /// Requests per second.
    rate: f64,
    /// Share of calls that ended in a fault.
    error_rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl FlavorPoint {
    fn of(counts: &FlavorCounts, seconds: f64) -> FlavorPoint {
        let round = |x: f64| (x * 100.0).round() / 100.0;
        FlavorPoint {
            requests: counts.requests,
            rate: round(counts.requests as f64 / seconds),
            error_rate: (counts.error_rate() * 10_000.0).round() / 10_000.0,
            p50_ms: counts.quantile_ms(0.5).map(round),
            p99_ms: counts.quantile_ms(0.99).map(round),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowPoint {
    compared: u64,
    mismatched: u64,
}

/// The traffic of `step` seconds starting `at`, all replicas together.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsPoint {
    at: chrono::DateTime<chrono::Utc>,
    /// The dial at the end of the point, when it was set within it.
    #[serde(rename = "P", skip_serializing_if = "Option::is_none")]
    p: Option<u8>,
    v1: FlavorPoint,
    v2: FlavorPoint,
    shadow: ShadowPoint,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Seconds per point.
    step_seconds: u32,
    /// The dial now.
    #[serde(rename = "P")]
    p: u8,
    /// Oldest first, the last 15 minutes.
    points: Vec<StatsPoint>,
    /// Rollout events of the last 15 minutes.
    events: Vec<Event>,
}

/// The last 15 minutes of traffic per flavor (rate, error rate, p50, p99), the dial over
/// time and the rollout's events: what the operator's page charts. Kept in memory.
#[utoipa::path(
    get,
    path = "/admin/stats",
    tag = "operations",
    security(("admin_token" = [])),
    params(StatsQuery),
    responses((status = 200, description = "The traffic over time", body = StatsView), ErrorResponses)
)]
pub async fn get_stats(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<StatsView>, ApiError> {
    let query: StatsQuery = parse_query(query.as_deref().unwrap_or(""))?;
    let step = query.step.unwrap_or(10);
    if !(1..=300).contains(&step) {
        return Err(ApiError::invalid_field("step", "must be between 1 and 300"));
    }
    let seconds = f64::from(step);
    let points = state
        .control
        .points(step as usize)
        .into_iter()
        .map(|(at, counts, p)| StatsPoint {
            at: chrono::DateTime::from_timestamp(at, 0).unwrap_or_default(),
            p,
            v1: FlavorPoint::of(&counts.v1, seconds),
            v2: FlavorPoint::of(&counts.v2, seconds),
            shadow: ShadowPoint {
                compared: counts.shadow.compared,
                mismatched: counts.shadow.mismatched,
            },
        })
        .collect();
    let since = chrono::Utc::now() - chrono::TimeDelta::minutes(15);
    let events = state
        .control
        .rollout()
        .history
        .into_iter()
        .filter(|e| e.at >= since)
        .collect();
    Ok(Json(StatsView {
        step_seconds: step,
        p: state.control.dial().p,
        points,
        events,
    }))
}
