//! The consuming side: every delivery is applied to order-svc and acknowledged only after
//! that succeeded. Transient failures are retried with backoff while the message is held
//! (so nothing is lost and nothing spins); events that can never be applied go to the
//! dead-letter queue with the reason; a lost connection is replaced by a new one.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tandem::proto::order::v1::ApplyUserContactRequest;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem_messaging::UserUpdated;
use tandem_messaging::amqp as messaging;
use tandem_serving::trace::{TRACEPARENT, TRACESTATE, TraceContext};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;
use tracing::Instrument;

use crate::Config;
use crate::metrics::WorkerMetrics;

/// Headers a dead-lettered message carries, besides its original ones.
pub const REASON_HEADER: &str = "x-tandem-dead-letter-reason";
pub const FAILED_AT_HEADER: &str = "x-tandem-dead-lettered-at";

/// What the handling of one delivery needs.
pub(crate) struct Context {
    pub config: Config,
    pub orders: OrderServiceClient<GrpcChannel>,
    pub metrics: WorkerMetrics,
}

/// Why a consuming session ended.
pub(crate) enum SessionEnd {
    Shutdown,
    Lost(String),
}

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
    tracing::info!(queue = %topology.queue, prefetch = ctx.config.prefetch, "consuming");

    // Cancelled when shutdown has waited long enough for deliveries in hand.
    let abandon = CancellationToken::new();
    let mut in_hand = JoinSet::new();
    let lost = messaging::lost(connection);
    tokio::pin!(lost);
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            reason = &mut lost => break SessionEnd::Lost(reason),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => take(&mut in_hand, ctx, &dead_letters, &abandon, delivery),
                Some(Err(e)) => break SessionEnd::Lost(format!("consumer failed: {e}")),
                None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
            },
            Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
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
            in_hand = in_hand.len(),
            timeout = ?ctx.config.drain_timeout,
            "stopping: finishing the deliveries in hand"
        );
        let drained = tokio::time::timeout(ctx.config.drain_timeout, async {
            let mut sent = true;
            while sent || !in_hand.is_empty() {
                tokio::select! {
                    delivery = consumer.next(), if sent => match delivery {
                        Some(Ok(delivery)) => take(&mut in_hand, ctx, &dead_letters, &abandon, delivery),
                        _ => sent = false,
                    },
                    Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_hand.len(),
                "deliveries still in hand after the drain timeout; handing them back"
            );
            abandon.cancel();
            while in_hand.join_next().await.is_some() {}
        }
        let _ = channel.close(200, "shutting down".into()).await;
        let _ = dead_letters.close(200, "shutting down".into()).await;
    } else {
        // The connection is gone: acks cannot reach the broker any more, which will
        // redeliver what was in hand. Stop those tasks now.
        abandon.cancel();
        in_hand.abort_all();
    }
    end
}

/// Starts handling a delivery alongside the others in hand.
fn take(
    in_hand: &mut JoinSet<()>,
    ctx: &Arc<Context>,
    dead_letters: &Channel,
    abandon: &CancellationToken,
    delivery: Delivery,
) {
    let (ctx, dead_letters, abandon) = (ctx.clone(), dead_letters.clone(), abandon.clone());
    in_hand.spawn(async move { handle(&ctx, &dead_letters, delivery, &abandon).await });
}

