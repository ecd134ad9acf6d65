//! The Payment aggregate: the whole lifecycle of one payment.
//!
//! ```text
//! initiate ─► risk assessed ─► (acquirer) authorized ─► captured (1..n) ─► refunded (1..n)
//!                 │                 │       │                 │   └─► disputed ─► won | lost
//!                 │                 │       │                 └─► settled (batch)
//!                 ├─► review ──► approved | rejected          │
//!                 └─► declined      ├─► voided (before any capture)
//!                                   └─► authorization expired (7 days)
//! ```
//!
//! Every rule lives in [`PaymentAggregate::decide`]; `evolve` only applies facts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Context, DomainEvent};
use crate::country::CountryCode;
use crate::error::DomainError;
use crate::id::{BatchId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use crate::merchant::{validate_text, FeeSchedule, Merchant, MAX_REASON_CHARS};
use crate::method::{MethodSummary, PaymentMethodInput};
use crate::money::{Currency, Money};
use crate::risk::{self, RiskAssessment, RiskDecision, RiskInput, RiskRule, RiskSignals};
use crate::time::Timestamp;

/// Most metadata keys a payment may carry.
pub const MAX_METADATA_KEYS: usize = 20;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub const MAX_DESCRIPTION_CHARS: usize = 1_000;
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;
pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_ACQUIRER_REFERENCE_CHARS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CaptureMethod {
    /// Captured in full as soon as it is authorized (and approved if reviewed).
    Automatic,
    /// Held until the merchant captures (partially or fully) or voids.
    Manual,
}

/// The customer as the merchant describes them. All fields optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Customer {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "ip"))]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub country: Option<CountryCode>,
}

impl Customer {
    fn validate(&self) -> Result<(), DomainError> {
        if let Some(id) = &self.id {
            if id.is_empty() || id.chars().count() > MAX_CUSTOMER_ID_CHARS || id.chars().any(char::is_control) {
                return Err(DomainError::InvalidField {
                    param: "customer.id",
                    reason: "must be 1 to 128 printable characters",
                });
            }
        }
        if let Some(email) = &self.email {
            let well_formed = email.len() <= MAX_EMAIL_CHARS
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
                && email.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains('@')
                });
            if !well_formed {
                return Err(DomainError::InvalidField { param: "customer.email", reason: "is not an email address" });
            }
        }
        Ok(())
    }
}

/// Why a payment was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeclineCode {
    /// The issuer refused without a reason.
    CardDeclined,
    InsufficientFunds,
    /// The acquirer could not be reached or failed; nothing was charged.
    AcquirerUnavailable,
    /// The instrument was refused by its provider (wallet, bank).
    InstrumentDeclined,
    /// Paystream's own risk rules refused the payment.
    RiskDeclined,
    /// An analyst rejected the payment on review; the hold was released.
    ReviewRejected,
}

impl DeclineCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineCode::CardDeclined => "card_declined",
            DeclineCode::InsufficientFunds => "insufficient_funds",
            DeclineCode::AcquirerUnavailable => "acquirer_unavailable",
            DeclineCode::InstrumentDeclined => "instrument_declined",
            DeclineCode::RiskDeclined => "risk_declined",
            DeclineCode::ReviewRejected => "review_rejected",
        }
    }
}

/// The acquirer's answer to an authorization request, fetched by the write
/// side before it issues [`PaymentCommand::RecordAuthorization`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquirerOutcome {
    Approved { acquirer_reference: String },
    Declined { decline_code: DeclineCode },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReviewDecision {
    Approve,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DisputeOutcome {
    Won,
    Lost,
}

/// Everything needed to start a payment, gathered by the write side: the
/// merchant as it stands, today's volume, velocity signals and the time.
#[derive(Debug, Clone)]
pub struct InitiatePayment {
    pub payment_id: PaymentId,
    pub merchant: Merchant,
    pub amount: Money,
    pub capture_method: CaptureMethod,
    pub method: PaymentMethodInput,
    pub customer: Customer,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Volume the merchant already took today (UTC) in this currency.
    pub daily_volume: Money,
    pub signals: RiskSignals,
    pub now: Timestamp,
}

/// An amount named by a follow-up command: minor units of the payment's
/// currency, optionally with the currency to check against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmountInput {
    pub amount_minor: i64,
    pub currency: Option<Currency>,
}

