//! The outbox relay: publishes the `user.updated` events the store recorded, oldest first,
//! with publisher confirms, and removes each from the outbox only once the broker has
//! confirmed it. The API never waits on RabbitMQ: when the broker is away, events wait in
//! the outbox and flow when it is back.
//!
//! Each process (v1 and v2) runs a relay; events are leased to one relay at a time, so in
//! the normal case none is published twice. A relay that dies holding a lease lets it run
//! out, and another publishes those events (a duplicate is possible then; consumers are
//! idempotent by contact version).
//!
//! While the relay is connected, the events its own process writes reach it without a
//! claim: each is written already leased to it and handed over in memory once its change
//! committed ([`Handoff`]). Claiming, a write of its own in the queue behind the API's,
//! was a third of an event's time in the outbox under load (bench/FINDINGS.md §19). What
//! is not handed over (written while the relay was away or its queue full, or leased to
//! a relay that died) is claimed from the outbox as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tandem_messaging::EventOrigin;
use tandem_messaging::Topology;
use tandem_messaging::USER_UPDATED;
use tandem_messaging::amqp::{self as messaging, PublishError};
use tandem_serving::trace::{Span, TraceContext};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::{OutboxEvent, OutboxLease, UserStore};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub amqp_url: String,
    pub topology: Topology,
    /// How long a claimed event stays reserved for this relay.
    pub lease: Duration,
    /// Most events claimed and published at once.
    pub batch: usize,
    /// How often the outbox is checked when nothing wakes the relay (changes made by the
    /// other flavor's process, leases that ran out).
    pub idle_poll: Duration,
    /// Under load (the last batch handed over held more than one event), how long a
    /// hand-over batch waits to fill before it goes out.
    pub linger: Duration,
    /// How long a publisher confirm may take before the channel is presumed dead.
    pub confirm_timeout: Duration,
}

impl RelayConfig {
    pub fn new(amqp_url: String, topology: Topology) -> Self {
        RelayConfig {
            amqp_url,
            topology,
            lease: Duration::from_secs(30),
            batch: 200,
            idle_poll: Duration::from_millis(200),
            linger: Duration::from_millis(2),
            confirm_timeout: messaging::CONFIRM_TIMEOUT,
        }
    }
}

/// The relay's counters, gauges and its one histogram.
#[derive(Clone)]
pub struct RelayMetrics {
    published: Counter,
    /// Events written leased to the relay and handed to it in memory (the rest it claims).
    handed_over: Counter,
    failed: Counter,
    reconnects: Counter,
    connected: Gauge,
    pending: Gauge,
    oldest_age: Gauge,
    /// From a change (its event's occurredAt) to the broker's confirm of the event: the
    /// outbox's share of the sync lag (the worker's `sync_lag_seconds` is the whole of it), so an operator, or
    /// the benchmark, can tell which side of RabbitMQ a slow sync is waiting on.
    publish_lag: Histogram,
    /// How long each step of a batch took: claiming it (a write), publishing it until the
    /// broker confirmed every event, deleting it (a write). Where the outbox's share of the
    /// lag goes.
    steps: Family<StepLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

/// 0.1 ms … ~3.3 s.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl RelayMetrics {
    fn step(&self, step: &'static str, took: Duration) {
        self.steps
            .get_or_create(&StepLabels { step })
            .observe(took.as_secs_f64());
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            published: Counter::default(),
            handed_over: Counter::default(),
            failed: Counter::default(),
            reconnects: Counter::default(),
            connected: Gauge::default(),
            pending: Gauge::default(),
            oldest_age: Gauge::default(),
            // 1 ms … ~65 s: the buckets of the worker's sync lag, so the two compare.
            publish_lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            steps: Family::new_with_constructor(step_histogram),
        }
    }
}

impl RelayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = RelayMetrics::default();
        registry.register(
            "outbox_publish_lag_seconds",
            "From a change (its event's occurredAt) to the broker's confirm of the event",
            m.publish_lag.clone(),
        );
        registry.register(
            "outbox_relay_step_seconds",
            "How long each step of a relay batch took: claim (a write), confirm (publishing until the broker confirmed every event), complete (deleting them, a write)",
            m.steps.clone(),
        );
        registry.register(
            "outbox_published",
            "user.updated events published and confirmed by the broker",
            m.published.clone(),
        );
        registry.register(
            "outbox_handed_over",
            "user.updated events written leased to this process's relay and handed to it without a claim",
            m.handed_over.clone(),
        );
        registry.register("outbox_publish_failures", "Publish attempts that failed (refused, unroutable, unconfirmed); the event stays in the outbox", m.failed.clone());
        registry.register(
            "relay_connect_failures",
            "Failed attempts to reach RabbitMQ",
            m.reconnects.clone(),
        );
        registry.register(
            "relay_connected",
            "1 while the relay holds a confirmed channel to RabbitMQ",
            m.connected.clone(),
        );
        registry.register(
            "outbox_pending",
            "Events in the outbox, not yet confirmed by the broker",
            m.pending.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest event in the outbox",
            m.oldest_age.clone(),
        );
        m
    }
}

