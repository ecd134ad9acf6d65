//! Events are the long-term contract: JSON written by schema version 1 must
//! keep loading. `fixtures/events_v1.json` was written by this code and is
//! never regenerated; when a field is added, old events (without it) must
//! still deserialize into the new types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use paystream_domain::merchant::MerchantEvent;
use paystream_domain::payment::{CaptureMethod, DeclineCode, PaymentEvent};
use paystream_domain::DomainEvent;
use support::*;

const FIXTURE: &str = include_str!("fixtures/events_v1.json");

fn every_payment_event() -> Vec<PaymentEvent> {
    let mut events = captured_payment();
    events.extend([
        PaymentEvent::PaymentDeclined { decline_code: DeclineCode::CardDeclined, declined_at: t(1) },
        PaymentEvent::PaymentReviewApproved { reason: Some("ok".into()), reviewed_at: t(2) },
        PaymentEvent::PaymentReviewRejected { reason: None, amount_released: usd(1), reviewed_at: t(2) },
        PaymentEvent::PaymentVoided { amount_released: usd(10_000), reason: None, voided_at: t(3) },
        PaymentEvent::PaymentAuthorizationExpired { amount_released: usd(10_000), expired_at: t(4) },
        refunded(1, 100),
        dispute_opened(1, 200),
        PaymentEvent::PaymentDisputeWon { dispute_id: dispute_id(1), amount: usd(200), resolved_at: t(5) },
        dispute_lost(1, 200),
        PaymentEvent::PaymentSettled { batch_id: batch_id(), amount: usd(10_000), fees: usd(320), settled_at: t(6) },
    ]);
    events
}

#[test]
fn stored_v1_events_still_load() {
    let stored: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let payment: Vec<PaymentEvent> = serde_json::from_value(stored["payment"].clone()).unwrap();
    assert_eq!(payment, every_payment_event());
    let merchant: Vec<MerchantEvent> = serde_json::from_value(stored["merchant"].clone()).unwrap();
    assert_eq!(merchant.len(), 5);
    // The fixture holds every payment event type once.
    let types: std::collections::BTreeSet<_> = payment.iter().map(|e| e.event_type()).collect();
    assert_eq!(types.len(), 14);
}

#[test]
fn an_event_written_before_optional_fields_existed_still_loads() {
    // A PaymentInitiated with only the fields every version has had, plus a
    // field from the future that this version does not know.
    let json = serde_json::json!({
        "type": "PaymentInitiated",
        "payment_id": "pay_00000000000000000000000000000020",
        "merchant_id": "mer_00000000000000000000000000000010",
        "amount": {"amount_minor": 10000, "currency": "USD"},
        "capture_method": "manual",
        "method": {"type": "wallet", "provider": "alipay", "account_id": "a@b"},
        "fees": {"percent_bps": 290, "fixed_minor": 30},
        "initiated_at": "2026-11-26T10:00:00Z",
        "added_in_a_later_version": {"anything": true}
    });
    let event: PaymentEvent = serde_json::from_value(json).unwrap();
    match event {
        PaymentEvent::PaymentInitiated { capture_method, customer, metadata, description, .. } => {
            assert_eq!(capture_method, CaptureMethod::Manual);
            assert_eq!(customer, Default::default());
            assert!(metadata.is_empty() && description.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Prints the fixture; run with `--ignored --nocapture` only when adding a
/// new fixture version (never to overwrite v1).
#[test]
#[ignore]
fn print_fixture() {
    let merchant = vec![
        MerchantEvent::MerchantOnboarded {
            merchant_id: merchant_id(),
            name: "Lotus Tea House".into(),
            country: "US".parse().unwrap(),
            default_currency: USD,
            settlement_currency: USD,
            tier: paystream_domain::merchant::Tier::B,
            fees: FEES,
            onboarded_at: t(0),
        },
        MerchantEvent::MerchantTierChanged {
            from: paystream_domain::merchant::Tier::B,
            to: paystream_domain::merchant::Tier::C,
            reason: None,
            changed_at: t(1),
        },
        MerchantEvent::MerchantSuspended { reason: "chargebacks".into(), suspended_at: t(2) },
        MerchantEvent::MerchantReactivated { reactivated_at: t(3) },
        MerchantEvent::MerchantClosed { reason: Some("retired".into()), closed_at: t(4) },
    ];
    let doc = serde_json::json!({"payment": every_payment_event(), "merchant": merchant});
    println!("{}", serde_json::to_string_pretty(&doc).unwrap());
}
