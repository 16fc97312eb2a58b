//! user-svc: users and their contact details over gRPC (`tandem.user.v1.UserService`),
//! run as two flavors (v1 legacy, v2) over one store. Every contact change is written with
//! its `user.updated` event in one atomic step (the outbox).
//!
//! The binary is a thin shell over [`UserSvc`]: open it (store first, so a bad store fails
//! before any port is bound), then serve it on listeners the caller bound.

mod error;
pub mod model;
pub mod relay;
mod service;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tandem::domain::Flavor;
use tandem::proto::user::v1::user_service_server::{SERVICE_NAME, UserServiceServer};
use tandem_serving::grpc::RpcMetrics;
use tandem_serving::ops::{self, Component, HealthCheck};
use tandem_storage::StoreUrl;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use error::UserError;
pub use relay::RelayConfig;
use relay::{Relay, RelayMetrics};
use service::UserApi;
use store::UserStore;

/// Everything user-svc needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub flavor: Flavor,
    pub store: StoreUrl,
    /// The outbox relay; `None` leaves events in the outbox (tests of the API alone).
    pub relay: Option<RelayConfig>,
}

/// Why user-svc could not start or stopped serving.
pub type ServeError = tandem_serving::ServeError<store::StoreError>;

/// An opened user service, ready to serve.
pub struct UserSvc {
    config: Config,
    store: Arc<dyn UserStore>,
}

impl UserSvc {
    /// Opens the store (creating schema, indexes and validators).
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        let store = store::open(&config.store)
            .await
            .map_err(|source| ServeError::Store {
                what: "user",
                url: config.store.to_string(),
                source,
            })?;
        Ok(Self { config, store })
    }

    pub fn store(&self) -> Arc<dyn UserStore> {
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
        let mut registry = Registry::with_prefix("tandem_user");
        tandem_serving::trace::register_metrics(&mut registry);
        self.store.register_metrics(&mut registry);
        let metrics = RpcMetrics::register(&mut registry);
        let relay_metrics = RelayMetrics::register(&mut registry);
        let outbox_written = Arc::new(Notify::new());
        let broker_up = Arc::new(AtomicBool::new(false));
        let relay = self.config.relay.clone().map(|config| {
            Relay::new(
                self.store.clone(),
                config,
                self.config.flavor.service_name(),
                outbox_written.clone(),
                relay_metrics,
                broker_up.clone(),
            )
        });
        let api = UserApi::new(
            self.config.flavor,
            self.store.clone(),
            outbox_written,
            relay.as_ref().map(Relay::handoff),
        );
        let relay_task = relay.map(|relay| tokio::spawn(relay.run(shutdown.clone())));
        let ops_addr = ops.as_ref().and_then(|l| l.local_addr().ok());
        let ops_task = ops.map(|listener| {
            let broker = self.config.relay.is_some().then_some(broker_up);
            let health = health_check(self.store.clone(), broker);
            tokio::spawn(ops::serve(
                listener,
                Arc::new(registry),
                health,
                shutdown.clone(),
            ))
        });

        tracing::info!(
            flavor = %self.config.flavor,
            store = %self.config.store,
            addr = ?grpc.local_addr().ok(),
            ops = ?ops_addr,
            "user-svc serving"
        );
        let routes = tonic::service::Routes::new(UserServiceServer::new(api));
        let served =
            tandem_serving::grpc::serve(SERVICE_NAME, routes, metrics, grpc, shutdown.clone())
                .await;
        shutdown.cancel();
        if let Some(task) = relay_task {
            let _ = task.await;
        }
        if let Some(task) = ops_task {
            task.await.map_err(std::io::Error::other)??;
        }
        served?;
        Ok(())
    }
}

/// The store is required. The broker is not: while it is away the API keeps working
/// and events wait in the outbox, so it shows, but does not fail readiness.
fn health_check(store: Arc<dyn UserStore>, broker_up: Option<Arc<AtomicBool>>) -> HealthCheck {
    Arc::new(move || {
        let store = store.clone();
        let broker_up = broker_up.clone();
        Box::pin(async move {
            let mut components = vec![match store.ping().await {
                Ok(()) => Component::up("store", true),
                Err(e) => Component::down("store", true, e.to_string()),
            }];
            if let Some(up) = broker_up {
                components.push(if up.load(Ordering::Relaxed) {
                    Component::up("broker", false)
                } else {
                    Component::down(
                        "broker",
                        false,
                        "the outbox relay is not connected; events wait in the outbox",
                    )
                });
            }
            components
        })
    })
}
