//! RabbitMQ as both ends of the contact sync see it: the topology (declared by the
//! publisher and the consumer alike, so no event is ever sent to a queue that does not
//! exist yet), connections that notice a dead broker, and the message properties of a
//! `user.updated` event.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};

use crate::event::USER_UPDATED;

/// The topic exchange `user.updated` events are published to.
pub const DEFAULT_EXCHANGE: &str = "user.events";
/// The quorum queue the sync worker consumes.
pub const DEFAULT_QUEUE: &str = "order-sync.user-updated";
/// The dead-letter exchange and queue (one name).
pub const DEFAULT_DEAD_LETTER: &str = "order-sync.dead";
/// Deliveries of one message before RabbitMQ dead-letters it.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Names and limits of the sync topology. Tests give each run names of its own, so they
/// can share one broker.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Topology {
    /// Topic exchange user-svc publishes `user.updated` events to.
    #[arg(
        long = "amqp-exchange",
        env = "AMQP_EXCHANGE",
        default_value = DEFAULT_EXCHANGE,
        global = true
    )]
    pub exchange: String,

    /// Quorum queue the sync worker consumes.
    #[arg(
        long = "amqp-queue",
        env = "AMQP_QUEUE",
        default_value = DEFAULT_QUEUE,
        global = true
    )]
    pub queue: String,

    /// Dead-letter exchange and queue (one name) for events that cannot be applied.
    #[arg(
        long = "amqp-dead-letter",
        env = "AMQP_DEAD_LETTER",
        default_value = DEFAULT_DEAD_LETTER,
        global = true
    )]
    pub dead_letter: String,

    /// Deliveries of one message before RabbitMQ dead-letters it (quorum queue limit).
    #[arg(
        long = "amqp-delivery-limit",
        env = "AMQP_DELIVERY_LIMIT",
        default_value_t = DEFAULT_DELIVERY_LIMIT,
        global = true
    )]
    pub delivery_limit: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            exchange: DEFAULT_EXCHANGE.into(),
            queue: DEFAULT_QUEUE.into(),
            dead_letter: DEFAULT_DEAD_LETTER.into(),
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }
}

impl Topology {
    /// A topology whose every name starts with `prefix`, for tests on a shared broker.
    pub fn prefixed(prefix: &str) -> Topology {
        let defaults = Topology::default();
        Topology {
            exchange: format!("{prefix}.{}", defaults.exchange),
            queue: format!("{prefix}.{}", defaults.queue),
            dead_letter: format!("{prefix}.{}", defaults.dead_letter),
            ..defaults
        }
    }

    /// The command-line flags that select this topology, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--amqp-exchange".into(),
            self.exchange.clone(),
            "--amqp-queue".into(),
            self.queue.clone(),
            "--amqp-dead-letter".into(),
            self.dead_letter.clone(),
            "--amqp-delivery-limit".into(),
            self.delivery_limit.to_string(),
        ]
    }
}

/// Declares the exchange, the quorum queue bound to it, and the dead-letter exchange and
/// queue, each on a channel of its own that is closed afterwards. Idempotent; the relay,
/// the worker and the DLQ tools call it on every (re)connection.
///
/// The dead-letter queue is declared last and apart: if it cannot be (its node is down, in
/// a cluster that lost the node holding an old classic dead-letter queue), that is logged
/// and the sync goes on; events that need dead-lettering meanwhile wait in the sync queue.
pub async fn declare(connection: &Connection, topology: &Topology) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    // Topic: later consumers can bind to user.* without the publisher changing.
    channel
        .exchange_declare(
            topology.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Fanout: whatever is dead-lettered, whatever its routing key, lands in one queue.
    channel
        .exchange_declare(
            topology.dead_letter.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let mut arguments = quorum_arguments(i64::from(topology.delivery_limit));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology.dead_letter.as_str().into()),
    );
    channel
        .queue_declare(topology.queue.as_str().into(), DURABLE_QUEUE, arguments)
        .await?;
    channel
        .queue_bind(
            topology.queue.as_str().into(),
            topology.exchange.as_str().into(),
            USER_UPDATED.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    if let Err(e) = declare_dead_letter_queue(connection, topology).await {
        tracing::warn!(queue = %topology.dead_letter, error = %e, "the dead-letter queue is unavailable; syncing goes on, and events to dead-letter wait in the sync queue");
    }
    Ok(())
}

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// A quorum queue's arguments: replicated on the cluster's nodes, durable by nature.
/// A message redelivered `delivery_limit` times (a consumer crashing on it, say) is
/// dead-lettered rather than looping forever (RabbitMQ 4 defaults to 20 and drops the
/// message when no dead-letter exchange is set).
fn quorum_arguments(delivery_limit: i64) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    arguments
}

