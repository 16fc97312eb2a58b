//! `GET /admin`: the operator's page, served from the binary (HTML, CSS and script
//! compiled in; nothing from a CDN, no request but to this edge). The page itself holds
//! no secret: it asks for the admin token and calls the admin API with it.

use axum::http::header;
use axum::response::IntoResponse;

const HTML: &str = include_str!("../../assets/admin.html");
const CSS: &str = include_str!("../../assets/admin.css");
const JS: &str = include_str!("../../assets/admin.js");

/// Nothing but this edge: a page that tried to load anything else would be blocked.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub async fn html() -> impl IntoResponse {
    asset("text/html; charset=utf-8", HTML)
}

pub async fn css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", JS)
}