/// Handles one delivery: exactly one of ack, dead-letter, or hand back.
async fn handle(
    ctx: &Context,
    dead_letters: &Channel,
    delivery: Delivery,
    abandon: &CancellationToken,
) {
    ctx.metrics.consumed.inc();
    if delivery.redelivered {
        ctx.metrics.redelivered.inc();
    }
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
    // relay's publish; ApplyUserContact's parent is this span.
    let trace =
        TraceContext::continued(origin.traceparent.as_deref(), origin.tracestate.as_deref());
    let mut trace_span =
        messaging::message_span(&trace, "process", &ctx.config.topology.queue, &message_id);
    trace_span.set("tandem.redelivered", delivery.redelivered);
    let span = tracing::info_span!(
        "event",
        event_id = %message_id,
        request_id = %request_id,
        trace_id = %trace.trace_id_hex(),
        redelivered = delivery.redelivered
    );
    let trace_span = &mut trace_span;
    async {
        let update = match UserUpdated::parse(&delivery.data) {
            Ok(update) => update,
            Err(reason) => {
                trace_span.fail(format!("dead-lettered: {reason}"));
                return dead_letter(ctx, dead_letters, &delivery, &reason).await;
            }
        };
        let applied = tokio::select! {
            result = apply(ctx, &update, &request_id, &trace) => result,
            _ = abandon.cancelled() => {
                ctx.metrics.requeued.inc();
                let requeue = BasicNackOptions { requeue: true, multiple: false };
                if let Err(e) = delivery.acker.nack(requeue).await {
                    tracing::warn!(error = %e, "could not hand the delivery back; the broker will redeliver it");
                }
                return;
            }
        };
        match applied {
            Ok((matched, modified)) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // Applied but not acknowledged: it comes again and changes nothing.
                    tracing::warn!(error = %e, "ack failed; the event will be redelivered (harmless)");
                    return;
                }
                ctx.metrics.applied.inc();
                ctx.metrics.orders_modified.inc_by(modified);
                let lag = chrono::Utc::now() - update.occurred_at;
                ctx.metrics
                    .lag
                    .observe(lag.to_std().unwrap_or_default().as_secs_f64());
                tracing::info!(user_id = %update.contact.user_id, version = update.contact.version, matched, modified, "event applied");
            }
            Err(failure) => {
                trace_span.fail(format!("dead-lettered: {failure}"));
                dead_letter(ctx, dead_letters, &delivery, &failure.to_string()).await
            }
        }
    }
    .instrument(span)
    .await
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

/// Applies an update, retrying any failure but a permanent refusal with backoff, for at
/// most the retry budget.
async fn apply(
    ctx: &Context,
    update: &UserUpdated,
    request_id: &str,
    trace: &TraceContext,
) -> Result<(u64, u64), ApplyFailure> {
    let contact = &update.contact;
    let request = ApplyUserContactRequest {
        user_id: contact.user_id.to_string(),
        contact_version: contact.version,
        emails: contact.emails.to_strings(),
        delivery_address: Some(contact.delivery_address.to_proto()),
    };
    let attempt = || {
        let mut client = ctx.orders.clone();
        let mut call = tandem_serving::grpc::request_with_id(request.clone(), request_id);
        // The trace goes on to order-svc, with this event's span as the parent.
        if let Ok(value) = trace.traceparent().parse() {
            call.metadata_mut().insert(TRACEPARENT, value);
        }
        if let Some(Ok(value)) = trace.tracestate.as_deref().map(str::parse) {
            call.metadata_mut().insert(TRACESTATE, value);
        }
        call.set_timeout(ctx.config.apply_timeout);
        async move { client.apply_user_contact(call).await }
    };
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
        .when(|status: &tonic::Status| !is_permanent(status.code()) && started.elapsed() < budget)
        .notify(|status: &tonic::Status, wait: Duration| {
            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.metrics.retried.inc();
            tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?wait, "order-svc could not apply the event; retrying");
        })
        .await
        .map_err(|last| {
            if is_permanent(last.code()) {
                ApplyFailure::Refused(last)
            } else {
                ApplyFailure::GaveUp {
                    attempts: retries.load(std::sync::atomic::Ordering::Relaxed) + 1,
                    elapsed: started.elapsed(),
                    budget,
                    last,
                }
            }
        })?
        .into_inner();
    Ok((
        reply.matched_count.max(0) as u64,
        reply.modified_count.max(0) as u64,
    ))
}

/// Moves a delivery to the dead-letter exchange with `reason` in its headers, then acks
/// it. If that publish is not confirmed, the delivery is rejected instead, and RabbitMQ
/// dead-letters it itself (without our reason header, which the log line keeps).
async fn dead_letter(ctx: &Context, dead_letters: &Channel, delivery: &Delivery, reason: &str) {
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
    let settled = if confirmed {
        ctx.metrics.dead_lettered.inc();
        delivery.acker.ack(BasicAckOptions::default()).await
    } else {
        if let Err(e) = &published {
            tracing::warn!(error = %e, "the dead-letter publish was not confirmed; rejecting so RabbitMQ dead-letters it");
        }
        ctx.metrics.dead_lettered.inc();
        delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle the dead-lettered delivery; it will come again");
    }
}
