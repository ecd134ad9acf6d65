//! The use cases the API offers, each a short script: gather the facts a
//! command needs, execute it, call the acquirer when the payment waits for
//! it, execute the follow-up. No rule is checked here.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paystream_domain::api_key::{ApiKeyAggregate, ApiKeyCommand, Role};
use paystream_domain::country::CountryCode;
use paystream_domain::id::{ApiKeyId, BatchId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use paystream_domain::merchant::{FeeSchedule, Merchant, MerchantAggregate, MerchantCommand, Tier};
use paystream_domain::method::PaymentMethodInput;
use paystream_domain::payment::{
    AcquirerOutcome, AmountInput, CaptureMethod, Customer, DeclineCode, DisputeOutcome, InitiatePayment, Payment,
    PaymentAggregate, PaymentCommand, PaymentStatus, ReviewDecision,
};
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, DomainError, Money};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::acquirer::{authorize_with_timeout, lookup_with_timeout, Acquirer, AuthorizationRequest};
use crate::bus::{CommandBus, Executed, RequestMeta};
use crate::error::CommandError;
use crate::facts::Facts;

/// The current time; the only clock read on the write side.
pub fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// Hex SHA-256 of an API key secret: what the log and the key index keep.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new API key secret: `psk_` and 64 hex digits (244 random bits from the
/// OS generator, through two UUIDv4s).
pub fn new_key_secret() -> String {
    format!("psk_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

#[derive(Debug, Clone)]
pub struct OnboardMerchant {
    pub name: String,
    pub country: CountryCode,
    pub default_currency: Currency,
    pub settlement_currency: Currency,
    pub tier: Tier,
    pub fees: FeeSchedule,
}

#[derive(Debug, Clone)]
pub struct NewPayment {
    pub merchant_id: MerchantId,
    pub amount: Money,
    pub capture_method: CaptureMethod,
    pub method: PaymentMethodInput,
    pub customer: Customer,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Default of `--pending-after-seconds`: how long a payment may await the
/// acquirer's answer before [`Services::recover_pending`] asks the acquirer for it.
/// Longer than [`crate::acquirer::ACQUIRER_TIMEOUT`], so a live request has
/// given up on its answer by then.
pub const DEFAULT_PENDING_AFTER: Duration = Duration::from_secs(60);

/// The write side as the API sees it.
pub struct Services {
    pub bus: Arc<CommandBus>,
    pub facts: Arc<Facts>,
    pub acquirer: Arc<dyn Acquirer>,
    /// Payments whose authorization this process is asking the acquirer for
    /// right now: the recovery sweep leaves them to that request.
    authorizing: Mutex<HashSet<PaymentId>>,
}

/// Removes a payment from [`Services::authorizing`] when its request ends, however it ends.
struct Authorizing<'a> {
    services: &'a Services,
    payment_id: PaymentId,
}

impl Drop for Authorizing<'_> {
    fn drop(&mut self) {
        self.services.authorizing().remove(&self.payment_id);
    }
}

impl Services {
    pub fn new(bus: Arc<CommandBus>, facts: Arc<Facts>, acquirer: Arc<dyn Acquirer>) -> Services {
        Services { bus, facts, acquirer, authorizing: Mutex::default() }
    }

    fn authorizing(&self) -> std::sync::MutexGuard<'_, HashSet<PaymentId>> {
        self.authorizing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub async fn merchant(&self, id: MerchantId) -> Result<Option<Merchant>, CommandError> {
        Ok(self.bus.load::<MerchantAggregate>(id.as_uuid()).await?.state)
    }

    pub async fn payment(&self, id: PaymentId) -> Result<Option<Payment>, CommandError> {
        Ok(self.bus.load::<PaymentAggregate>(id.as_uuid()).await?.state)
    }

    pub async fn onboard_merchant(
        &self,
        meta: &RequestMeta,
        input: OnboardMerchant,
    ) -> Result<Executed<MerchantAggregate>, CommandError> {
        let merchant_id = MerchantId::from_uuid(Uuid::now_v7());
        let now = now();
        self.bus
            .create::<MerchantAggregate>(
                merchant_id.as_uuid(),
                meta,
                MerchantCommand::Onboard {
                    merchant_id,
                    name: input.name,
                    country: input.country,
                    default_currency: input.default_currency,
                    settlement_currency: input.settlement_currency,
                    tier: input.tier,
                    fees: input.fees,
                    now,
                },
            )
            .await
    }

    pub async fn change_merchant(
        &self,
        meta: &RequestMeta,
        merchant_id: MerchantId,
        command: impl Fn(Timestamp) -> MerchantCommand,
    ) -> Result<Executed<MerchantAggregate>, CommandError> {
        let now = now();
        self.bus.execute::<MerchantAggregate>(merchant_id.as_uuid(), meta, |_| Ok(command(now))).await
    }

    /// Issues a key with a new random secret; returns the secret, which is
    /// never stored.
    pub async fn issue_key(
        &self,
        meta: &RequestMeta,
        role: Role,
        merchant_id: Option<MerchantId>,
    ) -> Result<(Executed<ApiKeyAggregate>, String), CommandError> {
        self.issue_key_with_secret(meta, role, merchant_id, new_key_secret()).await
    }

    /// Issues a key for a secret chosen by the operator (PAYSTREAM_ADMIN_KEY).
    pub async fn issue_key_with_secret(
        &self,
        meta: &RequestMeta,
        role: Role,
        merchant_id: Option<MerchantId>,
        secret: String,
    ) -> Result<(Executed<ApiKeyAggregate>, String), CommandError> {
        let merchant = match merchant_id {
            Some(id) => Some(self.merchant(id).await?.ok_or(DomainError::MerchantNotFound)?),
            None => None,
        };
        let key_hash = hash_key(&secret);
        let key_id = ApiKeyId::from_uuid(Uuid::now_v7());
        let now = now();
        let executed = self
            .bus
            .create::<ApiKeyAggregate>(
                key_id.as_uuid(),
                meta,
                ApiKeyCommand::Issue { key_id, role, merchant, key_hash, now },
            )
            .await?;
        for (event, _) in &executed.events {
            self.facts.apply_key_now(event);
        }
        Ok((executed, secret))
    }

    pub async fn revoke_key(
        &self,
        meta: &RequestMeta,
        key_id: ApiKeyId,
    ) -> Result<Executed<ApiKeyAggregate>, CommandError> {
        let now = now();
        let executed =
            self.bus.execute::<ApiKeyAggregate>(key_id.as_uuid(), meta, |_| Ok(ApiKeyCommand::Revoke { now })).await?;
        for (event, _) in &executed.events {
            self.facts.apply_key_now(event);
        }
        Ok(executed)
    }

    /// Initiates the payment (validation, limits, risk), then, unless the
    /// rules declined it, asks the acquirer and records its answer (which
    /// captures at once for automatic capture).
    pub async fn create_payment(
        &self,
        meta: &RequestMeta,
        input: NewPayment,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        let merchant = self.merchant(input.merchant_id).await?.ok_or(DomainError::MerchantNotFound)?;
        let now = now();
        let payment_id = PaymentId::from_uuid(Uuid::now_v7());
        // The instrument's identity for velocity; if the method is invalid,
        // `decide` rejects it below and the signals do not matter.
        let instrument = input
            .method
            .summarize(now, &self.bus.context().fingerprint_key)
            .map(|m| m.instrument_key())
            .unwrap_or_default();
        let signals = self.facts.risk_signals(merchant.id, &instrument, input.customer.id.as_deref(), now)?;
        let daily_volume = self.facts.daily_volume(merchant.id, input.amount.currency, now)?;
        let initiated = self
            .bus
            .create::<PaymentAggregate>(
                payment_id.as_uuid(),
                meta,
                PaymentCommand::Initiate(Box::new(InitiatePayment {
                    payment_id,
                    merchant,
                    amount: input.amount,
                    capture_method: input.capture_method,
                    method: input.method.clone(),
                    customer: input.customer.clone(),
                    description: input.description.clone(),
                    metadata: input.metadata.clone(),
                    daily_volume,
                    signals,
                    now,
                })),
            )
            .await?;
        let awaiting = initiated
            .state
            .as_ref()
            .is_some_and(|p| matches!(p.status(), PaymentStatus::Pending | PaymentStatus::RequiresReview));
        if !awaiting {
            return Ok(initiated);
        }
        let answered = self.authorize(&meta.followup(), payment_id, input.amount, &input.method).await?;
        let mut events = initiated.events;
        events.extend(answered.events);
        Ok(Executed { state: answered.state, events, position: answered.position })
    }

    /// Asks the acquirer to authorize a payment waiting for it and records
    /// the answer (capturing at once for automatic capture). Real acquirers
    /// take the payment id as their idempotency key, so asking twice for the
    /// same payment holds the funds once.
    pub async fn authorize(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        amount: Money,
        method: &PaymentMethodInput,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        self.authorizing().insert(payment_id);
        let _authorizing = Authorizing { services: self, payment_id };
        let started = now();
        let request = AuthorizationRequest { payment_id, amount, method };
        let outcome = authorize_with_timeout(self.acquirer.as_ref(), request).await;
        self.bus
            .execute::<PaymentAggregate>(payment_id.as_uuid(), meta, |_| {
                Ok(PaymentCommand::RecordAuthorization { outcome: outcome.clone(), now: now_after(started) })
            })
            .await
    }

    /// Any follow-up command on an existing payment.
    pub async fn on_payment(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        command: impl Fn(Timestamp) -> PaymentCommand,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        let now = now();
        self.bus.execute::<PaymentAggregate>(payment_id.as_uuid(), meta, |_| Ok(command(now))).await
    }

    pub async fn capture(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        amount: Option<AmountInput>,
        final_capture: bool,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        let capture_id = CaptureId::from_uuid(Uuid::now_v7());
        self.on_payment(meta, payment_id, |now| PaymentCommand::Capture { capture_id, amount, final_capture, now })
            .await
    }

    pub async fn void(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        reason: Option<String>,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        self.on_payment(meta, payment_id, |now| PaymentCommand::Void { reason: reason.clone(), now }).await
    }

    pub async fn refund(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        amount: Option<AmountInput>,
        reason: Option<String>,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        let refund_id = RefundId::from_uuid(Uuid::now_v7());
        self.on_payment(meta, payment_id, |now| PaymentCommand::Refund {
            refund_id,
            amount,
            reason: reason.clone(),
            now,
        })
        .await
    }

    pub async fn review(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        decision: ReviewDecision,
        reason: Option<String>,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        self.on_payment(meta, payment_id, |now| PaymentCommand::Review { decision, reason: reason.clone(), now }).await
    }

    pub async fn open_dispute(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        amount: AmountInput,
        reason: String,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        let dispute_id = DisputeId::from_uuid(Uuid::now_v7());
        self.on_payment(meta, payment_id, |now| PaymentCommand::OpenDispute {
            dispute_id,
            amount,
            reason: reason.clone(),
            now,
        })
        .await
    }

    pub async fn resolve_dispute(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        dispute_id: DisputeId,
        outcome: DisputeOutcome,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        self.on_payment(meta, payment_id, |now| PaymentCommand::ResolveDispute { dispute_id, outcome, now }).await
    }

    pub async fn settle(
        &self,
        meta: &RequestMeta,
        payment_id: PaymentId,
        batch_id: BatchId,
    ) -> Result<Executed<PaymentAggregate>, CommandError> {
        self.on_payment(meta, payment_id, |now| PaymentCommand::Settle { batch_id, now }).await
    }

    /// Expires every authorization whose hold lapsed by now (at most `max`).
    /// Returns how many expired.
    pub async fn expire_due(&self, meta: &RequestMeta, max: usize) -> Result<usize, CommandError> {
        let mut expired = 0;
        for payment_id in self.facts.due_expiries(now(), max) {
            match self.on_payment(meta, payment_id, |now| PaymentCommand::ExpireAuthorization { now }).await {
                Ok(_) => expired += 1,
                // Captured or voided meanwhile; the facts will catch up.
                Err(CommandError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(expired)
    }

    /// Finishes payments that have awaited the acquirer's answer for longer than
    /// `older_than` (the process that asked died before recording it): asks the
    /// acquirer for the outcome and records it, or `acquirer_unavailable` when the
    /// acquirer has no record (then it holds nothing). At most `max`, oldest first;
    /// payments this process is asking about right now are left alone, and so are
    /// those the acquirer does not answer about in time (the next sweep asks again).
    /// Returns how many were finished.
    pub async fn recover_pending(
        &self,
        meta: &RequestMeta,
        older_than: Duration,
        max: usize,
    ) -> Result<usize, CommandError> {
        let older_than = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let Some(cutoff) = Timestamp::from_unix_seconds(now().unix_seconds().saturating_sub(older_than)) else {
            return Ok(0);
        };
        let mut finished = 0;
        for payment_id in self.facts.pending_since(cutoff, max) {
            if self.authorizing().contains(&payment_id) {
                continue;
            }
            let outcome = match lookup_with_timeout(self.acquirer.as_ref(), payment_id).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => AcquirerOutcome::Declined { decline_code: DeclineCode::AcquirerUnavailable },
                Err(_) => continue,
            };
            let recorded = self
                .bus
                .execute::<PaymentAggregate>(payment_id.as_uuid(), meta, |_| {
                    Ok(PaymentCommand::RecordAuthorization { outcome: outcome.clone(), now: now() })
                })
                .await;
            match recorded {
                Ok(_) => finished += 1,
                // Answered or rejected meanwhile; the facts will catch up.
                Err(CommandError::Rejected(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(finished)
    }
}

/// The acquirer answered after `started`; never earlier, even if the wall
/// clock stepped back.
fn now_after(started: Timestamp) -> Timestamp {
    now().max(started)
}
