//! What every tandem process serves and sets up the same way: gRPC servers with health,
//! reflection and per-RPC metrics; statuses that name bad fields; request ids in
//! metadata; W3C trace context and OTLP span export; the small ops HTTP port; the JSON
//! error body; log setup; the shutdown signal; listeners (bound, or inherited from a
//! supervisor).
//!
//! Nothing here knows a store or a broker; the edge depends on this crate alone of the
//! support crates.

/// The allocator of every tandem process (each links this crate). A list page of 50
/// orders is some 750 small strings decoded from protobuf and freed again; under glibc's
/// malloc, allocating and freeing took 32 % of order-svc's instructions and 20 % of the
/// edge's on that call (callgrind, bench/FINDINGS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod grpc;
pub mod http_error;
pub mod listen;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

/// Why a service could not start, or stopped serving: its store would not open, or one of
/// its servers failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError<StoreError: std::error::Error + 'static> {
    #[error("cannot open the {what} store {url}: {source}")]
    Store {
        what: &'static str,
        /// Printable: passwords redacted.
        url: String,
        source: StoreError,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("ops server failed: {0}")]
    Ops(#[from] std::io::Error),
}

/// How a binary's `main` ends: success, or the error as one line on stderr (and in the
/// log) and exit status 1.
pub fn exit_status<E: std::fmt::Display>(
    binary: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{binary}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
