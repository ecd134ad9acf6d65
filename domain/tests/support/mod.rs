//! Fixtures shared by the domain tests: a merchant, timestamps, ids and the
//! canonical events of a payment's life.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use paystream_domain::id::{BatchId, CaptureId, DisputeId, MerchantId, PaymentId, RefundId};
use paystream_domain::merchant::{FeeSchedule, Merchant, MerchantStatus, Tier};
use paystream_domain::method::{fingerprint, CardBrand, MethodSummary, PaymentMethodInput};
use paystream_domain::payment::{
    AcquirerOutcome, AmountInput, CaptureMethod, Customer, InitiatePayment, PaymentCommand, PaymentEvent,
};
use paystream_domain::risk::{RiskDecision, RiskRule, RiskSignals};
use paystream_domain::testing::TEST_FINGERPRINT_KEY;
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, Money};
use uuid::Uuid;

pub const USD: Currency = Currency::USD;
pub const VISA: &str = "4242424242424242";

/// 2026-11-26T10:00:00Z plus `seconds`.
pub fn t(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_795_687_200 + seconds).unwrap()
}

pub const DAY: i64 = 86_400;

pub fn usd(minor: i64) -> Money {
    Money::new(minor, USD)
}

pub fn merchant_id() -> MerchantId {
    MerchantId::from_uuid(Uuid::from_u128(0x10))
}

pub fn payment_id() -> PaymentId {
    PaymentId::from_uuid(Uuid::from_u128(0x20))
}

pub fn capture_id(n: u128) -> CaptureId {
    CaptureId::from_uuid(Uuid::from_u128(0x3000 + n))
}

/// The id decide gives an automatic capture (derived from the payment id).
pub fn auto_capture_id() -> CaptureId {
    CaptureId::from_uuid(*payment_id().as_uuid())
}

pub fn refund_id(n: u128) -> RefundId {
    RefundId::from_uuid(Uuid::from_u128(0x4000 + n))
}

pub fn dispute_id(n: u128) -> DisputeId {
    DisputeId::from_uuid(Uuid::from_u128(0x5000 + n))
}

pub fn batch_id() -> BatchId {
    BatchId::from_uuid(Uuid::from_u128(0x6000))
}

pub const FEES: FeeSchedule = FeeSchedule { percent_bps: 290, fixed_minor: 30 };

pub fn merchant(tier: Tier, status: MerchantStatus) -> Merchant {
    Merchant {
        id: merchant_id(),
        name: "Lotus Tea House".into(),
        country: "US".parse().unwrap(),
        default_currency: USD,
        settlement_currency: USD,
        tier,
        fees: FEES,
        status,
        onboarded_at: t(-DAY),
    }
}

pub fn card_json(number: &str, exp_month: u8, exp_year: u16, cvc: &str) -> PaymentMethodInput {
    serde_json::from_value(serde_json::json!({
        "type": "card",
        "card": {"number": number, "exp_month": exp_month, "exp_year": exp_year, "cvc": cvc}
    }))
    .unwrap()
}

pub fn visa() -> PaymentMethodInput {
    card_json(VISA, 12, 2030, "123")
}

pub fn visa_summary() -> MethodSummary {
    MethodSummary::Card {
        brand: CardBrand::Visa,
        last4: "4242".into(),
        exp_month: 12,
        exp_year: 2030,
        fingerprint: fingerprint(TEST_FINGERPRINT_KEY, VISA),
    }
}

pub fn customer() -> Customer {
    Customer {
        id: Some("cus_1".into()),
        email: Some("mei@example.com".into()),
        ip: Some("203.0.113.7".parse().unwrap()),
        country: Some("US".parse().unwrap()),
    }
}

pub fn initiate_with(amount: Money, capture_method: CaptureMethod, merchant: Merchant) -> InitiatePayment {
    InitiatePayment {
        payment_id: payment_id(),
        merchant: Some(merchant),
        amount,
        capture_method,
        method: visa(),
        customer: customer(),
        description: Some("Two pots of oolong".into()),
        metadata: BTreeMap::from([("order_id".to_string(), "A-1001".to_string())]),
        daily_volume: Money::zero(amount.currency),
        signals: RiskSignals::default(),
        now: t(0),
    }
}

pub fn initiate(amount_minor: i64, capture_method: CaptureMethod) -> PaymentCommand {
    PaymentCommand::Initiate(Box::new(initiate_with(
        usd(amount_minor),
        capture_method,
        merchant(Tier::A, MerchantStatus::Active),
    )))
}

