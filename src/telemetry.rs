//! Logging setup: `tracing-subscriber` with `RUST_LOG` (or `[logging] level`), text or JSON
//! lines; Pingora's `log` records are bridged in.
//!
//! Also owns the per-request identity: request ids ([`RequestIds`]: the client's
//! `X-Request-Id` when it is sane, else a generated one), the W3C `traceparent` reading
//! ([`trace_id`]), and the access log ([`access`]): one line per request with target
//! `x402_gateway::access` and the fields `request_id`, `trace_id`, `route`, `method`, `path`,
//! `status`, `duration_ms`, `upstream_ms`, `facilitator_ms`, `outcome`, `reason`, and for a
//! payment `payer`, `amount`, `network`, `transaction`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// The request id header, sent upstream and back to the client.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The W3C trace context header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The longest client-sent request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// Request ids: a random per-process prefix and a counter (32 hex digits, unique across
/// restarts and instances without coordination).
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // A failed read leaves a time-based prefix: ids stay unique within the process.
        if getrandom::fill(&mut seed).is_err() {
            seed = crate::limiter::now_ms().to_le_bytes();
        }
        RequestIds {
            prefix: u64::from_le_bytes(seed),
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The client's `X-Request-Id` when it is 1 to 128 visible ASCII characters, else a new id.
    pub fn for_request(&self, sent: Option<&HeaderValue>) -> HeaderValue {
        match sent {
            Some(v) if is_sane_id(v.as_bytes()) => v.clone(),
            _ => self.generate(),
        }
    }

    /// A new id.
    pub fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(32);
        let _ = write!(id, "{:016x}{n:016x}", self.prefix);
        // Hex digits only: always a valid value, and its bytes move in without a copy.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .unwrap_or(HeaderValue::from_static("-"))
    }
}

fn is_sane_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.iter().all(|b| (0x21..0x7f).contains(b))
}

pub use crate::traceparent::trace_id;

/// A request's trace context while spans are exported (see [`crate::otlp`]).
#[cfg(feature = "otlp")]
pub type TraceContext = crate::otlp::TraceContext;
/// A request's trace context: nothing, in a build without the `otlp` feature.
#[cfg(not(feature = "otlp"))]
pub type TraceContext = ();

/// What a finished request's span says.
#[derive(Debug)]
pub struct SpanInfo<'a> {
    /// The request method.
    pub method: &'a str,
    /// The route (rule path) it matched, or `(unmatched)`.
    pub route: &'a str,
    /// The status answered.
    pub status: u16,
    /// The payment outcome and reason (empty without a payment).
    pub outcome: &'a str,
    /// Why a payment failed or was refused.
    pub reason: &'a str,
    /// The request id.
    pub request_id: &'a str,
}

/// Span export of the proxy's requests: active when built with the `otlp` feature and
/// `[logging] otlp_endpoint` is set, otherwise nothing at all (the client's `traceparent`
/// then reaches the upstream unchanged).
#[derive(Debug, Default)]
pub struct Tracer {
    #[cfg(feature = "otlp")]
    exporter: Option<crate::otlp::Exporter>,
}

#[cfg(feature = "otlp")]
impl Tracer {
    /// The tracer `[logging]` asks for.
    pub fn new(c: &LoggingConfig) -> Tracer {
        let exporter = c.otlp_endpoint.as_deref().and_then(|endpoint| {
            crate::otlp::Exporter::start(endpoint, &c.otlp_service_name)
                .map_err(|e| tracing::warn!(error = %e, "OTLP export not started"))
                .ok()
        });
        Tracer { exporter }
    }

    /// The request's trace context, when spans are exported.
    pub fn begin(&self, traceparent: Option<&HeaderValue>) -> Option<TraceContext> {
        self.exporter.as_ref()?;
        crate::otlp::TraceContext::continue_or_start(traceparent)
    }

    /// The `traceparent` to send upstream.
    pub fn traceparent(t: &TraceContext) -> Option<HeaderValue> {
        Some(t.traceparent())
    }

    /// The trace id, for the access line.
    pub fn trace_id(t: &TraceContext) -> String {
        t.trace_id_hex()
    }

