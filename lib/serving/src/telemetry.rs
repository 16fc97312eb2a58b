//! Log and trace setup shared by every binary: human-readable lines by default, one JSON
//! object per line with `LOG_FORMAT=json` (for log shippers). `RUST_LOG` filters, `info`
//! by default. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/gRPC
//! too (see [`crate::trace`]).

use std::io::IsTerminal;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags every binary flattens into its own.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// How log lines are written.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP/gRPC receiver spans are exported to, e.g. `http://otel-collector:4317`.
    /// Unset: no spans are recorded (trace ids still travel and are logged).
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// What [`init`] started; [`Telemetry::shutdown`] sends the spans still queued.
#[must_use = "call shutdown() when the process is done, so queued spans are sent"]
pub struct Telemetry {
    exporting: bool,
}

impl Telemetry {
    pub fn shutdown(self) {
        if self.exporting {
            crate::trace::shutdown_export();
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard output, where container runtimes and scripts/start collect a service's.
    Stdout,
    /// Standard error: for a command whose standard output is its answer
    /// (`sync-worker dlq list --json`), which a log line there would corrupt.
    Stderr,
}

/// Installs the global subscriber, logging to standard output, and, when an OTLP
/// endpoint is given, the span export as `service_name`. Call once, from `main`, inside
/// the Tokio runtime.
pub fn init(args: &LogArgs, service_name: &str) -> Telemetry {
    init_to(args, service_name, LogOutput::Stdout)
}

/// [`init`], with the log lines going to `output`.
pub fn init_to(args: &LogArgs, service_name: &str, output: LogOutput) -> Telemetry {
    init_logs(args, output);
    let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Telemetry { exporting: false };
    };
    match crate::trace::init_export(endpoint, service_name) {
        Ok(()) => {
            tracing::info!(%endpoint, service = service_name, "exporting spans over OTLP");
            Telemetry { exporting: true }
        }
        // Tracing is an aid, never a reason not to serve.
        Err(e) => {
            tracing::error!(error = %e, "spans will not be exported");
            Telemetry { exporting: false }
        }
    }
}

fn init_logs(args: &LogArgs, output: LogOutput) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let (writer, terminal) = match output {
        LogOutput::Stdout => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ),
        LogOutput::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    match args.log_format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .with_target(false)
                    // Colors only on a terminal, never in log files.
                    .with_ansi(terminal),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .init(),
    }
}

/// A connection URL as it may be logged: `scheme://user:secret@host/…` becomes
/// `scheme://user:***@host/…`. Only the authority (before the first `/` after the scheme)
/// is looked at, so an `@` in a path or query is left alone. Every URL with credentials
/// (AMQP, MongoDB) goes through here before it is printed; a comma-separated list of
/// URLs has each one redacted.
pub fn redact_url(url: &str) -> String {
    // A list of brokers (a cluster's nodes in AMQP_URL): each URL redacted.
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_never_print() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("mongodb://admin:hunter2@db:27017/?authSource=admin"),
            "mongodb://admin:***@db:27017/?authSource=admin"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(redact_url("mongodb://h/db?x=a@b"), "mongodb://h/db?x=a@b");
        assert_eq!(redact_url("no scheme"), "no scheme");
        assert_eq!(
            redact_url("amqp://u:pw1@rabbit-1/%2f,amqp://u:pw2@rabbit-2/%2f"),
            "amqp://u:***@rabbit-1/%2f,amqp://u:***@rabbit-2/%2f"
        );
    }
}
