//! Given events / when command / then events, for every transition of the
//! Payment aggregate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use paystream_domain::merchant::{MerchantStatus, Tier};
use paystream_domain::method::{CardBrand, MethodSummary, QrScheme, WalletProvider};
use paystream_domain::payment::{
    AcquirerOutcome, CaptureMethod, DeclineCode, DisputeOutcome, PaymentAggregate, PaymentCommand, PaymentEvent,
    PaymentStatus, ReviewDecision,
};
use paystream_domain::risk::{RiskDecision, RiskRule};
use paystream_domain::testing::given;
use paystream_domain::Aggregate;
use support::*;

fn status(state: &Option<paystream_domain::payment::Payment>) -> PaymentStatus {
    state.as_ref().unwrap().status()
}

#[test]
fn initiate_a_card_payment_assesses_risk_and_waits_for_the_acquirer() {
    let state = given::<PaymentAggregate>([])
        .when(initiate(10_000, CaptureMethod::Manual))
        .then([initiated(10_000, CaptureMethod::Manual), approved_risk()]);
    assert_eq!(status(&state), PaymentStatus::Pending);
}

#[test]
fn the_log_keeps_only_brand_last4_expiry_and_fingerprint_of_a_card() {
    let events = given::<PaymentAggregate>([]).when(initiate(10_000, CaptureMethod::Manual)).events();
    let json = serde_json::to_string(&events).unwrap();
    assert!(!json.contains(VISA), "the full card number reached an event");
    assert!(!json.contains("\"123\""), "the CVC reached an event");
    assert!(json.contains("\"last4\":\"4242\""));
}

#[test]
fn a_large_payment_for_a_tier_d_merchant_requires_review() {
    let mut cmd = initiate_with(usd(60_000), CaptureMethod::Automatic, merchant(Tier::D, MerchantStatus::Active));
    cmd.customer.country = Some("US".parse().unwrap());
    let events = given::<PaymentAggregate>([]).when(PaymentCommand::Initiate(Box::new(cmd))).events();
    assert_eq!(events[1], review_risk());
    let state = PaymentAggregate::fold(&events);
    assert_eq!(status(&state), PaymentStatus::RequiresReview);
}

#[test]
fn a_risky_payment_is_declined_by_the_rules() {
    let mut cmd = initiate_with(usd(60_000), CaptureMethod::Automatic, merchant(Tier::D, MerchantStatus::Active));
    cmd.signals.instrument_attempts_last_hour = 7;
    let events = given::<PaymentAggregate>([]).when(PaymentCommand::Initiate(Box::new(cmd))).events();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[1],
        PaymentEvent::PaymentRiskAssessed {
            score: 100,
            decision: RiskDecision::Decline,
            rules: vec![RiskRule::AmountNearTierLimit, RiskRule::InstrumentVelocity, RiskRule::HighRiskTier],
            signals: paystream_domain::risk::RiskSignals { instrument_attempts_last_hour: 7, ..Default::default() },
            assessed_at: t(0),
        }
    );
    assert_eq!(events[2], PaymentEvent::PaymentDeclined { decline_code: DeclineCode::RiskDeclined, declined_at: t(0) });
    assert_eq!(status(&PaymentAggregate::fold(&events)), PaymentStatus::Declined);
}

