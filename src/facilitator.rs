//! The embedded facilitator: verifies and settles `exact` EVM payments itself, over JSON-RPC,
//! so the gateway needs no third-party facilitator (no API key, no vendor in the money path).
//!
//! Owns: [`EmbeddedFacilitator`] (an implementation of [`Facilitator`]) and the standalone
//! facilitator HTTP server (`facilitator/server.rs`).
//! - verify: the local checks of `verify::local`, then on chain: `authorizationState(from,
//!   nonce)` unused, `balanceOf(from) ≥ value`, and an `eth_call` simulation of
//!   `transferWithAuthorization`. Reasons are named as the reference facilitators name them.
//! - settle: the same checks without simulation, then `transferWithAuthorization` (the
//!   `v, r, s` overload for 65-byte signatures, the `bytes` overload otherwise) from one of the
//!   signer keys, chosen round-robin. Each signer keeps its own nonce, taken from the pending
//!   count at first use and again after any send error (so a restart or a failed send never
//!   causes a "nonce too low" storm). The receipt is awaited up to `settle_timeout`; on timeout
//!   `authorizationState` decides: used means settled, otherwise the answer is
//!   `settlement_pending` with the transaction hash (never "failed").
//!
//! Keys come from the environment only (`config`), are never logged, and the `Debug` of the
//! configuration redacts them.

pub mod server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Mutex;

use crate::config::{Asset, EmbeddedConfig, PaymentOption};
use crate::protocol::{
    evm, parse_address, parse_uint, v2::Eip712Extra, Network, PaymentPayload, SettleResponse,
    SupportedKind, SupportedResponse, VerifyResponse,
};
use crate::verify::{local, unix_now, Facilitator, FacilitatorError};

alloy::sol! {
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    function balanceOf(address account) external view returns (uint256);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
}

/// Why the embedded facilitator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// An RPC URL does not parse.
    #[error("invalid RPC URL for {0}")]
    Url(String),
    /// A signer key does not parse (the key itself is never printed).
    #[error("signer key {0} is not a valid private key")]
    Key(usize),
    /// An RPC endpoint serves another chain than its network says.
    #[error("the RPC for {network} is on chain {got}")]
    ChainMismatch {
        /// The configured network.
        network: String,
        /// The chain id the RPC reported.
        got: u64,
    },
    /// An RPC endpoint does not answer.
    #[error("the RPC for {network} does not answer: {message}")]
    Rpc {
        /// The configured network.
        network: String,
        /// The transport error.
        message: String,
    },
}

struct Signer {
    address: Address,
    provider: DynProvider,
    /// Next nonce to use; `None`: read the pending count first.
    nonce: Mutex<Option<u64>>,
}

struct Chain {
    network: Network,
    reader: DynProvider,
    signers: Vec<Signer>,
    next: AtomicUsize,
}

impl Chain {
    fn signer(&self) -> &Signer {
        &self.signers[self.next.fetch_add(1, Ordering::Relaxed) % self.signers.len()]
    }
}

/// A facilitator that settles on chain itself.
pub struct EmbeddedFacilitator {
    chains: Vec<Chain>,
    receipt_timeout: Duration,
}

/// A request that passed every check: what settlement needs.
struct Checked<'a> {
    chain: &'a Chain,
    payload: PaymentPayload,
    asset: Address,
    network_name: String,
}

/// A verdict of "invalid", with the payer when known.
struct Invalid {
    reason: &'static str,
    message: String,
    payer: Option<Address>,
    network: String,
}

