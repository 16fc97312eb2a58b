//! Acknowledging deliveries in bulk. A `basic.ack` with `multiple` set settles every
//! delivery of the channel up to its tag, and RabbitMQ's quorum queue pays for each ack
//! frame (a settle command in its Raft log), not for each delivery it covers: one ack a
//! batch costs the broker a fraction of one ack an event (bench/FINDINGS.md §15).
//!
//! A multiple ack may only go out once every delivery at or below its tag is settled:
//! applied (or dead-lettered with a confirm), or handed back by a `nack`/`reject` of its
//! own that was already sent. Batches finish out of order, so the window keeps each
//! delivery of the channel, in tag order, until it is settled, and an ack covers the
//! longest settled prefix. A delivery applied behind one still in progress waits for it;
//! if the worker dies first, RabbitMQ redelivers both, and the version check in order-svc
//! makes the second application change nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use lapin::types::DeliveryTag;

use crate::metrics::WorkerMetrics;

/// What became of a delivery the window holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Being handled.
    InHand,
    /// Applied (or dead-lettered): the next multiple ack may cover it.
    Done,
}

/// The consuming channel's unacknowledged deliveries, and the acks that settle them.
pub(crate) struct AckWindow {
    channel: Channel,
    /// Every delivery received on `channel` and not yet covered by an ack, by tag.
    held: Mutex<BTreeMap<DeliveryTag, State>>,
    /// The highest tag acknowledged; held while an ack is sent, so acks leave in order
    /// (an ack for a tag below one already acked would close the channel).
    acked_up_to: tokio::sync::Mutex<DeliveryTag>,
    metrics: WorkerMetrics,
}

impl AckWindow {
    pub fn new(channel: Channel, metrics: WorkerMetrics) -> AckWindow {
        AckWindow {
            channel,
            held: Mutex::new(BTreeMap::new()),
            acked_up_to: tokio::sync::Mutex::new(0),
            metrics,
        }
    }

    /// Records a delivery as it arrives (in the channel's tag order).
    pub fn received(&self, tag: DeliveryTag) {
        self.lock().insert(tag, State::InHand);
    }

    /// Marks deliveries settled by an ack (their change is in order-svc, or they were
    /// dead-lettered with a confirm) and sends the ack that covers them as soon as every
    /// delivery before them is settled too: now, or when the last of those is.
    pub async fn ack(&self, tags: impl IntoIterator<Item = DeliveryTag>) -> lapin::Result<()> {
        {
            let mut held = self.lock();
            for tag in tags {
                if let Some(state) = held.get_mut(&tag) {
                    *state = State::Done;
                }
            }
        }
        self.flush().await
    }

    /// Settles one delivery by its own frame (`settle` sends a nack or a reject), then
    /// lets the acks behind it go. Until that frame is sent the delivery blocks every
    /// multiple ack past it, which would otherwise settle it as applied.
    pub async fn settle_alone<F>(&self, tag: DeliveryTag, settle: F) -> lapin::Result<bool>
    where
        F: Future<Output = lapin::Result<bool>>,
    {
        let settled = settle.await;
        // Sent or not, it is no longer ours to ack: if the frame did not go out, the
        // channel is closing and RabbitMQ redelivers everything it still holds.
        self.lock().remove(&tag);
        self.flush().await?;
        settled
    }

    /// Sends one multiple ack for the longest settled prefix of the window, if any.
    async fn flush(&self) -> lapin::Result<()> {
        let Some(up_to) = self.take_settled_prefix() else {
            return Ok(());
        };
        let mut acked_up_to = self.acked_up_to.lock().await;
        // A later prefix may have gone out first and covered this one already.
        if up_to <= *acked_up_to {
            return Ok(());
        }
        self.channel
            .basic_ack(up_to, BasicAckOptions { multiple: true })
            .await?;
        *acked_up_to = up_to;
        self.metrics.acks_sent.inc();
        Ok(())
    }

