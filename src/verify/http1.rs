//! A small HTTP/1.1 keep-alive client for the facilitator's per-payment calls (`POST /verify`,
//! `POST /settle`).
//!
//! Owns: the request bytes (prepared once per endpoint: request line, `Host`, content type and
//! the configured auth headers), a pool of idle connections (plain TCP or rustls), and reading
//! answers (`Content-Length`, chunked, or until close; at most [`MAX_RESPONSE_BYTES`]).
//!
//! Why not reqwest here: on the paid path a reqwest call costs more CPU than proxying the
//! request (a connection task, channels and a tower stack per call); this client writes one
//! buffer and reads the answer on the caller's task. `reqwest` still serves `/supported`.
//!
//! Retries: a request on a reused connection that fails before any answer byte arrives is
//! retried once on a new connection only when the server cannot have processed it (the write
//! failed, or the call is an idempotent `/verify`). A `/settle` whose answer was lost is never
//! re-sent: the caller treats it as an unknown outcome.

use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use crate::clock::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Largest facilitator answer read.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Idle connections kept.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are not reused, unless the server announced its own idle
/// timeout (`Keep-Alive: timeout=N`, then N − 1 s). Node's default is 5 s, so a connection that
/// sat idle longer may be closing as we write to it: a `/settle` lost that way is an unknown
/// outcome, so stale reuse is avoided rather than retried.
const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(4);

/// Why a call failed (no HTTP answer).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made: the request was certainly not processed.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The connection broke or the answer was not HTTP.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The answer is not valid HTTP/1.x or too large.
    #[error("invalid HTTP answer: {0}")]
    Protocol(&'static str),
}

impl TransportError {
    /// True when the request cannot have reached the server.
    pub fn is_connect(&self) -> bool {
        matches!(self, TransportError::Connect(_))
    }
}

/// Where a facilitator lives.
struct Target {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Http1Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Client")
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .finish_non_exhaustive()
    }
}

/// One endpoint's prepared request head, up to and including `Content-Length: `.
#[derive(Clone)]
pub struct Endpoint {
    head: Bytes,
    idempotent: bool,
}