fn invalid(reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
        payer: None,
        network: String::new(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    x402_version: serde_json::Value,
    #[serde(borrow)]
    payment_payload: &'a RawValue,
    payment_requirements: WireRequirements,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequirements {
    scheme: String,
    network: String,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    max_amount_required: Option<String>,
    asset: String,
    pay_to: String,
    #[serde(default)]
    extra: Option<serde_json::Value>,
}

fn rpc_error(e: impl std::fmt::Display) -> FacilitatorError {
    FacilitatorError::Chain(e.to_string())
}

/// Maps a revert or RPC error text of `transferWithAuthorization` to a reference reason.
fn revert_reason(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("authorization is used") || m.contains("used or canceled") {
        "invalid_exact_evm_nonce_already_used"
    } else if m.contains("exceeds balance") {
        "invalid_exact_evm_insufficient_balance"
    } else if m.contains("invalid signature") {
        "invalid_exact_evm_signature"
    } else if m.contains("not yet valid") {
        "invalid_exact_evm_payload_authorization_valid_after"
    } else if m.contains("authorization is expired") {
        "invalid_exact_evm_payload_authorization_valid_before"
    } else {
        "invalid_exact_evm_transaction_simulation_failed"
    }
}

impl EmbeddedFacilitator {
    /// Connects to every configured chain, checking that each RPC serves the chain its network
    /// names.
    ///
    /// # Errors
    /// [`EmbeddedError`].
    pub async fn connect(
        c: &EmbeddedConfig,
        receipt_timeout: Duration,
    ) -> Result<Self, EmbeddedError> {
        crate::verify::facilitator::install_crypto_provider();
        let mut keys = Vec::with_capacity(c.signer_keys.len());
        for (i, k) in c.signer_keys.iter().enumerate() {
            keys.push(
                k.expose()
                    .parse::<PrivateKeySigner>()
                    .map_err(|_| EmbeddedError::Key(i))?,
            );
        }
        let mut chains = Vec::new();
        for (network, url) in &c.rpc {
            let parsed: reqwest::Url = url
                .parse()
                .map_err(|_| EmbeddedError::Url(network.to_string()))?;
            let reader = ProviderBuilder::new()
                .disable_recommended_fillers()
                .connect_http(parsed.clone())
                .erased();
            let got = reader
                .get_chain_id()
                .await
                .map_err(|e| EmbeddedError::Rpc {
                    network: network.to_string(),
                    message: e.to_string(),
                })?;
            if got != network.chain_id() {
                return Err(EmbeddedError::ChainMismatch {
                    network: network.to_string(),
                    got,
                });
            }
            let signers = keys
                .iter()
                .map(|k| Signer {
                    address: k.address(),
                    provider: ProviderBuilder::new()
                        .disable_recommended_fillers()
                        .wallet(EthereumWallet::from(k.clone()))
                        .connect_http(parsed.clone())
                        .erased(),
                    nonce: Mutex::new(None),
                })
                .collect();
            chains.push(Chain {
                network: network.clone(),
                reader,
                signers,
                next: AtomicUsize::new(0),
            });
        }
        Ok(EmbeddedFacilitator {
            chains,
            receipt_timeout,
        })
    }

    /// The addresses that submit settlements.
    pub fn signer_addresses(&self) -> Vec<Address> {
        self.chains
            .first()
            .map(|c| c.signers.iter().map(|s| s.address).collect())
            .unwrap_or_default()
    }

    /// Every check of a facilitator request; `simulate` adds the `eth_call` of the transfer.
    async fn check(
        &self,
        body: &str,
        simulate: bool,
    ) -> Result<Result<Checked<'_>, Invalid>, FacilitatorError> {
        let Ok(req) = serde_json::from_str::<WireRequest<'_>>(body) else {
            return Ok(Err(invalid(
                "invalid_payload",
                "the request is not an x402 facilitator request",
            )));
        };
        let payload = match PaymentPayload::from_json(req.payment_payload.get().as_bytes()) {
            Ok(p) => p,
            Err(e) => return Ok(Err(invalid("invalid_payload", e.to_string()))),
        };
        let r = &req.payment_requirements;
        if req.x402_version.as_u64() != Some(u64::from(payload.version.number())) {
            return Ok(Err(invalid(
                "invalid_x402_version",
                "x402Version differs from the payload's",
            )));
        }
        if r.scheme != "exact" || payload.scheme != "exact" {
            return Ok(Err(invalid(
                "invalid_exact_evm_scheme",
                "only the exact scheme is supported",
            )));
        }
        let Some(network) = Network::parse(&r.network) else {
            return Ok(Err(invalid(
                "invalid_network",
                format!("unknown network {}", r.network),
            )));
        };
        if !network.is_named(&payload.network) {
            return Ok(Err(invalid(
                "invalid_exact_evm_network_mismatch",
                "payload and requirements name different networks",
            )));
        }
        let Some(chain) = self.chains.iter().find(|c| c.network == network) else {
            return Ok(Err(invalid(
                "invalid_network",
                format!("no RPC configured for {network}"),
            )));
        };
        let extra: Option<Eip712Extra> =
            r.extra.clone().and_then(|e| serde_json::from_value(e).ok());
        let Some(extra) = extra else {
            return Ok(Err(invalid(
                "invalid_exact_evm_missing_eip712_domain",
                "extra.name and extra.version are required",
            )));
        };
        let amount = r
            .amount
            .as_deref()
            .or(r.max_amount_required.as_deref())
            .and_then(parse_uint);
        let (Some(asset), Some(pay_to), Some(amount)) =
            (parse_address(&r.asset), parse_address(&r.pay_to), amount)
        else {
            return Ok(Err(invalid(
                "invalid_payment_requirements",
                "asset, payTo or amount is malformed",
            )));
        };
        let option = PaymentOption {
            domain_separator: evm::domain_separator(
                &extra.name,
                &extra.version,
                network.chain_id(),
                asset,
            ),
            network: network.clone(),
            asset: Asset {
                symbol: String::new(),
                address: asset,
                decimals: 0,
                name: extra.name,
                version: extra.version,
                usd_stable: false,
            },
            amount,
            pay_to,
            max_timeout_seconds: 0,
        };
        let network_name = if payload.version.number() == 1 {
            network.v1_name().unwrap_or_default().to_owned()
        } else {
            network.caip2().to_owned()
        };
        let a = payload.payload.authorization.clone();
        let with = |mut i: Invalid| {
            i.payer = Some(a.from);
            i.network = network_name.clone();
            i
        };
        if let Err(e) = local::check_payment(&payload, &option, unix_now()) {
            let reason = match e {
                local::PaymentRejection::RecipientMismatch => {
                    "invalid_exact_evm_recipient_mismatch"
                }
                local::PaymentRejection::AmountMismatch { .. } => {
                    "invalid_exact_evm_authorization_value"
                }
                local::PaymentRejection::NotYetValid => {
                    "invalid_exact_evm_payload_authorization_valid_after"
                }
                local::PaymentRejection::Expired => {
                    "invalid_exact_evm_payload_authorization_valid_before"
                }
                _ => "invalid_exact_evm_signature",
            };
            return Ok(Err(with(invalid(reason, e.to_string()))));
        }
        let read = |input: Bytes| {
            chain.reader.call(
                TransactionRequest::default()
                    .with_to(asset)
                    .with_input(input),
            )
        };
        let state = read(
            authorizationStateCall {
                authorizer: a.from,
                nonce: a.nonce,
            }
            .abi_encode()
            .into(),
        );
        let balance = read(balanceOfCall { account: a.from }.abi_encode().into());
        let (state, balance) = tokio::join!(state, balance);
        let used = authorizationStateCall::abi_decode_returns(&state.map_err(rpc_error)?)
            .map_err(rpc_error)?;
        if used {
            return Ok(Err(with(invalid(
                "invalid_exact_evm_nonce_already_used",
                "this authorization was already used on chain",
            ))));
        }
        let balance: U256 =
            balanceOfCall::abi_decode_returns(&balance.map_err(rpc_error)?).map_err(rpc_error)?;
        if balance < a.value {
            return Ok(Err(with(invalid(
                "invalid_exact_evm_insufficient_balance",
                format!("balance {balance} is less than {}", a.value),
            ))));
        }
        if simulate {
            let tx = transfer_request(chain.signers[0].address, asset, &payload);
            if let Err(e) = chain.reader.call(tx).await {
                let text = e.to_string();
                // A transport failure is an outage, not a verdict.
                if e.as_error_resp().is_none() {
                    return Err(rpc_error(text));
                }
                return Ok(Err(with(invalid(revert_reason(&text), text))));
            }
        }
        Ok(Ok(Checked {
            chain,
            payload,
            asset,
            network_name,
        }))
    }

    /// Submits the transfer and waits for its receipt (see [`wait_receipt`]).
    async fn submit(&self, c: &Checked<'_>) -> Result<SettleResponse, FacilitatorError> {
        let a = &c.payload.payload.authorization;
        let payer = Some(a.from.to_checksum(None));
        let done = |success: bool, reason: Option<&str>, tx: String| SettleResponse {
            success: Some(success),
            error_reason: reason.map(str::to_owned),
            error_message: None,
            payer: payer.clone(),
            transaction: Some(tx),
            network: Some(c.network_name.clone()),
        };
        let signer = c.chain.signer();
        let tx = transfer_request(signer.address, c.asset, &c.payload);
        let gas = match c.chain.reader.estimate_gas(tx.clone()).await {
            Ok(g) => g,
            Err(e) if e.as_error_resp().is_some() => {
                return Ok(done(
                    false,
                    Some(revert_reason(&e.to_string())),
                    String::new(),
                ));
            }
            Err(e) => return Err(rpc_error(e)),
        };
        let fees = c
            .chain
            .reader
            .estimate_eip1559_fees()
            .await
            .map_err(rpc_error)?;
        let tx = tx
            .with_chain_id(c.chain.network.chain_id())
            .with_gas_limit(gas.saturating_mul(12) / 10)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let pending = {
            let mut next = signer.nonce.lock().await;
            let nonce = match *next {
                Some(n) => n,
                None => c
                    .chain
                    .reader
                    .get_transaction_count(signer.address)
                    .pending()
                    .await
                    .map_err(rpc_error)?,
            };
            match signer.provider.send_transaction(tx.with_nonce(nonce)).await {
                Ok(p) => {
                    *next = Some(nonce + 1);
                    p
                }
                Err(e) => {
                    // Resynchronise from the chain next time, whatever happened.
                    *next = None;
                    tracing::warn!(error = %e, signer = %signer.address, "settlement transaction not sent");
                    return Err(rpc_error(e));
                }
            }
        };
        let hash: B256 = *pending.tx_hash();
        match wait_receipt(&c.chain.reader, hash, self.receipt_timeout).await {
            Ok(r) if r.status() => Ok(done(true, None, hash.to_string())),
            Ok(_) => Ok(done(
                false,
                Some("invalid_exact_evm_transaction_failed"),
                hash.to_string(),
            )),
            Err(e) => {
                tracing::warn!(error = %e, tx = %hash, "no receipt in time; reading authorizationState");
                let input = authorizationStateCall {
                    authorizer: a.from,
                    nonce: a.nonce,
                }
                .abi_encode();
                let used = c
                    .chain
                    .reader
                    .call(
                        TransactionRequest::default()
                            .with_to(c.asset)
                            .with_input(Bytes::from(input)),
                    )
                    .await
                    .ok()
                    .and_then(|out| authorizationStateCall::abi_decode_returns(&out).ok());
                Ok(if used == Some(true) {
                    done(true, None, hash.to_string())
                } else {
                    done(false, Some("settlement_pending"), hash.to_string())
                })
            }
        }
    }
}

