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
use crate::metrics::Metrics;
use crate::pricing::PricedRoute;
use crate::protocol::{ErrorReason, PaymentPayload, X402Version};
pub use cache::VerdictCache;
pub use facilitator::{Facilitator, FacilitatorClient, FacilitatorError, SignerBalance};
pub use local::{PaymentRejection, SignatureCheck};
pub use replay::{Held, Hold, ReplayGuard, ReplayKey};

/// Why a payment did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The payment is refused; the client gets a 402 with the reason.
    #[error(transparent)]
    Rejected(#[from] PaymentRejection),
    /// The facilitator could not give a verdict; the client gets a 503 and may retry.
    #[error("facilitator unavailable")]
    Unavailable(#[source] FacilitatorError),
    /// The replay guard is full of live authorizations; the client gets a 503 and may retry.
    #[error("too many pending payments")]
    Busy,
    /// A valid payment whose authorization was used already (served, or its settlement
    /// attempted): a replay, or a retry of a payment whose outcome was unknown, which the
    /// caller may redeem.
    #[error("this authorization has already been used")]
    Used(Box<Verified>),
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
    /// The recipient.
    pub pay_to: Address,
    /// The network's CAIP-2 id (for the journal, whatever the version's naming).
    pub caip2: String,
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
    replay: Arc<ReplayGuard>,
    mode: VerificationMode,
    metrics: Arc<Metrics>,
}

impl Verifier {
    /// A verifier asking `facilitator`, holding at most `max_pending` authorizations in its
    /// replay guard; verdict-cache hits and misses go to `metrics`.
    pub fn new(
        facilitator: Arc<dyn Facilitator>,
        config: &VerificationConfig,
        max_pending: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Verifier {
            facilitator,
            cache: VerdictCache::new(config.cache_capacity, config.cache_ttl),
            replay: Arc::new(ReplayGuard::new(max_pending)),
            mode: config.mode,
            metrics,
        }
    }

    /// The facilitator.
    pub fn facilitator(&self) -> &Arc<dyn Facilitator> {
        &self.facilitator
    }

    /// The replay guard.
    pub fn replay(&self) -> &Arc<ReplayGuard> {
        &self.replay
    }

    /// Verifies a payment header (raw base64 bytes) for a priced route. `resource_url` is the
    /// URL of this request, used in v1 requirements. A verified payment comes with its
    /// [`Hold`] on the replay guard; any failure gives the authorization back.
    ///
    /// # Errors
    /// [`VerifyError::Rejected`] with a specific reason, [`VerifyError::Unavailable`] or
    /// [`VerifyError::Busy`].
    pub async fn verify(
        &self,
        route: &PricedRoute,
        header: &[u8],
        resource_url: &str,
    ) -> Result<(Verified, Hold), VerifyError> {
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
        let verified = Verified {
            version: payload.version,
            option: index,
            payer,
            amount: auth.value,
            network: match payload.version {
                X402Version::V1 => option.network.v1_name().unwrap_or_default().to_owned(),
                X402Version::V2 => option.network.caip2().to_owned(),
            },
            facilitator_body,
            key: key.clone(),
            valid_before: auth.valid_before,
            pay_to: option.pay_to,
            caip2: option.network.caip2().to_owned(),
        };
        match self.replay.acquire(key.clone(), auth.valid_before, now) {
            Ok(()) => {}
            Err(Held::InFlight) => return Err(PaymentRejection::InFlight.into()),
            Err(Held::Used) => return Err(VerifyError::Used(Box::new(verified))),
            Err(Held::Full) => return Err(VerifyError::Busy),
        }
        // From here every early return drops the hold, which gives the authorization back.
        let hold = Hold::new(self.replay.clone(), key, auth.valid_before);

        // Local mode: a signature recovered to `from` is the whole verdict; settlement (always
        // before release) is the facilitator's say.
        let ask_facilitator =
            self.mode == VerificationMode::Facilitator || signature == SignatureCheck::Deferred;
        if ask_facilitator {
            self.facilitator_verdict(&verified.facilitator_body, auth.valid_before, now)
                .await?;
        }
        Ok((verified, hold))
    }

    /// Asks the facilitator's `/verify` (or the verdict cache).
    async fn facilitator_verdict(
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
