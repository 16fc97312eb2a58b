//! The HTTP application: the REST routes (each also answering with a trailing slash), the
//! docs, and the middleware every request passes through (request id, access log,
//! metrics, overall timeout).

mod admin;
mod ops;
mod order_page;
mod orders;
mod page;
pub(crate) mod users;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::error::ApiError;
use crate::guard::Caller;
use crate::upstream::Call;
use tandem_serving::trace::{SpanKind, TraceContext};

#[derive(OpenApi)]
#[openapi(
    modifiers(&Security),
    info(
        title = "tandem",
        description = "Users and orders. Every error is JSON: {\"status\":\"error\",\"code\",\"detail\",\"fields\"}. \
                       Routes also answer with a trailing slash.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "users", description = "Users, served by user-svc v1 or v2 by the routing dial"),
        (name = "orders", description = "Orders, served by order-svc"),
        (name = "operations", description = "Health, metrics and the routing dial"),
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::error::FieldError,
        users::UserVersion
    ))
)]
struct ApiDoc;

/// The two credentials: the admin token, and (when the edge is started with a JWKS) a
/// JWT whose scopes each operation names, from the same table the guard enforces. The
/// empty requirement says a token is optional: the API is open unless configured.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "EDGE_ADMIN_TOKEN, or with EDGE_JWKS set a JWT with the tandem:admin scope",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Required when the edge is started with EDGE_JWKS. A token with the \
                         tandem_user_id claim reaches only that user and their orders.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (axum::http::Method::GET, &mut item.get),
                (axum::http::Method::PUT, &mut item.put),
                (axum::http::Method::POST, &mut item.post),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                if let crate::guard::scopes::Needs::Scope(scope) =
                    crate::guard::scopes::needs(&method, Some(path))
                {
                    operation.security = Some(vec![
                        SecurityRequirement::default(),
                        SecurityRequirement::new("bearer", [scope.name()]),
                    ]);
                }
            }
        }
    }
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::create_user))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(orders::create_order, orders::list_orders))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::update_status))
        .routes(routes!(orders::update_details))
        .routes(routes!(ops::health))
        .routes(routes!(ops::metrics))
        .routes(routes!(admin::get_routing, admin::put_routing))
        .routes(routes!(admin::get_shadow, admin::put_shadow))
        .routes(routes!(admin::get_rollout, admin::put_rollout))
        .routes(routes!(admin::pause_rollout))
        .routes(routes!(admin::resume_rollout))
        .routes(routes!(admin::abort_rollout))
        .routes(routes!(admin::promote_rollout))
        .routes(routes!(admin::get_stats))
}

/// The OpenAPI 3.1 document, generated from the handlers and their types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

pub fn app(state: AppState) -> Router {
    let (api, doc) = api().split_for_parts();
    let api = api
        .with_state(state.clone())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        // Inside `track`, so refusals are logged and counted like any answer.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::guard::check,
        ))
        .layer(axum::middleware::from_fn_with_state(state, track));
    // /users/ and /users are one route: the slash is trimmed before routing.
    let api = NormalizePathLayer::trim_trailing_slash().layer(api);
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .route("/admin", axum::routing::get(page::html))
        .route("/admin/", axum::routing::get(page::html))
        .route("/admin/page.css", axum::routing::get(page::css))
        .route("/admin/page.js", axum::routing::get(page::js))
        .fallback_service(api)
}

/// The id of the request being served, taken from `x-request-id` or made here.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A handler's view of who is calling: the request id (set by `track`) and the verified
/// caller (set by the guard; anonymous when the API is open).
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Call {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|id| id.0.clone())
                .unwrap_or_default(),
            caller: parts
                .extensions
                .get::<Caller>()
                .cloned()
                .unwrap_or_default(),
            trace: parts.extensions.get::<TraceContext>().cloned(),
        })
    }
}