/// The client: one per facilitator, shared by all requests.
pub struct Http1Client {
    target: Target,
    /// The base URL's path, without a trailing `/`.
    path_prefix: String,
    /// The `Host` header value.
    authority: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl Http1Client {
    /// A client for `base` (`http://host[:port][/path]` or `https://…`).
    ///
    /// # Errors
    /// A URL this client cannot use, or TLS setup failure.
    pub fn new(base: &str, connect_timeout: Duration) -> Result<Self, String> {
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("facilitator url `{base}`: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("facilitator url `{base}` is not http(s)")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("facilitator url `{base}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tls = if tls {
            use rustls_platform_verifier::ConfigVerifierExt;
            let mut config = tokio_rustls::rustls::ClientConfig::with_platform_verifier()
                .map_err(|e| format!("TLS setup: {e}"))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("facilitator host `{host}`: {e}"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Http1Client {
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            authority: uri
                .authority()
                .map_or(String::new(), |a| a.as_str().to_owned()),
            target: Target { host, port, tls },
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Prepares `POST {base path}{path}` with `headers` (name, value) on every call.
    pub fn endpoint(&self, path: &str, headers: &[(String, String)], idempotent: bool) -> Endpoint {
        let (prefix, authority) = (&self.path_prefix, &self.authority);
        let mut head = format!(
            "POST {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nAccept: application/json\r\nUser-Agent: x402-gateway/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("Content-Length: ");
        Endpoint {
            head: Bytes::from(head),
            idempotent,
        }
    }

    /// Sends `body` to `endpoint`; returns the status and body of the answer.
    ///
    /// # Errors
    /// [`TransportError`]; timeouts are the caller's (wrap the call).
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        body: &str,
    ) -> Result<(u16, Bytes), TransportError> {
        let mut request = Vec::with_capacity(endpoint.head.len() + 24 + body.len());
        request.extend_from_slice(&endpoint.head);
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body.as_bytes());

        if let Some(mut conn) = self.checkout() {
            match conn.exchange(&request).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        self.checkin(conn);
                    }
                    return Ok(answer);
                }
                // The server closed an idle connection as we sent: retry only what cannot have
                // been processed.
                Err(Failure {
                    error,
                    received: false,
                    written,
                }) if !written || endpoint.idempotent => {
                    tracing::debug!(%error, "stale facilitator connection; retrying on a new one");
                }
                Err(Failure { error, .. }) => return Err(error),
            }
        }
        let mut conn = self.connect().await?;
        let (answer, reusable) = conn.exchange(&request).await.map_err(|f| f.error)?;
        if reusable {
            self.checkin(conn);
        }
        Ok(answer)
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut conn) = idle.pop() {
            if conn.idle_since.elapsed() < conn.max_idle && conn.looks_alive() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = crate::clock::instant();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, TransportError> {
        let t = &self.target;
        let connect = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
            tcp.set_nodelay(true)?;
            let io = match &t.tls {
                None => Io::Plain(tcp),
                Some((connector, name)) => {
                    Io::Tls(Box::new(connector.connect(name.clone(), tcp).await?))
                }
            };
            Ok::<_, io::Error>(io)
        };
        let io = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| TransportError::Connect(io::ErrorKind::TimedOut.into()))?
            .map_err(TransportError::Connect)?;
        Ok(Conn {
            io,
            buf: Vec::with_capacity(4096),
            idle_since: crate::clock::instant(),
            max_idle: DEFAULT_MAX_IDLE,
        })
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

struct Conn {
    io: Io,
    buf: Vec<u8>,
    idle_since: Instant,
    max_idle: Duration,
}

/// A failed exchange: whether the request was fully written and whether any answer byte came.
struct Failure {
    error: TransportError,
    written: bool,
    received: bool,
}

impl Conn {
    /// False when the peer has closed or sent something unasked. Plain TCP is peeked; a TLS
    /// stream is read without waiting, so the TLS layer consumes what is pending (session
    /// tickets; a `close_notify` then reads as end of stream).
    fn looks_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match &mut self.io {
            Io::Plain(tcp) => tcp.poll_peek(&mut cx, &mut buf).is_pending(),
            // Anything ready (end of stream, an error, an unasked answer byte) means dead.
            Io::Tls(tls) => std::pin::Pin::new(tls.as_mut())
                .poll_read(&mut cx, &mut buf)
                .is_pending(),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.write_all(data).await,
            Io::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.len() >= MAX_RESPONSE_BYTES + 16 * 1024 {
            return Err(io::Error::other("answer too large"));
        }
        self.buf.reserve(8192);
        match &mut self.io {
            Io::Plain(s) => s.read_buf(&mut self.buf).await,
            Io::Tls(s) => s.read_buf(&mut self.buf).await,
        }
    }

    /// Writes a request and reads one answer; `true` when the connection can be reused.
    async fn exchange(&mut self, request: &[u8]) -> Result<((u16, Bytes), bool), Failure> {
        self.buf.clear();
        if let Err(e) = self.write_all(request).await {
            return Err(Failure {
                error: TransportError::Io(e),
                written: false,
                received: false,
            });
        }
        let fail = |error, received| Failure {
            error,
            written: true,
            received,
        };
        loop {
            match parse_response(&self.buf) {
                Ok(Parsed::Complete {
                    status,
                    body,
                    consumed,
                    keep_alive,
                    idle_timeout,
                }) => {
                    if let Some(t) = idle_timeout {
                        self.max_idle = t.saturating_sub(Duration::from_secs(1));
                    }
                    let reusable = keep_alive && consumed == self.buf.len();
                    return Ok(((status, body), reusable));
                }
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(fail(e, true)),
            }
            let received = !self.buf.is_empty();
            match self.read_more().await {
                Ok(0) => match parse_response_at_eof(&self.buf) {
                    Some(answer) => return Ok((answer, false)),
                    None => {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "facilitator closed the connection before answering",
                        );
                        return Err(fail(TransportError::Io(e), received));
                    }
                },
                Ok(_) => {}
                Err(e) => return Err(fail(TransportError::Io(e), received)),
            }
        }
    }
}

/// What a buffer holds so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    Complete {
        status: u16,
        body: Bytes,
        consumed: usize,
        keep_alive: bool,
        /// The server's announced idle timeout (`Keep-Alive: timeout=N`).
        idle_timeout: Option<Duration>,
    },
}

/// How the body of an answer ends.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Parses one answer from `buf` (skipping `1xx` interim answers).
fn parse_response(buf: &[u8]) -> Result<Parsed, TransportError> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(_) => return Err(TransportError::Protocol("malformed status line or headers")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            start += head_len;
            continue;
        }
        let mut framing = Framing::Close;
        let mut keep_alive = resp.version == Some(1);
        let mut idle_timeout = None;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or(TransportError::Protocol("bad content-length"))?;
                if n > MAX_RESPONSE_BYTES {
                    return Err(TransportError::Protocol("answer too large"));
                }
                match framing {
                    Framing::Length(m) if m != n => {
                        return Err(TransportError::Protocol("conflicting content-lengths"))
                    }
                    Framing::Chunked => {}
                    _ => framing = Framing::Length(n),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if contains_token(h.value, b"chunked") {
                    framing = Framing::Chunked;
                }
            } else if h.name.eq_ignore_ascii_case("keep-alive") {
                idle_timeout = std::str::from_utf8(h.value).ok().and_then(|v| {
                    v.split(',')
                        .find_map(|p| p.trim().strip_prefix("timeout="))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                });
            } else if h.name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, b"close") {
                    keep_alive = false;
                } else if contains_token(h.value, b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
        let body_start = start + head_len;
        if matches!(status, 204 | 304) {
            framing = Framing::Length(0);
        }
        return match framing {
            Framing::Length(n) if buf.len() >= body_start + n => Ok(Parsed::Complete {
                status,
                body: Bytes::copy_from_slice(&buf[body_start..body_start + n]),
                consumed: body_start + n,
                keep_alive,
                idle_timeout,
            }),
            Framing::Length(_) | Framing::Close => Ok(Parsed::Partial),
            Framing::Chunked => match dechunk(&buf[body_start..])? {
                Some((body, used)) => Ok(Parsed::Complete {
                    status,
                    body,
                    consumed: body_start + used,
                    keep_alive,
                    idle_timeout,
                }),
                None => Ok(Parsed::Partial),
            },
        };
    }
}

/// Runs the answer parsers over arbitrary bytes and checks what they claim (a fuzz target):
/// a complete answer never claims more bytes than it was given or a body over the cap.
#[doc(hidden)]
pub fn fuzz_parse(buf: &[u8]) {
    if let Ok(Parsed::Complete { body, consumed, .. }) = parse_response(buf) {
        assert!(
            consumed <= buf.len(),
            "consumed {consumed} of {}",
            buf.len()
        );
        assert!(body.len() <= MAX_RESPONSE_BYTES);
    }
    if let Some((_, body)) = parse_response_at_eof(buf) {
        assert!(body.len() <= buf.len());
    }
}

/// At end of stream, an answer framed by the close is complete.
fn parse_response_at_eof(mut buf: &[u8]) -> Option<(u16, Bytes)> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = loop {
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(buf) else {
            return None;
        };
        if !(100..200).contains(&resp.code.unwrap_or(0)) {
            break head_len;
        }
        // Skip an interim answer.
        buf = &buf[head_len..];
        resp = httparse::Response::new(&mut headers);
    };
    let framed = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    });
    (!framed && buf.len() - head_len <= MAX_RESPONSE_BYTES).then(|| {
        (
            resp.code.unwrap_or(0),
            Bytes::copy_from_slice(&buf[head_len..]),
        )
    })
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Decodes a complete chunked body; `None` while incomplete.
fn dechunk(mut data: &[u8]) -> Result<Option<(Bytes, usize)>, TransportError> {
    let total = data.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..line_end])
            .map_err(|_| TransportError::Protocol("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| TransportError::Protocol("bad chunk size"))?;
        if size > MAX_RESPONSE_BYTES - body.len() {
            return Err(TransportError::Protocol("answer too large"));
        }
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (ignored) end with an empty line.
            let mut rest = data;
            loop {
                let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                rest = &rest[end + 2..];
                if end == 0 {
                    return Ok(Some((Bytes::from(body), total - rest.len())));
                }
            }
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err(TransportError::Protocol("bad chunk terminator"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests;