    /// Exports the request's span.
    pub fn finish(&self, t: &TraceContext, info: &SpanInfo<'_>) {
        use crate::otlp::{Span, Value};
        let Some(exporter) = &self.exporter else {
            return;
        };
        let mut attributes = vec![
            ("http.request.method", Value::Str(info.method.to_owned())),
            ("http.route", Value::Str(info.route.to_owned())),
            (
                "http.response.status_code",
                Value::Int(i64::from(info.status)),
            ),
            ("x402.request_id", Value::Str(info.request_id.to_owned())),
        ];
        if !info.outcome.is_empty() {
            attributes.push(("x402.payment.outcome", Value::Str(info.outcome.to_owned())));
        }
        if !info.reason.is_empty() {
            attributes.push(("x402.payment.reason", Value::Str(info.reason.to_owned())));
        }
        exporter.export(Span {
            ctx: *t,
            name: format!("{} {}", info.method, info.route),
            end: crate::clock::system_time(),
            attributes,
            error: info.status >= 500 || info.status == 0,
        });
    }
}

#[cfg(not(feature = "otlp"))]
impl Tracer {
    /// The tracer `[logging]` asks for (spans are never exported in this build).
    pub fn new(_c: &LoggingConfig) -> Tracer {
        Tracer {}
    }

    /// No trace context: spans are not exported in this build.
    pub fn begin(&self, _traceparent: Option<&HeaderValue>) -> Option<TraceContext> {
        None
    }

    /// Never called without a trace context.
    pub fn traceparent(_t: &TraceContext) -> Option<HeaderValue> {
        None
    }

    /// Never called without a trace context.
    pub fn trace_id(_t: &TraceContext) -> String {
        String::new()
    }

    /// Nothing to export.
    pub fn finish(&self, _t: &TraceContext, _info: &SpanInfo<'_>) {}
}

/// One request, as the access log sees it.
#[derive(Debug, Default)]
pub struct Access<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The trace id of the client's `traceparent`.
    pub trace_id: &'a str,
    /// Method and path (without the query).
    pub method: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The status answered (0: none written).
    pub status: u16,
    /// From the request's arrival to the end of the answer.
    pub duration: Duration,
    /// Until the upstream's response header.
    pub upstream: Option<Duration>,
    /// Verifying and settling the payment (facilitator calls or local checks).
    pub facilitator: Option<Duration>,
    /// Route, payment outcome and reason, and the payment.
    pub finished: Finished<'a>,
}

/// How a finished request went, as metrics and the access log see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Finished<'a> {
    /// The route's label (its path pattern), or `(unmatched)`.
    pub route: &'a str,
    /// The payment outcome: a settlement state, `redeemed`, `rejected`, or empty.
    pub outcome: &'a str,
    /// Why the payment failed or was refused, or empty.
    pub reason: &'a str,
    /// The payment, if one was verified.
    pub payment: Option<PaidLine<'a>>,
}

/// The access-log fields of a payment.
#[derive(Clone, Copy, Debug)]
pub struct PaidLine<'a> {
    /// The payer.
    pub payer: alloy::primitives::Address,
    /// Atomic amount.
    pub amount: alloy::primitives::U256,
    /// The network, in the payment version's naming.
    pub network: &'a str,
    /// The transaction, once known.
    pub transaction: &'a str,
}

