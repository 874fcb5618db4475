//! `x402-gateway pay`: a curl for x402. Requests a URL; on a 402 signs an EIP-3009 authorization
//! for the first payable option, retries once, and prints the response, the decoded receipt and
//! the transaction hash.

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;
use x402_gateway::config::{assets, money};
use x402_gateway::protocol::{self, v1, v2, Network};
use x402_gateway::{client, verify};

/// What to request and how much may be paid (the `pay` command's arguments).
#[derive(clap::Args, Debug)]
pub(crate) struct PayArgs {
    /// Name of the environment variable holding the payer's private key.
    #[arg(long = "key", default_value = "X402_PAYER_KEY")]
    pub(crate) key_env: String,
    /// Refuse to pay more than this: "$0.10", "0.10 USDC", or atomic units "100000".
    #[arg(long, default_value = "$0.10")]
    pub(crate) max: String,
    /// HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub(crate) method: String,
    /// Request header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    pub(crate) headers: Vec<String>,
    /// Request body.
    #[arg(short = 'd', long)]
    pub(crate) data: Option<String>,
    /// Pay with protocol version 1 (X-PAYMENT, the JSON body challenge) instead of 2.
    #[arg(long)]
    pub(crate) v1: bool,
    /// The URL to request.
    pub(crate) url: String,
}

/// An option the payer can afford: index and a description.
struct Choice {
    index: usize,
    describe: String,
}

/// Whether `amount` of `asset` on `network` is within `max`, and how to describe it.
fn affordable(
    max: &money::Price,
    network: &str,
    asset: &str,
    amount: &str,
) -> Result<String, String> {
    let net = Network::parse(network)
        .ok_or_else(|| format!("network {network} is not an EVM network"))?;
    let amount = protocol::parse_uint(amount).ok_or("malformed amount")?;
    let addr = protocol::parse_address(asset).ok_or("malformed asset")?;
    let known = assets::by_address(net.chain_id(), addr);
    let limit: U256 = match (max, &known) {
        (money::Price::Atomic(a), _) => *a,
        (p, Some(a)) => money::resolve(p, a)?,
        (_, None) => {
            return Err(format!(
                "unknown token {asset} on {network}: give --max in atomic units"
            ))
        }
    };
    if amount > limit {
        return Err(format!(
            "costs {amount} atomic units, more than --max ({limit})"
        ));
    }
    Ok(match known {
        Some(a) => format!(
            "${} ({amount} atomic {} on {})",
            money::format_units(amount, a.decimals),
            a.symbol,
            net.caip2()
        ),
        None => format!("{amount} atomic units of {asset} on {}", net.caip2()),
    })
}

fn choose<'a>(
    max: &money::Price,
    options: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a str)>,
) -> Result<Choice, String> {
    let mut reasons = Vec::new();
    for (index, (scheme, network, asset, amount)) in options.enumerate() {
        if scheme != x402_gateway::scheme::exact::NAME {
            reasons.push(format!("option {index}: scheme {scheme}"));
            continue;
        }
        match affordable(max, network, asset, amount) {
            Ok(describe) => return Ok(Choice { index, describe }),
            Err(e) => reasons.push(format!("option {index}: {e}")),
        }
    }
    Err(format!("no payable option ({})", reasons.join("; ")))
}

fn request(
    http: &reqwest::Client,
    a: &PayArgs,
    payment: Option<(&str, &str)>,
) -> Result<reqwest::RequestBuilder, String> {
    let method = reqwest::Method::from_bytes(a.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("bad method {}", a.method))?;
    let mut req = http.request(method, &a.url);
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} is not \"Name: value\""))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(d) = &a.data {
        req = req.body(d.clone());
    }
    if let Some((name, value)) = payment {
        req = req.header(name, value);
    }
    Ok(req)
}

