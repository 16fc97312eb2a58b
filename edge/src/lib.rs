//! edge: tandem's only public door. It serves the REST API clients already know, turns
//! each call into gRPC for user-svc (v1 or v2, by the live routing dial) and order-svc,
//! and answers every failure with the API's JSON error shape.
//!
//! Around the dial it runs the migration control ([`control`]): shadow reads, the
//! progressive rollout and its analysis, the operator's page, and, with several
//! replicas, one shared state.
//!
//! The binary is a thin shell over [`Edge`]: build it from a [`Config`] (the routing and
//! control files are read first, so a bad file fails before any port is bound), then
//! serve it.

pub mod breaker;
pub mod control;
mod error;
pub mod guard;
mod json;
mod metrics;
mod routes;
pub mod routing;
mod server;
pub mod tls;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use control::Control;
pub use error::{ErrorBody, http_status};
use guard::{Guard, GuardConfig};
pub use json::MAX_BODY_BYTES;
use metrics::EdgeMetrics;
use tls::{Tls, TlsFiles};
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
    /// Other replicas to share the dial, the shadow settings and the rollout with.
    pub cluster: Option<ClusterSettings>,
    /// Tokens, rate limits and trusted proxies; all off by default.
    pub guard: GuardConfig,
    /// HTTPS when set.
    pub tls: Option<TlsFiles>,
    /// When an upstream that keeps failing is ejected, and for how long.
    pub ejection: breaker::EjectionSettings,
}

/// How replicas of the edge find each other: through RabbitMQ, under a cluster name.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub amqp_url: String,
    pub name: String,
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
    pub(crate) fn matches(&self, presented: &str) -> bool {
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
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("authentication: {0}")]
    Guard(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// What every request handler shares.
pub(crate) struct Shared {
    upstreams: Upstreams,
    control: Arc<Control>,
    metrics: EdgeMetrics,
    registry: Registry,
    admin_token: Option<AdminToken>,
    request_timeout: Duration,
    guard: Arc<Guard>,
}

pub(crate) type AppState = Arc<Shared>;

/// A configured edge, ready to serve.
pub struct Edge {
    state: AppState,
    routing_poll: Duration,
    cluster: Option<ClusterSettings>,
    tls: Option<Arc<Tls>>,
}

impl Edge {
    /// Reads the routing and control files, the JWKS and the TLS files: whatever is
    /// wrong with them stops the edge here, before it serves anything.
    pub async fn new(config: Config) -> Result<Edge, Error> {
        if config.cluster.is_some() && !cfg!(feature = "cluster") {
            return Err(Error::Cluster(
                "this edge was built without the cluster feature (cargo build -p edge --features cluster)".into(),
            ));
        }
        let mut registry = Registry::with_prefix("tandem_edge");
        tandem_serving::trace::register_metrics(&mut registry);
        let control =
            Arc::new(Control::load(&config.routing_file, &mut registry).map_err(Error::Routing)?);
        let metrics = EdgeMetrics::register(&mut registry);
        let guard = Arc::new(
            Guard::new(config.guard, &mut registry)
                .await
                .map_err(Error::Guard)?,
        );
        let tls = match config.tls {
            Some(files) => Some(Arc::new(
                Tls::load(files, &mut registry).map_err(Error::Tls)?,
            )),
            None => None,
        };
        let breakers = Arc::new(breaker::Breakers::new(config.ejection, &mut registry));
        let upstreams = Upstreams::new(
            &config.upstreams,
            metrics.clone(),
            control.recorder.clone(),
            breakers,
        )
        .map_err(Error::Upstream)?;
        let state = Arc::new(Shared {
            upstreams,
            control,
            metrics,
            registry,
            admin_token: config.admin_token,
            request_timeout: config.request_timeout,
            guard,
        });
        Ok(Edge {
            state,
            routing_poll: config.routing_poll,
            cluster: config.cluster,
            tls,
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
        let control = self.state.control.clone();
        let tasks = [
            Some(tokio::spawn(
                control.clone().run(self.routing_poll, shutdown.clone()),
            )),
            Some(tokio::spawn(control.shadow.clone().run(
                self.state.upstreams.clone(),
                control.recorder.clone(),
                shutdown.clone(),
            ))),
            self.join_cluster(&shutdown),
            Some(tokio::spawn(
                self.state.guard.clone().sweep(shutdown.clone()),
            )),
            self.tls
                .clone()
                .map(|tls| tokio::spawn(tls.watch(shutdown.clone()))),
        ];
        let routing = control.dial();
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            p = routing.p,
            mode = ?routing.mode,
            routing_file = %control.routing.file().display(),
            admin_api = self.state.admin_token.is_some() || self.state.guard.authenticates(),
            jwt = self.state.guard.authenticates(),
            tls = self.tls.is_some(),
            cluster = ?self.cluster.as_ref().map(|c| &c.name),
            "edge serving"
        );
        server::serve(listener, self.router(), self.tls.clone(), shutdown.clone()).await;
        shutdown.cancel();
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
        Ok(())
    }

    #[cfg(feature = "cluster")]
    fn join_cluster(&self, shutdown: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let cluster = self.cluster.as_ref()?;
        let config = control::cluster::ClusterConfig {
            amqp_url: cluster.amqp_url.clone(),
            name: cluster.name.clone(),
        };
        Some(tokio::spawn(control::cluster::run(
            self.state.control.clone(),
            config,
            shutdown.clone(),
        )))
    }

    #[cfg(not(feature = "cluster"))]
    fn join_cluster(&self, _: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}
