//! sync-worker: keeps each order's copy of its user's contact in step. It consumes
//! `user.updated` events from RabbitMQ and calls order-svc's `ApplyUserContacts` for each
//! batch of deliveries in hand, which changes only orders whose applied contact version
//! is older, so duplicate, late or reordered events cannot undo a newer change. Its progress lives in RabbitMQ: a
//! delivery is acknowledged only after it was applied.

mod acks;
mod consumer;
pub mod dlq;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem_messaging::Topology;
use tandem_messaging::amqp as messaging;
use tandem_serving::ops::{self, Component, HealthCheck};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use consumer::{Context, SessionEnd};
pub use consumer::{FAILED_AT_HEADER, REASON_HEADER};
use metrics::WorkerMetrics;

/// Long enough to ride out a restart or a failover of order-svc or its store; an outage
/// longer than this sends the events in hand to the dead-letter queue, from where
/// `sync-worker dlq replay` brings them back.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: String,
    pub orders_url: String,
    pub topology: Topology,
    /// Deliveries in hand at once.
    pub prefetch: u16,
    /// Most events applied in one ApplyUserContacts call.
    pub batch: usize,
    /// Deadline of one ApplyUserContact call.
    pub apply_timeout: Duration,
    /// Longest pause between retries of a transient failure.
    pub retry_max_delay: Duration,
    /// How long one event may keep failing (with any status but a permanent refusal)
    /// before it is dead-lettered with its reason, so that an event order-svc can never
    /// apply does not hold a delivery slot, and with enough of them all sync, forever.
    pub retry_budget: Duration,
    /// On shutdown, how long deliveries in hand may take before they are handed back.
    pub drain_timeout: Duration,
}

impl Config {
    pub fn new(amqp_url: String, orders_url: String, topology: Topology) -> Config {
        Config {
            amqp_url,
            orders_url,
            topology,
            prefetch: 256,
            batch: 128,
            apply_timeout: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(5),
            retry_budget: DEFAULT_RETRY_BUDGET,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("order-svc URL {url:?}: {reason}")]
    OrdersUrl { url: String, reason: String },
    #[error("ops server failed: {0}")]
    Ops(#[from] std::io::Error),
}

pub struct Worker {
    context: Arc<Context>,
    registry: Registry,
}

impl Worker {
    pub fn new(config: Config) -> Result<Worker, Error> {
        let mut registry = Registry::with_prefix("tandem_sync");
        tandem_serving::trace::register_metrics(&mut registry);
        let metrics = WorkerMetrics::register(&mut registry);
        let channel = Endpoint::from_shared(config.orders_url.clone())
            .map_err(|e| Error::OrdersUrl {
                url: config.orders_url.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // Lazy: the worker starts, and holds its deliveries, while order-svc is down.
            .connect_lazy();
        let context = Arc::new(Context {
            config,
            orders: OrderServiceClient::new(channel),
            metrics,
            single_calls_only: Default::default(),
        });
        Ok(Worker { context, registry })
    }

    /// Consumes until `shutdown` (SIGTERM in the binary): then it stops taking messages,
    /// finishes those in hand, and returns. A lost broker is reconnected with capped
    /// backoff, forever.
    pub async fn run(
        self,
        ops: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let ctx = self.context;
        let ops_task = ops.map(|listener| {
            let health = health_check(ctx.metrics.clone());
            tokio::spawn(ops::serve(
                listener,
                Arc::new(self.registry),
                health,
                shutdown.clone(),
            ))
        });
        let name = "tandem sync-worker";
        let url = ctx.config.amqp_url.clone();
        loop {
            let metrics = ctx.metrics.clone();
            let Some(connection) = messaging::connect_until_up(&url, name, &shutdown, |_| {
                metrics.connect_failures.inc();
            })
            .await
            else {
                break;
            };
            tracing::info!(broker = %tandem_serving::telemetry::redact_url(&url), "sync-worker connected");
            let end = consumer::session(&ctx, &connection, &shutdown).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(2), connection.close(200, "bye".into()))
                    .await;
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => {
                    tracing::warn!(%reason, "lost RabbitMQ; reconnecting");
                }
            }
        }
        tracing::info!("sync-worker stopped");
        shutdown.cancel();
        if let Some(task) = ops_task {
            task.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

/// Ready while consuming: a worker without its broker does no work.
fn health_check(metrics: WorkerMetrics) -> HealthCheck {
    Arc::new(move || {
        let up = metrics.connected.get() == 1;
        Box::pin(async move {
            vec![if up {
                Component::up("broker", true)
            } else {
                Component::down("broker", true, "not consuming: RabbitMQ is unreachable")
            }]
        })
    })
}
