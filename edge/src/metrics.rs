//! What the edge counts: every HTTP request by route and status, and every call to a user
//! flavor by outcome and latency, plus failovers. Per-flavor figures are also kept as
//! plain handles so `GET /admin/routing` can show them. (The dial's own figures belong to
//! [`crate::routing::Routing`].)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use utoipa::ToSchema;

use std::sync::OnceLock;

use tandem::domain::Flavor;

// Labels are static strings: no allocation per request to count it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlavorLabels {
    flavor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    flavor: &'static str,
    outcome: &'static str,
}

/// One flavor's handles.
#[derive(Clone)]
struct FlavorMetrics {
    ok: Counter,
    errors: Counter,
    failovers_from: Counter,
    latency: Histogram,
    /// The histogram's sum, readable (prometheus-client only reads it back in tests).
    latency_micros: Arc<AtomicU64>,
}

/// The label of an HTTP method; anything unusual is "other", so clients cannot grow the
/// label set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The label of a matched route template, or "unmatched". The templates are the paths
/// of the OpenAPI document, which the router is built from, so a new route is labelled
/// without being listed again here.
pub fn route_label(matched: Option<&str>) -> &'static str {
    static ROUTES: OnceLock<Vec<String>> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| crate::routes::openapi().paths.paths.into_keys().collect());
    matched
        .and_then(|m| routes.iter().find(|r| *r == m))
        .map_or("unmatched", String::as_str)
}

/// A flavor's place in per-flavor arrays.
pub fn slot(flavor: Flavor) -> usize {
    match flavor {
        Flavor::V1 => 0,
        Flavor::V2 => 1,
    }
}

#[derive(Clone)]
pub struct EdgeMetrics {
    http: Family<HttpLabels, Counter>,
    http_latency: Family<RouteLabels, Histogram>,
    flavors: [FlavorMetrics; 2],
}

fn latency_buckets() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Request and error counts, failovers and latency of one flavor.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlavorStats {
    pub requests: u64,
    pub errors: u64,
    /// Requests that found this flavor unreachable and went to the other.
    pub failovers: u64,
    pub mean_latency_ms: f64,
}

impl EdgeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let outcomes: Family<OutcomeLabels, Counter> = Family::default();
        let failovers: Family<FlavorLabels, Counter> = Family::default();
        let latency: Family<FlavorLabels, Histogram> =
            Family::new_with_constructor(latency_buckets);
        // One `let` per handle: get_or_create returns a guard on the family, and two
        // guards alive in one expression would deadlock the second (a write) on the first.
        let flavor = |f: Flavor| {
            let name = f.as_str();
            let ok = outcomes
                .get_or_create(&OutcomeLabels {
                    flavor: name,
                    outcome: "ok",
                })
                .clone();
            let errors = outcomes
                .get_or_create(&OutcomeLabels {
                    flavor: name,
                    outcome: "error",
                })
                .clone();
            let failovers_from = failovers
                .get_or_create(&FlavorLabels { flavor: name })
                .clone();
            let latency = latency
                .get_or_create(&FlavorLabels { flavor: name })
                .clone();
            FlavorMetrics {
                ok,
                errors,
                failovers_from,
                latency,
                latency_micros: Arc::default(),
            }
        };
        let metrics = EdgeMetrics {
            http: Family::default(),
            http_latency: Family::new_with_constructor(latency_buckets),
            flavors: [flavor(Flavor::V1), flavor(Flavor::V2)],
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            metrics.http.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            metrics.http_latency.clone(),
        );
        registry.register(
            "user_upstream_requests",
            "Calls to a user-svc flavor, by flavor and outcome (error: anything but OK)",
            outcomes,
        );
        registry.register(
            "user_upstream_latency_seconds",
            "Time a user-svc flavor took to answer, by flavor",
            latency,
        );
        registry.register(
            "user_failovers",
            "Requests that found a flavor unreachable and went to the other one, by the flavor that was down",
            failovers,
        );
        metrics
    }

    /// Counts one answered request. `method` and `route` are label values from
    /// [`method_label`] and [`route_label`].
    pub fn http(&self, method: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.http
            .get_or_create(&HttpLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn flavor_call(&self, flavor: Flavor, ok: bool, elapsed: Duration) {
        let m = &self.flavors[slot(flavor)];
        if ok { &m.ok } else { &m.errors }.inc();
        m.latency.observe(elapsed.as_secs_f64());
        m.latency_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn failover(&self, from: Flavor) {
        self.flavors[slot(from)].failovers_from.inc();
    }

    pub fn flavor_stats(&self, flavor: Flavor) -> FlavorStats {
        let m = &self.flavors[slot(flavor)];
        let (ok, errors) = (m.ok.get(), m.errors.get());
        let calls = ok + errors;
        let micros = m.latency_micros.load(Ordering::Relaxed);
        FlavorStats {
            requests: calls,
            errors,
            failovers: m.failovers_from.get(),
            mean_latency_ms: if calls == 0 {
                0.0
            } else {
                (micros as f64 / calls as f64).round() / 1000.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_is_a_label() {
        for route in [
            "/users/{userId}",
            "/orders/{orderId}/details",
            "/admin/routing",
        ] {
            assert_eq!(route_label(Some(route)), route);
        }
        assert_eq!(route_label(Some("/made/up")), "unmatched");
        assert_eq!(route_label(None), "unmatched");
    }
}
