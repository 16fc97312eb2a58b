//! The consuming side: deliveries are applied to order-svc in batches, each acknowledged
//! only after its change is in order-svc. Transient failures are retried with backoff while the message is held
//! (so nothing is lost and nothing spins); events that can never be applied go to the
//! dead-letter queue with the reason; a lost connection is replaced by a new one.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use tandem::domain::UserId;
use tandem::proto::order::v1::apply_user_contact_result::Outcome;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem::proto::order::v1::{ApplyUserContactRequest, ApplyUserContactsRequest};
use tandem_messaging::UserUpdated;
use tandem_messaging::amqp as messaging;
use tandem_serving::trace::{Span, TRACEPARENT, TRACESTATE, TraceContext};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;
use tracing::Instrument;

use crate::Config;
use crate::acks::AckWindow;
use crate::metrics::WorkerMetrics;

/// Headers a dead-lettered message carries, besides its original ones.
pub const REASON_HEADER: &str = "x-tandem-dead-letter-reason";
pub const FAILED_AT_HEADER: &str = "x-tandem-dead-lettered-at";

/// What the handling of one delivery needs.
pub(crate) struct Context {
    pub config: Config,
    pub orders: OrderServiceClient<GrpcChannel>,
    pub metrics: WorkerMetrics,
    /// Set once order-svc answered ApplyUserContacts with UNIMPLEMENTED (an older
    /// version): from then on each event is its own ApplyUserContact call.
    pub single_calls_only: AtomicBool,
}

