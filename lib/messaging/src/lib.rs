//! RabbitMQ as both ends of the contact sync see it: the topology, the `user.updated`
//! event format, and connections that notice a dead broker.

pub mod amqp;
pub mod event;

pub use amqp::{DEFAULT_AMQP_URL, EventOrigin, Topology};
pub use event::{USER_UPDATED, UserUpdated};
