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
    /// The merchant as it stands (`None`: it does not exist).
    pub merchant: Option<Merchant>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReviewState {
    NotRequired,
    Pending,
    Approved,
    Rejected,
}

/// What a payment's events add up to: its review state, outcome flags and
/// amounts (minor units of the payment's currency). The one fold of a
/// payment's figures, shared by the aggregate's state ([`Payment::figures`])
/// and the payment search read model, and the one place the status rule
/// lives ([`PaymentFigures::status`]). Every sum is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentFigures {
    pub review: ReviewState,
    pub decline_code: Option<DeclineCode>,
    pub authorized: bool,
    pub voided: bool,
    pub expired: bool,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    /// Under open disputes.
    pub amount_disputed: i64,
    /// Lost to chargebacks.
    pub amount_dispute_lost: i64,
    pub amount_settled: i64,
    pub fees_charged: i64,
    pub fees_settled: i64,
    /// The time of the latest event.
    pub updated_at: Timestamp,
}

fn add(total: i64, amount: &Money) -> Result<i64, DomainError> {
    total.checked_add(amount.amount_minor).ok_or(DomainError::AmountOverflow)
}

fn sub(total: i64, amount: &Money) -> Result<i64, DomainError> {
    total.checked_sub(amount.amount_minor).ok_or(DomainError::AmountOverflow)
}

impl PaymentFigures {
    /// The figures of a payment just initiated at `at`.
    pub fn initiated(at: Timestamp) -> PaymentFigures {
        PaymentFigures {
            review: ReviewState::NotRequired,
            decline_code: None,
            authorized: false,
            voided: false,
            expired: false,
            amount_capturable: 0,
            amount_captured: 0,
            amount_refunded: 0,
            amount_disputed: 0,
            amount_dispute_lost: 0,
            amount_settled: 0,
            fees_charged: 0,
            fees_settled: 0,
            updated_at: at,
        }
    }

    /// Applies one event of the payment. A sum that would overflow is an
    /// error and leaves the figures as they were (`decide` bounds every
    /// amount by the authorized one, so events it produced never overflow).
    pub fn apply(&mut self, event: &PaymentEvent) -> Result<(), DomainError> {
        let mut next = *self;
        next.updated_at = next.step(event)?;
        *self = next;
        Ok(())
    }

    /// Changes the figures for `event`; returns the event's time.
    fn step(&mut self, event: &PaymentEvent) -> Result<Timestamp, DomainError> {
        use PaymentEvent as E;
        Ok(match event {
            E::PaymentInitiated { initiated_at, .. } => *initiated_at,
            E::PaymentRiskAssessed { decision, assessed_at, .. } => {
                if *decision == RiskDecision::Review {
                    self.review = ReviewState::Pending;
                }
                *assessed_at
            }
            E::PaymentAuthorized { amount, authorized_at, .. } => {
                self.authorized = true;
                self.amount_capturable = amount.amount_minor;
                *authorized_at
            }
            E::PaymentDeclined { decline_code, declined_at } => {
                self.decline_code = Some(*decline_code);
                self.amount_capturable = 0;
                *declined_at
            }
            E::PaymentReviewApproved { reviewed_at, .. } => {
                self.review = ReviewState::Approved;
                *reviewed_at
            }
            E::PaymentReviewRejected { reviewed_at, .. } => {
                self.review = ReviewState::Rejected;
                self.decline_code = Some(DeclineCode::ReviewRejected);
                self.amount_capturable = 0;
                *reviewed_at
            }
            E::PaymentCaptured { amount, fee, final_capture, captured_at, .. } => {
                self.amount_captured = add(self.amount_captured, amount)?;
                self.amount_capturable = if *final_capture { 0 } else { sub(self.amount_capturable, amount)? };
                self.fees_charged = add(self.fees_charged, fee)?;
                *captured_at
            }
            E::PaymentVoided { voided_at, .. } => {
                self.voided = true;
                self.amount_capturable = 0;
                *voided_at
            }
            E::PaymentAuthorizationExpired { expired_at, .. } => {
                self.expired = true;
                self.amount_capturable = 0;
                *expired_at
            }
            E::PaymentRefunded { amount, refunded_at, .. } => {
                self.amount_refunded = add(self.amount_refunded, amount)?;
                *refunded_at
            }
            E::PaymentDisputeOpened { amount, opened_at, .. } => {
                self.amount_disputed = add(self.amount_disputed, amount)?;
                *opened_at
            }
            E::PaymentDisputeWon { amount, resolved_at, .. } => {
                self.amount_disputed = sub(self.amount_disputed, amount)?;
                *resolved_at
            }
            E::PaymentDisputeLost { amount, resolved_at, .. } => {
                self.amount_disputed = sub(self.amount_disputed, amount)?;
                self.amount_dispute_lost = add(self.amount_dispute_lost, amount)?;
                *resolved_at
            }
            E::PaymentSettled { amount, fees, settled_at, .. } => {
                self.amount_settled = add(self.amount_settled, amount)?;
                self.fees_settled = add(self.fees_settled, fees)?;
                *settled_at
            }
        })
    }

