//! Every rejection code of the domain, each from a given / when scenario.
//! The table must cover `DomainError::ALL_CODES` exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use paystream_domain::api_key::{ApiKeyAggregate, ApiKeyCommand, ApiKeyEvent, Role};
use paystream_domain::error::ErrorCode;
use paystream_domain::id::ApiKeyId;
use paystream_domain::merchant::{
    FeeSchedule, MerchantAggregate, MerchantCommand, MerchantEvent, MerchantStatus, Tier,
};
use paystream_domain::payment::{
    AcquirerOutcome, AmountInput, CaptureMethod, DisputeOutcome, PaymentAggregate, PaymentCommand, PaymentEvent,
    ReviewDecision,
};
use paystream_domain::testing::given;
use paystream_domain::{Currency, DomainError, ErrorKind, Money};
use support::*;

fn pay(history: Vec<PaymentEvent>, command: PaymentCommand) -> DomainError {
    let events = history;
    let state = <PaymentAggregate as paystream_domain::Aggregate>::fold(&events);
    <PaymentAggregate as paystream_domain::Aggregate>::decide(
        &state,
        command,
        &paystream_domain::testing::test_context(),
    )
    .expect_err("expected a rejection")
}

fn initiate_cmd(edit: impl FnOnce(&mut paystream_domain::payment::InitiatePayment)) -> PaymentCommand {
    let mut cmd = initiate_with(usd(10_000), CaptureMethod::Manual, merchant(Tier::A, MerchantStatus::Active));
    edit(&mut cmd);
    PaymentCommand::Initiate(Box::new(cmd))
}

fn onboarded() -> MerchantEvent {
    MerchantEvent::MerchantOnboarded {
        merchant_id: merchant_id(),
        name: "Lotus".into(),
        country: "US".parse().unwrap(),
        default_currency: USD,
        settlement_currency: USD,
        tier: Tier::B,
        fees: FEES,
        onboarded_at: t(0),
    }
}

fn onboard(fees: FeeSchedule) -> MerchantCommand {
    MerchantCommand::Onboard {
        merchant_id: merchant_id(),
        name: "Lotus".into(),
        country: "US".parse().unwrap(),
        default_currency: USD,
        settlement_currency: Some(USD),
        tier: Tier::B,
        fees,
        now: t(0),
    }
}

fn merchant_err(history: Vec<MerchantEvent>, command: MerchantCommand) -> DomainError {
    let state = <MerchantAggregate as paystream_domain::Aggregate>::fold(&history);
    <MerchantAggregate as paystream_domain::Aggregate>::decide(
        &state,
        command,
        &paystream_domain::testing::test_context(),
    )
    .expect_err("expected a rejection")
}

fn key_id() -> ApiKeyId {
    ApiKeyId::from_uuid(uuid::Uuid::from_u128(0x70))
}

fn key_issue() -> ApiKeyCommand {
    ApiKeyCommand::Issue {
        key_id: key_id(),
        role: Role::Admin,
        merchant_id: None,
        merchant: None,
        key_hash: "ab".repeat(32),
        now: t(0),
    }
}

fn key_issued() -> ApiKeyEvent {
    ApiKeyEvent::ApiKeyIssued {
        key_id: key_id(),
        role: Role::Admin,
        merchant_id: None,
        key_hash: "ab".repeat(32),
        issued_at: t(0),
    }
}

fn key_err(history: Vec<ApiKeyEvent>, command: ApiKeyCommand) -> DomainError {
    let state = <ApiKeyAggregate as paystream_domain::Aggregate>::fold(&history);
    <ApiKeyAggregate as paystream_domain::Aggregate>::decide(
        &state,
        command,
        &paystream_domain::testing::test_context(),
    )
    .expect_err("expected a rejection")
}

fn with(mut history: Vec<PaymentEvent>, more: impl IntoIterator<Item = PaymentEvent>) -> Vec<PaymentEvent> {
    history.extend(more);
    history
}

fn pending() -> Vec<PaymentEvent> {
    vec![initiated(10_000, CaptureMethod::Manual), approved_risk()]
}

fn voided() -> PaymentEvent {
    PaymentEvent::PaymentVoided { amount_released: usd(10_000), reason: None, voided_at: t(5) }
}