#[test]
fn every_method_type_is_summarised_without_secrets() {
    let cases = [
        (
            serde_json::json!({"type": "wallet", "wallet": {"provider": "alipay", "account_id": "buyer@alipay"}}),
            MethodSummary::Wallet { provider: WalletProvider::Alipay, account_id: "buyer@alipay".into() },
        ),
        (
            serde_json::json!({"type": "wallet", "wallet": {"provider": "wechat_pay", "account_id": "wx_openid_1"}}),
            MethodSummary::Wallet { provider: WalletProvider::WechatPay, account_id: "wx_openid_1".into() },
        ),
        (
            serde_json::json!({"type": "bank_transfer", "bank_transfer": {"bank_code": "ICBC", "account_holder": "Li Mei", "account_id": "6222020200112233"}}),
            MethodSummary::BankTransfer {
                bank_code: "ICBC".into(),
                account_holder: "Li Mei".into(),
                account_last4: "2233".into(),
            },
        ),
        (
            serde_json::json!({"type": "qr_code", "qr_code": {"scheme": "unionpay", "payer_id": "payer-9"}}),
            MethodSummary::QrCode { scheme: QrScheme::Unionpay, payer_id: "payer-9".into() },
        ),
        (
            serde_json::json!({"type": "card", "card": {"number": "6200 0000 0000 0005", "exp_month": 1, "exp_year": 2027, "cvc": "999"}}),
            MethodSummary::Card {
                brand: CardBrand::Unionpay,
                last4: "0005".into(),
                exp_month: 1,
                exp_year: 2027,
                fingerprint: paystream_domain::method::fingerprint(
                    paystream_domain::testing::TEST_FINGERPRINT_KEY,
                    "6200000000000005",
                ),
            },
        ),
    ];
    for (method, summary) in cases {
        let mut cmd = initiate_with(usd(1_000), CaptureMethod::Automatic, merchant(Tier::A, MerchantStatus::Active));
        cmd.method = serde_json::from_value(method).unwrap();
        let events = given::<PaymentAggregate>([]).when(PaymentCommand::Initiate(Box::new(cmd))).events();
        match &events[0] {
            PaymentEvent::PaymentInitiated { method, .. } => assert_eq!(method, &summary),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut cmd = initiate_with(usd(1_000), CaptureMethod::Automatic, merchant(Tier::A, MerchantStatus::Active));
    cmd.method =
        serde_json::from_value(serde_json::json!({"type": "nfc", "nfc": {"device_token": "dev_tok_ABCDEFGH1234"}}))
            .unwrap();
    let events = given::<PaymentAggregate>([]).when(PaymentCommand::Initiate(Box::new(cmd))).events();
    let json = serde_json::to_string(&events).unwrap();
    assert!(json.contains("\"token_last4\":\"1234\"") && !json.contains("dev_tok_ABCDEFGH1234"));
}

#[test]
fn manual_capture_authorization_holds_the_amount() {
    let state = given::<PaymentAggregate>([initiated(10_000, CaptureMethod::Manual), approved_risk()])
        .when(approve_at_acquirer())
        .then([authorized(10_000)]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.status(), payment.figures.amount_capturable, payment.figures.amount_captured),
        (PaymentStatus::Authorized, 10_000, 0)
    );
}

#[test]
fn automatic_capture_captures_in_full_on_authorization() {
    let state = given::<PaymentAggregate>([initiated(10_000, CaptureMethod::Automatic), approved_risk()])
        .when(approve_at_acquirer())
        .then([
            authorized(10_000),
            PaymentEvent::PaymentCaptured {
                capture_id: auto_capture_id(),
                amount: usd(10_000),
                fee: usd(320), // 2.90% of 100.00 + 0.30
                final_capture: true,
                captured_at: t(1),
            },
        ]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.status(), payment.figures.amount_capturable, payment.figures.amount_captured),
        (PaymentStatus::Captured, 0, 10_000)
    );
}

#[test]
fn the_acquirer_declines() {
    let state = given::<PaymentAggregate>([initiated(10_000, CaptureMethod::Automatic), approved_risk()])
        .when(PaymentCommand::RecordAuthorization {
            outcome: AcquirerOutcome::Declined { decline_code: DeclineCode::InsufficientFunds },
            now: t(1),
        })
        .then([PaymentEvent::PaymentDeclined { decline_code: DeclineCode::InsufficientFunds, declined_at: t(1) }]);
    assert_eq!(status(&state), PaymentStatus::Declined);
}

#[test]
fn a_payment_under_review_is_authorized_but_not_captured_until_approved() {
    let history = [initiated(60_000, CaptureMethod::Automatic), review_risk()];
    let state = given::<PaymentAggregate>(history.clone()).when(approve_at_acquirer()).then([authorized(60_000)]);
    assert_eq!(status(&state), PaymentStatus::RequiresReview);

    let mut reviewed = history.to_vec();
    reviewed.push(authorized(60_000));
    let state = given::<PaymentAggregate>(reviewed.clone())
        .when(PaymentCommand::Review {
            decision: ReviewDecision::Approve,
            reason: Some("known buyer".into()),
            now: t(50),
        })
        .then([
            PaymentEvent::PaymentReviewApproved { reason: Some("known buyer".into()), reviewed_at: t(50) },
            PaymentEvent::PaymentCaptured {
                capture_id: auto_capture_id(),
                amount: usd(60_000),
                fee: usd(1_770), // 2.90% of 600.00 + 0.30
                final_capture: true,
                captured_at: t(50),
            },
        ]);
    assert_eq!(status(&state), PaymentStatus::Captured);
}