/// Why a consuming session ended.
pub(crate) enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Batches being applied at once: one in flight while the next gathers (and a second
/// may start while the first waits on order-svc), so batches grow with the load and a
/// lone event is applied at once.
const BATCHES_IN_FLIGHT: usize = 2;

/// Consumes until `shutdown` or until the connection is lost.
pub(crate) async fn session(
    ctx: &Arc<Context>,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let topology = &ctx.config.topology;
    let setup = async {
        let channel = connection.create_channel().await?;
        messaging::declare(connection, topology).await?;
        // At most `prefetch` unacknowledged deliveries in hand: bounded memory, and the
        // rest wait safely in the queue.
        channel
            .basic_qos(ctx.config.prefetch, BasicQosOptions::default())
            .await?;
        // A second channel, in confirm mode, to dead-letter with a reason.
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                topology.queue.as_str().into(),
                format!("sync-worker-{}", uuid::Uuid::new_v4().simple())
                    .as_str()
                    .into(),
                // Manual acks: a delivery stays the broker's until we say it is applied.
                BasicConsumeOptions {
                    no_ack: false,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, dead_letters, consumer))
    };
    let (channel, dead_letters, mut consumer) = match setup.await {
        Ok(parts) => parts,
        Err(e) => return SessionEnd::Lost(format!("cannot set up consuming: {e}")),
    };
    ctx.metrics.connected.set(1);
    tracing::info!(queue = %topology.queue, prefetch = ctx.config.prefetch, batch = ctx.config.batch, "consuming");

    // Cancelled when shutdown has waited long enough for deliveries in hand.
    let abandon = CancellationToken::new();
    let mut hand = Hand {
        waiting: Vec::new(),
        batches: JoinSet::new(),
        settle: Arc::new(Settle {
            ctx: ctx.clone(),
            dead_letters: dead_letters.clone(),
            acks: AckWindow::new(channel.clone(), ctx.metrics.clone()),
        }),
        abandon: abandon.clone(),
    };
    let lost = messaging::lost(connection);
    tokio::pin!(lost);
    let end = loop {
        hand.start_batches();
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            reason = &mut lost => break SessionEnd::Lost(reason),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    hand.push(delivery);
                    // Whatever else the client already holds joins the same batch.
                    if let Err(end) = hand.take_ready(&mut consumer) {
                        break end;
                    }
                }
                Some(Err(e)) => break SessionEnd::Lost(format!("consumer failed: {e}")),
                None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
            },
            Some(_) = hand.batches.join_next(), if !hand.batches.is_empty() => {}
        }
    };
    ctx.metrics.connected.set(0);
    if let SessionEnd::Shutdown = end {
        // Stop the broker sending more, then finish everything it already sent (for a
        // while): those in hand, and those still in the client's buffer, which would
        // otherwise go back to the queue marked redelivered. The stream ends once the
        // broker confirms the cancel, after the last delivery it sent.
        let _ = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        tracing::info!(
            in_hand = hand.len(),
            timeout = ?ctx.config.drain_timeout,
            "stopping: finishing the deliveries in hand"
        );
        let drained = tokio::time::timeout(ctx.config.drain_timeout, async {
            let mut sent = true;
            while sent || hand.len() > 0 {
                hand.start_batches();
                tokio::select! {
                    delivery = consumer.next(), if sent => match delivery {
                        Some(Ok(delivery)) => hand.push(delivery),
                        _ => sent = false,
                    },
                    Some(_) = hand.batches.join_next(), if !hand.batches.is_empty() => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = hand.len(),
                "deliveries still in hand after the drain timeout; handing them back"
            );
            abandon.cancel();
            while hand.batches.join_next().await.is_some() {}
            // Never started: the broker redelivers them once the channel closes.
            hand.waiting.clear();
        }
        let _ = channel.close(200, "shutting down".into()).await;
        let _ = dead_letters.close(200, "shutting down".into()).await;
    } else {
        // The connection is gone: acks cannot reach the broker any more, which will
        // redeliver what was in hand. Stop those tasks now.
        abandon.cancel();
        hand.batches.abort_all();
    }
    end
}

/// The deliveries a session holds: those waiting for a batch, and the batches running.
struct Hand {
    waiting: Vec<Delivery>,
    /// Each task settles every delivery of its batch (ack, dead-letter or hand back).
    batches: JoinSet<()>,
    settle: Arc<Settle>,
    abandon: CancellationToken,
}

impl Hand {
    fn len(&self) -> usize {
        self.waiting.len() + self.batches.len()
    }

    /// Takes a delivery into hand (counted as it arrives, whenever its batch starts).
    fn push(&mut self, delivery: Delivery) {
        let ctx = &self.settle.ctx;
        ctx.metrics.consumed.inc();
        if delivery.redelivered {
            ctx.metrics.redelivered.inc();
        }
        self.settle.acks.received(delivery.delivery_tag);
        self.waiting.push(delivery);
    }

    /// Starts batches from the waiting deliveries while a slot is free.
    fn start_batches(&mut self) {
        while !self.waiting.is_empty() && self.batches.len() < BATCHES_IN_FLIGHT {
            let n = self.waiting.len().min(self.settle.ctx.config.batch);
            let batch: Vec<Delivery> = self.waiting.drain(..n).collect();
            let settle = self.settle.clone();
            let abandon = self.abandon.clone();
            self.batches
                .spawn(async move { handle_batch(&settle, batch, &abandon).await });
        }
    }

    /// Moves the deliveries the consumer can give without waiting into `waiting`.
    fn take_ready(&mut self, consumer: &mut lapin::Consumer) -> Result<(), SessionEnd> {
        use futures::FutureExt;
        while self.waiting.len() < self.settle.ctx.config.batch {
            match consumer.next().now_or_never() {
                None => return Ok(()),
                Some(Some(Ok(delivery))) => self.push(delivery),
                Some(Some(Err(e))) => {
                    return Err(SessionEnd::Lost(format!("consumer failed: {e}")));
                }
                Some(None) => {
                    return Err(SessionEnd::Lost("the broker cancelled the consumer".into()));
                }
            }
        }
        Ok(())
    }
}

/// What a session's batches share to settle their deliveries: the dead-letter channel and
/// the consuming channel's ack window (one ack settles many).
struct Settle {
    ctx: Arc<Context>,
    dead_letters: Channel,
    acks: AckWindow,
}

/// A parsed delivery waiting to be applied, with what its handling is followed by.
struct Held {
    delivery: Delivery,
    update: UserUpdated,
    request_id: String,
    trace: TraceContext,
    /// The OTLP span of this event's handling, child of the relay's publish.
    trace_span: Span,
    /// The log span of this event's handling.
    log_span: tracing::Span,
}

/// Handles a batch: every delivery ends exactly one of acked (applied, or superseded by
/// a newer version of its user that was), dead-lettered (alone, with its reason), or
/// handed back.
///
/// The newest version of each user goes to order-svc in one ApplyUserContacts call
/// (one store write); the older versions of a user whose newest was applied are acked
/// as superseded, since applying them could change nothing. When order-svc refuses one
/// user's newest, that one is dead-lettered and the user's older versions go in the
/// next round, so a poison event takes nothing else with it.
async fn handle_batch(settle: &Settle, deliveries: Vec<Delivery>, abandon: &CancellationToken) {
    let ctx = &*settle.ctx;
    let mut held = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        if let Some(h) = receive(settle, delivery).await {
            held.push(h);
        }
    }
    ctx.metrics.batch_size.observe(held.len() as f64);
    while !held.is_empty() {
        let (round, mut rest) = newest_per_user(held);
        let applied = tokio::select! {
            applied = apply_round(ctx, &round) => applied,
            _ = abandon.cancelled() => {
                for h in round.into_iter().chain(rest) {
                    hand_back(settle, h).await;
                }
                return;
            }
        };
        let results = match applied {
            Ok(results) => results,
            Err(failure) => {
                // The call itself failed for good: every event in hand goes, each with the
                // reason, to the dead-letter queue (from where `dlq replay` brings them).
                let reason = failure.to_string();
                for mut h in round.into_iter().chain(rest) {
                    h.trace_span.fail(format!("dead-lettered: {reason}"));
                    let log_span = h.log_span.clone();
                    dead_letter(settle, &h.delivery, &reason)
                        .instrument(log_span)
                        .await;
                }
                return;
            }
        };
        let mut applied = Vec::with_capacity(round.len() + rest.len());
        for (mut h, result) in round.into_iter().zip(results) {
            match result {
                Ok((matched, modified)) => {
                    let user_id = h.update.contact.user_id;
                    let (superseded, kept): (Vec<Held>, Vec<Held>) = rest
                        .into_iter()
                        .partition(|other| other.update.contact.user_id == user_id);
                    rest = kept;
                    applied.push(Applied {
                        held: h,
                        matched,
                        modified,
                        superseded: false,
                    });
                    applied.extend(superseded.into_iter().map(|older| Applied {
                        held: older,
                        matched: 0,
                        modified: 0,
                        superseded: true,
                    }));
                }
                Err(reason) => {
                    h.trace_span.fail(format!("dead-lettered: {reason}"));
                    let log_span = h.log_span.clone();
                    dead_letter(settle, &h.delivery, &reason)
                        .instrument(log_span)
                        .await;
                }
            }
        }
        acknowledge(settle, applied).await;
        held = rest;
    }
}

