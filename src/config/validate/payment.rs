//! `[payment]` and `[[route]]`: payment options (inheritance from `[payment]`, networks,
//! assets, prices) and route patterns.

use super::*;

// === [payment] and routes ===

/// An asset as written, before a network gives it meaning.
#[derive(Clone)]
pub(super) enum AssetSpec {
    Symbol(String),
    Address(Address),
    Custom(Asset),
}

/// Option fields at one level (`[payment]`, a route, or a `[[route.accept]]`).
#[derive(Clone, Default)]
pub(super) struct Level {
    pub(super) network: Option<Network>,
    pub(super) asset: Option<AssetSpec>,
    pub(super) pay_to: Option<Address>,
    pub(super) max_timeout_seconds: Option<u64>,
    pub(super) price: Option<Price>,
}

impl Level {
    /// Reads the option keys of a section; invalid values are reported and left unset.
    pub(super) fn read(s: &Section<'_>) -> Level {
        let network = s.str("network").and_then(|n| {
            let net = Network::parse(n);
            if net.is_none() {
                s.issue(
                    "network",
                    format!("`{n}` is not an EVM network: use a v1 name like \"base-sepolia\" or a CAIP-2 id like \"eip155:84532\""),
                );
            }
            net
        });
        let pay_to = s.str("pay_to").and_then(|a| {
            let addr = protocol::parse_address(a);
            if addr.is_none() {
                s.issue(
                    "pay_to",
                    format!("`{a}` is not an address (0x + 40 hex digits)"),
                );
            } else if let Some(why) = addr.as_ref().and_then(placeholder::placeholder) {
                // Kept, so that the routes relying on it report nothing more.
                s.issue("pay_to", format!("`{a}`: {why}"));
            }
            addr
        });
        let max_timeout_seconds = s.uint("max_timeout_seconds").and_then(|t| {
            if (1..=86_400).contains(&t) {
                Some(t)
            } else {
                s.issue("max_timeout_seconds", "must be between 1 and 86400");
                None
            }
        });
        let price = s
            .str_or_int("price")
            .and_then(|p| match money::parse_price(&p) {
                Ok(p) => Some(p),
                Err(e) => {
                    s.issue("price", e);
                    None
                }
            });
        Level {
            network,
            asset: read_asset(s),
            pay_to,
            max_timeout_seconds,
            price,
        }
    }

    /// `self` with unset fields taken from `parent`.
    pub(super) fn over(&self, parent: &Level) -> Level {
        Level {
            network: self.network.clone().or_else(|| parent.network.clone()),
            asset: self.asset.clone().or_else(|| parent.asset.clone()),
            pay_to: self.pay_to.or(parent.pay_to),
            max_timeout_seconds: self.max_timeout_seconds.or(parent.max_timeout_seconds),
            price: self.price.clone().or_else(|| parent.price.clone()),
        }
    }
}

