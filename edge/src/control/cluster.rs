//! Several edges as one: the replicas share their state and their traffic counts over a
//! RabbitMQ fanout exchange, and one of them at a time is leader, the one that holds
//! an exclusive queue (RabbitMQ gives it to one connection only, and deletes it when that
//! connection goes; so a leader that dies or is cut off stops being one, and another
//! takes over within a second).
//!
//! - A change, on whichever replica, is announced at once with its version; every
//!   replica adopts the newest. Each also re-announces its state every few seconds, so
//!   a replica that starts or reconnects catches up.
//! - Every replica announces its counts four times a second and adds the others' to its
//!   own one-second buckets: each holds the traffic of all, and whichever is leader
//!   judges the rollout on it.
//!
//! Messages are not acknowledged or persisted: losing one costs a count or a moment,
//! never the state, which the next announcement carries again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::Counts;
use super::{Announce, Control, Snapshot};
use tandem_messaging::amqp as messaging;

/// How to reach the other replicas.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub amqp_url: String,
    /// Replicas with the same name form one cluster (the names of its exchange and lock).
    pub name: String,
}

/// How often a follower asks for the leader's lock.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// How often every replica re-announces its state.
const REANNOUNCE: Duration = Duration::from_secs(3);

// Externally tagged (`{"state": {…}}`): the fields' own deserializers read straight from
// JSON (an internally tagged enum would buffer them, which the exact-number readers refuse).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Message {
    /// A replica joined: the others answer with their state at once.
    Hello {
        from: String,
    },
    State {
        from: String,
        snapshot: Snapshot,
    },
    Counts {
        from: String,
        at: i64,
        counts: Counts,
    },
}

/// Announcements waiting to go out; a full queue (the broker away) drops them.
struct Outbox {
    replica: String,
    queue: mpsc::Sender<Vec<u8>>,
}

impl Outbox {
    fn send(&self, message: &Message) {
        if let Ok(bytes) = serde_json::to_vec(message) {
            let _ = self.queue.try_send(bytes);
        }
    }
}

impl Announce for Outbox {
    fn state(&self, snapshot: &Snapshot) {
        self.send(&Message::State {
            from: self.replica.clone(),
            snapshot: snapshot.clone(),
        });
    }

    fn counts(&self, at: i64, counts: &Counts) {
        self.send(&Message::Counts {
            from: self.replica.clone(),
            at,
            counts: counts.clone(),
        });
    }
}