/// Runs the command; `Ok(true)` when the final answer is 2xx.
pub(crate) async fn run(a: PayArgs) -> Result<bool, String> {
    let key = std::env::var(&a.key_env)
        .map_err(|_| format!("set {} to the payer's private key", a.key_env))?;
    let signer: PrivateKeySigner = key
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a private key", a.key_env))?;
    let max = money::parse_price(&a.max).map_err(|e| format!("--max: {e}"))?;
    verify::facilitator::install_crypto_provider();
    let http = reqwest::Client::new();
    let first = request(&http, &a, None)?
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if first.status() != 402 {
        eprintln!("HTTP {} (no payment asked)", first.status());
        return finish(first).await;
    }
    let header = first.headers().get(protocol::PAYMENT_REQUIRED).cloned();
    let body = first.bytes().await.map_err(|e| e.to_string())?;
    let now = x402_gateway::clock::unix_now();
    let nonce = client::random_nonce();
    let (name, value, describe) = match (header, a.v1) {
        (Some(h), false) => {
            let required: v2::PaymentRequired = serde_json::from_slice(
                &protocol::decode_header(h.as_bytes()).map_err(|e| e.to_string())?,
            )
            .map_err(|e| format!("PAYMENT-REQUIRED is not a v2 challenge: {e}"))?;
            let c = choose(
                &max,
                required.accepts.iter().map(|r| {
                    (
                        r.scheme.as_str(),
                        r.network.as_str(),
                        r.asset.as_str(),
                        r.amount.as_str(),
                    )
                }),
            )?;
            let value = client::sign_v2(&signer, &required, c.index, now, nonce)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "HTTP 402: {} asks for {}",
                required.resource.url, c.describe
            );
            ("PAYMENT-SIGNATURE", value, c.describe)
        }
        _ => {
            let required: v1::PaymentRequirementsResponse = serde_json::from_slice(&body)
                .map_err(|e| format!("the 402 body is not a v1 challenge: {e}"))?;
            let c = choose(
                &max,
                required.accepts.iter().map(|r| {
                    (
                        r.scheme.as_str(),
                        r.network.as_str(),
                        r.asset.as_str(),
                        r.max_amount_required.as_str(),
                    )
                }),
            )?;
            let value = client::sign_v1(&signer, &required.accepts[c.index], now, nonce)
                .map_err(|e| e.to_string())?;
            eprintln!("HTTP 402 (v1): asks for {}", c.describe);
            ("X-PAYMENT", value, c.describe)
        }
    };
    eprintln!(
        "paying {describe} from {} (nonce {nonce})",
        signer.address()
    );
    let paid = request(&http, &a, Some((name, &value)))?
        .send()
        .await
        .map_err(|e| format!("paid request failed: {e}"))?;
    eprintln!("HTTP {}", paid.status());
    for h in [protocol::PAYMENT_RESPONSE, protocol::X_PAYMENT_RESPONSE] {
        if let Some(v) = paid.headers().get(&h) {
            let json = protocol::decode_header(v.as_bytes()).map_err(|e| e.to_string())?;
            eprintln!(
                "{}: {}",
                h.as_str().to_ascii_uppercase(),
                String::from_utf8_lossy(&json)
            );
            if let Ok(r) = serde_json::from_slice::<protocol::SettleResponse>(&json) {
                if r.is_success() {
                    eprintln!("transaction: {}", r.transaction.unwrap_or_default());
                }
            }
        }
    }
    if let Some(status) = paid.headers().get(protocol::X_PAYMENT_STATUS) {
        eprintln!(
            "settlement: {} (deferred: the gateway settles it in the background)",
            String::from_utf8_lossy(status.as_bytes())
        );
    }
    if paid.status() == 402 {
        if let Some(h) = paid.headers().get(protocol::PAYMENT_REQUIRED) {
            if let Ok(r) = serde_json::from_slice::<v2::PaymentRequired>(
                &protocol::decode_header(h.as_bytes()).unwrap_or_default(),
            ) {
                eprintln!("refused: {}", r.error.unwrap_or_default());
            }
        }
    }
    finish(paid).await
}

async fn finish(resp: reqwest::Response) -> Result<bool, String> {
    let ok = resp.status().is_success();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    outln!("{}", String::from_utf8_lossy(&body));
    Ok(ok)
}
