//! edge: tandem's only public door. It serves the REST API clients already know, turns
//! each call into gRPC for user-svc (v1 or v2, by the live routing dial) and order-svc,
//! and answers every failure with the API's JSON error shape.
//!
//! The binary is a thin shell over [`Edge`]: build it from a [`Config`] (the routing file
//! is read first, so a bad file fails before any port is bound), then serve it.

mod error;
mod json;
mod metrics;
mod routes;
pub mod routing;
mod server;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ErrorBody, http_status};
pub use json::MAX_BODY_BYTES;
use metrics::EdgeMetrics;
use routing::Routing;
pub use upstream::UpstreamConfig;
use upstream::Upstreams;

/// Everything the edge needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub upstreams: UpstreamConfig,
    /// `{"P": 70}`; absent means P = 100.
    pub routing_file: PathBuf,
    /// How often the routing file is checked for changes.
    pub routing_poll: Duration,
    /// Enables `/admin/*` when set.
    pub admin_token: Option<AdminToken>,
    /// The longest a request may take end to end, reading a slow client's body included.
    pub request_timeout: Duration,
}

/// The admin bearer token. Never printed.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// `None` for an empty token: an empty secret would let anyone in.
    pub fn new(token: String) -> Option<AdminToken> {
        (!token.is_empty()).then_some(AdminToken(token))
    }

    /// Compares in constant time, so response timing does not leak the token.
    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("routing config: {0}")]
    Routing(String),
    #[error("upstream: {0}")]
    Upstream(String),
}

/// What every request handler shares.
pub(crate) struct Shared {
    upstreams: Upstreams,
    routing: Routing,
    metrics: EdgeMetrics,
    registry: Registry,
    admin_token: Option<AdminToken>,
    request_timeout: Duration,
}

pub(crate) type AppState = Arc<Shared>;

/// A configured edge, ready to serve.
pub struct Edge {
    state: AppState,
    routing_poll: Duration,
}

impl Edge {
    pub fn new(config: Config) -> Result<Edge, Error> {
        let mut registry = Registry::with_prefix("tandem_edge");
        let routing = Routing::load(&config.routing_file, &mut registry).map_err(Error::Routing)?;
        let metrics = EdgeMetrics::register(&mut registry);
        let upstreams =
            Upstreams::new(&config.upstreams, metrics.clone()).map_err(Error::Upstream)?;
        let state = Arc::new(Shared {
            upstreams,
            routing,
            metrics,
            registry,
            admin_token: config.admin_token,
            request_timeout: config.request_timeout,
        });
        Ok(Edge {
            state,
            routing_poll: config.routing_poll,
        })
    }

    /// The whole HTTP application.
    pub fn router(&self) -> axum::Router {
        routes::app(self.state.clone())
    }

    /// The OpenAPI document the edge serves at /openapi.json.
    pub fn openapi() -> utoipa::openapi::OpenApi {
        routes::openapi()
    }

    /// Serves on `listener` until `shutdown` is cancelled; requests in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let watcher = {
            let state = self.state.clone();
            let shutdown = shutdown.clone();
            let poll = self.routing_poll;
            tokio::spawn(async move { state.routing.watch(poll, shutdown).await })
        };
        let routing = self.state.routing.current();
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            p = routing.p,
            mode = ?routing.mode,
            routing_file = %self.state.routing.file().display(),
            admin_api = self.state.admin_token.is_some(),
            "edge serving"
        );
        server::serve(listener, self.router(), shutdown.clone()).await;
        shutdown.cancel();
        let _ = watcher.await;
        Ok(())
    }
}
