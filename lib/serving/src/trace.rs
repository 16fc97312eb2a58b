//! W3C Trace Context and the spans tandem records, exported over OTLP when asked.
//!
//! Every unit of work (a REST request at the edge, an RPC in a service, a publish by the
//! outbox relay, an event handled by the worker) takes the caller's `traceparent` when it
//! is valid, or starts a trace, and gives itself a new span id. That id is what the next
//! hop gets as its parent (gRPC metadata, the outbox row, AMQP headers), so one trace id
//! ties the client's call to every log line and span it causes.
//!
//! tandem chooses its span ids itself, the same whether spans are exported or not, and
//! hands finished spans to OpenTelemetry's batch processor and OTLP/gRPC exporter
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`). With no endpoint nothing is recorded: a [`Span`] is
//! then one branch and no allocation.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

pub use opentelemetry::trace::SpanKind;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The spec asks vendors to keep tracestate within 512 bytes; longer is dropped.
const MAX_TRACESTATE: usize = 512;

/// One unit of work's place in a trace: the trace, its own span, the caller's span, and
/// what the caller sent along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// This unit's span: the parent of whatever it calls.
    pub span_id: u64,
    /// The caller's span, when there was a valid one.
    pub parent_id: Option<u64>,
    pub sampled: bool,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The caller's context continued with a new span, or a new (sampled) trace when
    /// `traceparent` is missing or invalid.
    pub fn continued(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
        let span_id = nonzero_u64();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                sampled: flags & 1 == 1,
                tracestate: tracestate
                    .filter(|v| v.len() <= MAX_TRACESTATE && !v.is_empty())
                    .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
                    .map(str::to_owned),
            },
            None => TraceContext {
                trace_id: nonzero_u128(),
                span_id,
                parent_id: None,
                sampled: true,
                tracestate: None,
            },
        }
    }

    /// [`continued`](Self::continued) from the `traceparent` and `tracestate` headers
    /// (HTTP, or gRPC metadata as the server sees it).
    pub fn from_headers(headers: &http::HeaderMap) -> TraceContext {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
        TraceContext::continued(get(TRACEPARENT), get(TRACESTATE))
    }

    /// `traceparent` naming this unit's span: what the next hop and the client get.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        let _ = write!(
            out,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        );
        out
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Starts this unit's span (recorded only when spans are exported and the trace is
    /// sampled). It ends when dropped.
    pub fn span(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Span {
        if !self.sampled {
            return Span(None);
        }
        let Some(export) = EXPORT.get() else {
            return Span(None);
        };
        let trace_state = self
            .tracestate
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Span(Some(Box::new(Recording {
            export,
            data: SpanData {
                span_context: SpanContext::new(
                    TraceId::from(self.trace_id),
                    SpanId::from(self.span_id),
                    TraceFlags::SAMPLED,
                    false,
                    trace_state,
                ),
                parent_span_id: self.parent_id.map_or(SpanId::INVALID, SpanId::from),
                parent_span_is_remote: self.parent_id.is_some(),
                span_kind: kind,
                name: name.into(),
                start_time: SystemTime::now(),
                end_time: SystemTime::now(),
                attributes: Vec::with_capacity(8),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: export.scope.clone(),
            },
        })))
    }
}

/// `version-traceid-parentid-flags`, as the spec reads it: version 00 exactly four
/// fields; a later version at least those four; ids not all zero; lowercase hex.
fn parse_traceparent(value: &str) -> Option<(u128, u64, u8)> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let extra = parts.next();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    if version == "00" && extra.is_some() {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let parent_id = u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, parent_id, flags))
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn nonzero_u128() -> u128 {
    (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(1..))
}

/// A span being recorded; it ends, and goes to the exporter, when dropped. A no-op when
/// spans are not exported.
#[must_use = "a span ends when it is dropped"]
pub struct Span(Option<Box<Recording>>);

struct Recording {
    export: &'static Export,
    data: SpanData,
}

impl Span {
    /// A span that records nothing.
    pub fn none() -> Span {
        Span(None)
    }

    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    pub fn rename(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(recording) = &mut self.0 {
            recording.data.name = name.into();
        }
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(recording) = &mut self.0 {
            recording.data.attributes.push(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed (an error the operator should see in the trace).
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(recording) = &mut self.0 {
            recording.data.status = Status::error(description);
        }
    }

    /// Marks the span succeeded, overriding any earlier failure.
    pub fn succeed(&mut self) {
        if let Some(recording) = &mut self.0 {
            recording.data.status = Status::Ok;
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(recording) = self.0.take() {
            let Recording { export, mut data } = *recording;
            data.end_time = SystemTime::now();
            // Non-blocking: a full queue drops the span, never the request.
            export.processor.on_end(data);
        }
    }
}

/// The process's exporter, set once by [`init_export`].
struct Export {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// How the export has gone, for /metrics.
#[derive(Clone, Default)]
struct ExportMetrics {
    exported: Counter,
    failed_batches: Counter,
    failed_spans: Counter,
}

fn export_metrics() -> &'static ExportMetrics {
    static METRICS: OnceLock<ExportMetrics> = OnceLock::new();
    METRICS.get_or_init(ExportMetrics::default)
}

/// Adds the export counters to a process's registry (zero while nothing is exported).
pub fn register_metrics(registry: &mut Registry) {
    let m = export_metrics();
    registry.register(
        "otlp_spans_exported",
        "Spans the OTLP receiver accepted",
        m.exported.clone(),
    );
    registry.register(
        "otlp_export_failures",
        "OTLP export calls that failed (receiver down or refusing); their spans are dropped",
        m.failed_batches.clone(),
    );
    registry.register(
        "otlp_spans_failed",
        "Spans dropped because their export failed",
        m.failed_spans.clone(),
    );
}

/// Starts exporting spans to the OTLP/gRPC receiver at `endpoint` (`http://host:4317`),
/// as `service_name` (`OTEL_SERVICE_NAME` overrides). Needs a Tokio runtime: the
/// exporter's channel lives on it. Batching follows the SDK's `OTEL_BSP_*` variables.
pub fn init_export(endpoint: &str, service_name: &str) -> Result<(), String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let mut processor = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        failing: AtomicBool::new(false),
        endpoint: endpoint.to_owned(),
    })
    .build();
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| service_name.to_owned());
    processor.set_resource(&Resource::builder_empty().with_service_name(name).build());
    let scope = InstrumentationScope::builder("tandem")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    EXPORT
        .set(Export { processor, scope })
        .map_err(|_| "span export was already set up".to_owned())
}