    /// The status the API shows.
    pub fn status(&self) -> PaymentStatus {
        if self.decline_code.is_some() {
            PaymentStatus::Declined
        } else if self.voided {
            PaymentStatus::Voided
        } else if self.review == ReviewState::Pending {
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

    /// What may still be refunded: captured minus refunded minus amounts
    /// under open or lost disputes (a refund must never pay back money a
    /// chargeback already took or may take).
    pub fn amount_refundable(&self) -> Result<i64, DomainError> {
        self.amount_captured
            .checked_sub(self.amount_refunded)
            .and_then(|left| left.checked_sub(self.amount_disputed))
            .and_then(|left| left.checked_sub(self.amount_dispute_lost))
            .ok_or(DomainError::AmountOverflow)
    }
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
    pub risk: Option<RiskAssessment>,
    pub authorization: Option<Authorization>,
    /// Status flags, amounts and the time of the latest event.
    pub figures: PaymentFigures,
    pub captures: Vec<Capture>,
    pub refunds: Vec<Refund>,
    pub disputes: Vec<Dispute>,
}

impl Payment {
    pub fn status(&self) -> PaymentStatus {
        self.figures.status()
    }

    /// Whether the payment waits for the acquirer's answer: what
    /// `RecordAuthorization` requires, and what the write side asks before it
    /// calls the acquirer.
    pub fn awaits_acquirer(&self) -> bool {
        self.authorization.is_none()
            && self.figures.decline_code.is_none()
            && matches!(self.status(), PaymentStatus::Pending | PaymentStatus::RequiresReview)
    }

    pub fn money(&self, amount_minor: i64) -> Money {
        Money::new(amount_minor, self.amount.currency)
    }

    /// Amount lost to chargebacks.
    pub fn amount_dispute_lost(&self) -> i64 {
        self.figures.amount_dispute_lost
    }

    /// Amount under open disputes.
    pub fn amount_disputed_open(&self) -> i64 {
        self.figures.amount_disputed
    }

    /// What may still be refunded ([`PaymentFigures::amount_refundable`]).
    pub fn amount_refundable(&self) -> Result<i64, DomainError> {
        self.figures.amount_refundable()
    }

    /// What a new dispute may still claim: the same bound as refunds.
    pub fn amount_disputable(&self) -> Result<i64, DomainError> {
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
                risk: None,
                authorization: None,
                figures: PaymentFigures::initiated(*initiated_at),
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
    let merchant = merchant.ok_or(DomainError::MerchantNotFound { param: None })?;
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
    use PaymentCommand as C;
    match command {
        C::Initiate(_) => Err(DomainError::PaymentAlreadyExists(payment.id)),
        C::RecordAuthorization { outcome, now } => decide_authorization(payment, outcome, now, context),
        C::Review { decision, reason, now } => decide_review(payment, decision, reason, now),
        C::Capture { capture_id, amount, final_capture, now } => {
            decide_capture(payment, capture_id, amount, final_capture, now)
        }
        C::Void { reason, now } => decide_void(payment, reason, now),
        C::ExpireAuthorization { now } => decide_expiry(payment, now),
        C::Refund { refund_id, amount, reason, now } => decide_refund(payment, refund_id, amount, reason, now),
        C::OpenDispute { dispute_id, amount, reason, now } => {
            decide_open_dispute(payment, dispute_id, amount, reason, now)
        }
        C::ResolveDispute { dispute_id, outcome, now } => decide_resolve_dispute(payment, dispute_id, outcome, now),
        C::Settle { batch_id, now } => decide_settle(payment, batch_id, now),
    }
}

fn validate_reason(reason: Option<&String>) -> Result<(), DomainError> {
    match reason {
        Some(reason) => validate_text("reason", reason, MAX_REASON_CHARS, false),
        None => Ok(()),
    }
}

fn decide_authorization(
    payment: &Payment,
    outcome: AcquirerOutcome,
    now: Timestamp,
    context: &Context,
) -> Result<Vec<PaymentEvent>, DomainError> {
    if !payment.awaits_acquirer() {
        return Err(DomainError::PaymentNotAwaitingAuthorization { status: payment.status() });
    }
    match outcome {
        AcquirerOutcome::Declined { decline_code } => {
            Ok(vec![PaymentEvent::PaymentDeclined { decline_code, declined_at: now }])
        }
        AcquirerOutcome::Approved { acquirer_reference } => {
            validate_text("acquirer_reference", &acquirer_reference, MAX_ACQUIRER_REFERENCE_CHARS, true)?;
            let mut events = vec![PaymentEvent::PaymentAuthorized {
                acquirer_reference,
                amount: payment.amount,
                authorized_at: now,
                expires_at: now.plus(context.authorization_ttl),
            }];
            if payment.capture_method == CaptureMethod::Automatic && payment.figures.review != ReviewState::Pending {
                events.push(payment.automatic_capture(first_capture_id(payment), now)?);
            }
            Ok(events)
        }
    }
}

fn decide_review(
    payment: &Payment,
    decision: ReviewDecision,
    reason: Option<String>,
    now: Timestamp,
) -> Result<Vec<PaymentEvent>, DomainError> {
    let status = payment.status();
    if status != PaymentStatus::RequiresReview {
        return Err(DomainError::PaymentNotUnderReview { status });
    }
    validate_reason(reason.as_ref())?;
    match decision {
        ReviewDecision::Reject => Ok(vec![PaymentEvent::PaymentReviewRejected {
            reason,
            amount_released: payment.money(payment.figures.amount_capturable),
            reviewed_at: now,
        }]),
        ReviewDecision::Approve => {
            let mut events = vec![PaymentEvent::PaymentReviewApproved { reason, reviewed_at: now }];
            if payment.authorization.is_some() && payment.capture_method == CaptureMethod::Automatic {
                events.push(payment.automatic_capture(first_capture_id(payment), now)?);
            }
            Ok(events)
        }
    }
}

fn decide_capture(
    payment: &Payment,
    capture_id: CaptureId,
    amount: Option<AmountInput>,
    final_capture: bool,
    now: Timestamp,
) -> Result<Vec<PaymentEvent>, DomainError> {
    let status = payment.status();
    let capturable_status = matches!(status, PaymentStatus::Authorized | PaymentStatus::Captured);
    if !capturable_status || payment.figures.amount_capturable == 0 {
        return Err(DomainError::PaymentNotCapturable { status });
    }
    if payment.authorization.as_ref().is_some_and(|a| now >= a.expires_at) {
        return Err(DomainError::AuthorizationExpired);
    }
    let capturable = payment.money(payment.figures.amount_capturable);
    let amount = match amount {
        Some(amount) => amount.in_currency(payment.amount.currency)?,
        None => capturable,
    };
    if amount.amount_minor > capturable.amount_minor {
        return Err(DomainError::AmountExceedsCapturable { capturable, requested: amount });
    }
    let fee = payment.fees.fee_for_capture(amount, payment.captures.is_empty())?;
    let final_capture = final_capture || amount == capturable;
    Ok(vec![PaymentEvent::PaymentCaptured { capture_id, amount, fee, final_capture, captured_at: now }])
}

fn decide_void(payment: &Payment, reason: Option<String>, now: Timestamp) -> Result<Vec<PaymentEvent>, DomainError> {
    let status = payment.status();
    let voidable =
        matches!(status, PaymentStatus::Authorized | PaymentStatus::RequiresReview) && payment.captures.is_empty();
    if !voidable {
        return Err(DomainError::PaymentNotVoidable { status });
    }
    validate_reason(reason.as_ref())?;
    Ok(vec![PaymentEvent::PaymentVoided {
        amount_released: payment.money(payment.figures.amount_capturable),
        reason,
        voided_at: now,
    }])
}

fn decide_expiry(payment: &Payment, now: Timestamp) -> Result<Vec<PaymentEvent>, DomainError> {
    let status = payment.status();
    let holding = payment.figures.amount_capturable > 0
        && matches!(status, PaymentStatus::Authorized | PaymentStatus::Captured | PaymentStatus::RequiresReview);
    let due = payment.authorization.as_ref().is_some_and(|a| now >= a.expires_at);
    if !holding || !due {
        return Err(DomainError::AuthorizationNotExpired { status });
    }
    Ok(vec![PaymentEvent::PaymentAuthorizationExpired {
        amount_released: payment.money(payment.figures.amount_capturable),
        expired_at: now,
    }])
}

fn decide_refund(
    payment: &Payment,
    refund_id: RefundId,
    amount: Option<AmountInput>,
    reason: Option<String>,
    now: Timestamp,
) -> Result<Vec<PaymentEvent>, DomainError> {
    let status = payment.status();
    if payment.figures.amount_captured == 0 || status == PaymentStatus::Refunded {
        return Err(DomainError::PaymentNotRefundable { status });
    }
    validate_reason(reason.as_ref())?;
    let refundable = payment.money(payment.amount_refundable()?);
    let amount = match amount {
        Some(amount) => amount.in_currency(payment.amount.currency)?,
        None if refundable.is_positive() => refundable,
        None => return Err(DomainError::PaymentNotRefundable { status }),
    };
    if amount.amount_minor > refundable.amount_minor {
        return Err(DomainError::AmountExceedsRefundable { refundable, requested: amount });
    }
    Ok(vec![PaymentEvent::PaymentRefunded { refund_id, amount, reason, refunded_at: now }])
}

fn decide_open_dispute(
    payment: &Payment,
    dispute_id: DisputeId,
    amount: AmountInput,
    reason: String,
    now: Timestamp,
) -> Result<Vec<PaymentEvent>, DomainError> {
    if payment.figures.amount_captured == 0 {
        return Err(DomainError::PaymentNotDisputable { status: payment.status() });
    }
    validate_text("reason", &reason, MAX_REASON_CHARS, true)?;
    let amount = amount.in_currency(payment.amount.currency)?;
    let disputable = payment.money(payment.amount_disputable()?);
    if amount.amount_minor > disputable.amount_minor {
        return Err(DomainError::AmountExceedsDisputable { disputable, requested: amount });
    }
    Ok(vec![PaymentEvent::PaymentDisputeOpened { dispute_id, amount, reason, opened_at: now }])
}

fn decide_resolve_dispute(
    payment: &Payment,
    dispute_id: DisputeId,
    outcome: DisputeOutcome,
    now: Timestamp,
) -> Result<Vec<PaymentEvent>, DomainError> {
    let dispute = payment.find_dispute(dispute_id)?;
    if dispute.status != DisputeStatus::Open {
        return Err(DomainError::DisputeAlreadyResolved(dispute_id));
    }
    let amount = payment.money(dispute.amount_minor);
    Ok(vec![match outcome {
        DisputeOutcome::Won => PaymentEvent::PaymentDisputeWon { dispute_id, amount, resolved_at: now },
        DisputeOutcome::Lost => PaymentEvent::PaymentDisputeLost { dispute_id, amount, resolved_at: now },
    }])
}

fn decide_settle(payment: &Payment, batch_id: BatchId, now: Timestamp) -> Result<Vec<PaymentEvent>, DomainError> {
    let figures = &payment.figures;
    let unsettled = figures.amount_captured.checked_sub(figures.amount_settled).ok_or(DomainError::AmountOverflow)?;
    if unsettled <= 0 {
        return Err(DomainError::NothingToSettle);
    }
    let fees = figures.fees_charged.checked_sub(figures.fees_settled).ok_or(DomainError::AmountOverflow)?;
    Ok(vec![PaymentEvent::PaymentSettled {
        batch_id,
        amount: payment.money(unsettled),
        fees: payment.money(fees),
        settled_at: now,
    }])
}

/// The id of an automatic capture is derived from the payment id, so a
/// retried decision produces the same event.
fn first_capture_id(payment: &Payment) -> CaptureId {
    CaptureId::from_uuid(*payment.id.as_uuid())
}

fn evolve_existing(mut p: Payment, event: &PaymentEvent) -> Payment {
    use PaymentEvent as E;
    // The figures: the fold shared with the search model. `decide` bounds
    // every amount by the authorized amount, so the checked sums never fail
    // on events it produced; `evolve` stays total and keeps the last figures.
    let applied = p.figures.apply(event);
    debug_assert!(applied.is_ok(), "payment figures overflowed: {applied:?}");
    // The details only the aggregate keeps.
    match event {
        E::PaymentRiskAssessed { score, decision, rules, .. } => {
            p.risk = Some(RiskAssessment { score: *score, decision: *decision, rules: rules.clone() });
        }
        E::PaymentAuthorized { acquirer_reference, authorized_at, expires_at, .. } => {
            p.authorization = Some(Authorization {
                acquirer_reference: acquirer_reference.clone(),
                authorized_at: *authorized_at,
                expires_at: *expires_at,
            });
        }
        E::PaymentCaptured { capture_id, amount, fee, captured_at, .. } => p.captures.push(Capture {
            id: *capture_id,
            amount_minor: amount.amount_minor,
            fee_minor: fee.amount_minor,
            captured_at: *captured_at,
        }),
        E::PaymentRefunded { refund_id, amount, reason, refunded_at } => p.refunds.push(Refund {
            id: *refund_id,
            amount_minor: amount.amount_minor,
            reason: reason.clone(),
            refunded_at: *refunded_at,
        }),
        E::PaymentDisputeOpened { dispute_id, amount, reason, opened_at } => p.disputes.push(Dispute {
            id: *dispute_id,
            amount_minor: amount.amount_minor,
            reason: reason.clone(),
            status: DisputeStatus::Open,
            opened_at: *opened_at,
        }),
        E::PaymentDisputeWon { dispute_id, .. } => set_dispute_status(&mut p, *dispute_id, DisputeStatus::Won),
        E::PaymentDisputeLost { dispute_id, .. } => set_dispute_status(&mut p, *dispute_id, DisputeStatus::Lost),
        E::PaymentInitiated { .. }
        | E::PaymentDeclined { .. }
        | E::PaymentReviewApproved { .. }
        | E::PaymentReviewRejected { .. }
        | E::PaymentVoided { .. }
        | E::PaymentAuthorizationExpired { .. }
        | E::PaymentSettled { .. } => {}
    }
    p
}

fn set_dispute_status(payment: &mut Payment, id: DisputeId, status: DisputeStatus) {
    if let Some(dispute) = payment.disputes.iter_mut().find(|d| d.id == id) {
        dispute.status = status;
    }
}
