//! tandem's shared contracts: the generated gRPC code, the domain value types several
//! services use, and the few pieces every process sets up the same way (logging, shutdown,
//! gRPC serving, the ops port, the embedded store, the event format and AMQP topology).

pub mod domain;
pub mod events;
pub mod grpc;
pub mod messaging;
pub mod ops;
pub mod proto;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
