//! Admission of a request head: free, priced, refused, or a payment to check and claim.
//!
//! Owns: [`Payments::admit`] and the request-side rules that are about money rather than HTTP
//! plumbing: CORS preflights on priced paths (answered here, never forwarded), method readings
//! (the method, upper-cased, and every override: headers and `_method`), `[server]
//! unlisted_methods`, body-size and rate limits on priced routes, and the order of the checks
//! of a payment: a retry of a pending payment first (redeemed by what was journaled, see
//! `payments/redeem.rs`), then the local checks, the claim (with a deferred route's exposure
//! reservation), and the facilitator's verdict when it must be asked.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::driver::Payment;
use super::{Admission, Early, Forward, Incoming, Payments, Routed};
use crate::config::{SettlementMode, UnlistedMethods};
use crate::error::{rescue, Answer, Asking, GatewayError};
use crate::flow::{Front, PaymentFlow};
use crate::journal::{Entry, JournalState};
use crate::ledger::exposure::micro_dollars;
use crate::ledger::{Claimed, Exposure, Spent};
use crate::limiter::RateLimiter;
use crate::pricing::{Lookup, PriceTable};
use crate::protocol::{PaymentPayload, PAYMENT_SIGNATURE, X_PAYMENT};
use crate::verify::{Checked, PaymentRejection};

/// Request headers that ask a framework to treat the request as another method. Stripped
/// before the upstream on priced paths, and read as method readings.
pub const METHOD_OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Request headers a browser client must be allowed to send (preflight).
pub const ALLOW_HEADERS: &str =
    "PAYMENT-SIGNATURE, X-PAYMENT, Access-Control-Expose-Headers, SIGN-IN-WITH-X, Content-Type";

impl Payments {
    /// Decides on a request head: forward (free, or with a verified payment) or answer now.
    /// `front` is the door asking (forward-auth settles before it allows).
    pub async fn admit(&self, req: Incoming<'_>, front: Front) -> Admission {
        // A borrowed snapshot serves unmatched paths without a refcount; an `Arc` is taken only
        // when a route matched and must outlive this call.
        let snapshot = self.table.load();
        if is_preflight(req) {
            if snapshot.covers_priced(req.target) {
                return early(self.preflight(req), None, None);
            }
            return forward(None, false, false);
        }
        let readings = method_readings(req);
        let routed = |table: &arc_swap::Guard<Arc<PriceTable>>, index: usize| Routed {
            table: Arc::clone(table),
            index,
        };
        let (index, charge_unlisted) = match snapshot.classify(&readings, req.target) {
            Lookup::None => return forward(None, false, false),
            Lookup::Route(r) if !r.is_priced() => {
                let (index, ws) = (r.rule.index, r.rule.websocket);
                return forward(Some(routed(&snapshot, index)), false, ws);
            }
            Lookup::FreeOnPricedPath(r) => {
                let (index, ws) = (r.rule.index, r.rule.websocket);
                return forward(Some(routed(&snapshot, index)), true, ws);
            }
            Lookup::Route(r) => (r.rule.index, false),
            Lookup::Unlisted { covering, allow } => match self.unlisted {
                UnlistedMethods::Pass => return forward(None, true, false),
                UnlistedMethods::Reject => {
                    let e = GatewayError::MethodNotAllowed { allow };
                    let answer = rescue(&e, None, asking(""));
                    return early(answer, None, Some(e.reason()));
                }
                UnlistedMethods::Charge => (covering.rule.index, true),
            },
        };
        let routed = routed(&snapshot, index);
        drop(snapshot);
        self.admit_priced(req, routed, charge_unlisted, front).await
    }