/// Parses a delivery; one that cannot be parsed is dead-lettered here.
async fn receive(settle: &Settle, delivery: Delivery) -> Option<Held> {
    let ctx = &*settle.ctx;
    // An event from an old or foreign producer may carry no request id: give its handling
    // a fresh one, so its log lines and the ApplyUserContact call can still be followed.
    let origin = messaging::EventOrigin::of_message(&delivery.properties);
    let request_id = origin
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    // Handling the event is a span of the trace that made the change, child of the
    // relay's publish; the order-svc call's parent is this span.
    let trace =
        TraceContext::continued(origin.traceparent.as_deref(), origin.tracestate.as_deref());
    let mut trace_span =
        messaging::message_span(&trace, "process", &ctx.config.topology.queue, &message_id);
    trace_span.set("tandem.redelivered", delivery.redelivered);
    let log_span = tracing::info_span!(
        "event",
        event_id = %message_id,
        request_id = %request_id,
        trace_id = %trace.trace_id_hex(),
        redelivered = delivery.redelivered
    );
    match UserUpdated::parse(&delivery.data) {
        Ok(update) => Some(Held {
            delivery,
            update,
            request_id,
            trace,
            trace_span,
            log_span,
        }),
        Err(reason) => {
            trace_span.fail(format!("dead-lettered: {reason}"));
            dead_letter(settle, &delivery, &reason)
                .instrument(log_span)
                .await;
            None
        }
    }
}

/// Splits `held` into the newest event of each user (in arrival order) and the rest.
fn newest_per_user(held: Vec<Held>) -> (Vec<Held>, Vec<Held>) {
    let mut newest: HashMap<UserId, usize> = HashMap::with_capacity(held.len());
    for (i, h) in held.iter().enumerate() {
        let contact = &h.update.contact;
        newest
            .entry(contact.user_id)
            .and_modify(|best| {
                if contact.version > held[*best].update.contact.version {
                    *best = i;
                }
            })
            .or_insert(i);
    }
    let mut round = Vec::with_capacity(newest.len());
    let mut rest = Vec::new();
    for (i, h) in held.into_iter().enumerate() {
        if newest.get(&h.update.contact.user_id) == Some(&i) {
            round.push(h);
        } else {
            rest.push(h);
        }
    }
    (round, rest)
}

/// An event whose change is in order-svc now: applied with these counts, or
/// `superseded` by a newer version of its user that was.
struct Applied {
    held: Held,
    matched: u64,
    modified: u64,
    superseded: bool,
}

