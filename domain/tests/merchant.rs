//! Given / when / then for the Merchant aggregate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use paystream_domain::merchant::{
    FeeSchedule, MerchantAggregate, MerchantCommand, MerchantEvent, MerchantStatus, Tier,
};
use paystream_domain::testing::given;
use paystream_domain::Money;
use support::*;

fn onboard() -> MerchantCommand {
    MerchantCommand::Onboard {
        merchant_id: merchant_id(),
        name: "  Lotus Tea House ".into(),
        country: "US".parse().unwrap(),
        default_currency: USD,
        settlement_currency: Some(USD),
        tier: Tier::B,
        fees: FEES,
        now: t(0),
    }
}

fn onboarded() -> MerchantEvent {
    MerchantEvent::MerchantOnboarded {
        merchant_id: merchant_id(),
        name: "Lotus Tea House".into(),
        country: "US".parse().unwrap(),
        default_currency: USD,
        settlement_currency: USD,
        tier: Tier::B,
        fees: FEES,
        onboarded_at: t(0),
    }
}

fn suspended() -> MerchantEvent {
    MerchantEvent::MerchantSuspended { reason: "chargebacks".into(), suspended_at: t(10) }
}

#[test]
fn onboarding_creates_an_active_merchant() {
    let merchant = given::<MerchantAggregate>([]).when(onboard()).then([onboarded()]).unwrap();
    assert_eq!(
        (merchant.status, merchant.tier, merchant.name.as_str()),
        (MerchantStatus::Active, Tier::B, "Lotus Tea House")
    );
}

#[test]
fn tier_changes() {
    let merchant = given::<MerchantAggregate>([onboarded()])
        .when(MerchantCommand::ChangeTier { tier: Tier::D, reason: Some("high chargebacks".into()), now: t(5) })
        .then([MerchantEvent::MerchantTierChanged {
            from: Tier::B,
            to: Tier::D,
            reason: Some("high chargebacks".into()),
            changed_at: t(5),
        }])
        .unwrap();
    assert_eq!(merchant.tier, Tier::D);
}

#[test]
fn suspend_and_reactivate() {
    let merchant = given::<MerchantAggregate>([onboarded()])
        .when(MerchantCommand::Suspend { reason: "chargebacks".into(), now: t(10) })
        .then([suspended()])
        .unwrap();
    assert_eq!(merchant.status, MerchantStatus::Suspended);
    assert_eq!(merchant.ensure_can_take_payments().unwrap_err().code(), "merchant_suspended");

    let merchant = given::<MerchantAggregate>([onboarded(), suspended()])
        .when(MerchantCommand::Reactivate { now: t(20) })
        .then([MerchantEvent::MerchantReactivated { reactivated_at: t(20) }])
        .unwrap();
    assert_eq!(merchant.status, MerchantStatus::Active);
    assert!(merchant.ensure_can_take_payments().is_ok());
}

#[test]
fn close() {
    let merchant = given::<MerchantAggregate>([onboarded(), suspended()])
        .when(MerchantCommand::Close { reason: None, now: t(30) })
        .then([MerchantEvent::MerchantClosed { reason: None, closed_at: t(30) }])
        .unwrap();
    assert_eq!(merchant.status, MerchantStatus::Closed);
    assert_eq!(merchant.ensure_can_take_payments().unwrap_err().code(), "merchant_closed");
}

#[test]
fn tier_limits_tighten_from_a_to_d() {
    let limits: Vec<_> = Tier::ALL.iter().map(|t| t.limits()).collect();
    for pair in limits.windows(2) {
        assert!(pair[0].max_single_payment_major > pair[1].max_single_payment_major);
        assert!(pair[0].max_daily_volume_major > pair[1].max_daily_volume_major);
    }
    assert_eq!(Tier::D.max_single_payment(USD).unwrap(), Money::new(100_000, USD));
    assert_eq!(
        Tier::D.max_single_payment(paystream_domain::Currency::JPY).unwrap(),
        Money::new(1_000, paystream_domain::Currency::JPY)
    );
}

#[test]
fn fees_are_basis_points_plus_fixed_on_the_first_capture() {
    let fees = FeeSchedule { percent_bps: 290, fixed_minor: 30 };
    assert_eq!(fees.fee_for_capture(usd(10_000), true).unwrap(), usd(320));
    assert_eq!(fees.fee_for_capture(usd(10_000), false).unwrap(), usd(290));
    assert_eq!(fees.fee_for_capture(usd(1), true).unwrap(), usd(30)); // 0.029 rounds to 0
}