    /// Removes the settled deliveries at the front of the window; the highest tag removed.
    fn take_settled_prefix(&self) -> Option<DeliveryTag> {
        let mut held = self.lock();
        let mut up_to = None;
        while let Some(entry) = held.first_entry() {
            if *entry.get() != State::Done {
                break;
            }
            up_to = Some(*entry.key());
            entry.remove();
        }
        up_to
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeliveryTag, State>> {
        // The map is consistent after every statement, so a panic elsewhere leaves it usable.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    //! Against the real broker: what RabbitMQ hands back when the channel closes shows
    //! which deliveries the window's acks settled.
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use lapin::message::Delivery;
    use lapin::options::{
        BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection};
    use tandem_messaging::amqp as messaging;
    use tandem_messaging::{Topology, USER_UPDATED};
    use tandem_testkit::broker;

    use super::*;

    /// A queue of its own holding `count` messages whose bodies are "1", "2", …, and a
    /// channel that has received them all (tags in that order), with its window.
    struct Held {
        connection: Connection,
        topology: Topology,
        window: AckWindow,
        metrics: WorkerMetrics,
        deliveries: Vec<Delivery>,
    }

    async fn hold(count: usize) -> Held {
        let url = broker::amqp_url();
        let topology = broker::unique_topology("acks");
        let connection = messaging::connect(&url, "acks-test").await.unwrap();
        messaging::declare(&connection, &topology).await.unwrap();
        let publisher = connection.create_channel().await.unwrap();
        publisher
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        for n in 1..=count {
            messaging::publish_confirmed(
                &publisher,
                &topology.exchange,
                USER_UPDATED,
                n.to_string().as_bytes(),
                BasicProperties::default(),
                messaging::CONFIRM_TIMEOUT,
            )
            .await
            .unwrap();
        }
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_qos(100, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                topology.queue.as_str().into(),
                "acks-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let metrics = WorkerMetrics::register(&mut Default::default());
        let window = AckWindow::new(channel, metrics.clone());
        let mut deliveries = Vec::new();
        while deliveries.len() < count {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("the broker delivers what was published")
                .unwrap()
                .unwrap();
            window.received(delivery.delivery_tag);
            deliveries.push(delivery);
        }
        Held {
            connection,
            topology,
            window,
            metrics,
            deliveries,
        }
    }

    impl Held {
        fn tag(&self, body: usize) -> DeliveryTag {
            self.deliveries[body - 1].delivery_tag
        }

        /// Closes the consuming channel, as a worker that dies does, and returns the
        /// bodies RabbitMQ then holds again (everything no ack or nack settled, and
        /// what a nack requeued), once `expected` of them are back.
        async fn close_and_collect(self, expected: usize) -> Vec<String> {
            assert!(
                self.window.channel.status().connected(),
                "every ack the window sent was one the broker accepted"
            );
            self.window.channel.close(200, "test".into()).await.unwrap();
            let probe = self.connection.create_channel().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let queue = probe
                    .queue_declare(
                        self.topology.queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                if queue.message_count() as usize >= expected {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "RabbitMQ did not return the unacked deliveries within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut bodies = Vec::new();
            while let Some(message) = probe
                .basic_get(
                    self.topology.queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                bodies.push(String::from_utf8(message.delivery.data.clone()).unwrap());
            }
            bodies.sort();
            let _ = self.connection.close(200, "test done".into()).await;
            broker::remove_topology(&broker::amqp_url(), &self.topology);
            bodies
        }
    }

    #[tokio::test]
    async fn nothing_is_acked_while_an_earlier_delivery_is_in_hand() {
        let held = hold(3).await;
        held.window.ack([held.tag(2), held.tag(3)]).await.unwrap();
        assert_eq!(held.metrics.acks_sent.get(), 0);
        // The worker dies with 1 in hand: 2 and 3 come again too (applied twice, which
        // the contact version makes harmless), and none is lost.
        assert_eq!(held.close_and_collect(3).await, ["1", "2", "3"]);
    }

    #[tokio::test]
    async fn one_ack_settles_the_prefix_once_the_delivery_ahead_is_done() {
        let held = hold(4).await;
        held.window.ack([held.tag(2), held.tag(3)]).await.unwrap();
        held.window.ack([held.tag(1)]).await.unwrap();
        assert_eq!(held.metrics.acks_sent.get(), 1, "one frame for 1, 2 and 3");
        // 4 is still in hand: only it comes back.
        assert_eq!(held.close_and_collect(1).await, ["4"]);
    }

    #[tokio::test]
    async fn a_delivery_handed_back_is_not_acked_by_the_acks_around_it() {
        let held = hold(4).await;
        held.window.ack([held.tag(1), held.tag(3)]).await.unwrap();
        assert_eq!(held.metrics.acks_sent.get(), 1, "1 alone, 2 is in hand");
        let nack = held.deliveries[1].acker.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        });
        assert!(held.window.settle_alone(held.tag(2), nack).await.unwrap());
        assert_eq!(
            held.metrics.acks_sent.get(),
            2,
            "then 3, past the handed-back 2"
        );
        // 2 went back by its nack, 4 was in hand; 1 and 3 were acked.
        assert_eq!(held.close_and_collect(2).await, ["2", "4"]);
    }
}
