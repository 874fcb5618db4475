//! Payment verification: local fast path → replay guard → verdict cache → facilitator
//! (skipped in `local` mode when the signature was recovered locally).
//!
//! Owns: [`Verifier`], which turns a payment header for a route into a [`Verified`] payment (an
//! authorization now held in flight) or a [`VerifyError`]. Local rejections never reach the
//! facilitator; a facilitator verdict is cached by payload digest; an outage releases the
//! authorization and is reported as [`VerifyError::Unavailable`].
//! Does not own: settlement (`settle`) or HTTP responses (`proxy`).

pub mod cache;
pub mod facilitator;
pub mod http1;
pub mod local;
pub mod replay;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::primitives::{keccak256, Address, U256};

use crate::config::{PaymentOption, VerificationConfig, VerificationMode};
use crate::pricing::PricedRoute;
use crate::protocol::{PaymentPayload, X402Version};
pub use cache::VerdictCache;
pub use facilitator::{Facilitator, FacilitatorClient, FacilitatorError};
pub use local::{PaymentRejection, SignatureCheck};
pub use replay::{Held, ReplayGuard, ReplayKey};

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

/// A payment that passed verification and is held in flight by the replay guard until it is
/// settled, marked used, or released.
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
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The verification pipeline, shared by all requests.
pub struct Verifier {
    facilitator: Arc<dyn Facilitator>,
    cache: VerdictCache,
    replay: ReplayGuard,
    mode: VerificationMode,
}

impl Verifier {
    /// A verifier asking `facilitator`.
    pub fn new(facilitator: Arc<dyn Facilitator>, config: &VerificationConfig) -> Self {
        Verifier {
            facilitator,
            cache: VerdictCache::new(config.cache_capacity, config.cache_ttl),
            replay: ReplayGuard::new(),
            mode: config.mode,
        }
    }

    /// The facilitator.
    pub fn facilitator(&self) -> &Arc<dyn Facilitator> {
        &self.facilitator
    }

    /// The replay guard.
    pub fn replay(&self) -> &ReplayGuard {
        &self.replay
    }

    /// Verifies a payment header (raw base64 bytes) for a priced route. `resource_url` is the
    /// URL of this request, used in v1 requirements.
    ///
    /// # Errors
    /// [`VerifyError::Rejected`] with a specific reason, or [`VerifyError::Unavailable`].
    pub async fn verify(
        &self,
        route: &PricedRoute,
        header: &[u8],
        resource_url: &str,
    ) -> Result<Verified, VerifyError> {
        let now = unix_now();
        let payload = PaymentPayload::from_header(header)
            .map_err(|e| PaymentRejection::InvalidPayload(e.to_string()))?;
        let Some(challenge) = route.challenge.as_ref() else {
            return Err(PaymentRejection::NoMatchingRequirements(payload.network).into());
        };
        let index = local::select_option(&route.rule.options, &challenge.options, &payload)?;
        let option: &PaymentOption = &route.rule.options[index];
        let (payer, signature) = local::check_payment(&payload, option, now)?;
        let auth = &payload.payload.authorization;

        let canonical = payload.to_canonical_json();
        let requirements = match payload.version {
            X402Version::V2 => challenge.options[index].v2_requirements.clone(),
            X402Version::V1 => challenge.options[index]
                .v1_requirements
                .as_ref()
                .map(|t| t.render(resource_url, ""))
                .unwrap_or_default(),
        };
        let facilitator_body: Arc<str> = format!(
            r#"{{"x402Version":{},"paymentPayload":{canonical},"paymentRequirements":{requirements}}}"#,
            payload.version.number()
        )
        .into();
        let key = ReplayKey {
            chain_id: option.network.chain_id(),
            asset: option.asset.address,
            from: auth.from,
            nonce: auth.nonce,
        };
        self.replay
            .acquire(key.clone(), auth.valid_before, now)
            .map_err(|held| match held {
                Held::InFlight => PaymentRejection::InFlight,
                Held::Used => PaymentRejection::AlreadyUsed,
            })?;

        // Local mode: a signature recovered to `from` is the whole verdict; settlement (always
        // before release) is the facilitator's say.
        let ask_facilitator =
            self.mode == VerificationMode::Facilitator || signature == SignatureCheck::Deferred;
        if ask_facilitator {
            self.facilitator_verdict(&facilitator_body, &key, auth.valid_before, now)
                .await?;
        }
        Ok(Verified {
            version: payload.version,
            option: index,
            payer,
            amount: auth.value,
            network: match payload.version {
                X402Version::V1 => option.network.v1_name().unwrap_or_default().to_owned(),
                X402Version::V2 => option.network.caip2().to_owned(),
            },
            facilitator_body,
            key,
            valid_before: auth.valid_before,
        })
    }

    /// Asks the facilitator's `/verify` (or the verdict cache); releases the held
    /// authorization unless the verdict is valid.
    async fn facilitator_verdict(
        &self,
        facilitator_body: &str,
        key: &ReplayKey,
        valid_before: u64,
        now: u64,
    ) -> Result<(), VerifyError> {
        let digest = keccak256(facilitator_body.as_bytes());
        let verdict = match self.cache.get(&digest) {
            Some(v) => v,
            None => match self.facilitator.verify(facilitator_body).await {
                Ok(v) => {
                    self.cache.insert(digest, v.clone(), valid_before, now);
                    v
                }
                Err(e) => {
                    self.replay.release(key);
                    return Err(VerifyError::Unavailable(e));
                }
            },
        };
        if !verdict.is_valid {
            self.replay.release(key);
            return Err(PaymentRejection::Facilitator {
                reason: verdict
                    .invalid_reason
                    .unwrap_or_else(|| "invalid_payment".to_owned()),
                message: verdict.invalid_message,
            }
            .into());
        }
        Ok(())
    }
}