    async fn admit_priced(
        &self,
        req: Incoming<'_>,
        routed: Routed,
        unlisted: bool,
        front: Front,
    ) -> Admission {
        let route = routed.route();
        let url = self.resource_url(req);
        let refuse = |e: GatewayError, routed: Routed| {
            let answer = rescue(&e, Some(routed.route()), asking(&url));
            early(answer, Some(routed), Some(e.reason()))
        };
        if !self.is_ready() {
            // Payments that cannot be recorded (or before the journal was recovered) are not
            // taken; free routes keep working.
            return refuse(GatewayError::JournalUnavailable, routed);
        }
        if content_length(req.headers).is_some_and(|n| n > self.max_request_body) {
            return refuse(GatewayError::RequestTooLarge, routed);
        }
        // PAYMENT-SIGNATURE wins when both are sent; the version inside decides the protocol.
        let header = req
            .headers
            .get(PAYMENT_SIGNATURE)
            .or_else(|| req.headers.get(X_PAYMENT));
        let Some(header) = header else {
            if let Err(retry_after) = limit(self.challenges.as_ref(), req.client_ip, true) {
                return refuse(GatewayError::RateLimited { retry_after }, routed);
            }
            let answer = rescue(
                &GatewayError::PaymentRequired,
                Some(route),
                Asking {
                    url: &url,
                    browser: is_browser(req.headers),
                },
            );
            return early(answer, Some(routed), None);
        };
        if let Err(retry_after) = limit(self.failures.as_ref(), req.client_ip, false) {
            return refuse(GatewayError::RateLimited { retry_after }, routed);
        }
        let rejected = |r: PaymentRejection, routed: Routed| {
            let _ = limit(self.failures.as_ref(), req.client_ip, true);
            refuse(GatewayError::Rejected(r), routed)
        };
        let payload = match PaymentPayload::from_header(header.as_bytes()) {
            Ok(p) => p,
            Err(e) => return rejected(PaymentRejection::InvalidPayload(e.to_string()), routed),
        };
        // A retry of a pending payment is redeemed by what was journaled, before anything is
        // checked against today's price table.
        let websocket = route.rule.websocket && !unlisted;
        let routed = match self
            .redeem(req, routed, &url, &payload, websocket, front)
            .await
        {
            Ok(admission) => return admission,
            Err(routed) => routed,
        };
        let route = routed.route();
        let now_ms = self.clock.now_ms();
        let checked = match self.verifier.check(route, &payload, &url, now_ms / 1000) {
            Ok(c) => c,
            Err(r) => return rejected(r, routed),
        };
        let Checked {
            verified,
            ask_facilitator,
        } = checked;
        let id = self.ledger.next_id();
        let deferred = route.rule.settlement == SettlementMode::Deferred;
        let exposure = deferred.then(|| Exposure {
            key: verified.key.clone(),
            payer: verified.payer,
            micro: micro_dollars(
                verified.amount,
                route
                    .rule
                    .options
                    .get(verified.option)
                    .map_or(6, |o| o.asset.decimals),
            ),
            valid_before: verified.valid_before,
            threshold: route.rule.settle_first_above,
        });
        let deferral = match self
            .ledger
            .claim(
                &verified.key,
                verified.valid_before,
                id,
                exposure.as_ref(),
                now_ms,
            )
            .await
        {
            Claimed::Fresh(d) => d,
            // Another request holds the same authorization now: a retry of it is not a reason
            // to pay again (a 402 would make the client sign a second payment).
            Claimed::InFlight | Claimed::Spent(Spent::Settling) => {
                return refuse(GatewayError::InProgress, routed)
            }
            // Its answer went out (or was cut by a crash): never a 402, never the content again.
            Claimed::Spent(Spent::Answered) => {
                return refuse(GatewayError::AlreadyRedeemed, routed)
            }
            Claimed::Spent(Spent::Refused) => {
                return rejected(PaymentRejection::AlreadyUsed, routed)
            }
            Claimed::Full => return refuse(GatewayError::Busy, routed),
            Claimed::Unavailable => return refuse(GatewayError::JournalUnavailable, routed),
        };
        let reserved = matches!(deferral, Some(Ok(())));
        if let Some(Err(why)) = deferral {
            tracing::debug!(payer = %verified.payer, reason = why.as_str(), "deferred payment settled first");
            self.metrics
                .deferred_fallback(&route.rule.path, why.as_str());
        }
        let flow = PaymentFlow::new(
            route.rule.settlement,
            front,
            reserved,
            self.verifier.facilitator().batches(),
        );
        let entry = Entry {
            id,
            key: verified.key.clone(),
            pay_to: verified.pay_to,
            amount: verified.amount,
            network: verified.caip2.clone(),
            version: verified.version.number(),
            route: route.rule.path.clone(),
            resource: url.clone(),
            request: verified.facilitator_body.to_string(),
            valid_before: verified.valid_before,
            state: JournalState::Verified,
            transaction: None,
            reason: None,
            from_block: None,
            created_at: now_ms,
            updated_at: now_ms,
            released: false,
        };
        let ask = ask_facilitator.then(|| verified.facilitator_body.clone());
        let payment = Payment::new(
            flow,
            verified,
            entry,
            exposure.filter(|_| reserved),
            Some(routed.clone()),
            self.ledger.clone(),
        );
        if let Some(body) = ask {
            // The claim (and any reservation) is given back if this fails: the payment drops.
            let vb = payment.verified.valid_before;
            if let Err(e) = self
                .verifier
                .facilitator_verdict(&body, vb, now_ms / 1000)
                .await
            {
                let e = GatewayError::from(e);
                if e.status() == 402 {
                    let _ = limit(self.failures.as_ref(), req.client_ip, true);
                } else {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "payment not verified");
                }
                drop(payment);
                return refuse(e, routed);
            }
        }
        Admission::Forward(Box::new(Forward {
            route: Some(routed),
            payment: Some(payment),
            priced_path: true,
            websocket,
        }))
    }

    /// The answer to a request whose body has grown to `bytes`: `413` on a priced route above
    /// `[limits] max_request_body` (the upstream must not do paid work for free on a body it
    /// never fully gets), nothing otherwise.
    pub fn body_refused(&self, route: Option<&Routed>, bytes: u64) -> Option<Answer> {
        let priced = route.is_some_and(|r| r.route().is_priced());
        (priced && bytes > self.max_request_body)
            .then(|| rescue(&GatewayError::RequestTooLarge, None, asking("")))
    }

    /// The answer to a CORS preflight on a priced path: `204`, the CORS headers, the payment
    /// headers allowed. With `cors_allow_origin = ""` the gateway still answers (it never
    /// forwards a preflight on a priced path) but adds no CORS headers.
    fn preflight(&self, req: Incoming<'_>) -> Answer {
        let mut a = Answer::empty(204).with_header(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        if self.cors_origin.is_none() {
            return a;
        }
        if let Some(m) = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            a = a.with_header(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        let allow = match req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
        {
            Some(asked) if !asked.trim().is_empty() => {
                HeaderValue::from_str(&format!("{ALLOW_HEADERS}, {asked}"))
                    .unwrap_or(HeaderValue::from_static(ALLOW_HEADERS))
            }
            _ => HeaderValue::from_static(ALLOW_HEADERS),
        };
        a.with_header(header::ACCESS_CONTROL_ALLOW_HEADERS, allow)
            .with_header(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600))
    }

    /// The public URL of a request: the configured origin (or the client's scheme and host)
    /// followed by the request target as received.
    fn resource_url(&self, req: Incoming<'_>) -> String {
        match &self.public_url {
            Some(origin) => format!("{origin}{}", req.target),
            None => format!(
                "{}://{}{}",
                req.scheme,
                req.host.unwrap_or("localhost"),
                req.target
            ),
        }
    }
}