/// Acknowledges a round's applied events together (one ack frame, sent once every
/// earlier delivery is settled too), and counts and logs each.
async fn acknowledge(settle: &Settle, applied: Vec<Applied>) {
    let ctx = &*settle.ctx;
    let tags = applied.iter().map(|a| a.held.delivery.delivery_tag);
    if let Err(e) = settle.acks.ack(tags).await {
        // Applied but not acknowledged: they come again and change nothing.
        tracing::warn!(error = %e, events = applied.len(), "ack failed; the events will be redelivered (harmless)");
    }
    let now = chrono::Utc::now();
    for Applied {
        held: h,
        matched,
        modified,
        superseded,
    } in applied
    {
        let _log = h.log_span.enter();
        ctx.metrics.applied.inc();
        if superseded {
            ctx.metrics.superseded.inc();
        }
        ctx.metrics.orders_modified.inc_by(modified);
        let lag = now - h.update.occurred_at;
        ctx.metrics
            .lag
            .observe(lag.to_std().unwrap_or_default().as_secs_f64());
        let contact = &h.update.contact;
        if superseded {
            tracing::info!(user_id = %contact.user_id, version = contact.version, "event superseded by a newer version of its user, which was applied");
        } else {
            tracing::info!(user_id = %contact.user_id, version = contact.version, matched, modified, "event applied");
        }
    }
}

/// Hands a delivery back to the queue unprocessed (shutdown ran out of time).
async fn hand_back(settle: &Settle, h: Held) {
    settle.ctx.metrics.requeued.inc();
    let requeue = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    let nack = h.delivery.acker.nack(requeue);
    if let Err(e) = settle
        .acks
        .settle_alone(h.delivery.delivery_tag, nack)
        .instrument(h.log_span.clone())
        .await
    {
        let _log = h.log_span.enter();
        tracing::warn!(error = %e, "could not hand the delivery back; the broker will redeliver it");
    }
}

/// Whether order-svc refused the event for good: the event itself is wrong (a bad field,
/// a rule it breaks), so trying again can never help.
fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange
    )
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
enum ApplyFailure {
    #[error("order-svc refused the event: {:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error(
        "order-svc could not apply the event in {attempts} attempts over {elapsed:?} (the retry budget is {budget:?}); last: {:?}: {}",
        .last.code(),
        .last.message()
    )]
    GaveUp {
        attempts: u64,
        elapsed: Duration,
        budget: Duration,
        last: tonic::Status,
    },
}

/// What became of one event of a round: applied (orders matched, modified), or why it
/// can never be.
type ItemResult = Result<(u64, u64), String>;