#[test]
fn approving_a_manual_payment_leaves_it_authorized() {
    let history = [initiated(60_000, CaptureMethod::Manual), review_risk(), authorized(60_000)];
    let state = given::<PaymentAggregate>(history)
        .when(PaymentCommand::Review { decision: ReviewDecision::Approve, reason: None, now: t(50) })
        .then([PaymentEvent::PaymentReviewApproved { reason: None, reviewed_at: t(50) }]);
    assert_eq!(status(&state), PaymentStatus::Authorized);
}

#[test]
fn rejecting_on_review_releases_the_hold() {
    let history = [initiated(60_000, CaptureMethod::Automatic), review_risk(), authorized(60_000)];
    let state = given::<PaymentAggregate>(history)
        .when(PaymentCommand::Review {
            decision: ReviewDecision::Reject,
            reason: Some("stolen card".into()),
            now: t(50),
        })
        .then([PaymentEvent::PaymentReviewRejected {
            reason: Some("stolen card".into()),
            amount_released: usd(60_000),
            reviewed_at: t(50),
        }]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.status(), payment.figures.decline_code, payment.figures.amount_capturable),
        (PaymentStatus::Declined, Some(DeclineCode::ReviewRejected), 0)
    );
}

#[test]
fn partial_captures_then_a_final_capture() {
    let state = given::<PaymentAggregate>(authorized_payment())
        .when(capture(1, Some(3_000), false))
        .then([captured(1, 3_000, true, false)]);
    let payment = state.clone().unwrap();
    assert_eq!(
        (
            payment.status(),
            payment.figures.amount_capturable,
            payment.figures.amount_captured,
            payment.figures.fees_charged
        ),
        (PaymentStatus::Captured, 7_000, 3_000, 117)
    );

    let mut history = authorized_payment();
    history.push(captured(1, 3_000, true, false));
    let state = given::<PaymentAggregate>(history.clone())
        .when(capture(2, Some(2_000), false))
        .then([captured(2, 2_000, false, false)]);
    assert_eq!(state.unwrap().figures.amount_capturable, 5_000);

    // `final` releases what is left.
    let state = given::<PaymentAggregate>(history.clone())
        .when(capture(2, Some(2_000), true))
        .then([captured(2, 2_000, false, true)]);
    let payment = state.unwrap();
    assert_eq!((payment.figures.amount_capturable, payment.figures.amount_captured), (0, 5_000));

    // Capturing exactly the remainder is final by itself.
    given::<PaymentAggregate>(history).when(capture(2, Some(7_000), false)).then([captured(2, 7_000, false, true)]);
}

#[test]
fn capture_without_amount_takes_everything_capturable() {
    given::<PaymentAggregate>(authorized_payment())
        .when(capture(1, None, false))
        .then([captured(1, 10_000, true, true)]);
}

#[test]
fn void_before_capture_releases_the_hold() {
    let state = given::<PaymentAggregate>(authorized_payment())
        .when(PaymentCommand::Void { reason: Some("customer cancelled".into()), now: t(60) })
        .then([PaymentEvent::PaymentVoided {
            amount_released: usd(10_000),
            reason: Some("customer cancelled".into()),
            voided_at: t(60),
        }]);
    assert_eq!(status(&state), PaymentStatus::Voided);
}

#[test]
fn a_payment_under_review_can_be_voided() {
    given::<PaymentAggregate>([initiated(60_000, CaptureMethod::Manual), review_risk(), authorized(60_000)])
        .when(PaymentCommand::Void { reason: None, now: t(60) })
        .then([PaymentEvent::PaymentVoided { amount_released: usd(60_000), reason: None, voided_at: t(60) }]);
}