fn request_id_from(request: &Request) -> String {
    request
        .headers()
        .get(tandem_serving::grpc::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        // Accept a client's id only if it is short and plain; otherwise make one.
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Every request: a request id (returned and logged), an overall timeout, an access log
/// line and metrics.
async fn track(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request_id_from(&request);
    let method = crate::metrics::method_label(request.method());
    let path = request.uri().path().to_owned();
    let route = crate::metrics::route_label(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let trace = TraceContext::from_headers(request.headers());
    let traceparent = trace.traceparent();
    let trace_id = trace.trace_id_hex();
    let mut trace_span = trace.span(route, SpanKind::Server);
    request.extensions_mut().insert(trace);
    let span = tracing::info_span!(
        "http",
        %method,
        %path,
        request_id = %request_id,
        trace_id = %trace_id,
        // Filled in by the guard for a verified token (never the token itself).
        subject = tracing::field::Empty,
        scopes = tracing::field::Empty
    );
    let mut response = match tokio::time::timeout(
        state.request_timeout,
        next.run(request).instrument(span.clone()),
    )
    .await
    {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!("the request took longer than {:?}", state.request_timeout),
        )
        .into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(tandem_serving::grpc::REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        response
            .headers_mut()
            .insert(tandem_serving::trace::TRACEPARENT, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.http(method, route, status, elapsed);
    if trace_span.is_recording() {
        // Named as OpenTelemetry's HTTP conventions ask: method and route.
        trace_span.rename(format!("{method} {route}"));
        trace_span.set("http.request.method", method);
        trace_span.set("http.route", route);
        trace_span.set("url.path", path.clone());
        trace_span.set("http.response.status_code", i64::from(status));
        trace_span.set("tandem.request_id", request_id.clone());
        if status >= 500 {
            trace_span.fail(format!("answered {status}"));
        }
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    });
    response
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn wrong_method(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The `status` of every successful answer.
pub const SUCCESS: &str = "success";

/// A protobuf timestamp as the REST API writes it: RFC 3339, UTC, milliseconds.
pub fn rfc3339(ts: Option<prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    chrono::DateTime::<chrono::Utc>::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// New emails and/or a new delivery address (at least one, nothing else). `userEmails` is
/// taken for `emails` (order bodies of older clients say so).
//
// The body of `PUT /users/{userId}` and `PUT /orders/{orderId}/details` alike: the REST
// form of `tandem::domain::ContactChange`, which the service checks.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct ContactChangeBody {
    #[serde(
        default,
        alias = "userEmails",
        deserialize_with = "crate::json::present"
    )]
    #[schema(schema_with = tandem::domain::email_list_schema, nullable = false)]
    pub emails: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::json::present")]
    #[schema(nullable = false)]
    pub delivery_address: Option<tandem::proto::common::v1::Address>,
}

/// The gRPC fields of a contact change: the emails, the address, and the update mask
/// naming which of them the body gave.
type ContactChangeFields = (
    Vec<String>,
    Option<tandem::proto::common::v1::Address>,
    prost_types::FieldMask,
);

impl ContactChangeBody {
    /// The fields of the update request; a body that gives neither field is refused here.
    pub fn into_request_fields(self) -> Result<ContactChangeFields, ApiError> {
        if self.emails.is_none() && self.delivery_address.is_none() {
            return Err(ApiError::invalid(
                "nothing to update: give emails and/or deliveryAddress",
                Vec::new(),
            ));
        }
        let mask = tandem::domain::ContactChange::mask(
            self.emails.is_some(),
            self.delivery_address.is_some(),
        );
        Ok((self.emails.unwrap_or_default(), self.delivery_address, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_change_names_what_it_changes_and_null_is_not_absent() {
        let body: ContactChangeBody = serde_json::from_str(r#"{"userEmails":["a@b.co"]}"#).unwrap();
        let (emails, address, mask) = body.into_request_fields().unwrap();
        assert_eq!(
            (emails, address, mask.paths),
            (vec!["a@b.co".to_owned()], None, vec!["emails".to_owned()])
        );
        assert!(serde_json::from_str::<ContactChangeBody>(r#"{"emails":null}"#).is_err());
        let empty: ContactChangeBody = serde_json::from_str("{}").unwrap();
        assert!(empty.into_request_fields().is_err());
    }
}