impl AmountInput {
    pub const fn minor(amount_minor: i64) -> AmountInput {
        AmountInput { amount_minor, currency: None }
    }

    fn in_currency(self, currency: Currency) -> Result<Money, DomainError> {
        match self.currency {
            Some(requested) if requested != currency => {
                Err(DomainError::CurrencyMismatch { expected: currency, requested })
            }
            _ if self.amount_minor <= 0 => Err(DomainError::AmountNotPositive { param: "amount" }),
            _ => Ok(Money::new(self.amount_minor, currency)),
        }
    }
}

#[derive(Debug, Clone)]
pub enum PaymentCommand {
    Initiate(Box<InitiatePayment>),
    RecordAuthorization {
        outcome: AcquirerOutcome,
        now: Timestamp,
    },
    Review {
        decision: ReviewDecision,
        reason: Option<String>,
        now: Timestamp,
    },
    /// `amount: None` captures everything capturable. `final_capture`
    /// releases whatever remains after this capture.
    Capture {
        capture_id: CaptureId,
        amount: Option<AmountInput>,
        final_capture: bool,
        now: Timestamp,
    },
    Void {
        reason: Option<String>,
        now: Timestamp,
    },
    ExpireAuthorization {
        now: Timestamp,
    },
    /// `amount: None` refunds everything refundable.
    Refund {
        refund_id: RefundId,
        amount: Option<AmountInput>,
        reason: Option<String>,
        now: Timestamp,
    },
    OpenDispute {
        dispute_id: DisputeId,
        amount: AmountInput,
        reason: String,
        now: Timestamp,
    },
    ResolveDispute {
        dispute_id: DisputeId,
        outcome: DisputeOutcome,
        now: Timestamp,
    },
    Settle {
        batch_id: BatchId,
        now: Timestamp,
    },
}

// Events are built once and serialized; boxing the large variant would only
// add noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PaymentEvent {
    PaymentInitiated {
        payment_id: PaymentId,
        merchant_id: MerchantId,
        amount: Money,
        capture_method: CaptureMethod,
        method: MethodSummary,
        #[serde(default)]
        customer: Customer,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        metadata: BTreeMap<String, String>,
        fees: FeeSchedule,
        initiated_at: Timestamp,
    },
    PaymentRiskAssessed {
        score: u8,
        decision: RiskDecision,
        rules: Vec<RiskRule>,
        #[serde(default)]
        signals: RiskSignals,
        assessed_at: Timestamp,
    },
    PaymentAuthorized {
        acquirer_reference: String,
        amount: Money,
        authorized_at: Timestamp,
        expires_at: Timestamp,
    },
    PaymentDeclined {
        decline_code: DeclineCode,
        declined_at: Timestamp,
    },
    PaymentReviewApproved {
        #[serde(default)]
        reason: Option<String>,
        reviewed_at: Timestamp,
    },
    PaymentReviewRejected {
        #[serde(default)]
        reason: Option<String>,
        amount_released: Money,
        reviewed_at: Timestamp,
    },
    PaymentCaptured {
        capture_id: CaptureId,
        amount: Money,
        fee: Money,
        final_capture: bool,
        captured_at: Timestamp,
    },
    PaymentVoided {
        amount_released: Money,
        #[serde(default)]
        reason: Option<String>,
        voided_at: Timestamp,
    },
    PaymentAuthorizationExpired {
        amount_released: Money,
        expired_at: Timestamp,
    },
    PaymentRefunded {
        refund_id: RefundId,
        amount: Money,
        #[serde(default)]
        reason: Option<String>,
        refunded_at: Timestamp,
    },
    PaymentDisputeOpened {
        dispute_id: DisputeId,
        amount: Money,
        reason: String,
        opened_at: Timestamp,
    },
    PaymentDisputeWon {
        dispute_id: DisputeId,
        amount: Money,
        resolved_at: Timestamp,
    },
    PaymentDisputeLost {
        dispute_id: DisputeId,
        amount: Money,
        resolved_at: Timestamp,
    },
    PaymentSettled {
        batch_id: BatchId,
        amount: Money,
        fees: Money,
        settled_at: Timestamp,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        use PaymentEvent as E;
        match self {
            E::PaymentInitiated { .. } => "PaymentInitiated",
            E::PaymentRiskAssessed { .. } => "PaymentRiskAssessed",
            E::PaymentAuthorized { .. } => "PaymentAuthorized",
            E::PaymentDeclined { .. } => "PaymentDeclined",
            E::PaymentReviewApproved { .. } => "PaymentReviewApproved",
            E::PaymentReviewRejected { .. } => "PaymentReviewRejected",
            E::PaymentCaptured { .. } => "PaymentCaptured",
            E::PaymentVoided { .. } => "PaymentVoided",
            E::PaymentAuthorizationExpired { .. } => "PaymentAuthorizationExpired",
            E::PaymentRefunded { .. } => "PaymentRefunded",
            E::PaymentDisputeOpened { .. } => "PaymentDisputeOpened",
            E::PaymentDisputeWon { .. } => "PaymentDisputeWon",
            E::PaymentDisputeLost { .. } => "PaymentDisputeLost",
            E::PaymentSettled { .. } => "PaymentSettled",
        }
    }
}