/// How often a dead letter may be listed (got and handed back, which a quorum queue
/// counts as a delivery) before RabbitMQ would drop it: never, in practice.
const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The dead-letter queue: a quorum queue, so it outlives a node, as the sync queue does.
/// One that already exists is kept as it is: a dead-letter queue declared by an older
/// tandem is a classic queue (docs/scaling.md says how to replace it).
async fn declare_dead_letter_queue(
    connection: &Connection,
    topology: &Topology,
) -> Result<(), lapin::Error> {
    let name = topology.dead_letter.as_str();
    // A passive declare that fails closes its channel, hence a channel for it alone.
    let probe = connection.create_channel().await?;
    let exists = probe
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..DURABLE_QUEUE
            },
            FieldTable::default(),
        )
        .await;
    let channel = match exists {
        Ok(_) => probe,
        Err(e) if !is_not_found(&e) || e.to_string().contains("home node") => return Err(e),
        Err(_) => {
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    name.into(),
                    DURABLE_QUEUE,
                    quorum_arguments(DEAD_LETTER_DELIVERY_LIMIT),
                )
                .await?;
            channel
        }
    };
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The broker's 404: no such queue (or its home node is away).
fn is_not_found(e: &lapin::Error) -> bool {
    e.to_string().contains("NOT_FOUND")
}

/// The broker of a development machine: the local RabbitMQ with its guest account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long to wait for the broker to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP heartbeat: a silent broker is noticed within about two of these.
const HEARTBEAT_SECS: u16 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach RabbitMQ at {url}: {source}")]
    Amqp { url: String, source: lapin::Error },
    #[error("RabbitMQ at {url} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout { url: String },
}

/// The brokers an `AMQP_URL` names: one URL, or the nodes of a cluster as several URLs
/// separated by commas (`amqp://u:p@rabbit-1/%2f,amqp://u:p@rabbit-2/%2f`). A comma in a
/// password must be percent-encoded (`%2C`), as any reserved character in a URL.
pub fn brokers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Connects with a heartbeat and a name the RabbitMQ management UI shows, to the first
/// broker of `url` that answers. Each call starts at the next broker of the list, so the
/// processes spread over a cluster's nodes, and one node that is down costs one refused
/// attempt before the next is tried.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let candidates = brokers(url);
    if candidates.len() <= 1 {
        return connect_one(candidates.first().copied().unwrap_or(url), name).await;
    }
    let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut last = None;
    for i in 0..candidates.len() {
        let candidate = candidates[(start + i) % candidates.len()];
        match connect_one(candidate, name).await {
            Ok(connection) => return Ok(connection),
            Err(e) => {
                tracing::debug!(error = %e, "broker unreachable; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least two candidates were tried"))
}

async fn connect_one(url: &str, name: &str) -> Result<Connection, ConnectError> {
    let url_with_heartbeat = if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat={HEARTBEAT_SECS}")
    } else {
        format!("{url}?heartbeat={HEARTBEAT_SECS}")
    };
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let shown = tandem_serving::telemetry::redact_url(url);
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(&url_with_heartbeat, properties),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(ConnectError::Amqp { url: shown, source }),
        Err(_) => Err(ConnectError::Timeout { url: shown }),
    }
}

/// How long to wait between attempts to reach the broker: from 100 ms, doubling, up to
/// 10 s, with jitter so many clients do not knock in step; forever.
pub fn reconnect_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
}

/// Connects (with [`reconnect_backoff`] between attempts) until it succeeds or
/// `shutdown` is cancelled (then `None`). Each failure is logged and counted.
pub async fn connect_until_up(
    url: &str,
    name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    on_failure: impl Fn(&ConnectError),
) -> Option<Connection> {
    use backon::Retryable;
    let attempt = || connect(url, name);
    let connected =
        attempt
            .retry(reconnect_backoff())
            .notify(|e: &ConnectError, wait: Duration| {
                tracing::warn!(error = %e, retry_in = ?wait, "RabbitMQ unreachable");
                on_failure(e);
            });
    tokio::select! {
        _ = shutdown.cancelled() => None,
        result = connected => result.ok(),
    }
}

/// Resolves when `connection` is no longer usable: it reported an error and is no longer
/// open, or its state left "connected" (checked every second, since a consumer stream
/// alone can stay silent after the broker died).
pub async fn lost(connection: &Connection) -> String {
    let mut events = connection.events_listener();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => match event {
                // lapin reports a channel the broker closed (a refused declare, say) on
                // the connection's events too; only a connection that is no longer open
                // is lost. The channel's owner sees its own failure.
                Some(lapin::Event::Error(e)) if !connection.status().connected() => {
                    return format!("connection error: {e}");
                }
                Some(lapin::Event::Error(e)) => {
                    tracing::debug!(error = %e, "a channel failed; the connection is still open");
                }
                Some(_) => {}
                None => return "connection events ended".to_owned(),
            },
            _ = check.tick() => {
                if !connection.status().connected() {
                    return "connection is no longer open".to_owned();
                }
            }
        }
    }
}

