//! The price table: which route a request falls under, and what that route charges.
//!
//! Owns: [`PriceTable`] (route list, trie matcher, prepared challenges) and the fail-closed
//! lookup rules:
//! - paths are normalised as an upstream router would (`pricing/path.rs`);
//! - a path with a malformed escape matches the *strictest* priced route (highest price);
//! - an encoded slash is read both ways, and the request is charged if either reading is priced;
//! - `HEAD` falls under routes that list `GET` (routers answer `HEAD` with the `GET` handler).
//!
//! Does not own: `OPTIONS` preflight handling (`proxy`), verification (`verify`).

pub mod challenge;
pub mod matcher;
pub mod path;

use alloy::primitives::U256;
use http::Method;

use crate::config::{PaymentOption, RouteRule};
pub use challenge::Challenge;
use matcher::Matcher;
use path::Normalized;

/// A route with its prepared challenge.
#[derive(Debug)]
pub struct PricedRoute {
    /// The configuration of the route.
    pub rule: RouteRule,
    /// `None` for free routes.
    pub challenge: Option<Challenge>,
}

impl PricedRoute {
    /// Whether the route charges.
    pub fn is_priced(&self) -> bool {
        self.challenge.is_some()
    }
}

/// The compiled route table. Built once per configuration, read lock-free.
pub struct PriceTable {
    routes: Vec<PricedRoute>,
    matcher: Matcher,
    strictest: Option<usize>,
}

impl PriceTable {
    /// Compiles routes and prepares their challenges. `v1_ok(option)` says whether v1 payments
    /// can be taken for an option (the facilitator supports its v1 network name).
    pub fn new(routes: Vec<RouteRule>, v1_ok: &dyn Fn(&PaymentOption) -> bool) -> Self {
        let matcher = Matcher::new(routes.iter().map(|r| &r.pattern));
        let strictest = routes
            .iter()
            .filter(|r| !r.is_free())
            .max_by(|a, b| {
                // Highest first-option price, compared at a common 36 decimals; ties keep the
                // earlier route (max_by returns the last maximum, so compare reversed index).
                strictness(a)
                    .cmp(&strictness(b))
                    .then(b.index.cmp(&a.index))
            })
            .map(|r| r.index);
        let routes = routes
            .into_iter()
            .map(|rule| PricedRoute {
                challenge: (!rule.is_free()).then(|| Challenge::new(&rule, v1_ok)),
                rule,
            })
            .collect();
        PriceTable {
            routes,
            matcher,
            strictest,
        }
    }

    /// All routes, in file order.
    pub fn routes(&self) -> &[PricedRoute] {
        &self.routes
    }

    /// The route a request falls under, or `None` (pass through free). `target` is the request
    /// target as received (`/path?query`).
    pub fn lookup(&self, method: &Method, target: &str) -> Option<&PricedRoute> {
        let allowed = |i: usize| {
            let r = &self.routes[i].rule;
            r.allows(method) || (method == Method::HEAD && r.allows(&Method::GET))
        };
        let index = match path::normalize(target) {
            Normalized::Clean(p) => self.matcher.lookup(&p, &allowed),
            Normalized::Ambiguous(a, b) => {
                let ia = self.matcher.lookup(&a, &allowed);
                let ib = self.matcher.lookup(&b, &allowed);
                let priced = |i: &Option<usize>| i.is_some_and(|i| self.routes[i].is_priced());
                if priced(&ia) || !priced(&ib) {
                    ia.or(ib)
                } else {
                    ib
                }
            }
            Normalized::Malformed => self.strictest,
        };
        index.map(|i| &self.routes[i])
    }
}

fn strictness(r: &RouteRule) -> U256 {
    r.options.first().map_or(U256::ZERO, |o| {
        o.amount
            .saturating_mul(U256::from(10u8).pow(U256::from(36u8.saturating_sub(o.asset.decimals))))
    })
}

#[cfg(test)]
mod tests;
