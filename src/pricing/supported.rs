//! The facilitator's `/supported` kinds as the price table needs them: checked against the
//! route options, and turned into the price table (v1 offered where the facilitator has the
//! network's v1 name).

use std::collections::HashSet;

use super::PriceTable;
use crate::config::{self, Config, PaymentOption};
use crate::protocol::{SupportedKind, SupportedResponse};

fn kind(version: u8, network: &str) -> SupportedKind {
    SupportedKind {
        x402_version: version,
        scheme: crate::scheme::exact::NAME.to_owned(),
        network: network.to_owned(),
    }
}

/// The facilitator's kinds as a set.
pub fn kinds(s: &SupportedResponse) -> HashSet<SupportedKind> {
    s.kinds.iter().cloned().collect()
}

/// Route options whose v2 kind `(2, exact, network)` the facilitator does not list, described
/// for the operator. v1 kinds are optional: an option without one is offered to v2 clients only.
pub fn unsupported_options(config: &Config, supported: &HashSet<SupportedKind>) -> Vec<String> {
    let mut out = Vec::new();
    for r in &config.routes {
        for (i, o) in r.options.iter().enumerate() {
            if !supported.contains(&kind(2, o.network.caip2())) {
                out.push(format!(
                    "route[{}] {} option {i}: (x402Version 2, exact, {})",
                    r.index,
                    r.path,
                    o.network.caip2()
                ));
            }
        }
    }
    out
}

/// The price table of `routes`, offering v1 payments where the facilitator's `kinds` list the
/// network's v1 name.
pub fn price_table(routes: Vec<config::RouteRule>, kinds: &HashSet<SupportedKind>) -> PriceTable {
    let v1_ok = |o: &PaymentOption| {
        o.network
            .v1_name()
            .is_some_and(|n| kinds.contains(&kind(1, n)))
    };
    PriceTable::new(routes, &v1_ok)
}