pub(super) fn read_asset(s: &Section<'_>) -> Option<AssetSpec> {
    match s.raw("asset")? {
        toml::Value::String(a) if a.starts_with("0x") => match protocol::parse_address(a) {
            Some(addr) => Some(AssetSpec::Address(addr)),
            None => {
                s.issue("asset", format!("`{a}` is not a token address"));
                None
            }
        },
        toml::Value::String(sym) => Some(AssetSpec::Symbol(sym.clone())),
        toml::Value::Table(t) => {
            let a = s.sub("asset", t);
            let address = a.str("address").and_then(|x| {
                let addr = protocol::parse_address(x);
                if addr.is_none() {
                    a.issue("address", format!("`{x}` is not a token address"));
                }
                addr
            });
            let decimals = a.uint("decimals").and_then(|d| {
                if d <= 36 {
                    Some(d as u8)
                } else {
                    a.issue("decimals", "must be at most 36");
                    None
                }
            });
            let name = a.str("name");
            let version = a.str("version");
            let symbol = a.str("symbol");
            for (key, present) in [
                ("address", a.has("address")),
                ("decimals", a.has("decimals")),
                ("name", a.has("name")),
                ("version", a.has("version")),
            ] {
                if !present {
                    a.issue(key, "missing: a custom asset needs address, decimals, and its EIP-712 name and version");
                }
            }
            a.finish();
            let (address, decimals, name, version) = (address?, decimals?, name?, version?);
            let symbol = symbol.unwrap_or(name).to_owned();
            Some(AssetSpec::Custom(Asset {
                usd_stable: name.to_ascii_uppercase().contains("USD")
                    || symbol.to_ascii_uppercase().contains("USD"),
                symbol,
                address,
                decimals,
                name: name.to_owned(),
                version: version.to_owned(),
            }))
        }
        other => {
            s.issue(
                "asset",
                format!(
                    "expected a symbol, an address or a table, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

pub(super) struct Defaults {
    pub(super) level: Level,
    pub(super) settlement: SettlementMode,
    pub(super) deferred: DeferredConfig,
}

impl Defaults {
    pub(super) fn read(s: &Section<'_>) -> Defaults {
        let mut level = Level::read(s);
        if level.price.is_some() {
            s.issue("price", "prices belong to routes, not to [payment]");
            level.price = None;
        }
        let settlement = settlement(s).unwrap_or(SettlementMode::AfterResponse);
        let deferred = deferred(&s.table("deferred"));
        s.finish();
        Defaults {
            level,
            settlement,
            deferred,
        }
    }
}

/// `[payment.deferred]`.
fn deferred(s: &Section<'_>) -> DeferredConfig {
    let d = DeferredConfig::default();
    let max_delay = match s.duration("max_delay") {
        Some(t) if t.is_zero() || t > Duration::from_secs(3600) => {
            s.issue("max_delay", "must be between 1ms and 1h");
            d.max_delay
        }
        Some(t) => t,
        None => d.max_delay,
    };
    let concurrency = match s.uint("concurrency") {
        Some(n) if n == 0 || n > 1024 => {
            s.issue("concurrency", "must be between 1 and 1024");
            d.concurrency
        }
        Some(n) => usize::try_from(n).unwrap_or(d.concurrency),
        None => d.concurrency,
    };
    let c = DeferredConfig {
        max_per_payer: dollars(s, "max_per_payer").unwrap_or(d.max_per_payer),
        max_total: dollars(s, "max_total").unwrap_or(d.max_total),
        max_delay,
        settle_first_above: dollars(s, "settle_first_above"),
        concurrency,
    };
    if c.max_per_payer > c.max_total {
        s.issue(
            "max_per_payer",
            "is larger than max_total: one payer could take the whole allowance",
        );
    }
    s.finish();
    c
}

/// A dollar amount (`"$1.00"`) in micro-dollars.
pub(super) fn dollars(s: &Section<'_>, key: &'static str) -> Option<u128> {
    let text = s.str(key)?;
    let Ok(Price::Dollars(d)) = money::parse_price(text) else {
        s.issue(
            key,
            format!("`{text}` is not a dollar amount like \"$1.00\""),
        );
        return None;
    };
    match money::to_atomic(&d, 6).map(|v| u128::try_from(v).ok()) {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            s.issue(key, format!("`{text}` is too large"));
            None
        }
        Err(_) => {
            s.issue(
                key,
                format!("`{text}`: dollar amounts have at most 6 decimal places"),
            );
            None
        }
    }
}

pub(super) fn settlement(s: &Section<'_>) -> Option<SettlementMode> {
    match s.str("settlement")? {
        "after_response" => Some(SettlementMode::AfterResponse),
        "before_upstream" => Some(SettlementMode::BeforeUpstream),
        "deferred" => Some(SettlementMode::Deferred),
        other => {
            s.issue(
                "settlement",
                format!("`{other}` is not \"after_response\", \"before_upstream\" or \"deferred\""),
            );
            None
        }
    }
}

pub(super) fn route(index: usize, s: &Section<'_>, defaults: &Defaults) -> Option<RouteRule> {
    let path = s.str("path");
    if path.is_none() && !s.has("path") {
        s.issue(
            "path",
            "missing: the request path this price applies to, e.g. \"/weather/*\"",
        );
    }
    let pattern = path.and_then(|p| match parse_pattern(p) {
        Ok(pat) => Some(pat),
        Err(e) => {
            s.issue("path", e);
            None
        }
    });
    let methods = s.str_array("methods").map(|ms| {
        ms.iter()
            .filter_map(|m| {
                let up = m.to_ascii_uppercase();
                match Method::from_bytes(up.as_bytes()) {
                    Ok(method) if !up.is_empty() => Some(method),
                    _ => {
                        s.issue("methods", format!("`{m}` is not an HTTP method"));
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let description = s.str("description").unwrap_or("").to_owned();
    let mime_type = s.str("mime_type").unwrap_or("").to_owned();
    let resource = s.str("resource").and_then(|u| match parse_http_url(u) {
        Ok(_) => Some(u.to_owned()),
        Err(e) => {
            s.issue("resource", e);
            None
        }
    });
    let settlement = settlement(s).unwrap_or(defaults.settlement);
    let settle_first_above =
        dollars(s, "settle_first_above").or(defaults.deferred.settle_first_above);
    let websocket = s.bool("websocket").unwrap_or(false);
    let upstream = match s.str("upstream") {
        None | Some("default") => None,
        Some(name) => Some(name.to_owned()),
    };
    let own = Level::read(s);
    let accepts = s.tables("accept");
    let route_level = own.over(&defaults.level);
    let options = if accepts.is_empty() {
        match &own.price {
            None => {
                if !s.has("accept") {
                    s.issue("price", "missing: a price like \"$0.001\", or \"free\"");
                }
                Vec::new()
            }
            Some(Price::Free) => Vec::new(),
            Some(_) => option(s, &route_level).into_iter().collect(),
        }
    } else {
        if matches!(own.price, Some(Price::Free)) {
            s.issue(
                "price",
                "a free route cannot also list [[route.accept]] options",
            );
        }
        accepts
            .iter()
            .filter_map(|a| {
                let level = Level::read(a).over(&route_level);
                let opt = if matches!(level.price, Some(Price::Free)) {
                    a.issue("price", "an accepted payment option cannot be free");
                    None
                } else if level.price.is_none() {
                    a.issue("price", "missing: set it here or on the route");
                    None
                } else {
                    option(a, &level)
                };
                a.finish();
                opt
            })
            .collect()
    };
    s.finish();
    Some(RouteRule {
        index,
        path: path?.to_owned(),
        pattern: pattern?,
        methods,
        description,
        mime_type,
        resource,
        settlement,
        settle_first_above,
        options,
        websocket,
        upstream,
    })
}

/// Resolves one payment option; reports what is missing at `s`.
pub(super) fn option(s: &Section<'_>, level: &Level) -> Option<PaymentOption> {
    let network = level.network.clone().or_else(|| {
        s.issue(
            "network",
            "missing: set it here, on the route, or in [payment]",
        );
        None
    });
    let pay_to = level.pay_to.or_else(|| {
        s.issue(
            "pay_to",
            "missing: the address that receives payments; set it here or in [payment]",
        );
        None
    });
    let spec = level
        .asset
        .clone()
        .unwrap_or(AssetSpec::Symbol("USDC".into()));
    let network = network?;
    if let Some(i) = pay_to.and_then(|a| placeholder::public_dev_account(&a, &network)) {
        s.issue(
            "pay_to",
            format!("{} is anvil/hardhat development account #{i}, whose private key is public: on {network} anyone could take the payments; use your own address", pay_to.map(|a| a.to_checksum(None)).unwrap_or_default()),
        );
        return None;
    }
    let chain = network.chain_id();
    let asset = match spec {
        AssetSpec::Symbol(sym) => assets::by_symbol(chain, &sym).or_else(|| {
            let known = assets::symbols_on(chain);
            s.issue(
                "asset",
                if known.is_empty() {
                    format!("no built-in assets on {network}: give asset = {{ address, decimals, name, version }}")
                } else {
                    format!("`{sym}` is not a built-in asset on {network} (known: {})", known.join(", "))
                },
            );
            None
        }),
        AssetSpec::Address(addr) => assets::by_address(chain, addr).or_else(|| {
            s.issue(
                "asset",
                format!("{addr} is not a built-in asset on {network}: give asset = {{ address, decimals, name, version }}"),
            );
            None
        }),
        AssetSpec::Custom(a) => Some(a),
    }?;
    let price = level.price.as_ref()?;
    let amount = match money::resolve(price, &asset) {
        Ok(a) => a,
        Err(e) => {
            s.issue("price", e);
            return None;
        }
    };
    Some(PaymentOption {
        network,
        asset,
        amount,
        pay_to: pay_to?,
        max_timeout_seconds: level
            .max_timeout_seconds
            .unwrap_or(DEFAULT_MAX_TIMEOUT_SECONDS),
    })
}

/// Compiles a route `path`.
pub fn parse_pattern(p: &str) -> Result<RoutePattern, String> {
    if !p.starts_with('/') {
        return Err(format!("`{p}` must start with `/`"));
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{p}` contains `{}`: write the decoded path without query or escapes",
            c.escape_default()
        ));
    }
    let trimmed = p.trim_end_matches('/');
    let mut segments = Vec::new();
    let mut rest = false;
    let parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed[1..].split('/').collect()
    };
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" => return Err(format!("`{p}` has an empty segment (`//`)")),
            "." | ".." => return Err(format!("`{p}` has a `{seg}` segment")),
            "**" if i + 1 == parts.len() => rest = true,
            "**" => return Err(format!("`{p}`: `**` is only allowed as the last segment")),
            "*" => segments.push(Segment::Star),
            s if s.contains('*') => {
                return Err(format!(
                    "`{p}`: `*` must be a whole segment (`/a/*/b`), not part of `{s}`"
                ))
            }
            s => segments.push(Segment::Literal(s.to_lowercase())),
        }
    }
    Ok(RoutePattern { segments, rest })
}