/// The status the API shows. Partial captures and refunds show in the
/// amounts; `Refunded` means everything captured was refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PaymentStatus {
    /// Initiated, waiting for the acquirer's answer.
    Pending,
    RequiresReview,
    Authorized,
    Declined,
    Captured,
    Voided,
    Expired,
    Refunded,
}

impl PaymentStatus {
    /// The status as the API and the messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::RequiresReview => "requires_review",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Expired => "expired",
            PaymentStatus::Refunded => "refunded",
        }
    }
}

impl std::fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts a payment's status is derived from: the one place the status
/// rule lives (read models that keep their own copy of these facts use it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFacts {
    pub declined: bool,
    pub voided: bool,
    pub review_pending: bool,
    pub authorized: bool,
    pub expired: bool,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
}

impl StatusFacts {
    pub fn status(self) -> PaymentStatus {
        if self.declined {
            PaymentStatus::Declined
        } else if self.voided {
            PaymentStatus::Voided
        } else if self.review_pending {
            PaymentStatus::RequiresReview
        } else if !self.authorized {
            PaymentStatus::Pending
        } else if self.amount_captured > 0 {
            if self.amount_refunded == self.amount_captured && self.amount_capturable == 0 {
                PaymentStatus::Refunded
            } else {
                PaymentStatus::Captured
            }
        } else if self.expired {
            PaymentStatus::Expired
        } else {
            PaymentStatus::Authorized
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReviewState {
    NotRequired,
    Pending,
    Approved,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub acquirer_reference: String,
    pub authorized_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub id: CaptureId,
    pub amount_minor: i64,
    pub fee_minor: i64,
    pub captured_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: RefundId,
    pub amount_minor: i64,
    pub reason: Option<String>,
    pub refunded_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DisputeStatus {
    Open,
    Won,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    pub id: DisputeId,
    pub amount_minor: i64,
    pub reason: String,
    pub status: DisputeStatus,
    pub opened_at: Timestamp,
}

/// The state of one payment stream. Amounts are minor units of `amount.currency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: PaymentId,
    pub merchant_id: MerchantId,
    pub amount: Money,
    pub capture_method: CaptureMethod,
    pub method: MethodSummary,
    pub customer: Customer,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub fees: FeeSchedule,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub risk: Option<RiskAssessment>,
    pub review: ReviewState,
    pub authorization: Option<Authorization>,
    pub decline_code: Option<DeclineCode>,
    pub voided: bool,
    pub expired: bool,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub amount_settled: i64,
    pub fees_charged: i64,
    pub fees_settled: i64,
    pub captures: Vec<Capture>,
    pub refunds: Vec<Refund>,
    pub disputes: Vec<Dispute>,
}

impl Payment {
    pub fn status(&self) -> PaymentStatus {
        StatusFacts {
            declined: self.decline_code.is_some(),
            voided: self.voided,
            review_pending: self.review == ReviewState::Pending,
            authorized: self.authorization.is_some(),
            expired: self.expired,
            amount_capturable: self.amount_capturable,
            amount_captured: self.amount_captured,
            amount_refunded: self.amount_refunded,
        }
        .status()
    }

    pub fn money(&self, amount_minor: i64) -> Money {
        Money::new(amount_minor, self.amount.currency)
    }

    fn disputed_minor(&self, status: DisputeStatus) -> i64 {
        self.disputes.iter().filter(|d| d.status == status).map(|d| d.amount_minor).sum()
    }

    /// Amount lost to chargebacks.
    pub fn amount_dispute_lost(&self) -> i64 {
        self.disputed_minor(DisputeStatus::Lost)
    }

    /// Amount under open disputes.
    pub fn amount_disputed_open(&self) -> i64 {
        self.disputed_minor(DisputeStatus::Open)
    }

    /// What may still be refunded: captured minus refunded minus amounts
    /// under open or lost disputes (a refund must never pay back money a
    /// chargeback already took or may take).
    pub fn amount_refundable(&self) -> i64 {
        self.amount_captured - self.amount_refunded - self.amount_disputed_open() - self.amount_dispute_lost()
    }

    /// What a new dispute may still claim: the same bound as refunds.
    pub fn amount_disputable(&self) -> i64 {
        self.amount_refundable()
    }

    fn find_dispute(&self, id: DisputeId) -> Result<&Dispute, DomainError> {
        self.disputes.iter().find(|d| d.id == id).ok_or(DomainError::DisputeNotFound(id))
    }

    /// The event that captures everything left, if automatic capture applies
    /// once the payment becomes capturable.
    fn automatic_capture(&self, capture_id: CaptureId, now: Timestamp) -> Result<PaymentEvent, DomainError> {
        let amount = self.amount;
        let fee = self.fees.fee_for_capture(amount, true)?;
        Ok(PaymentEvent::PaymentCaptured { capture_id, amount, fee, final_capture: true, captured_at: now })
    }
}

/// The Payment aggregate.
#[derive(Debug)]
pub struct PaymentAggregate;

impl Aggregate for PaymentAggregate {
    const STREAM_CATEGORY: &'static str = "payment";
    type State = Option<Payment>;
    type Command = PaymentCommand;
    type Event = PaymentEvent;

    fn decide(
        state: &Option<Payment>,
        command: PaymentCommand,
        context: &Context,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        match (state, command) {
            (Some(payment), PaymentCommand::Initiate(_)) => Err(DomainError::PaymentAlreadyExists(payment.id)),
            (None, PaymentCommand::Initiate(initiate)) => decide_initiate(*initiate, context),
            (None, _) => Err(DomainError::PaymentNotFound),
            (Some(payment), command) => decide_existing(payment, command, context),
        }
    }

    fn evolve(state: Option<Payment>, event: &PaymentEvent) -> Option<Payment> {
        match (state, event) {
            (
                _,
                PaymentEvent::PaymentInitiated {
                    payment_id,
                    merchant_id,
                    amount,
                    capture_method,
                    method,
                    customer,
                    description,
                    metadata,
                    fees,
                    initiated_at,
                },
            ) => Some(Payment {
                id: *payment_id,
                merchant_id: *merchant_id,
                amount: *amount,
                capture_method: *capture_method,
                method: method.clone(),
                customer: customer.clone(),
                description: description.clone(),
                metadata: metadata.clone(),
                fees: *fees,
                created_at: *initiated_at,
                updated_at: *initiated_at,
                risk: None,
                review: ReviewState::NotRequired,
                authorization: None,
                decline_code: None,
                voided: false,
                expired: false,
                amount_capturable: 0,
                amount_captured: 0,
                amount_refunded: 0,
                amount_settled: 0,
                fees_charged: 0,
                fees_settled: 0,
                captures: Vec::new(),
                refunds: Vec::new(),
                disputes: Vec::new(),
            }),
            (None, _) => None,
            (Some(payment), event) => Some(evolve_existing(payment, event)),
        }
    }
}

fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), DomainError> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(DomainError::TooManyMetadataKeys { max: MAX_METADATA_KEYS, count: metadata.len() });
    }
    for (key, value) in metadata {
        validate_text("metadata", key, MAX_METADATA_KEY_CHARS, true)?;
        validate_text("metadata", value, MAX_METADATA_VALUE_CHARS, false)?;
    }
    Ok(())
}