/// `transferWithAuthorization` from `from` (the submitting signer), picking the overload by
/// signature length.
fn transfer_request(from: Address, asset: Address, p: &PaymentPayload) -> TransactionRequest {
    let a = &p.payload.authorization;
    let sig = &p.payload.signature;
    let (valid_after, valid_before) = (U256::from(a.valid_after), U256::from(a.valid_before));
    let input: Vec<u8> = if sig.len() == 65 {
        transferWithAuthorization_0Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: a.nonce,
            v: sig[64],
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode()
    } else {
        transferWithAuthorization_1Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: a.nonce,
            signature: sig.clone(),
        }
        .abi_encode()
    };
    TransactionRequest::default()
        .with_from(from)
        .with_to(asset)
        .with_input(Bytes::from(input))
}

#[async_trait]
impl Facilitator for EmbeddedFacilitator {
    async fn verify(&self, body: &str) -> Result<VerifyResponse, FacilitatorError> {
        Ok(match self.check(body, true).await? {
            Ok(c) => VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                invalid_message: None,
                payer: Some(c.payload.payload.authorization.from.to_checksum(None)),
            },
            Err(i) => VerifyResponse {
                is_valid: false,
                invalid_reason: Some(i.reason.to_owned()),
                invalid_message: Some(i.message),
                payer: i.payer.map(|p| p.to_checksum(None)),
            },
        })
    }

    async fn settle(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        match self.check(body, false).await? {
            Ok(c) => self.submit(&c).await,
            Err(i) => Ok(SettleResponse {
                success: Some(false),
                error_reason: Some(i.reason.to_owned()),
                error_message: Some(i.message),
                payer: i.payer.map(|p| p.to_checksum(None)),
                transaction: Some(String::new()),
                network: Some(i.network),
            }),
        }
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let mut kinds = Vec::new();
        for c in &self.chains {
            kinds.push(SupportedKind {
                x402_version: 2,
                scheme: "exact".into(),
                network: c.network.caip2().into(),
            });
            if let Some(name) = c.network.v1_name() {
                kinds.push(SupportedKind {
                    x402_version: 1,
                    scheme: "exact".into(),
                    network: name.into(),
                });
            }
        }
        Ok(SupportedResponse { kinds })
    }
}

