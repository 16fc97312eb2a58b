//! tandem's contracts: the code generated from `proto/` (gRPC services, messages, the
//! event schema) and the domain value types several crates share. Nothing here talks to
//! a network, a disk or a clock beyond `domain::now`; serving, messaging, storage and the
//! test kit live in crates of their own under `lib/`.

pub mod codec;
pub mod domain;
pub mod proto;

/// The gRPC metadata key, HTTP header and AMQP header that carry a request's id end to
/// end: set (or taken) by the edge, logged by every process, copied into the outbox and
/// onto the `user.updated` message.
pub const REQUEST_ID: &str = "x-request-id";

/// gRPC metadata the edge sets on calls made for a client with a verified token: the
/// token's `sub`, and its tandem scopes, space-separated. The token itself never leaves
/// the edge. Services log the subject with each call; a service reached directly (not
/// through the edge) must not take these as proof of anything.
pub const AUTH_SUBJECT: &str = "x-tandem-subject";
pub const AUTH_SCOPES: &str = "x-tandem-scopes";