fn decide_initiate(cmd: InitiatePayment, context: &Context) -> Result<Vec<PaymentEvent>, DomainError> {
    let InitiatePayment {
        payment_id,
        merchant,
        amount,
        capture_method,
        method,
        customer,
        description,
        metadata,
        daily_volume,
        signals,
        now,
    } = cmd;
    if !amount.is_positive() {
        return Err(DomainError::AmountNotPositive { param: "amount" });
    }
    let method = method.summarize(now, &context.fingerprint_key)?;
    customer.validate()?;
    if let Some(description) = &description {
        validate_text("description", description, MAX_DESCRIPTION_CHARS, false)?;
    }
    validate_metadata(&metadata)?;

    merchant.ensure_can_take_payments()?;
    let tier = merchant.tier;
    let single_limit = tier.max_single_payment(amount.currency)?;
    if amount.amount_minor > single_limit.amount_minor {
        return Err(DomainError::AmountExceedsTierLimit { tier, limit: single_limit, requested: amount });
    }
    let daily_limit = tier.max_daily_volume(amount.currency)?;
    let volume_after = daily_volume.checked_add(amount)?;
    if volume_after.amount_minor > daily_limit.amount_minor {
        return Err(DomainError::DailyVolumeExceeded {
            tier,
            limit: daily_limit,
            used: daily_volume,
            requested: amount,
        });
    }

    let assessment = risk::assess(&RiskInput {
        amount,
        tier,
        merchant_country: merchant.country,
        customer_country: customer.country,
        customer_ip_present: customer.ip.is_some(),
        signals,
    });
    let decision = assessment.decision;
    let mut events = vec![
        PaymentEvent::PaymentInitiated {
            payment_id,
            merchant_id: merchant.id,
            amount,
            capture_method,
            method,
            customer,
            description,
            metadata,
            fees: merchant.fees,
            initiated_at: now,
        },
        PaymentEvent::PaymentRiskAssessed {
            score: assessment.score,
            decision,
            rules: assessment.rules,
            signals,
            assessed_at: now,
        },
    ];
    if decision == RiskDecision::Decline {
        events.push(PaymentEvent::PaymentDeclined { decline_code: DeclineCode::RiskDeclined, declined_at: now });
    }
    Ok(events)
}

