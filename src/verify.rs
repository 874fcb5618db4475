//! Payment verification: the local fast path, then the facilitator's verdict (skipped in
//! `local` mode when the signature was recovered locally), with a verdict cache.
//!
//! Owns: [`Verifier`], which turns a decoded payment for a route into a [`Verified`] payment
//! ([`Verifier::check`]: pure, no I/O) and asks the facilitator's `/verify` when it must
//! ([`Verifier::facilitator_verdict`]). Local rejections never reach the facilitator; a
//! facilitator verdict is cached by payload digest; an outage is [`VerifyError::Unavailable`],
//! never a verdict.
//! Does not own: who holds an authorization (`ledger`), settlement (`settle`) or HTTP answers.

pub mod cache;
pub mod facilitator;
pub mod http1;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{keccak256, Address, U256};

use crate::config::{PaymentOption, VerificationConfig, VerificationMode};
use crate::flow::ReplayKey;
use crate::metrics::Metrics;
use crate::pricing::PricedRoute;
use crate::protocol::{
    ErrorReason, FacilitatorRequest, PaymentPayload, SupportedResponse, X402Version,
};
use crate::scheme::Authorized;
pub use cache::VerdictCache;
pub use facilitator::{Facilitator, FacilitatorClient, FacilitatorError, SignerBalance};
pub use local::{PaymentRejection, SignatureCheck};
use serde_json::value::RawValue;

/// Why a payment did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The payment is refused; the client gets a 402 with the reason.
    #[error(transparent)]
    Rejected(#[from] PaymentRejection),
    /// The facilitator could not give a verdict; the client gets a 503 and may retry.
    #[error("facilitator unavailable")]
    Unavailable(#[source] FacilitatorError),
}

/// A payment that passed the local checks.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Protocol version of the payment.
    pub version: X402Version,
    /// Index of the route option paid.
    pub option: usize,
    /// The payer.
    pub payer: Address,
    /// Atomic amount.
    pub amount: U256,
    /// Network in the payment version's naming (for receipts).
    pub network: String,
    /// The facilitator request body, shared by `/verify` and `/settle`.
    pub facilitator_body: Arc<str>,
    /// The replay identity.
    pub key: ReplayKey,
    /// `validBefore` of the authorization.
    pub valid_before: u64,
    /// The recipient.
    pub pay_to: Address,
    /// The network's CAIP-2 id (for the journal, whatever the version's naming).
    pub caip2: String,
}

/// A payment the local checks passed, and whether the facilitator must still be asked.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The payment.
    pub verified: Verified,
    /// The facilitator's `/verify` must be asked (facilitator mode, or a signature only the
    /// chain can check).
    pub ask_facilitator: bool,
}

/// The verification pipeline, shared by all requests.
pub struct Verifier {
    facilitator: Arc<dyn Facilitator>,
    cache: VerdictCache,
    mode: VerificationMode,
    metrics: Arc<Metrics>,
}

impl Verifier {
    /// A verifier asking `facilitator`; verdict-cache hits and misses go to `metrics`.
    pub fn new(
        facilitator: Arc<dyn Facilitator>,
        config: &VerificationConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Verifier {
            facilitator,
            cache: VerdictCache::new(config.cache_capacity, config.cache_ttl),
            mode: config.mode,
            metrics,
        }
    }

    /// The facilitator.
    pub fn facilitator(&self) -> &Arc<dyn Facilitator> {
        &self.facilitator
    }

    /// The local checks of a decoded payment for a priced route at `now` (unix s).
    /// `resource_url` is the URL of this request, used in v1 requirements.
    ///
    /// # Errors
    /// [`PaymentRejection`] with a specific reason.
    pub fn check(
        &self,
        route: &PricedRoute,
        payload: &PaymentPayload,
        resource_url: &str,
        now: u64,
    ) -> Result<Checked, PaymentRejection> {
        let Some(challenge) = route.challenge.as_ref() else {
            return Err(PaymentRejection::NoMatchingRequirements(
                payload.network.clone(),
            ));
        };
        let authorized = Authorized::decode(payload)?;
        let index = local::select_option(
            &route.rule.options,
            &challenge.options,
            payload,
            &authorized,
        )?;
        let option: &PaymentOption = &route.rule.options[index];
        let domain = &challenge.options[index].domain_separator;
        let signature = authorized.check(option, domain, now)?;
        let canonical =
            RawValue::from_string(payload.to_canonical_json(&authorized.canonical_json()))
                .unwrap_or_default();
        let prepared = &challenge.options[index];
        let v1;
        let requirements: &RawValue = match (payload.version, &prepared.v1_requirements) {
            (X402Version::V1, Some(t)) => {
                v1 = RawValue::from_string(t.render(resource_url, "")).unwrap_or_default();
                &v1
            }
            _ => &prepared.v2_requirements,
        };
        let facilitator_body: Arc<str> = FacilitatorRequest {
            x402_version: payload.version.number(),
            payment_payload: &canonical,
            payment_requirements: requirements,
        }
        .to_json()
        .into();
        let verified = Verified {
            version: payload.version,
            option: index,
            payer: authorized.payer(),
            amount: authorized.settle_amount(option.amount),
            network: match payload.version {
                X402Version::V1 => option.network.v1_name().unwrap_or_default().to_owned(),
                X402Version::V2 => option.network.caip2().to_owned(),
            },
            facilitator_body,
            key: authorized.key(option),
            valid_before: authorized.valid_before(),
            pay_to: option.pay_to,
            caip2: option.network.caip2().to_owned(),
        };
        // Local mode: a signature recovered to `from` is the whole verdict; settlement (always
        // before release) is the facilitator's say.
        let ask_facilitator =
            self.mode == VerificationMode::Facilitator || signature == SignatureCheck::Deferred;
        Ok(Checked {
            verified,
            ask_facilitator,
        })
    }

    /// Asks the facilitator's `/verify` (or the verdict cache).
    ///
    /// # Errors
    /// [`VerifyError::Rejected`] (its verdict) or [`VerifyError::Unavailable`].
    pub async fn facilitator_verdict(
        &self,
        facilitator_body: &str,
        valid_before: u64,
        now: u64,
    ) -> Result<(), VerifyError> {
        let digest = keccak256(facilitator_body.as_bytes());
        let cached = self.cache.get(&digest);
        self.metrics.verdict_cache(cached.is_some());
        let verdict = match cached {
            Some(v) => v,
            None => {
                let v = self
                    .facilitator
                    .verify(facilitator_body)
                    .await
                    .map_err(VerifyError::Unavailable)?;
                self.cache.insert(digest, v.clone(), valid_before, now);
                v
            }
        };
        if !verdict.is_valid {
            return Err(PaymentRejection::Facilitator {
                reason: verdict
                    .invalid_reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map_or(ErrorReason::InvalidPayment, ErrorReason::parse),
                message: verdict.invalid_message,
            }
            .into());
        }
        Ok(())
    }
}

/// Fetches `/supported`, retrying `attempts` times with a growing pause (the facilitator may
/// be starting up, or rate-limiting).
///
/// # Errors
/// The last failure.
pub async fn fetch_supported(
    f: &dyn Facilitator,
    attempts: u32,
) -> Result<SupportedResponse, FacilitatorError> {
    let mut delay = Duration::from_millis(250);
    let mut n = 0;
    loop {
        match f.supported().await {
            Ok(s) => return Ok(s),
            Err(e) if n + 1 >= attempts => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "facilitator /supported failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
                n += 1;
            }
        }
    }
}