/// Applies a round (at most one event per user): one ApplyUserContacts call, or, against
/// an order-svc that predates it, one ApplyUserContact per event.
async fn apply_round(ctx: &Context, round: &[Held]) -> Result<Vec<ItemResult>, ApplyFailure> {
    use std::sync::atomic::Ordering;
    if !ctx.single_calls_only.load(Ordering::Relaxed) {
        match apply_batch(ctx, round).await {
            Err(ApplyFailure::Refused(status)) if status.code() == Code::Unimplemented => {
                tracing::warn!(
                    "order-svc has no ApplyUserContacts (an older version); applying one event per call"
                );
                ctx.single_calls_only.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    let results = futures::future::join_all(round.iter().map(|h| async move {
        apply_one(ctx, h)
            .instrument(h.log_span.clone())
            .await
            .map_err(|failure| failure.to_string())
    }))
    .await;
    Ok(results)
}

/// One ApplyUserContacts call for the round, retried as a whole on transient failures.
async fn apply_batch(ctx: &Context, round: &[Held]) -> Result<Vec<ItemResult>, ApplyFailure> {
    let request = ApplyUserContactsRequest {
        contacts: round.iter().map(|h| contact_request(&h.update)).collect(),
    };
    // The call follows the first event's request and trace (a call has one parent).
    let first = &round[0];
    let reply = with_retries(
        ctx,
        // UNIMPLEMENTED here means an older order-svc: fall back at once, do not retry.
        |code| code != Code::Unimplemented,
        || {
            let mut client = ctx.orders.clone();
            let call = outgoing(ctx, request.clone(), &first.request_id, &first.trace);
            async move { client.apply_user_contacts(call).await }
        },
    )
    .instrument(first.log_span.clone())
    .await?;
    if reply.results.len() != round.len() {
        // Not a reply this worker understands; treat as a refusal of the whole call.
        return Err(ApplyFailure::Refused(tonic::Status::internal(format!(
            "ApplyUserContacts answered {} results for {} contacts",
            reply.results.len(),
            round.len()
        ))));
    }
    Ok(reply
        .results
        .into_iter()
        .map(|result| match result.outcome {
            Some(Outcome::Applied(applied)) => Ok((
                applied.matched_count.max(0) as u64,
                applied.modified_count.max(0) as u64,
            )),
            Some(Outcome::Refused(refused)) => {
                Err(format!("order-svc refused the event: {}", refused.message))
            }
            None => Err("order-svc answered no outcome for the event".into()),
        })
        .collect())
}

/// One ApplyUserContact call, retrying any failure but a permanent refusal.
async fn apply_one(ctx: &Context, h: &Held) -> Result<(u64, u64), ApplyFailure> {
    let request = contact_request(&h.update);
    let reply = with_retries(
        ctx,
        |_| true,
        || {
            let mut client = ctx.orders.clone();
            let call = outgoing(ctx, request.clone(), &h.request_id, &h.trace);
            async move { client.apply_user_contact(call).await }
        },
    )
    .await?;
    Ok((
        reply.matched_count.max(0) as u64,
        reply.modified_count.max(0) as u64,
    ))
}

fn contact_request(update: &UserUpdated) -> ApplyUserContactRequest {
    let contact = &update.contact;
    ApplyUserContactRequest {
        user_id: contact.user_id.to_string(),
        contact_version: contact.version,
        emails: contact.emails.to_strings(),
        delivery_address: Some(contact.delivery_address.to_proto()),
    }
}

/// A call to order-svc carrying the request id, the trace (this event's span as the
/// parent) and the deadline.
fn outgoing<T>(
    ctx: &Context,
    message: T,
    request_id: &str,
    trace: &TraceContext,
) -> tonic::Request<T> {
    let mut call = tandem_serving::grpc::request_with_id(message, request_id);
    if let Ok(value) = trace.traceparent().parse() {
        call.metadata_mut().insert(TRACEPARENT, value);
    }
    if let Some(Ok(value)) = trace.tracestate.as_deref().map(str::parse) {
        call.metadata_mut().insert(TRACESTATE, value);
    }
    call.set_timeout(ctx.config.apply_timeout);
    call
}

/// Runs `attempt` until it succeeds, order-svc refuses for good (a permanent code, or
/// one `retryable` rejects), or the retry budget is spent; with capped, jittered
/// exponential backoff between tries.
async fn with_retries<T, F, Fut>(
    ctx: &Context,
    retryable: impl Fn(Code) -> bool,
    attempt: F,
) -> Result<T, ApplyFailure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(ctx.config.retry_max_delay)
        .with_jitter()
        .without_max_times();
    let started = std::time::Instant::now();
    let budget = ctx.config.retry_budget;
    let retries = std::sync::atomic::AtomicU64::new(0);
    let reply = attempt
        .retry(backoff)
        .when(|status: &tonic::Status| {
            !is_permanent(status.code()) && retryable(status.code()) && started.elapsed() < budget
        })
        .notify(|status: &tonic::Status, wait: Duration| {
            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.metrics.retried.inc();
            tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?wait, "order-svc could not apply the event; retrying");
        })
        .await
        .map_err(|last| {
            if is_permanent(last.code()) || !retryable(last.code()) {
                ApplyFailure::Refused(last)
            } else {
                ApplyFailure::GaveUp {
                    attempts: retries.load(std::sync::atomic::Ordering::Relaxed) + 1,
                    elapsed: started.elapsed(),
                    budget,
                    last,
                }
            }
        })?;
    Ok(reply.into_inner())
}

/// Moves a delivery to the dead-letter exchange with `reason` in its headers, then acks
/// it. If that publish is not confirmed, the delivery is rejected instead, and RabbitMQ
/// dead-letters it itself (without our reason header, which the log line keeps).
async fn dead_letter(settle: &Settle, delivery: &Delivery, reason: &str) {
    let (ctx, dead_letters) = (&*settle.ctx, &settle.dead_letters);
    tracing::error!(%reason, "event cannot be applied; dead-lettering it");
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        FAILED_AT_HEADER.into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().as_str().into()),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let published = messaging::publish_confirmed(
        dead_letters,
        &ctx.config.topology.dead_letter,
        delivery.routing_key.as_str(),
        &delivery.data,
        properties,
        messaging::CONFIRM_TIMEOUT,
    )
    .await;
    let confirmed = published.is_ok();
    let tag = delivery.delivery_tag;
    let settled = if confirmed {
        ctx.metrics.dead_lettered.inc();
        settle.acks.ack([tag]).await.map(|()| true)
    } else {
        if let Err(e) = &published {
            tracing::warn!(error = %e, "the dead-letter publish was not confirmed; rejecting so RabbitMQ dead-letters it");
        }
        ctx.metrics.dead_lettered.inc();
        let reject = delivery.acker.reject(BasicRejectOptions { requeue: false });
        settle.acks.settle_alone(tag, reject).await
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle the dead-lettered delivery; it will come again");
    }
}