fn scenarios() -> Vec<(&'static str, DomainError)> {
    let suspended = MerchantEvent::MerchantSuspended { reason: "x".into(), suspended_at: t(1) };
    vec![
        ("amount_not_positive", pay(vec![], initiate_cmd(|c| c.amount = usd(0)))),
        ("amount_not_positive", pay(authorized_payment(), capture(1, Some(-5), false))),
        ("amount_overflow", pay(vec![], initiate_cmd(|c| c.daily_volume = usd(i64::MAX - 1)))),
        (
            "currency_mismatch",
            pay(
                authorized_payment(),
                PaymentCommand::Capture {
                    capture_id: capture_id(1),
                    amount: Some(AmountInput { amount_minor: 100, currency: Some(Currency::EUR) }),
                    final_capture: false,
                    now: t(100),
                },
            ),
        ),
        (
            "invalid_card_number",
            pay(vec![], initiate_cmd(|c| c.method = card_json("4242424242424241", 12, 2030, "123"))),
        ),
        ("invalid_card_number", pay(vec![], initiate_cmd(|c| c.method = card_json("42424242", 12, 2030, "123")))),
        ("invalid_expiry_month", pay(vec![], initiate_cmd(|c| c.method = card_json(VISA, 13, 2030, "123")))),
        ("card_expired", pay(vec![], initiate_cmd(|c| c.method = card_json(VISA, 10, 2026, "123")))),
        ("invalid_cvc", pay(vec![], initiate_cmd(|c| c.method = card_json(VISA, 11, 2026, "12")))),
        ("invalid_field", pay(vec![], initiate_cmd(|c| c.customer.email = Some("not-an-email".into())))),
        ("invalid_field", pay(vec![], initiate_cmd(|c| c.description = Some("x".repeat(1_001))))),
        (
            "too_many_metadata_keys",
            pay(
                vec![],
                initiate_cmd(|c| {
                    c.metadata = (0..21).map(|i| (format!("k{i}"), "v".to_string())).collect::<BTreeMap<_, _>>()
                }),
            ),
        ),
        ("invalid_fee_schedule", merchant_err(vec![], onboard(FeeSchedule { percent_bps: 1_001, fixed_minor: 0 }))),
        ("merchant_not_found", merchant_err(vec![], MerchantCommand::Reactivate { now: t(1) })),
        ("payment_not_found", pay(vec![], capture(1, None, false))),
        (
            "dispute_not_found",
            pay(
                captured_payment(),
                PaymentCommand::ResolveDispute { dispute_id: dispute_id(9), outcome: DisputeOutcome::Won, now: t(1) },
            ),
        ),
        ("api_key_not_found", key_err(vec![], ApiKeyCommand::Revoke { now: t(1) })),
        ("api_key_already_exists", key_err(vec![key_issued()], key_issue())),
        (
            "api_key_already_revoked",
            key_err(
                vec![key_issued(), ApiKeyEvent::ApiKeyRevoked { key_id: key_id(), revoked_at: t(1) }],
                ApiKeyCommand::Revoke { now: t(2) },
            ),
        ),
        ("merchant_already_exists", merchant_err(vec![onboarded()], onboard(FEES))),
        ("merchant_not_found", pay(vec![], initiate_cmd(|c| c.merchant = None))),
        (
            "merchant_suspended",
            pay(vec![], initiate_cmd(|c| c.merchant.as_mut().unwrap().status = MerchantStatus::Suspended)),
        ),
        (
            "merchant_closed",
            pay(vec![], initiate_cmd(|c| c.merchant.as_mut().unwrap().status = MerchantStatus::Closed)),
        ),
        (
            "merchant_not_active",
            merchant_err(
                vec![onboarded(), suspended.clone()],
                MerchantCommand::Suspend { reason: "again".into(), now: t(2) },
            ),
        ),
        ("merchant_not_suspended", merchant_err(vec![onboarded()], MerchantCommand::Reactivate { now: t(2) })),
        (
            "tier_unchanged",
            merchant_err(vec![onboarded()], MerchantCommand::ChangeTier { tier: Tier::B, reason: None, now: t(2) }),
        ),
        ("amount_exceeds_tier_limit", pay(vec![], initiate_cmd(|c| c.amount = Money::new(10_000_001, USD)))),
        (
            "amount_exceeds_tier_limit",
            pay(
                vec![],
                initiate_cmd(|c| {
                    c.merchant.as_mut().unwrap().tier = Tier::D;
                    c.amount = Money::new(1_001, Currency::JPY);
                    c.daily_volume = Money::zero(Currency::JPY);
                }),
            ),
        ),
        ("daily_volume_exceeded", pay(vec![], initiate_cmd(|c| c.daily_volume = usd(499_995_000)))),
        ("payment_already_exists", pay(pending(), initiate(10_000, CaptureMethod::Manual))),
        ("payment_not_awaiting_authorization", pay(authorized_payment(), approve_at_acquirer())),
        ("payment_not_capturable", pay(pending(), capture(1, None, false))),
        ("payment_not_capturable", pay(with(authorized_payment(), [voided()]), capture(1, None, false))),
        ("payment_not_capturable", pay(captured_payment(), capture(2, Some(1), false))),
        (
            "payment_not_capturable",
            pay(
                vec![initiated(60_000, CaptureMethod::Manual), review_risk(), authorized(60_000)],
                capture(1, None, false),
            ),
        ),
        ("amount_exceeds_capturable", pay(authorized_payment(), capture(1, Some(10_001), false))),
        ("payment_not_voidable", pay(captured_payment(), PaymentCommand::Void { reason: None, now: t(5) })),
        (
            "payment_not_voidable",
            pay(with(authorized_payment(), [voided()]), PaymentCommand::Void { reason: None, now: t(6) }),
        ),
        ("payment_not_refundable", pay(authorized_payment(), refund(1, None))),
        ("payment_not_refundable", pay(with(captured_payment(), [refunded(1, 10_000)]), refund(2, Some(1)))),
        ("amount_exceeds_refundable", pay(with(captured_payment(), [refunded(1, 4_000)]), refund(2, Some(6_001)))),
        (
            "amount_exceeds_refundable",
            pay(with(captured_payment(), [dispute_opened(1, 9_000)]), refund(1, Some(1_001))),
        ),
        (
            "payment_not_under_review",
            pay(
                authorized_payment(),
                PaymentCommand::Review { decision: ReviewDecision::Approve, reason: None, now: t(5) },
            ),
        ),
        ("payment_not_disputable", pay(authorized_payment(), open_dispute(1, 100))),
        ("amount_exceeds_disputable", pay(with(captured_payment(), [refunded(1, 9_000)]), open_dispute(1, 1_001))),
        (
            "dispute_already_resolved",
            pay(
                with(captured_payment(), [dispute_opened(1, 100), dispute_lost(1, 100)]),
                PaymentCommand::ResolveDispute { dispute_id: dispute_id(1), outcome: DisputeOutcome::Won, now: t(500) },
            ),
        ),
        (
            "authorization_expired",
            pay(
                authorized_payment(),
                PaymentCommand::Capture {
                    capture_id: capture_id(1),
                    amount: None,
                    final_capture: false,
                    now: t(1 + 7 * DAY),
                },
            ),
        ),
        (
            "authorization_not_expired",
            pay(authorized_payment(), PaymentCommand::ExpireAuthorization { now: t(7 * DAY) }),
        ),
        (
            "authorization_not_expired",
            pay(captured_payment(), PaymentCommand::ExpireAuthorization { now: t(30 * DAY) }),
        ),
        ("nothing_to_settle", pay(authorized_payment(), PaymentCommand::Settle { batch_id: batch_id(), now: t(DAY) })),
        (
            "nothing_to_settle",
            pay(
                with(
                    captured_payment(),
                    [PaymentEvent::PaymentSettled {
                        batch_id: batch_id(),
                        amount: usd(10_000),
                        fees: usd(320),
                        settled_at: t(DAY),
                    }],
                ),
                PaymentCommand::Settle { batch_id: batch_id(), now: t(2 * DAY) },
            ),
        ),
    ]
}

