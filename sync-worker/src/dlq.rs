//! Looking at and repairing the dead-letter queue: `sync-worker dlq list` shows what is
//! there and why, leaving it in place; `sync-worker dlq replay` sends it back to the
//! events exchange (after the cause was fixed), one message at a time, with confirms.

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use tandem_messaging::amqp::{self as messaging, Topology};
use tandem_messaging::event::USER_UPDATED;

use crate::consumer::{FAILED_AT_HEADER, REASON_HEADER};

/// One dead-lettered event, as `dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub message_id: Option<String>,
    /// Why it was dead-lettered: the worker's reason, or RabbitMQ's (x-death).
    pub reason: String,
    pub dead_lettered_at: Option<String>,
    pub request_id: Option<String>,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Connect(#[from] messaging::ConnectError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "replay of {message_id:?} was not confirmed ({reason}); it stays in the dead-letter queue"
    )]
    NotConfirmed {
        message_id: Option<String>,
        reason: messaging::PublishError,
    },
}

fn reason(properties: &BasicProperties) -> String {
    if let Some(reason) = messaging::header(properties, REASON_HEADER) {
        return reason;
    }
    // Dead-lettered by RabbitMQ itself: x-death is a list of tables with a "reason".
    let x_death = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned());
    if let Some(AMQPValue::FieldArray(deaths)) = x_death
        && let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first()
        && let Some(AMQPValue::LongString(r)) = first.inner().get("reason")
    {
        return format!("dead-lettered by RabbitMQ: {r}");
    }
    "unknown".to_owned()
}

/// Up to `limit` dead letters, oldest first. They stay in the queue: nothing is
/// acknowledged, and closing the channel hands them all back.
pub async fn list(
    amqp_url: &str,
    topology: &Topology,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let connection = messaging::connect(amqp_url, "tandem sync-worker dlq list").await?;
    let channel = connection.create_channel().await?;
    messaging::declare(&connection, topology).await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = channel
            .basic_get(
                topology.dead_letter.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let d = message.delivery;
        letters.push(DeadLetter {
            message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
            reason: reason(&d.properties),
            dead_lettered_at: messaging::header(&d.properties, FAILED_AT_HEADER),
            request_id: messaging::header(&d.properties, tandem::REQUEST_ID),
            body: String::from_utf8_lossy(&d.data).into_owned(),
        });
    }
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    Ok(letters)
}

/// Sends up to `limit` dead letters back to the events exchange; each leaves the
/// dead-letter queue only after the broker confirmed its replay. Returns how many.
pub async fn replay(amqp_url: &str, topology: &Topology, limit: usize) -> Result<usize, DlqError> {
    let connection = messaging::connect(amqp_url, "tandem sync-worker dlq replay").await?;
    let channel = connection.create_channel().await?;
    messaging::declare(&connection, topology).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut replayed = 0;
    while replayed < limit {
        let Some(message) = channel
            .basic_get(
                topology.dead_letter.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let d = message.delivery;
        let mut headers: FieldTable = d.properties.headers().clone().unwrap_or_default();
        let previous = match headers.inner().get("x-tandem-replays") {
            Some(AMQPValue::LongLongInt(n)) => *n,
            _ => 0,
        };
        headers.insert(
            "x-tandem-replays".into(),
            AMQPValue::LongLongInt(previous + 1),
        );
        let properties = d.properties.clone().with_headers(headers);
        // Bounded: a broker that stops answering must not hold the tool (and the message
        // it took) forever.
        let replayed_one = messaging::publish_confirmed(
            &channel,
            &topology.exchange,
            USER_UPDATED,
            &d.data,
            properties,
            messaging::CONFIRM_TIMEOUT,
        )
        .await;
        match replayed_one {
            Ok(()) => {
                d.acker.ack(BasicAckOptions::default()).await?;
                replayed += 1;
            }
            Err(reason) => {
                d.acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await?;
                return Err(DlqError::NotConfirmed {
                    message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
                    reason,
                });
            }
        }
    }
    let _ = channel.close(200, "replayed".into()).await;
    let _ = connection.close(200, "replayed".into()).await;
    Ok(replayed)
}