#[test]
fn an_uncaptured_authorization_expires_after_seven_days() {
    let state = given::<PaymentAggregate>(authorized_payment())
        .when(PaymentCommand::ExpireAuthorization { now: t(1 + 7 * DAY) })
        .then([PaymentEvent::PaymentAuthorizationExpired { amount_released: usd(10_000), expired_at: t(1 + 7 * DAY) }]);
    assert_eq!(status(&state), PaymentStatus::Expired);
}

#[test]
fn expiry_after_a_partial_capture_releases_the_rest_and_keeps_the_capture() {
    let mut history = authorized_payment();
    history.push(captured(1, 3_000, true, false));
    let state = given::<PaymentAggregate>(history)
        .when(PaymentCommand::ExpireAuthorization { now: t(8 * DAY) })
        .then([PaymentEvent::PaymentAuthorizationExpired { amount_released: usd(7_000), expired_at: t(8 * DAY) }]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.status(), payment.figures.amount_capturable, payment.figures.amount_captured),
        (PaymentStatus::Captured, 0, 3_000)
    );
}

#[test]
fn partial_refunds_then_the_rest() {
    let state = given::<PaymentAggregate>(captured_payment()).when(refund(1, Some(2_500))).then([refunded(1, 2_500)]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.status(), payment.figures.amount_refunded, payment.amount_refundable().unwrap()),
        (PaymentStatus::Captured, 2_500, 7_500)
    );

    let mut history = captured_payment();
    history.push(refunded(1, 2_500));
    let state = given::<PaymentAggregate>(history).when(refund(2, None)).then([refunded(2, 7_500)]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.status(), payment.refunds.len(), payment.amount_refundable().unwrap()),
        (PaymentStatus::Refunded, 2, 0)
    );
}

#[test]
fn a_dispute_is_opened_and_won() {
    let state =
        given::<PaymentAggregate>(captured_payment()).when(open_dispute(1, 4_000)).then([dispute_opened(1, 4_000)]);
    let payment = state.unwrap();
    assert_eq!((payment.amount_disputed_open(), payment.amount_refundable().unwrap()), (4_000, 6_000));

    let mut history = captured_payment();
    history.push(dispute_opened(1, 4_000));
    let state = given::<PaymentAggregate>(history)
        .when(PaymentCommand::ResolveDispute { dispute_id: dispute_id(1), outcome: DisputeOutcome::Won, now: t(400) })
        .then([PaymentEvent::PaymentDisputeWon { dispute_id: dispute_id(1), amount: usd(4_000), resolved_at: t(400) }]);
    let payment = state.unwrap();
    assert_eq!(
        (payment.amount_disputed_open(), payment.amount_dispute_lost(), payment.amount_refundable().unwrap()),
        (0, 0, 10_000)
    );
}

#[test]
fn a_lost_dispute_reduces_what_can_be_refunded() {
    let mut history = captured_payment();
    history.push(dispute_opened(1, 4_000));
    let state = given::<PaymentAggregate>(history.clone())
        .when(PaymentCommand::ResolveDispute { dispute_id: dispute_id(1), outcome: DisputeOutcome::Lost, now: t(400) })
        .then([dispute_lost(1, 4_000)]);
    let payment = state.unwrap();
    assert_eq!((payment.amount_dispute_lost(), payment.amount_refundable().unwrap()), (4_000, 6_000));

    history.push(dispute_lost(1, 4_000));
    given::<PaymentAggregate>(history.clone()).when(refund(1, None)).then([refunded(1, 6_000)]);
    given::<PaymentAggregate>(history).when(refund(1, Some(6_001))).then_error("amount_exceeds_refundable");
}

#[test]
fn settlement_settles_what_was_captured_and_its_fees() {
    let state = given::<PaymentAggregate>(captured_payment())
        .when(PaymentCommand::Settle { batch_id: batch_id(), now: t(DAY) })
        .then([PaymentEvent::PaymentSettled {
            batch_id: batch_id(),
            amount: usd(10_000),
            fees: usd(320),
            settled_at: t(DAY),
        }]);
    let payment = state.unwrap();
    assert_eq!((payment.figures.amount_settled, payment.figures.fees_settled), (10_000, 320));
}