fn decide_existing(
    payment: &Payment,
    command: PaymentCommand,
    context: &Context,
) -> Result<Vec<PaymentEvent>, DomainError> {
    use PaymentEvent as E;
    let status = payment.status();
    match command {
        PaymentCommand::Initiate(_) => Err(DomainError::PaymentAlreadyExists(payment.id)),
        PaymentCommand::RecordAuthorization { outcome, now } => {
            let awaiting = payment.authorization.is_none()
                && payment.decline_code.is_none()
                && matches!(status, PaymentStatus::Pending | PaymentStatus::RequiresReview);
            if !awaiting {
                return Err(DomainError::PaymentNotAwaitingAuthorization { status });
            }
            match outcome {
                AcquirerOutcome::Declined { decline_code } => {
                    Ok(vec![E::PaymentDeclined { decline_code, declined_at: now }])
                }
                AcquirerOutcome::Approved { acquirer_reference } => {
                    validate_text("acquirer_reference", &acquirer_reference, MAX_ACQUIRER_REFERENCE_CHARS, true)?;
                    let mut events = vec![E::PaymentAuthorized {
                        acquirer_reference,
                        amount: payment.amount,
                        authorized_at: now,
                        expires_at: now.plus(context.authorization_ttl),
                    }];
                    if payment.capture_method == CaptureMethod::Automatic && payment.review != ReviewState::Pending {
                        events.push(payment.automatic_capture(first_capture_id(payment), now)?);
                    }
                    Ok(events)
                }
            }
        }
        PaymentCommand::Review { decision, reason, now } => {
            if status != PaymentStatus::RequiresReview {
                return Err(DomainError::PaymentNotUnderReview { status });
            }
            if let Some(reason) = &reason {
                validate_text("reason", reason, MAX_REASON_CHARS, false)?;
            }
            match decision {
                ReviewDecision::Reject => Ok(vec![E::PaymentReviewRejected {
                    reason,
                    amount_released: payment.money(payment.amount_capturable),
                    reviewed_at: now,
                }]),
                ReviewDecision::Approve => {
                    let mut events = vec![E::PaymentReviewApproved { reason, reviewed_at: now }];
                    if payment.authorization.is_some() && payment.capture_method == CaptureMethod::Automatic {
                        events.push(payment.automatic_capture(first_capture_id(payment), now)?);
                    }
                    Ok(events)
                }
            }
        }
        PaymentCommand::Capture { capture_id, amount, final_capture, now } => {
            let capturable_status = matches!(status, PaymentStatus::Authorized | PaymentStatus::Captured);
            if !capturable_status || payment.amount_capturable == 0 {
                return Err(DomainError::PaymentNotCapturable { status });
            }
            if payment.authorization.as_ref().is_some_and(|a| now >= a.expires_at) {
                return Err(DomainError::AuthorizationExpired);
            }
            let capturable = payment.money(payment.amount_capturable);
            let amount = match amount {
                Some(amount) => amount.in_currency(payment.amount.currency)?,
                None => capturable,
            };
            if amount.amount_minor > capturable.amount_minor {
                return Err(DomainError::AmountExceedsCapturable { capturable, requested: amount });
            }
            let fee = payment.fees.fee_for_capture(amount, payment.captures.is_empty())?;
            let final_capture = final_capture || amount == capturable;
            Ok(vec![E::PaymentCaptured { capture_id, amount, fee, final_capture, captured_at: now }])
        }
        PaymentCommand::Void { reason, now } => {
            let voidable = matches!(status, PaymentStatus::Authorized | PaymentStatus::RequiresReview)
                && payment.captures.is_empty();
            if !voidable {
                return Err(DomainError::PaymentNotVoidable { status });
            }
            if let Some(reason) = &reason {
                validate_text("reason", reason, MAX_REASON_CHARS, false)?;
            }
            Ok(vec![E::PaymentVoided {
                amount_released: payment.money(payment.amount_capturable),
                reason,
                voided_at: now,
            }])
        }
        PaymentCommand::ExpireAuthorization { now } => {
            let holding = payment.amount_capturable > 0
                && matches!(
                    status,
                    PaymentStatus::Authorized | PaymentStatus::Captured | PaymentStatus::RequiresReview
                );
            let due = payment.authorization.as_ref().is_some_and(|a| now >= a.expires_at);
            if !holding || !due {
                return Err(DomainError::AuthorizationNotExpired { status });
            }
            Ok(vec![E::PaymentAuthorizationExpired {
                amount_released: payment.money(payment.amount_capturable),
                expired_at: now,
            }])
        }
        PaymentCommand::Refund { refund_id, amount, reason, now } => {
            if payment.amount_captured == 0 || status == PaymentStatus::Refunded {
                return Err(DomainError::PaymentNotRefundable { status });
            }
            if let Some(reason) = &reason {
                validate_text("reason", reason, MAX_REASON_CHARS, false)?;
            }
            let refundable = payment.money(payment.amount_refundable());
            let amount = match amount {
                Some(amount) => amount.in_currency(payment.amount.currency)?,
                None if refundable.is_positive() => refundable,
                None => return Err(DomainError::PaymentNotRefundable { status }),
            };
            if amount.amount_minor > refundable.amount_minor {
                return Err(DomainError::AmountExceedsRefundable { refundable, requested: amount });
            }
            Ok(vec![E::PaymentRefunded { refund_id, amount, reason, refunded_at: now }])
        }
        PaymentCommand::OpenDispute { dispute_id, amount, reason, now } => {
            if payment.amount_captured == 0 {
                return Err(DomainError::PaymentNotDisputable { status });
            }
            validate_text("reason", &reason, MAX_REASON_CHARS, true)?;
            let amount = amount.in_currency(payment.amount.currency)?;
            let disputable = payment.money(payment.amount_disputable());
            if amount.amount_minor > disputable.amount_minor {
                return Err(DomainError::AmountExceedsDisputable { disputable, requested: amount });
            }
            Ok(vec![E::PaymentDisputeOpened { dispute_id, amount, reason, opened_at: now }])
        }
        PaymentCommand::ResolveDispute { dispute_id, outcome, now } => {
            let dispute = payment.find_dispute(dispute_id)?;
            if dispute.status != DisputeStatus::Open {
                return Err(DomainError::DisputeAlreadyResolved(dispute_id));
            }
            let amount = payment.money(dispute.amount_minor);
            Ok(vec![match outcome {
                DisputeOutcome::Won => E::PaymentDisputeWon { dispute_id, amount, resolved_at: now },
                DisputeOutcome::Lost => E::PaymentDisputeLost { dispute_id, amount, resolved_at: now },
            }])
        }
        PaymentCommand::Settle { batch_id, now } => {
            let unsettled = payment.amount_captured - payment.amount_settled;
            if unsettled <= 0 {
                return Err(DomainError::NothingToSettle);
            }
            Ok(vec![E::PaymentSettled {
                batch_id,
                amount: payment.money(unsettled),
                fees: payment.money(payment.fees_charged - payment.fees_settled),
                settled_at: now,
            }])
        }
    }
}