pub struct Relay {
    store: Arc<dyn UserStore>,
    config: RelayConfig,
    /// Who holds leases: unique per process run.
    owner: String,
    app_id: String,
    written: Arc<Notify>,
    /// Events written leased to this relay, in commit order ([`Handoff`]).
    handed: tokio::sync::Mutex<mpsc::Receiver<OutboxEvent>>,
    handoff: Handoff,
    metrics: RelayMetrics,
    connected: Arc<AtomicBool>,
}

/// How the API hands the events it writes to its process's relay: while the relay is
/// connected and has room, an event is written already leased to it and, once its change
/// committed, passed to it in memory, so the relay publishes it without claiming it.
#[derive(Clone)]
pub struct Handoff {
    lease: OutboxLease,
    events: mpsc::Sender<OutboxEvent>,
    connected: Arc<AtomicBool>,
    handed_over: Counter,
}

/// A place in the relay's queue, taken before the write: an event written leased to the
/// relay always reaches it, or its place is given back and the write names no relay.
pub struct HandoffSlot<'a> {
    handoff: &'a Handoff,
    permit: mpsc::Permit<'a, OutboxEvent>,
}

impl Handoff {
    /// A place for one event while the relay is connected and its queue has room; `None`
    /// otherwise, and the event is written for whichever relay claims it.
    pub fn reserve(&self) -> Option<HandoffSlot<'_>> {
        if !self.connected.load(Ordering::Relaxed) {
            return None;
        }
        let permit = self.events.try_reserve().ok()?;
        Some(HandoffSlot {
            handoff: self,
            permit,
        })
    }
}

impl HandoffSlot<'_> {
    /// The lease to write the event with.
    pub fn lease(&self) -> &OutboxLease {
        &self.handoff.lease
    }

    /// Passes the event, committed and leased to the relay, to the relay.
    pub fn hand_over(self, event: OutboxEvent) {
        self.permit.send(event);
        self.handoff.handed_over.inc();
    }
}

/// Why a publishing session ended.
enum SessionEnd {
    Shutdown,
    /// The broker went away or misbehaved; `published` says whether the session got
    /// anything through (a healthy session resets the backoff).
    Lost {
        reason: String,
        published: bool,
    },
}

