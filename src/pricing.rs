//! The price table: which route a request falls under, and what that route charges.
//!
//! Owns: [`PriceTable`] (route list, trie matcher, prepared challenges) and the fail-closed
//! lookup rules of [`PriceTable::classify`]:
//! - a path has every reading an upstream router may give it (`pricing/path.rs`: encoded
//!   slashes both ways, `;` path parameters, Unicode case foldings), and a request has every
//!   method reading the caller found (the method, upper-cased, and any override); the request
//!   is charged if *any* (method, path) reading is priced, at the strictest such route;
//! - a path with a malformed escape matches the *strictest* priced route (highest price);
//! - `HEAD` falls under routes that list `GET` (routers answer `HEAD` with the `GET` handler);
//! - a method that no route lists, on a path a priced route covers, is [`Lookup::Unlisted`]:
//!   the caller rejects, charges or passes it per `[server] unlisted_methods`; so is a request
//!   any of whose method readings (an override) no route lists there, whatever the others.
//!
//! Does not own: which method readings a request has, `OPTIONS` preflights, verification.

pub mod challenge;
pub mod matcher;
pub mod path;
mod supported;

use alloy::primitives::U256;
use http::{HeaderValue, Method};

use crate::config::{PaymentOption, RouteRule};
pub use challenge::Challenge;
use matcher::Matcher;
use path::Readings;
pub use supported::{kinds, price_table, unsupported_options};

/// What a request falls under.
#[derive(Debug)]
pub enum Lookup<'t> {
    /// No route, and no priced route covers the path: the request passes through free.
    None,
    /// The route that applies (free or priced).
    Route(&'t PricedRoute),
    /// A free route that applies on a path a priced route also covers (for other methods):
    /// method overrides must not reach the upstream.
    FreeOnPricedPath(&'t PricedRoute),
    /// A priced route covers the path, but no route lists the method.
    Unlisted {
        /// The first priced route covering the path (what `unlisted_methods = "charge"` uses).
        covering: &'t PricedRoute,
        /// The methods routes list on this path, for the `Allow` header.
        allow: HeaderValue,
    },
}

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

    /// The route a request for `method` falls under (first match of the primary reading, or a
    /// priced match of any reading), or `None` (pass through free, or a method no route lists).
    /// `target` is the request target as received (`/path?query`).
    pub fn lookup(&self, method: &Method, target: &str) -> Option<&PricedRoute> {
        match self.classify(std::slice::from_ref(method), target) {
            Lookup::Route(r) | Lookup::FreeOnPricedPath(r) => Some(r),
            Lookup::None | Lookup::Unlisted { .. } => None,
        }
    }

    /// Classifies a request: `methods` are its method readings (primary first), `target` the
    /// request target as received.
    pub fn classify(&self, methods: &[Method], target: &str) -> Lookup<'_> {
        let readings = path::readings(target);
        if readings == Readings::Malformed {
            return self
                .strictest
                .map_or(Lookup::None, |i| Lookup::Route(&self.routes[i]));
        }
        let priced = |i: usize| self.routes[i].is_priced();
        let allows = |m: &Method, i: usize| {
            let r = &self.routes[i].rule;
            r.allows(m) || (m == Method::HEAD && r.allows(&Method::GET))
        };
        // The primary (method, path) reading decides, unless it is free and another is priced,
        // or another method reading is one no route lists: every reading counts (a proxy in
        // front forwards the override, and the upstream may act on it).
        let primary_method = methods.first().unwrap_or(&Method::GET);
        let primary = readings
            .primary()
            .and_then(|p| self.matcher.lookup(p, &|i| allows(primary_method, i)));
        if let Some(i) = primary.filter(|&i| priced(i) && methods.len() == 1) {
            return Lookup::Route(&self.routes[i]);
        }
        // Which priced route covers any reading, whatever the method: none (the common free
        // request) settles it in one lookup per reading.
        let covering = readings
            .iter()
            .filter_map(|p| self.matcher.lookup(p, &priced))
            .min();
        let Some(covering) = covering else {
            return primary.map_or(Lookup::None, |i| Lookup::Route(&self.routes[i]));
        };
        let mut best: Option<usize> = None;
        for p in readings.iter() {
            for m in methods {
                if let Some(i) = self.matcher.lookup(p, &|i| priced(i) && allows(m, i)) {
                    if best.is_none_or(|b| self.stricter(i, b)) {
                        best = Some(i);
                    }
                }
            }
        }
        // (A lower-case token's reading is its upper-case one, which is among the readings.)
        let unlisted = methods
            .iter()
            .filter(|m| !m.as_str().bytes().any(|b| b.is_ascii_lowercase()))
            .any(|m| {
                readings
                    .iter()
                    .all(|p| self.matcher.lookup(p, &|i| allows(m, i)).is_none())
            });
        if !unlisted {
            if let Some(i) = best {
                return Lookup::Route(&self.routes[i]);
            }
            // Nothing priced for any method reading, and a free route lists the method.
            if let Some(i) = primary {
                return Lookup::FreeOnPricedPath(&self.routes[i]);
            }
        }
        let covering = best.unwrap_or(covering);
        let mut listed: Vec<Method> = Vec::new();
        for p in readings.iter() {
            self.matcher.each(p, &mut |i| {
                for m in self.routes[i].rule.methods.iter().flatten() {
                    if !listed.contains(m) {
                        listed.push(m.clone());
                    }
                }
            });
        }
        if listed.contains(&Method::GET) && !listed.contains(&Method::HEAD) {
            listed.push(Method::HEAD);
        }
        let allow = listed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Lookup::Unlisted {
            covering: &self.routes[covering],
            allow: HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// Whether route `a` charges more than route `b` (ties: the earlier route).
    fn stricter(&self, a: usize, b: usize) -> bool {
        let (ra, rb) = (&self.routes[a].rule, &self.routes[b].rule);
        strictness(ra).cmp(&strictness(rb)).then(b.cmp(&a)).is_gt()
    }

    /// Whether any reading of `target` is covered by a priced route, whatever the method.
    pub fn covers_priced(&self, target: &str) -> bool {
        let readings = path::readings(target);
        if readings == Readings::Malformed {
            return self.strictest.is_some();
        }
        let covered = readings.iter().any(|p| {
            self.matcher
                .lookup(p, &|i| self.routes[i].is_priced())
                .is_some()
        });
        covered
    }
}

fn strictness(r: &RouteRule) -> U256 {
    r.options.first().map_or(U256::ZERO, |o| {
        o.amount
            .saturating_mul(U256::from(10u8).pow(U256::from(36u8.saturating_sub(o.asset.decimals))))
    })
}

#[doc(hidden)]
/// The price table of [`crate::config::test_config`] (every option offered to v1 clients too).
pub fn test_table(routes: &str) -> PriceTable {
    PriceTable::new(crate::config::test_config(routes).routes, &|_| true)
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
