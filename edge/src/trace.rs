//! W3C Trace Context at the edge: a request's `traceparent` (and `tracestate`) is taken
//! when valid, or a trace is started; the edge's own span id goes to the services in
//! gRPC metadata and back to the client in the response's `traceparent`, so one trace
//! id ties the client's call to every log line it causes.

use std::fmt::Write as _;

use axum::http::HeaderMap;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The spec asks vendors to keep tracestate within 512 bytes; longer is dropped.
const MAX_TRACESTATE: usize = 512;

/// One request's trace: its id, the edge's span in it, and what the caller sent along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The edge's span (the parent of the services' spans).
    pub span_id: u64,
    /// The caller's span, when the request carried one.
    pub parent_id: Option<u64>,
    pub sampled: bool,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The caller's context continued with a new span, or a new trace (sampled).
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = nonzero_u64();
        match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                sampled: flags & 1 == 1,
                tracestate: headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| v.len() <= MAX_TRACESTATE && !v.is_empty())
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

    /// `traceparent` naming the edge's span: what the services and the client get.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, traceparent.parse().unwrap());
        h.insert(TRACESTATE, "vendor=abc".parse().unwrap());
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let t = TraceContext::from_headers(&headers(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
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
            let t = TraceContext::from_headers(&headers(bad));
            assert_eq!(t.parent_id, None, "{bad}");
            assert_eq!(t.tracestate, None, "{bad}");
            assert_ne!(t.trace_id, 0);
        }
        // A later version may carry more fields.
        let t = TraceContext::from_headers(&headers(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what",
        ));
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert!(!t.sampled);
    }
}
