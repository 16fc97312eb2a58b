//! What every tandem process serves and sets up the same way: gRPC servers with health
//! and reflection, gRPC statuses that name bad fields, request ids in metadata, the small
//! ops HTTP port, log setup, the shutdown signal, and listeners.
//!
//! Nothing here knows a store or a broker; the edge depends on this crate alone of the
//! support crates.

pub mod grpc;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
