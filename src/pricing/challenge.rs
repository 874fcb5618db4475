//! Prepared 402 challenges: each route's `PAYMENT-REQUIRED` JSON, v1 body and facilitator
//! requirement objects are serialised once at start. A request only fills in the resource URL
//! and the error text.
//!
//! Owns: [`Challenge`], [`PreparedOption`] and the [`Template`] they render from.
//! Which options go into the v1 body: only those on a network a legacy client's schema accepts,
//! since one unreadable entry makes legacy `x402-fetch` throw on the whole challenge.

use bytes::Bytes;
use http::HeaderValue;

use crate::config::{PaymentOption, RouteRule};
use crate::protocol::{self, json_string, v1, v2};
use crate::scheme::exact::{self as exact, eip3009};

/// The v2 `error` when no payment was sent (as the reference servers write it).
pub const V2_PAYMENT_REQUIRED: &str = "Payment required";
/// The v1 `error` when no payment was sent (as the legacy servers write it).
pub const V1_PAYMENT_REQUIRED: &str = "X-PAYMENT header is required";

const URL_SENTINEL: &str = "\u{0}x402-url\u{0}";
const ERROR_SENTINEL: &str = "\u{0}x402-error\u{0}";

#[derive(Debug)]
enum Piece {
    Lit(String),
    Url,
    Error,
}

/// JSON text with slots for the resource URL and the error string.
#[derive(Debug)]
pub struct Template {
    pieces: Vec<Piece>,
    len: usize,
}

impl Template {
    /// Splits serialised JSON at the (quoted) sentinels.
    fn from_json(json: &str) -> Template {
        let url_q = json_string(URL_SENTINEL);
        let err_q = json_string(ERROR_SENTINEL);
        let mut pieces = Vec::new();
        let mut rest = json;
        loop {
            let u = rest.find(&url_q);
            let e = rest.find(&err_q);
            let (pos, qlen, piece) = match (u, e) {
                (Some(u), Some(e)) if e < u => (e, err_q.len(), Piece::Error),
                (Some(u), _) => (u, url_q.len(), Piece::Url),
                (None, Some(e)) => (e, err_q.len(), Piece::Error),
                (None, None) => {
                    if !rest.is_empty() {
                        pieces.push(Piece::Lit(rest.to_owned()));
                    }
                    break;
                }
            };
            if pos > 0 {
                pieces.push(Piece::Lit(rest[..pos].to_owned()));
            }
            pieces.push(piece);
            rest = &rest[pos + qlen..];
        }
        let len = pieces
            .iter()
            .map(|p| if let Piece::Lit(s) = p { s.len() } else { 0 })
            .sum();
        Template { pieces, len }
    }

    /// Fills the slots. `url` and `error` are plain strings; they are JSON-escaped here.
    pub fn render(&self, url: &str, error: &str) -> String {
        let (url_q, err_q) = (json_string(url), json_string(error));
        let mut out = String::with_capacity(self.len + 4 * url_q.len() + err_q.len());
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Url => out.push_str(&url_q),
                Piece::Error => out.push_str(&err_q),
            }
        }
        out
    }
}

/// One option with its facilitator requirement objects ready.
#[derive(Debug)]
pub struct PreparedOption {
    /// The EIP-712 domain separator of the option's token, computed once.
    pub domain_separator: alloy::primitives::B256,
    /// v2 `PaymentRequirements` JSON (no URL in it), prepared once.
    pub v2_requirements: Box<serde_json::value::RawValue>,
    /// v1 `PaymentRequirements` JSON with a URL slot; `None` when the option is not offered
    /// to v1 clients.
    pub v1_requirements: Option<Template>,
}