/// Sends the spans still queued and stops the exporter (waits at most a few seconds).
/// Call once, when the process is done serving.
pub fn shutdown_export() {
    if let Some(export) = EXPORT.get()
        && let Err(e) = export.processor.shutdown()
    {
        tracing::warn!(error = %e, "spans still queued at shutdown were not all exported");
    }
}

/// The OTLP exporter, counting what it sends and what fails, and logging when export
/// starts and stops failing (not once per batch).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failing: AtomicBool,
    endpoint: String,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let m = export_metrics();
        match &result {
            Ok(()) => {
                m.exported.inc_by(n);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "span export works again");
                }
            }
            Err(e) => {
                m.failed_batches.inc();
                m.failed_spans.inc_by(n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "span export failed; spans are dropped until the receiver answers (counted on /metrics)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn continued(traceparent: &str) -> TraceContext {
        TraceContext::continued(Some(traceparent), Some("vendor=abc"))
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = continued("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        assert!(t.sampled);
        assert_eq!(t.tracestate.as_deref(), Some("vendor=abc"));
        let out = t.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01") && out.len() == 55, "{out}");
        // The next hop continues it: same trace, this span as its parent.
        let next = TraceContext::continued(Some(&out), t.tracestate.as_deref());
        assert_eq!(
            (next.trace_id, next.parent_id),
            (t.trace_id, Some(t.span_id))
        );
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let t = continued(bad);
            assert_eq!(t.parent_id, None, "{bad}");
            assert_eq!(t.tracestate, None, "{bad}");
            assert_ne!(t.trace_id, 0);
            assert!(t.sampled);
        }
        // A later version may carry more fields.
        let t = continued("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what");
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert!(!t.sampled);
    }

    #[test]
    fn without_an_exporter_a_span_records_nothing() {
        let mut span = continued("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .span("GET /users/{id}", SpanKind::Server);
        span.set("http.response.status_code", 200);
        assert!(!span.is_recording());
    }
}
