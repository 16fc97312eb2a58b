//! An OTLP/gRPC trace receiver for tests: a tonic `TraceService` that keeps every span
//! it is sent, as a collector would, so a test can read back one trace across processes.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio_util::sync::CancellationToken;

use crate::PortReservation;

/// One span as the receiver got it (ids in lowercase hex, as in `traceparent`).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's span kind: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// String and integer attributes, as text.
    pub attributes: Vec<(String, String)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                        })
                        .collect(),
                    status_code: span.status.map_or(0, |s| s.code),
                });
            }
        }
        self.0.lock().expect("not poisoned").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver, serving in this process until dropped.
pub struct OtlpReceiver {
    port: PortReservation,
    collected: Collected,
    stop: CancellationToken,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let port = PortReservation::new();
        let collected = Collected::default();
        let stop = CancellationToken::new();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(port.tokio_listener());
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collected.clone()))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("OTLP test receiver stopped: {e}");
            }
        });
        OtlpReceiver {
            port,
            collected,
            stop,
        }
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should say.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.port.addr())
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected.0.lock().expect("not poisoned").clone()
    }

    /// The spans of one trace received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans = self.spans();
        spans.retain(|s| s.trace_id == trace_id);
        spans
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