/// Polls for a transaction's receipt until `timeout`: 10 ms after sending, doubling up to
/// 500 ms. A local chain mines at once and answers on the first polls; a real chain's block
/// time is met within half a second; nothing is polled while no settlement waits (alloy's
/// block watcher polls every 250 ms even on a local chain, which capped settlements at about
/// four per second per waiting request).
async fn wait_receipt(
    reader: &DynProvider,
    hash: B256,
    timeout: Duration,
) -> Result<alloy::rpc::types::TransactionReceipt, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        match reader.get_transaction_receipt(hash).await {
            Ok(Some(receipt)) => return Ok(receipt),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, tx = %hash, "receipt not readable yet"),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!("no receipt within {timeout:?}"));
        }
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::revert_reason;

    #[test]
    fn reverts_map_to_reference_reasons() {
        assert_eq!(
            revert_reason("execution reverted: FiatTokenV2: authorization is used or canceled"),
            "invalid_exact_evm_nonce_already_used"
        );
        assert_eq!(
            revert_reason("execution reverted: ERC20: transfer amount exceeds balance"),
            "invalid_exact_evm_insufficient_balance"
        );
        assert_eq!(
            revert_reason("execution reverted: FiatTokenV2: invalid signature"),
            "invalid_exact_evm_signature"
        );
        assert_eq!(
            revert_reason("something else"),
            "invalid_exact_evm_transaction_simulation_failed"
        );
    }
}