pub(super) fn asking(url: &str) -> Asking<'_> {
    Asking {
        url,
        browser: false,
    }
}

fn forward(route: Option<Routed>, priced_path: bool, websocket: bool) -> Admission {
    Admission::Forward(Box::new(Forward {
        route,
        payment: None,
        priced_path,
        websocket,
    }))
}

pub(super) fn early(
    answer: Answer,
    route: Option<Routed>,
    rejection: Option<crate::protocol::ErrorReason>,
) -> Admission {
    Admission::Answer(Box::new(Early {
        answer,
        route,
        payment: None,
        rejection,
    }))
}

/// Takes (or, with `take = false`, checks) a token of `limiter` for `ip`.
fn limit(limiter: Option<&RateLimiter>, ip: Option<IpAddr>, take: bool) -> Result<(), u32> {
    let (Some(l), Some(ip)) = (limiter, ip) else {
        return Ok(());
    };
    let now = crate::clock::now_ms();
    if take {
        l.take(ip, now)
    } else {
        l.check(ip, now)
    }
}

/// A real CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. Any
/// other `OPTIONS` is an ordinary method.
pub fn is_preflight(req: Incoming<'_>) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The methods a request may be read as: as received, upper-cased (some frameworks upper-case
/// method tokens), and any method override (`X-HTTP-Method-Override` and kin, `_method` in the
/// query, any case). The common request has one reading and costs no allocation.
pub fn method_readings(req: Incoming<'_>) -> std::borrow::Cow<'_, [Method]> {
    let upper = req.method.as_str().bytes().any(|b| b.is_ascii_lowercase());
    let overrides = METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|h| req.headers.contains_key(h));
    let query_override = query_method_override(req.target).is_some();
    if !upper && !overrides && !query_override {
        return std::borrow::Cow::Borrowed(std::slice::from_ref(req.method));
    }
    let mut out = vec![req.method.clone()];
    let mut add = |raw: &[u8]| {
        let up = raw.trim_ascii().to_ascii_uppercase();
        if let Ok(m) = Method::from_bytes(&up) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    };
    add(req.method.as_str().as_bytes());
    for h in &METHOD_OVERRIDE_HEADERS {
        for v in req.headers.get_all(h) {
            add(v.as_bytes());
        }
    }
    if let Some(query) = query_method_override(req.target) {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if k.eq_ignore_ascii_case("_method") {
                    add(v.as_bytes());
                }
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The query of `target` when it has a `_method` parameter (any case).
fn query_method_override(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .any(|p| {
            p.split_once('=')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case("_method"))
        })
        .then_some(query)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Accept` has `text/html` and `User-Agent` has `Mozilla`: the reference servers' test.
fn is_browser(h: &HeaderMap) -> bool {
    let has = |name, needle: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(needle))
    };
    has(header::ACCEPT, "text/html") && has(header::USER_AGENT, "Mozilla")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming<'a>(m: &'a Method, target: &'a str, h: &'a HeaderMap) -> Incoming<'a> {
        Incoming {
            method: m,
            target,
            headers: h,
            client_ip: None,
            scheme: "http",
            host: None,
        }
    }

    #[test]
    fn method_readings_cover_case_and_overrides() {
        let h = HeaderMap::new();
        let get = Method::GET;
        assert!(matches!(
            method_readings(incoming(&get, "/a", &h)),
            std::borrow::Cow::Borrowed(_)
        ));
        // A query that only mentions `_method` somewhere else is not an override.
        assert!(matches!(
            method_readings(incoming(&get, "/a?x=_method", &h)),
            std::borrow::Cow::Borrowed(_)
        ));
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(
            method_readings(incoming(&lower, "/a", &h)).as_ref(),
            [lower.clone(), Method::GET]
        );
        let mut h = HeaderMap::new();
        h.insert("x-http-method-override", HeaderValue::from_static("get"));
        h.insert("x-method-override", HeaderValue::from_static("DELETE"));
        let post = Method::POST;
        assert_eq!(
            method_readings(incoming(&post, "/a?_method=put&_METHOD=patch", &h)).as_ref(),
            [
                Method::POST,
                Method::GET,
                Method::DELETE,
                Method::PUT,
                Method::PATCH
            ]
        );
    }

    #[test]
    fn only_real_preflights_are_preflights() {
        let options = Method::OPTIONS;
        let mut h = HeaderMap::new();
        assert!(!is_preflight(incoming(&options, "/", &h)));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert!(!is_preflight(incoming(&options, "/", &h)));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        assert!(is_preflight(incoming(&options, "/", &h)));
        assert!(!is_preflight(incoming(&Method::GET, "/", &h)));
    }
}