/// The id of an automatic capture is derived from the payment id, so a
/// retried decision produces the same event.
fn first_capture_id(payment: &Payment) -> CaptureId {
    CaptureId::from_uuid(*payment.id.as_uuid())
}

fn evolve_existing(mut p: Payment, event: &PaymentEvent) -> Payment {
    use PaymentEvent as E;
    // `decide` bounds every amount by the authorized amount, so the sums
    // below stay far from i64::MAX; saturating keeps `evolve` total anyway.
    match event {
        E::PaymentInitiated { .. } => {}
        E::PaymentRiskAssessed { score, decision, rules, assessed_at, .. } => {
            p.risk = Some(RiskAssessment { score: *score, decision: *decision, rules: rules.clone() });
            if *decision == RiskDecision::Review {
                p.review = ReviewState::Pending;
            }
            p.updated_at = *assessed_at;
        }
        E::PaymentAuthorized { acquirer_reference, amount, authorized_at, expires_at } => {
            p.authorization = Some(Authorization {
                acquirer_reference: acquirer_reference.clone(),
                authorized_at: *authorized_at,
                expires_at: *expires_at,
            });
            p.amount_capturable = amount.amount_minor;
            p.updated_at = *authorized_at;
        }
        E::PaymentDeclined { decline_code, declined_at } => {
            p.decline_code = Some(*decline_code);
            p.amount_capturable = 0;
            p.updated_at = *declined_at;
        }
        E::PaymentReviewApproved { reviewed_at, .. } => {
            p.review = ReviewState::Approved;
            p.updated_at = *reviewed_at;
        }
        E::PaymentReviewRejected { reviewed_at, .. } => {
            p.review = ReviewState::Rejected;
            p.decline_code = Some(DeclineCode::ReviewRejected);
            p.amount_capturable = 0;
            p.updated_at = *reviewed_at;
        }
        E::PaymentCaptured { capture_id, amount, fee, final_capture, captured_at } => {
            p.amount_captured = p.amount_captured.saturating_add(amount.amount_minor);
            p.amount_capturable =
                if *final_capture { 0 } else { p.amount_capturable.saturating_sub(amount.amount_minor) };
            p.fees_charged = p.fees_charged.saturating_add(fee.amount_minor);
            p.captures.push(Capture {
                id: *capture_id,
                amount_minor: amount.amount_minor,
                fee_minor: fee.amount_minor,
                captured_at: *captured_at,
            });
            p.updated_at = *captured_at;
        }
        E::PaymentVoided { voided_at, .. } => {
            p.voided = true;
            p.amount_capturable = 0;
            p.updated_at = *voided_at;
        }
        E::PaymentAuthorizationExpired { expired_at, .. } => {
            p.expired = true;
            p.amount_capturable = 0;
            p.updated_at = *expired_at;
        }
        E::PaymentRefunded { refund_id, amount, reason, refunded_at } => {
            p.amount_refunded = p.amount_refunded.saturating_add(amount.amount_minor);
            p.refunds.push(Refund {
                id: *refund_id,
                amount_minor: amount.amount_minor,
                reason: reason.clone(),
                refunded_at: *refunded_at,
            });
            p.updated_at = *refunded_at;
        }
        E::PaymentDisputeOpened { dispute_id, amount, reason, opened_at } => {
            p.disputes.push(Dispute {
                id: *dispute_id,
                amount_minor: amount.amount_minor,
                reason: reason.clone(),
                status: DisputeStatus::Open,
                opened_at: *opened_at,
            });
            p.updated_at = *opened_at;
        }
        E::PaymentDisputeWon { dispute_id, resolved_at, .. } => {
            set_dispute_status(&mut p, *dispute_id, DisputeStatus::Won);
            p.updated_at = *resolved_at;
        }
        E::PaymentDisputeLost { dispute_id, resolved_at, .. } => {
            set_dispute_status(&mut p, *dispute_id, DisputeStatus::Lost);
            p.updated_at = *resolved_at;
        }
        E::PaymentSettled { amount, fees, settled_at, .. } => {
            p.amount_settled = p.amount_settled.saturating_add(amount.amount_minor);
            p.fees_settled = p.fees_settled.saturating_add(fees.amount_minor);
            p.updated_at = *settled_at;
        }
    }
    p
}

fn set_dispute_status(payment: &mut Payment, id: DisputeId, status: DisputeStatus) {
    if let Some(dispute) = payment.disputes.iter_mut().find(|d| d.id == id) {
        dispute.status = status;
    }
}