fn millis(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Writes the access line of a request.
pub fn access(a: &Access<'_>) {
    let p = a.finished.payment;
    tracing::info!(
        target: "x402_gateway::access",
        request_id = a.request_id,
        trace_id = a.trace_id,
        route = a.finished.route,
        method = a.method,
        path = a.path,
        status = a.status,
        duration_ms = millis(Some(a.duration)),
        upstream_ms = millis(a.upstream),
        facilitator_ms = millis(a.facilitator),
        outcome = a.finished.outcome,
        reason = a.finished.reason,
        payer = p.map_or(String::new(), |p| p.payer.to_string()),
        amount = p.map_or(String::new(), |p| p.amount.to_string()),
        network = p.map_or("", |p| p.network),
        transaction = p.map_or("", |p| p.transaction),
        "request"
    );
}

/// Lines the access-log queue holds before a request writes its line itself.
const ACCESS_QUEUE: usize = 16 * 1024;

/// What the access-log writer thread is sent.
enum Queued {
    Line(Vec<u8>),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The queue of access lines, and its writer thread (started with the first line).
fn access_queue() -> &'static std::sync::mpsc::SyncSender<Queued> {
    static QUEUE: std::sync::OnceLock<std::sync::mpsc::SyncSender<Queued>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Queued>(ACCESS_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // Lines that arrive together go out in one write.
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(q) = next {
                        match q {
                            Queued::Line(l) => {
                                let _ = out.write_all(&l);
                            }
                            Queued::Flush(done) => {
                                let _ = out.flush();
                                let _ = done.send(());
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                }
            });
        if spawned.is_err() {
            // No writer thread: a queue nobody reads is full at once, and every line is
            // written by its request (see `AccessLine`).
            let (tx, _) = std::sync::mpsc::sync_channel(0);
            return tx;
        }
        tx
    })
}

/// Writes out the access lines queued so far (before the process exits), waiting up to 1 s.
pub fn flush() {
    let (done, wait) = std::sync::mpsc::sync_channel(1);
    if access_queue().try_send(Queued::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(Duration::from_secs(1));
    }
}

/// The log writer: stderr, except access lines, which go through a queue to a writer thread,
/// so a request never waits on stderr (a full queue, e.g. a stalled log reader, makes requests
/// write their lines themselves: nothing is dropped).
#[derive(Clone, Copy, Debug)]
struct Stderr;

/// Where one log line goes.
enum LineWriter {
    Direct(std::io::Stderr),
    Access(Vec<u8>),
}

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LineWriter::Direct(e) => e.write(buf),
            LineWriter::Access(line) => {
                line.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LineWriter::Direct(e) => e.flush(),
            LineWriter::Access(_) => Ok(()),
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if let LineWriter::Access(line) = self {
            let line = std::mem::take(line);
            use std::sync::mpsc::TrySendError::{Disconnected, Full};
            if let Err(Full(Queued::Line(l)) | Disconnected(Queued::Line(l))) =
                access_queue().try_send(Queued::Line(line))
            {
                let _ = std::io::stderr().write_all(&l);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Direct(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        if meta.target() == ACCESS_TARGET {
            LineWriter::Access(Vec::with_capacity(512))
        } else {
            LineWriter::Direct(std::io::stderr())
        }
    }
}

/// The target of access lines.
const ACCESS_TARGET: &str = "x402_gateway::access";

/// The filter when `RUST_LOG` is unset: `[logging] level`, with rustls quieted to errors unless
/// the level names it (it warns on every client that sends an IP address as SNI, as curl and
/// wrk do).
fn default_filter(level: &str) -> String {
    if level.contains("rustls") {
        level.to_owned()
    } else {
        format!("{level},rustls=error")
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(c: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(&c.level)));
    // Colours only on a terminal: files, journald and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Stderr);
    let _ = match c.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_sane_client_ids_and_replace_others() {
        let ids = RequestIds::default();
        let sent = HeaderValue::from_static("abc-123");
        assert_eq!(ids.for_request(Some(&sent)), sent);
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_static("a b"),
            long,
        ] {
            let id = ids.for_request(Some(&bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32);
        }
        let (a, b) = (ids.generate(), ids.generate());
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
    }

    #[test]
    fn rustls_is_quiet_unless_asked_for() {
        assert_eq!(default_filter("info"), "info,rustls=error");
        assert_eq!(default_filter("debug,rustls=debug"), "debug,rustls=debug");
        assert!(EnvFilter::try_new(default_filter("warn,x402_gateway=debug")).is_ok());
    }

    #[test]
    fn trace_ids_only_from_valid_traceparents() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(Some(&HeaderValue::from_static(ok))),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(
                trace_id(Some(&HeaderValue::from_static(bad))),
                None,
                "{bad}"
            );
        }
        assert_eq!(trace_id(None), None);
    }
}
