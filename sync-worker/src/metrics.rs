//! What the worker counts, served on its ops port.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct WorkerMetrics {
    pub consumed: Counter,
    pub applied: Counter,
    pub superseded: Counter,
    pub orders_modified: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub redelivered: Counter,
    pub requeued: Counter,
    /// basic.ack frames sent: each settles every applied delivery up to its tag.
    pub acks_sent: Counter,
    pub connect_failures: Counter,
    pub connected: Gauge,
    /// From the change (the event's occurredAt) to its application, in seconds.
    pub lag: Histogram,
    /// Events applied together (one ApplyUserContacts call per round).
    pub batch_size: Histogram,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = WorkerMetrics {
            consumed: Counter::default(),
            applied: Counter::default(),
            superseded: Counter::default(),
            orders_modified: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            redelivered: Counter::default(),
            requeued: Counter::default(),
            acks_sent: Counter::default(),
            connect_failures: Counter::default(),
            connected: Gauge::default(),
            // 1 ms … ~65 s
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 … 512
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        };
        registry.register(
            "events_consumed",
            "user.updated deliveries received",
            m.consumed.clone(),
        );
        registry.register(
            "events_applied",
            "Events applied to order-svc (each acknowledged as soon as every earlier delivery is settled too)",
            m.applied.clone(),
        );
        registry.register(
            "events_superseded",
            "Events acknowledged without a call of their own: a newer version of the same user, in the same batch, was applied (also counted as applied)",
            m.superseded.clone(),
        );
        registry.register(
            "apply_batch_size",
            "Events handled per batch",
            m.batch_size.clone(),
        );
        registry.register(
            "orders_modified",
            "Orders changed by applied events",
            m.orders_modified.clone(),
        );
        registry.register(
            "apply_retries",
            "ApplyUserContact attempts that failed transiently and were retried",
            m.retried.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events moved to the dead-letter queue (they can never be applied)",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_redelivered",
            "Deliveries RabbitMQ marked as redelivered",
            m.redelivered.clone(),
        );
        registry.register(
            "events_requeued",
            "Deliveries handed back unprocessed (shutdown)",
            m.requeued.clone(),
        );
        registry.register(
            "acks_sent",
            "basic.ack frames sent to RabbitMQ, each settling every applied delivery up to its tag (events_applied / acks_sent is the deliveries an ack settles)",
            m.acks_sent.clone(),
        );
        registry.register(
            "connect_failures",
            "Failed attempts to reach RabbitMQ",
            m.connect_failures.clone(),
        );
        registry.register(
            "connected",
            "1 while consuming from RabbitMQ",
            m.connected.clone(),
        );
        registry.register(
            "sync_lag_seconds",
            "From a user's change to its application to that user's orders",
            m.lag.clone(),
        );
        m
    }
}