/// The span of one `user.updated` message's `operation` (`send` by the relay, `process`
/// by the worker) on `destination`, with OpenTelemetry's messaging attributes.
pub fn message_span(
    trace: &tandem_serving::trace::TraceContext,
    operation: &'static str,
    destination: &str,
    message_id: &str,
) -> tandem_serving::trace::Span {
    use tandem_serving::trace::SpanKind;
    let (name, kind) = match operation {
        "send" => ("publish user.updated", SpanKind::Producer),
        _ => ("process user.updated", SpanKind::Consumer),
    };
    let mut span = trace.span(name, kind);
    if span.is_recording() {
        span.set("messaging.system", "rabbitmq");
        span.set("messaging.operation.type", operation);
        span.set("messaging.destination.name", destination.to_owned());
        span.set("messaging.rabbitmq.destination.routing_key", USER_UPDATED);
        span.set("messaging.message.id", message_id.to_owned());
    }
    span
}

/// Where an event comes from: the request that caused the change, and its W3C trace
/// context, carried from the gRPC call through the outbox onto the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOrigin {
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// The W3C header names, in gRPC metadata and AMQP headers alike.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

impl EventOrigin {
    /// Just a request id (events made by tools and tests).
    pub fn request(request_id: Option<&str>) -> EventOrigin {
        EventOrigin {
            request_id: request_id.map(str::to_owned),
            ..EventOrigin::default()
        }
    }

    /// The origin a message's headers name.
    pub fn of_message(properties: &BasicProperties) -> EventOrigin {
        EventOrigin {
            request_id: header(properties, tandem::REQUEST_ID),
            traceparent: header(properties, TRACEPARENT),
            tracestate: header(properties, TRACESTATE),
        }
    }

    /// The trace id of `traceparent` (`00-<trace id>-<span>-<flags>`).
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.get(3..35))
    }
}

/// The properties of a `user.updated` message: persistent, JSON, typed, with the event
/// id as message id and the request id and trace context of the change in the headers.
pub fn event_properties(event_id: &str, origin: &EventOrigin, app_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in [
        (tandem::REQUEST_ID, &origin.request_id),
        (TRACEPARENT, &origin.traceparent),
        (TRACESTATE, &origin.tracestate),
    ] {
        if let Some(value) = value {
            headers.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
        }
    }
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2) // persistent: survives a broker restart
        .with_message_id(ShortString::from(event_id))
        .with_type(ShortString::from(USER_UPDATED))
        .with_app_id(ShortString::from(app_id))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

/// How long a publisher confirm may take before the channel is presumed dead: a broker
/// that accepted the connection but stopped answering would otherwise hold a publisher
/// forever.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a publish was not confirmed. In every case the message may not have been stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Refused,
    #[error("the message was unroutable: no queue is bound to take it")]
    Unroutable,
    #[error("the channel is not in confirm mode")]
    NotConfirming,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
}

/// Waits, at most `timeout`, for the broker to confirm one publish.
pub async fn confirmed(confirm: PublisherConfirm, timeout: Duration) -> Result<(), PublishError> {
    match tokio::time::timeout(timeout, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Refused),
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::NotConfirming),
        Ok(Err(e)) => Err(PublishError::Amqp(e)),
        Err(_) => Err(PublishError::Timeout(timeout)),
    }
}

/// Publishes one message on a channel in confirm mode and waits (at most `timeout`) for
/// the broker's confirm. `mandatory`: an unroutable message is an error, not a silent loss.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    timeout: Duration,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = tokio::time::timeout(
        timeout,
        channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        ),
    )
    .await
    .map_err(|_| PublishError::Timeout(timeout))??;
    confirmed(confirm, timeout).await
}

/// A string header of a message, if present.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amqp_url_may_name_every_node_of_a_cluster() {
        assert_eq!(
            brokers("amqp://u:p@rabbit-1:5672/%2f, amqp://u:p@rabbit-2:5672/%2f,"),
            [
                "amqp://u:p@rabbit-1:5672/%2f",
                "amqp://u:p@rabbit-2:5672/%2f"
            ]
        );
        assert_eq!(brokers(DEFAULT_AMQP_URL), [DEFAULT_AMQP_URL]);
    }

    /// The flags' defaults are the topology's defaults: written once, as the constants.
    #[test]
    fn the_flags_default_to_the_default_topology() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            topology: Topology,
        }
        let parsed = <Flags as clap::Parser>::try_parse_from(["test"]).unwrap();
        assert_eq!(parsed.topology, Topology::default());
        let prefixed = Topology::prefixed("t");
        let round_trip = <Flags as clap::Parser>::try_parse_from(
            std::iter::once("test".to_owned()).chain(prefixed.to_args()),
        )
        .unwrap();
        assert_eq!(round_trip.topology, prefixed);
    }

    #[test]
    fn event_messages_carry_their_ids() {
        let origin = EventOrigin {
            request_id: Some("r-1".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        };
        let p = event_properties("e-1", &origin, "user-svc-v2");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("e-1"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(header(&p, "x-request-id").as_deref(), Some("r-1"));
        let back = EventOrigin::of_message(&p);
        assert_eq!(back, origin);
        assert_eq!(back.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }
}