pub fn initiated(amount_minor: i64, capture_method: CaptureMethod) -> PaymentEvent {
    PaymentEvent::PaymentInitiated {
        payment_id: payment_id(),
        merchant_id: merchant_id(),
        amount: usd(amount_minor),
        capture_method,
        method: visa_summary(),
        customer: customer(),
        description: Some("Two pots of oolong".into()),
        metadata: BTreeMap::from([("order_id".to_string(), "A-1001".to_string())]),
        fees: FEES,
        initiated_at: t(0),
    }
}

pub fn risk(decision: RiskDecision, score: u8, rules: Vec<RiskRule>) -> PaymentEvent {
    PaymentEvent::PaymentRiskAssessed { score, decision, rules, signals: RiskSignals::default(), assessed_at: t(0) }
}

pub fn approved_risk() -> PaymentEvent {
    risk(RiskDecision::Approve, 0, vec![])
}

pub fn review_risk() -> PaymentEvent {
    risk(RiskDecision::Review, 65, vec![RiskRule::AmountNearTierLimit, RiskRule::HighRiskTier])
}

pub fn authorized(amount_minor: i64) -> PaymentEvent {
    PaymentEvent::PaymentAuthorized {
        acquirer_reference: "acq_1".into(),
        amount: usd(amount_minor),
        authorized_at: t(1),
        expires_at: t(1 + 7 * DAY),
    }
}

pub fn approve_at_acquirer() -> PaymentCommand {
    PaymentCommand::RecordAuthorization {
        outcome: AcquirerOutcome::Approved { acquirer_reference: "acq_1".into() },
        now: t(1),
    }
}

/// Fee: 2.90% of the amount (half away from zero) plus 0.30 on the first capture.
pub fn fee(amount_minor: i64, first: bool) -> Money {
    FEES.fee_for_capture(usd(amount_minor), first).unwrap()
}

pub fn captured(n: u128, amount_minor: i64, first: bool, final_capture: bool) -> PaymentEvent {
    PaymentEvent::PaymentCaptured {
        capture_id: capture_id(n),
        amount: usd(amount_minor),
        fee: fee(amount_minor, first),
        final_capture,
        captured_at: t(100),
    }
}

pub fn capture(n: u128, amount_minor: Option<i64>, final_capture: bool) -> PaymentCommand {
    PaymentCommand::Capture {
        capture_id: capture_id(n),
        amount: amount_minor.map(AmountInput::minor),
        final_capture,
        now: t(100),
    }
}

pub fn refund(n: u128, amount_minor: Option<i64>) -> PaymentCommand {
    PaymentCommand::Refund {
        refund_id: refund_id(n),
        amount: amount_minor.map(AmountInput::minor),
        reason: None,
        now: t(200),
    }
}

pub fn refunded(n: u128, amount_minor: i64) -> PaymentEvent {
    PaymentEvent::PaymentRefunded {
        refund_id: refund_id(n),
        amount: usd(amount_minor),
        reason: None,
        refunded_at: t(200),
    }
}

pub fn open_dispute(n: u128, amount_minor: i64) -> PaymentCommand {
    PaymentCommand::OpenDispute {
        dispute_id: dispute_id(n),
        amount: AmountInput::minor(amount_minor),
        reason: "fraudulent".into(),
        now: t(300),
    }
}

pub fn dispute_opened(n: u128, amount_minor: i64) -> PaymentEvent {
    PaymentEvent::PaymentDisputeOpened {
        dispute_id: dispute_id(n),
        amount: usd(amount_minor),
        reason: "fraudulent".into(),
        opened_at: t(300),
    }
}

pub fn dispute_lost(n: u128, amount_minor: i64) -> PaymentEvent {
    PaymentEvent::PaymentDisputeLost { dispute_id: dispute_id(n), amount: usd(amount_minor), resolved_at: t(400) }
}

/// A manual-capture payment of 100.00 USD, authorized.
pub fn authorized_payment() -> Vec<PaymentEvent> {
    vec![initiated(10_000, CaptureMethod::Manual), approved_risk(), authorized(10_000)]
}

/// A payment of 100.00 USD captured in full.
pub fn captured_payment() -> Vec<PaymentEvent> {
    let mut events = authorized_payment();
    events.push(captured(1, 10_000, true, true));
    events
}