impl Relay {
    pub fn new(
        store: Arc<dyn UserStore>,
        config: RelayConfig,
        app_id: &str,
        written: Arc<Notify>,
        metrics: RelayMetrics,
        connected: Arc<AtomicBool>,
    ) -> Self {
        let owner = format!(
            "{app_id}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        // A few batches: a relay further behind than that gets the rest by claiming.
        let (events, handed) = mpsc::channel(config.batch.max(1) * 4);
        let handoff = Handoff {
            lease: OutboxLease {
                owner: owner.clone(),
                lease: config.lease,
            },
            events,
            connected: connected.clone(),
            handed_over: metrics.handed_over.clone(),
        };
        Relay {
            store,
            config,
            owner,
            app_id: app_id.to_owned(),
            written,
            handed: tokio::sync::Mutex::new(handed),
            handoff,
            metrics,
            connected,
        }
    }

    /// Where the API hands this relay the events it writes.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// Publishes until `shutdown`, reconnecting (with capped backoff) whenever the broker
    /// goes away. lapin does not recover connections reliably by itself, so every
    /// session starts from a fresh connection and channel.
    pub async fn run(self, shutdown: CancellationToken) {
        // The outbox figures matter most while the broker is away, so they are kept up
        // to date apart from the publishing sessions.
        tokio::join!(self.relay(&shutdown), self.watch_outbox(&shutdown));
    }

    async fn watch_outbox(&self, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.refresh_stats().await,
            }
        }
    }

    async fn relay(&self, shutdown: &CancellationToken) {
        use backon::BackoffBuilder;
        let url = self.config.amqp_url.clone();
        let name = format!("tandem {} outbox relay", self.app_id);
        // Pauses between sessions that fail soon after connecting (a broker that accepts
        // and then refuses): growing, so such a broker is not hammered.
        let mut pauses = messaging::reconnect_backoff().build();
        // Only this task reads the hand-over queue. `held`: events taken from it and not
        // yet published (given back when a session ends).
        let mut handed = self.handed.lock().await;
        let mut held = Vec::new();
        loop {
            let metrics = self.metrics.clone();
            let Some(connection) = messaging::connect_until_up(&url, &name, shutdown, |_| {
                metrics.reconnects.inc();
            })
            .await
            else {
                return;
            };
            let end = match self.open_channel(&connection).await {
                Ok(channel) => {
                    tracing::info!(broker = %tandem_serving::telemetry::redact_url(&url), "outbox relay connected");
                    self.set_connected(true);
                    let end = self
                        .session(&connection, &channel, shutdown, &mut handed, &mut held)
                        .await;
                    self.set_connected(false);
                    self.release_handed(&mut handed, &mut held).await;
                    end
                }
                Err(e) => SessionEnd::Lost {
                    reason: format!("cannot set up the channel: {e}"),
                    published: false,
                },
            };
            // Closing politely lets the broker drop the channel at once; if the connection
            // is already gone this fails, which changes nothing.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), connection.close(200, "bye".into()))
                    .await;
            match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost { reason, published } => {
                    if published {
                        pauses = messaging::reconnect_backoff().build();
                    }
                    let pause = pauses.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%reason, retry_in = ?pause, "outbox relay lost RabbitMQ; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.metrics.connected.set(i64::from(up));
    }

    async fn open_channel(&self, connection: &Connection) -> Result<Channel, lapin::Error> {
        let channel = connection.create_channel().await?;
        // Declared from this side too: an event published before any consumer ever ran
        // still lands in the durable queue.
        messaging::declare(connection, &self.config.topology).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    async fn session(
        &self,
        connection: &Connection,
        channel: &Channel,
        shutdown: &CancellationToken,
        handed: &mut mpsc::Receiver<OutboxEvent>,
        held: &mut Vec<OutboxEvent>,
    ) -> SessionEnd {
        // The delete of the last confirmed batch, still running (see `publish_batch`).
        let mut deleting = None;
        let end = self
            .publish_while_connected(connection, channel, shutdown, handed, held, &mut deleting)
            .await;
        finish_delete(&mut deleting).await;
        end
    }

    async fn publish_while_connected(
        &self,
        connection: &Connection,
        channel: &Channel,
        shutdown: &CancellationToken,
        handed: &mut mpsc::Receiver<OutboxEvent>,
        held: &mut Vec<OutboxEvent>,
        deleting: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> SessionEnd {
        let lost = messaging::lost(connection);
        tokio::pin!(lost);
        let mut published = false;
        // Events in the last hand-over batch.
        let mut last_handed = 0;
        loop {
            // What is due in the outbox first (it is older), then what was handed over;
            // the cheap read inside `publish_due` keeps claims from starving under a
            // steady stream of hand-overs.
            let claimed = match progress(self.publish_due(channel, deleting).await) {
                Ok(claimed) => claimed,
                Err(reason) => return SessionEnd::Lost { reason, published },
            };
            let handed_over = self
                .publish_handed(channel, handed, held, last_handed > 1, deleting)
                .await;
            last_handed = handed_over.as_ref().copied().unwrap_or(0);
            let handed_over = match progress(handed_over) {
                Ok(handed_over) => handed_over,
                Err(reason) => return SessionEnd::Lost { reason, published },
            };
            if claimed || handed_over {
                published = true;
                continue; // more may be due
            }
            tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                reason = &mut lost => return SessionEnd::Lost { reason, published },
                event = handed.recv() => held.extend(event),
                _ = self.written.notified() => {}
                _ = tokio::time::sleep(self.config.idle_poll) => {}
            }
        }
    }

    /// Publishes what was handed over, up to a batch; returns how many. Under load
    /// (`linger`: the last such batch held more than one event) the batch first gathers
    /// for up to `config.linger`, because every hop after the relay pays per batch, not
    /// per event (a confirm round, the worker's ApplyUserContacts call and its ack frame,
    /// the quorum queue's settle), as the claim's wait once made them gather. A lone event
    /// goes at once (bench/FINDINGS.md §19).
    async fn publish_handed(
        &self,
        channel: &Channel,
        handed: &mut mpsc::Receiver<OutboxEvent>,
        held: &mut Vec<OutboxEvent>,
        linger: bool,
        deleting: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<usize, Failure> {
        let until = tokio::time::Instant::now() + self.config.linger;
        while held.len() < self.config.batch {
            if let Ok(event) = handed.try_recv() {
                held.push(event);
                continue;
            }
            if !linger || held.is_empty() {
                break;
            }
            match tokio::time::timeout_at(until, handed.recv()).await {
                Ok(Some(event)) => held.push(event),
                _ => break,
            }
        }
        if held.is_empty() {
            return Ok(0);
        }
        // Each change's request hands its event over when it wakes after the commit, so
        // two changes committed together may arrive in either order; their stamps, taken
        // in the one writer, give the commit order back.
        held.sort_by_key(|e| e.created_at);
        self.publish_batch(channel, std::mem::take(held), deleting)
            .await
    }

    /// Gives back the events handed over and not published, once the session is over, so
    /// any relay can claim them at once rather than when their lease runs out. If that
    /// fails they wait for the lease: later, never lost.
    async fn release_handed(
        &self,
        handed: &mut mpsc::Receiver<OutboxEvent>,
        held: &mut Vec<OutboxEvent>,
    ) {
        let mut ids: Vec<String> = held.drain(..).map(|e| e.event_id).collect();
        while let Ok(event) = handed.try_recv() {
            ids.push(event.event_id);
        }
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.release_outbox(&self.owner, &ids).await {
            tracing::warn!(error = %e, events = ids.len(), "cannot release handed-over events; they are claimed when their lease runs out");
        }
    }

    async fn refresh_stats(&self) {
        if let Ok(stats) = self.store.outbox_stats().await {
            self.metrics.pending.set(stats.pending as i64);
            let age = stats
                .oldest
                .map(|t| (chrono::Utc::now() - t).num_seconds().max(0))
                .unwrap_or(0);
            self.metrics.oldest_age.set(age);
        }
    }

    /// Claims due events and publishes them; returns how many it claimed.
    async fn publish_due(
        &self,
        channel: &Channel,
        deleting: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<usize, Failure> {
        let claiming = std::time::Instant::now();
        let events = self
            .store
            .claim_outbox(&self.owner, self.config.lease, self.config.batch)
            .await
            .map_err(|e| Failure::Store(e.to_string()))?;
        if events.is_empty() {
            return Ok(0);
        }
        self.metrics.step("claim", claiming.elapsed());
        self.publish_batch(channel, events, deleting).await
    }

    /// Publishes `events`, leased to this relay; returns how many there were. The
    /// confirmed ones are deleted by a task left in `deleting`, so the next batch is not
    /// held up by it (the delete and the next claim can share one group commit); at most
    /// one such delete runs. The others are released for the next attempt.
    async fn publish_batch(
        &self,
        channel: &Channel,
        events: Vec<OutboxEvent>,
        deleting: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<usize, Failure> {
        let publishing = std::time::Instant::now();
        let (confirmed, failed, broken) = self.publish(channel, &events).await;
        self.metrics.step("confirm", publishing.elapsed());
        let confirmed_ids: Vec<String> = confirmed.iter().map(|e| e.event_id.clone()).collect();
        let failed_ids: Vec<String> = failed.iter().map(|e| e.event_id.clone()).collect();
        self.metrics.published.inc_by(confirmed_ids.len() as u64);
        let now = chrono::Utc::now();
        for e in &confirmed {
            let lag = (now - e.created_at).to_std().unwrap_or_default();
            self.metrics.publish_lag.observe(lag.as_secs_f64());
        }
        self.metrics.failed.inc_by(failed_ids.len() as u64);
        if !confirmed_ids.is_empty() {
            for e in &confirmed {
                tracing::debug!(event_id = %e.event_id, user_id = %e.user_id, version = e.version, request_id = e.origin.request_id.as_deref().unwrap_or("-"), trace_id = e.origin.trace_id().unwrap_or("-"), "event published");
            }
            // Until deleted, the events stay leased to this relay, so no claim takes them
            // again. If the delete fails they are published again once the lease runs
            // out: a duplicate, never a loss.
            finish_delete(deleting).await;
            let (store, metrics) = (self.store.clone(), self.metrics.clone());
            *deleting = Some(tokio::spawn(async move {
                let completing = std::time::Instant::now();
                match store.complete_outbox(&confirmed_ids).await {
                    Ok(()) => metrics.step("complete", completing.elapsed()),
                    Err(e) => tracing::warn!(
                        error = %e,
                        events = confirmed_ids.len(),
                        "cannot delete published events from the outbox; they will be published again when their lease runs out (a duplicate, never a loss)"
                    ),
                }
            }));
        }
        if !failed_ids.is_empty() {
            let _ = self.store.release_outbox(&self.owner, &failed_ids).await;
        }
        match broken {
            Some(reason) => Err(Failure::Channel(reason)),
            None if !failed_ids.is_empty() => Err(Failure::Channel(format!(
                "{} events were not confirmed",
                failed_ids.len()
            ))),
            None => Ok(events.len()),
        }
    }

    /// Publishes `events` in order, then waits for each confirm in order. Returns the
    /// confirmed events, the others, and why the channel broke, if it did.
    async fn publish<'a>(
        &self,
        channel: &Channel,
        events: &'a [OutboxEvent],
    ) -> (Vec<&'a OutboxEvent>, Vec<&'a OutboxEvent>, Option<String>) {
        let mut pending = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        let mut broken = None;
        for event in events {
            if broken.is_some() {
                failed.push(event);
                continue;
            }
            // The publish is a span of the trace that made the change; the consumer's
            // parent is this span, so the message carries its traceparent.
            let (properties, span) = match event.origin.traceparent.as_deref() {
                Some(parent) => {
                    let trace =
                        TraceContext::continued(Some(parent), event.origin.tracestate.as_deref());
                    let span = messaging::message_span(
                        &trace,
                        "send",
                        &self.config.topology.exchange,
                        &event.event_id,
                    );
                    let origin = EventOrigin {
                        request_id: event.origin.request_id.clone(),
                        traceparent: Some(trace.traceparent()),
                        tracestate: trace.tracestate,
                    };
                    (
                        messaging::event_properties(&event.event_id, &origin, &self.app_id),
                        span,
                    )
                }
                None => (
                    messaging::event_properties(&event.event_id, &event.origin, &self.app_id),
                    Span::none(),
                ),
            };
            // mandatory: an event no queue would take comes back rather than vanishing.
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            match channel
                .basic_publish(
                    self.config.topology.exchange.as_str().into(),
                    USER_UPDATED.into(),
                    options,
                    event.payload.as_bytes(),
                    properties,
                )
                .await
            {
                Ok(confirm) => pending.push((event, confirm, span)),
                Err(e) => {
                    let reason = format!("publish failed: {e}");
                    let mut span = span;
                    span.fail(reason.clone());
                    broken = Some(reason);
                    failed.push(event);
                }
            }
        }
        let mut confirmed = Vec::with_capacity(pending.len());
        for (event, confirm, mut span) in pending {
            if broken.is_some() {
                span.fail("not confirmed: the channel broke");
                failed.push(event);
                continue;
            }
            // A confirm can hang forever when the channel dies under it; bound the wait.
            match messaging::confirmed(confirm, self.config.confirm_timeout).await {
                Ok(()) => confirmed.push(event),
                Err(PublishError::Unroutable) => {
                    tracing::error!(event_id = %event.event_id, exchange = %self.config.topology.exchange, "event was unroutable (no queue bound); it stays in the outbox");
                    span.fail("unroutable");
                    failed.push(event);
                }
                Err(PublishError::Refused) => {
                    tracing::warn!(event_id = %event.event_id, "broker refused the event; it stays in the outbox");
                    span.fail("refused by the broker");
                    failed.push(event);
                }
                // The channel is unusable: the rest wait for a new session.
                Err(e) => {
                    span.fail(e.to_string());
                    broken = Some(e.to_string());
                    failed.push(event);
                }
            }
        }
        (confirmed, failed, broken)
    }
}

/// Waits for the delete `publish_due` left running, if any.
async fn finish_delete(deleting: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(delete) = deleting.take() {
        // A panic in it was the store's; the events stay leased, as after a failure.
        let _ = delete.await;
    }
}

/// Whether a step published anything, or why the session must end (the channel broke).
/// A store failure is logged and the session goes on: the events wait in the outbox.
fn progress(step: Result<usize, Failure>) -> Result<bool, String> {
    match step {
        Ok(n) => Ok(n > 0),
        Err(Failure::Channel(reason)) => Err(reason),
        Err(Failure::Store(reason)) => {
            tracing::warn!(%reason, "outbox relay cannot use the outbox");
            Ok(false)
        }
    }
}

enum Failure {
    /// The channel or connection is unusable: start a new session.
    Channel(String),
    /// The outbox could not be read or written.
    Store(String),
}
