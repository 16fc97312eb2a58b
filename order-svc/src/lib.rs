//! order-svc: orders over gRPC (`tandem.order.v1.OrderService`), including the bulk
//! `ApplyUserContact` the sync worker calls to copy a user's new contact onto their orders.
//!
//! The binary is a thin shell over [`OrderSvc`]: open it (store first, so a bad store
//! fails before any port is bound), then serve it on listeners the caller bound.

mod error;
pub mod model;
mod page_token;
mod service;
pub mod store;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tandem::proto::order::v1::order_service_server::{OrderServiceServer, SERVICE_NAME};
use tandem_serving::grpc::RpcMetrics;
use tandem_serving::ops::{self, Component, HealthCheck};
use tandem_storage::StoreUrl;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::OrderError;
use service::OrderApi;
pub use service::{DEFAULT_PAGE_SIZE, MAX_ITEMS, MAX_PAGE_SIZE};
use store::OrderStore;

#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreUrl,
}

/// Why order-svc could not start or stopped serving.
pub type ServeError = tandem_serving::ServeError<store::StoreError>;

/// An opened order service, ready to serve.
pub struct OrderSvc {
    config: Config,
    store: Arc<dyn OrderStore>,
}

impl OrderSvc {
    /// Opens the store (creating schema, indexes and validators).
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        let store = store::open(&config.store)
            .await
            .map_err(|source| ServeError::Store {
                what: "order",
                url: config.store.to_string(),
                source,
            })?;
        Ok(Self { config, store })
    }

    pub fn store(&self) -> Arc<dyn OrderStore> {
        self.store.clone()
    }

    /// Serves gRPC on `grpc` and, when given, `/metrics` and `/healthz` on `ops`, until
    /// `shutdown` is cancelled.
    pub async fn serve(
        self,
        grpc: TcpListener,
        ops: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let mut registry = Registry::with_prefix("tandem_order");
        tandem_serving::trace::register_metrics(&mut registry);
        self.store.register_metrics(&mut registry);
        let metrics = RpcMetrics::register(&mut registry);
        let api = OrderApi::new(self.store.clone());
        let ops_addr = ops.as_ref().and_then(|l| l.local_addr().ok());
        let ops_task = ops.map(|listener| {
            let health = health_check(self.store.clone());
            tokio::spawn(ops::serve(
                listener,
                Arc::new(registry),
                health,
                shutdown.clone(),
            ))
        });
        tracing::info!(store = %self.config.store, addr = ?grpc.local_addr().ok(), ops = ?ops_addr, "order-svc serving");
        let routes = tonic::service::Routes::new(OrderServiceServer::new(api));
        let served =
            tandem_serving::grpc::serve(SERVICE_NAME, routes, metrics, grpc, shutdown.clone())
                .await;
        shutdown.cancel();
        if let Some(task) = ops_task {
            task.await.map_err(std::io::Error::other)??;
        }
        served?;
        Ok(())
    }
}

fn health_check(store: Arc<dyn OrderStore>) -> HealthCheck {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            vec![match store.ping().await {
                Ok(()) => Component::up("store", true),
                Err(e) => Component::down("store", true, e.to_string()),
            }]
        })
    })
}
