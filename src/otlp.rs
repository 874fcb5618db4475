//! OTLP trace export (cargo feature `otlp`, `[logging] otlp_endpoint`): one server span per
//! request through the proxy, sent as OTLP/HTTP JSON in batches from a thread of its own. The
//! span's context goes upstream in `traceparent`, so the upstream's spans nest under the
//! gateway's, and the gateway's under the client's.
//!
//! Owns: a request's trace context ([`TraceContext`]: the client's `traceparent` continued, or
//! a new trace), span records ([`Span`]), their JSON encoding, and the [`Exporter`]. A full
//! queue drops spans (never blocks a request); an unreachable collector is logged.

use std::fmt::Write as _;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 8192;
/// Spans per export request at most.
const BATCH: usize = 512;
/// How long a span waits for others to share its export request.
const EVERY: Duration = Duration::from_secs(1);

/// The trace context of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (the client's, or new).
    pub trace_id: [u8; 16],
    /// The gateway's span.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    /// When the request arrived.
    pub start: SystemTime,
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if s.len() != N * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// Continues the client's valid `traceparent`, or starts a trace (sampled).
    pub fn continue_or_start(traceparent: Option<&HeaderValue>) -> Option<TraceContext> {
        let span_id = random::<8>()?;
        let start = crate::clock::system_time();
        let parsed = crate::traceparent::trace_id(traceparent).and_then(|trace| {
            let v = traceparent?.to_str().ok()?;
            let mut parts = v.split('-').skip(2);
            let parent = unhex::<8>(parts.next()?)?;
            let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
            Some((unhex::<16>(trace)?, parent, flags))
        });
        Some(match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
                start,
            },
            None => TraceContext {
                trace_id: random::<16>()?,
                span_id,
                parent_id: None,
                flags: 1,
                start,
            },
        })
    }

    /// The `traceparent` for the upstream: this trace, the gateway's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let v = format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        );
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
    }

    /// The trace id in hex.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Whether the trace is sampled (the client's decision is kept).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct Span {
    /// Its context.
    pub ctx: TraceContext,
    /// Its name (`GET /weather/*`: method and route, never a raw path).
    pub name: String,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// Whether it failed (a 5xx answer).
    pub error: bool,
}

/// An attribute value.
#[derive(Clone, Debug)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// The OTLP/HTTP JSON body of `spans` from service `service`.
pub fn encode(service: &str, spans: &[Span]) -> String {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<serde_json::Value> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::Str(s) => serde_json::json!({ "stringValue": s }),
                        Value::Int(i) => serde_json::json!({ "intValue": i.to_string() }),
                    };
                    serde_json::json!({ "key": k, "value": value })
                })
                .collect();
            let mut span = serde_json::json!({
                "traceId": hex(&s.ctx.trace_id),
                "spanId": hex(&s.ctx.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.ctx.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": { "code": if s.error { 2 } else { 0 } },
            });
            if let (Some(p), Some(obj)) = (s.ctx.parent_id, span.as_object_mut()) {
                obj.insert("parentSpanId".into(), hex(&p).into());
            }
            span
        })
        .collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } },
                { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
            ]},
            "scopeSpans": [{
                "scope": { "name": "x402-gateway", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }]
    })
    .to_string()
}

/// Sends finished spans to an OTLP/HTTP collector from a thread of its own.
#[derive(Debug)]
pub struct Exporter {
    tx: SyncSender<Span>,
}

impl Exporter {
    /// Starts exporting to `endpoint` (e.g. `http://127.0.0.1:4318/v1/traces`) as `service`.
    ///
    /// # Errors
    /// The export thread could not be started.
    pub fn start(endpoint: &str, service: &str) -> std::io::Result<Exporter> {
        let (tx, rx) = sync_channel(QUEUE);
        let (endpoint, service) = (endpoint.to_owned(), service.to_owned());
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || run(&endpoint, &service, &rx))?;
        Ok(Exporter { tx })
    }

    /// Queues a span (dropped when the queue is full or the trace is not sampled).
    pub fn export(&self, span: Span) {
        if span.ctx.sampled() {
            let _ = self.tx.try_send(span);
        }
    }
}

fn run(endpoint: &str, service: &str, rx: &Receiver<Span>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::warn!("OTLP export: no runtime; spans are dropped");
        return;
    };
    crate::edge::install_crypto_provider();
    // reqwest's client and its timers belong to this thread's runtime.
    let _runtime = rt.enter();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "OTLP export: no HTTP client; spans are dropped");
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = crate::clock::instant() + EVERY;
        while batch.len() < BATCH {
            match rx.recv_timeout(until.saturating_duration_since(crate::clock::instant())) {
                Ok(s) => batch.push(s),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let body = encode(service, &batch);
        let sent = rt.block_on(
            client
                .post(endpoint)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send(),
        );
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(status = %r.status(), spans = batch.len(), "OTLP export refused")
            }
            Err(e) => tracing::warn!(error = %e, spans = batch.len(), "OTLP export failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_trace_is_continued_with_the_gateway_span_as_parent() {
        let sent =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::continue_or_start(Some(&sent)).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let up = t.traceparent();
        let up = up.to_str().unwrap();
        assert!(
            up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{up}"
        );
        assert!(up.ends_with("-01"));
        assert_ne!(
            &up[36..52],
            "00f067aa0ba902b7",
            "the gateway's own span goes upstream"
        );

        let fresh = TraceContext::continue_or_start(None).unwrap();
        assert_eq!(fresh.parent_id, None);
        assert!(fresh.sampled());
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!TraceContext::continue_or_start(Some(&unsampled))
            .unwrap()
            .sampled());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let ctx = TraceContext::continue_or_start(None).unwrap();
        let body = encode(
            "gw",
            &[Span {
                ctx,
                name: "GET /weather/*".into(),
                end: crate::clock::system_time(),
                attributes: vec![
                    ("http.route", Value::Str("/weather/*".into())),
                    ("http.response.status_code", Value::Int(402)),
                ],
                error: false,
            }],
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], ctx.trace_id_hex());
        assert_eq!(span["kind"], 2);
        assert_eq!(span["attributes"][1]["value"]["intValue"], "402");
        assert!(span.get("parentSpanId").is_none());
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "gw"
        );
    }
}