/// Everything a route answers with before it is paid.
#[derive(Debug)]
pub struct Challenge {
    v2: Template,
    v1: Template,
    html: String,
    /// Per option, in route order.
    pub options: Vec<PreparedOption>,
    /// Pre-rendered answer for routes with a fixed `resource`: (header value, v1 body).
    fixed: Option<(HeaderValue, Bytes)>,
    /// Answers rendered per URL, reused by later requests for the same URL.
    pub(crate) rendered: moka::sync::Cache<Box<str>, (HeaderValue, Bytes)>,
}

/// A header value from base64 text (always valid: base64 is visible ASCII), built without a
/// copy so kept answers are reused without copying or re-validating.
fn base64_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Bytes of rendered challenges kept per route (URL + header + body; about 300 answers of a
/// typical size). The URL comes from the client, so the cache is bounded by size, not count.
const RENDERED_BYTES_PER_ROUTE: u64 = 512 * 1024;
/// The size of one kept answer.
#[allow(clippy::borrowed_box)] // moka's weigher signature takes the key by reference
fn weigh_rendered(url: &Box<str>, (h, b): &(HeaderValue, Bytes)) -> u32 {
    u32::try_from(url.len() + h.len() + b.len()).unwrap_or(u32::MAX)
}

/// Longer URLs are rendered every time, never kept.
const MAX_CACHED_URL: usize = 1024;

fn v2_requirements(o: &PaymentOption) -> v2::PaymentRequirements {
    v2::PaymentRequirements {
        scheme: exact::NAME.into(),
        network: o.network.caip2().into(),
        amount: o.amount.to_string(),
        asset: o.asset.address.to_checksum(None),
        pay_to: o.pay_to.to_checksum(None),
        max_timeout_seconds: o.max_timeout_seconds,
        extra: v2::Eip712Extra {
            name: o.asset.name.clone(),
            version: o.asset.version.clone(),
        },
    }
}

fn v1_requirements(o: &PaymentOption, route: &RouteRule, v1_name: &str) -> v1::PaymentRequirements {
    v1::PaymentRequirements {
        scheme: exact::NAME.into(),
        network: v1_name.into(),
        max_amount_required: o.amount.to_string(),
        resource: URL_SENTINEL.into(),
        description: route.description.clone(),
        mime_type: route.mime_type.clone(),
        pay_to: o.pay_to.to_checksum(None),
        max_timeout_seconds: o.max_timeout_seconds,
        asset: o.asset.address.to_checksum(None),
        extra: v2::Eip712Extra {
            name: o.asset.name.clone(),
            version: o.asset.version.clone(),
        },
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Plain structs of strings and integers always serialise.
    serde_json::to_string(v).unwrap_or_default()
}

impl Challenge {
    /// Prepares a priced route's challenge. `v1_ok(option)` says whether the facilitator takes
    /// v1 payments for that option's network.
    pub fn new(route: &RouteRule, v1_ok: &dyn Fn(&PaymentOption) -> bool) -> Challenge {
        let v2_reqs: Vec<v2::PaymentRequirements> =
            route.options.iter().map(v2_requirements).collect();
        let v1_reqs: Vec<Option<v1::PaymentRequirements>> = route
            .options
            .iter()
            .map(|o| {
                let name = o
                    .network
                    .v1_name()
                    .filter(|_| o.network.legacy_v1_readable() && v1_ok(o))?;
                Some(v1_requirements(o, route, name))
            })
            .collect();
        let v2 = Template::from_json(&to_json(&v2::PaymentRequired {
            x402_version: 2,
            error: Some(ERROR_SENTINEL.into()),
            resource: v2::ResourceInfo {
                url: URL_SENTINEL.into(),
                description: route.description.clone(),
                mime_type: route.mime_type.clone(),
            },
            accepts: v2_reqs.clone(),
        }));
        let v1 = Template::from_json(&to_json(&v1::PaymentRequirementsResponse {
            x402_version: 1,
            error: ERROR_SENTINEL.into(),
            accepts: v1_reqs.iter().flatten().cloned().collect(),
        }));
        let options = v2_reqs
            .iter()
            .zip(&v1_reqs)
            .zip(&route.options)
            .map(|((r2, r1), o)| PreparedOption {
                domain_separator: eip3009::domain_separator(
                    &o.asset.name,
                    &o.asset.version,
                    o.network.chain_id(),
                    o.asset.address,
                ),
                v2_requirements: serde_json::value::to_raw_value(r2).unwrap_or_default(),
                v1_requirements: r1.as_ref().map(|r| Template::from_json(&to_json(r))),
            })
            .collect();
        let mut c = Challenge {
            html: paywall_html(route),
            v2,
            v1,
            options,
            fixed: None,
            rendered: moka::sync::Cache::builder()
                .weigher(weigh_rendered)
                .max_capacity(RENDERED_BYTES_PER_ROUTE)
                .build(),
        };
        if let Some(url) = &route.resource {
            c.fixed = Some((
                c.payment_required(url, V2_PAYMENT_REQUIRED),
                Bytes::from(c.v1_body(url, V1_PAYMENT_REQUIRED)),
            ));
        }
        c
    }

    /// `PAYMENT-REQUIRED` header value (base64 JSON) for a resource URL and error text.
    pub fn payment_required(&self, url: &str, error: &str) -> HeaderValue {
        base64_value(protocol::encode_header(
            self.v2.render(url, error).as_bytes(),
        ))
    }

    /// The v1 JSON body.
    pub fn v1_body(&self, url: &str, error: &str) -> String {
        self.v1.render(url, error)
    }

    /// The unpaid answer (header value, v1 body); pre-rendered when the route has a fixed
    /// `resource`, which is then used whatever `url` is.
    pub fn unpaid(&self, url: &str) -> (HeaderValue, Bytes) {
        if let Some((h, b)) = &self.fixed {
            return (h.clone(), b.clone());
        }
        if let Some(hit) = self.rendered.get(url) {
            return hit;
        }
        let answer = (
            self.payment_required(url, V2_PAYMENT_REQUIRED),
            Bytes::from(self.v1_body(url, V1_PAYMENT_REQUIRED)),
        );
        if url.len() <= MAX_CACHED_URL {
            self.rendered.insert(url.into(), answer.clone());
        }
        answer
    }

    /// The HTML page for browsers.
    pub fn html(&self, url: &str) -> String {
        self.html.replace("{{URL}}", &html_escape(url))
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn paywall_html(route: &RouteRule) -> String {
    let rows: String = route
        .options
        .iter()
        .map(|o| {
            format!(
                "<tr><td>{}</td><td>{} on {}</td><td><code>{}</code></td></tr>",
                html_escape(&o.display_price()),
                html_escape(&o.asset.symbol),
                html_escape(o.network.v1_name().unwrap_or(o.network.caip2())),
                o.pay_to.to_checksum(None)
            )
        })
        .collect();
    let description = if route.description.is_empty() {
        String::new()
    } else {
        format!("<p>{}</p>", html_escape(&route.description))
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>402 Payment Required</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}table{{border-collapse:collapse}}td,th{{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}}code{{font-size:.85em}}</style>
</head><body>
<h1>Payment required</h1>
<p>The resource <code>{{{{URL}}}}</code> is paid per request with the <a href="https://x402.org">x402</a> protocol.</p>
{description}
<table><tr><th>Price</th><th>Token</th><th>Pay to</th></tr>{rows}</table>
<h2>How to pay</h2>
<p>Use an x402 client, which reads this challenge, signs a USDC authorization and retries:</p>
<ul><li>JavaScript: <code>@x402/fetch</code> (<code>wrapFetchWithPayment</code>)</li>
<li>Python: <code>x402</code> (<code>x402HttpxClient</code>)</li>
<li>Command line: <code>x402-gateway pay {{{{URL}}}}</code></li></ul>
<p>Machine-readable requirements are in the <code>PAYMENT-REQUIRED</code> response header (x402 v2) and in the JSON body returned to non-browser clients (x402 v1).</p>
</body></html>
"#
    )
}