#[test]
fn every_rejection_has_the_expected_code() {
    for (code, error) in scenarios() {
        assert_eq!(error.code(), code, "{error:?}");
    }
}

#[test]
fn every_code_has_a_scenario() {
    let covered: BTreeSet<&str> = scenarios().iter().map(|(code, _)| *code).collect();
    let all: BTreeSet<&str> = DomainError::ALL_CODES.iter().copied().collect();
    assert_eq!(covered, all);
}

/// docs/errors.md lists every code once, in `ErrorCode::ALL`'s order, with
/// the kind the code has (the API's status follows from it).
#[test]
fn the_error_table_lists_every_code_with_its_kind() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md")).unwrap();
    let rows: Vec<(String, String)> = doc
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((code.to_string(), cells.get(2)?.to_string()))
        })
        .collect();
    let expected: Vec<(String, String)> = ErrorCode::ALL
        .iter()
        .map(|code| {
            let kind = match code.kind() {
                ErrorKind::InvalidInput => "input",
                ErrorKind::NotFound => "not found",
                ErrorKind::Rejected => "rule",
            };
            (code.as_str().to_string(), kind.to_string())
        })
        .collect();
    assert_eq!(rows, expected);
}

#[test]
fn invalid_input_names_the_field() {
    for (_, error) in scenarios() {
        if error.kind() == ErrorKind::InvalidInput {
            assert!(error.param().is_some(), "{error:?} names no field");
        }
    }
    let error = pay(vec![], initiate_cmd(|c| c.method = card_json("4242424242424241", 12, 2030, "123")));
    assert_eq!(error.param(), Some("method.card.number"));
    // The error never carries the number.
    assert!(!format!("{error:?} {error}").contains("4242424242424241"));
}

#[test]
fn the_acquirer_answer_is_only_accepted_once() {
    given::<PaymentAggregate>(with(
        pending(),
        [PaymentEvent::PaymentDeclined {
            decline_code: paystream_domain::payment::DeclineCode::CardDeclined,
            declined_at: t(1),
        }],
    ))
    .when(PaymentCommand::RecordAuthorization {
        outcome: AcquirerOutcome::Approved { acquirer_reference: "late".into() },
        now: t(2),
    })
    .then_error("payment_not_awaiting_authorization");
}