/// Keeps this replica in its cluster until `shutdown`, reconnecting with backoff. While
/// the broker is away the replica serves on its own state and is not leader.
pub async fn run(control: Arc<Control>, config: ClusterConfig, shutdown: CancellationToken) {
    control.set_leader(false);
    let (queue, mut outgoing) = mpsc::channel(4096);
    control.set_announce(Arc::new(Outbox {
        replica: control.replica.clone(),
        queue,
    }));
    let name = format!("tandem edge {} ({})", config.name, control.replica);
    loop {
        let Some(connection) =
            messaging::connect_until_up(&config.amqp_url, &name, &shutdown, |_| {}).await
        else {
            return;
        };
        tracing::info!(cluster = %config.name, replica = %control.replica, "joined the edge cluster");
        let reason = session(&control, &config, &connection, &mut outgoing, &shutdown).await;
        control.set_leader(false);
        let _ =
            tokio::time::timeout(Duration::from_secs(2), connection.close(200, "bye".into())).await;
        match reason {
            None => return,
            Some(reason) => {
                tracing::warn!(%reason, "lost the edge cluster's broker; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// One connection's life; `None` on shutdown, else why it ended.
async fn session(
    control: &Arc<Control>,
    config: &ClusterConfig,
    connection: &Connection,
    outgoing: &mut mpsc::Receiver<Vec<u8>>,
    shutdown: &CancellationToken,
) -> Option<String> {
    let exchange = format!("tandem.edge.{}", config.name);
    let lock = format!("tandem.edge.{}.leader", config.name);
    let setup = async {
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                // Gone once the last replica's inbox is: the cluster leaves nothing behind.
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        // This replica's inbox: named by the broker, gone with the connection.
        let inbox = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                inbox.name().as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                inbox.name().as_str().into(),
                "".into(),
                // No acks: announcements are repeated, a lost one costs nothing lasting.
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer))
    };
    let (channel, mut consumer) = match setup.await {
        Ok(parts) => parts,
        Err(e) => return Some(format!("cannot join the cluster: {e}")),
    };
    control.set_clustered(true);
    let hello = serde_json::to_vec(&Message::Hello {
        from: control.replica.clone(),
    })
    .expect("a message serializes");
    if let Err(e) = channel
        .basic_publish(
            exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &hello,
            BasicProperties::default(),
        )
        .await
    {
        return Some(format!("cannot greet the cluster: {e}"));
    }
    let lost = messaging::lost(connection);
    tokio::pin!(lost);
    let mut lease = tokio::time::interval(LEASE_RETRY);
    let mut reannounce = tokio::time::interval(REANNOUNCE);
    // Held while leader: the lock belongs to this connection.
    let mut lock_channel = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            reason = &mut lost => return Some(reason),
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => receive(control, &delivery.data).await,
                Some(Err(e)) => return Some(format!("the cluster consumer failed: {e}")),
                None => return Some("the broker cancelled the cluster consumer".into()),
            },
            Some(bytes) = outgoing.recv() => {
                let published = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &bytes,
                        BasicProperties::default()
                            .with_content_type("application/json".into()),
                    )
                    .await;
                if let Err(e) = published {
                    return Some(format!("cannot announce to the cluster: {e}"));
                }
            }
            _ = lease.tick(), if lock_channel.is_none() => {
                if let Some(held) = take_lock(connection, &lock).await {
                    lock_channel = Some(held);
                    control.set_leader(true);
                }
            }
            _ = reannounce.tick() => {
                let snapshot = control.snapshot();
                if let Some(announce) = super::lock(&control.announce).clone() {
                    announce.state(&snapshot);
                }
            }
        }
    }
}

/// Tries to take the leader's lock: an exclusive queue, which the broker refuses
/// (RESOURCE_LOCKED, closing the channel) while another connection holds it.
async fn take_lock(connection: &Connection, lock: &str) -> Option<lapin::Channel> {
    let channel = connection.create_channel().await.ok()?;
    let declared = channel
        .queue_declare(
            lock.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    declared.ok().map(|_| channel)
}

async fn receive(control: &Arc<Control>, body: &[u8]) {
    match serde_json::from_slice::<Message>(body) {
        Ok(Message::Hello { from }) if from != control.replica => {
            if let Some(announce) = super::lock(&control.announce).clone() {
                announce.state(&control.snapshot());
            }
        }
        Ok(Message::State { from, snapshot }) if from != control.replica => {
            control.adopt(snapshot).await
        }
        Ok(Message::Counts { from, at, counts }) if from != control.replica => {
            control.add_counts(at, &counts)
        }
        Ok(_) => {} // our own, back from the fanout
        Err(e) => tracing::warn!(error = %e, "an unreadable cluster message was ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message a replica sends, another can read (the state holds fields read from
    /// their exact JSON text, which not every serde layout allows).
    #[test]
    fn messages_read_back() {
        let mut rollout = super::super::rollout::Rollout::default();
        rollout
            .start(Default::default(), 100, chrono::Utc::now())
            .unwrap();
        let state = Message::State {
            from: "a".into(),
            snapshot: Snapshot {
                version: super::super::Version {
                    millis: 1,
                    replica: "a".into(),
                },
                dial: crate::routing::RoutingConfig::default(),
                shadow: Default::default(),
                rollout,
            },
        };
        let counts = Message::Counts {
            from: "a".into(),
            at: 5,
            counts: Counts::default(),
        };
        let hello = Message::Hello { from: "b".into() };
        for message in [hello, state, counts] {
            let bytes = serde_json::to_vec(&message).unwrap();
            let back: Message = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
        }
    }
}
