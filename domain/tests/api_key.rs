//! Given / when / then for the ApiKey aggregate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use paystream_domain::api_key::{ApiKeyAggregate, ApiKeyCommand, ApiKeyEvent, Role};
use paystream_domain::id::ApiKeyId;
use paystream_domain::merchant::{MerchantStatus, Tier};
use paystream_domain::testing::given;
use support::*;
use uuid::Uuid;

pub fn key_id() -> ApiKeyId {
    ApiKeyId::from_uuid(Uuid::from_u128(0x70))
}

pub const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

pub fn issue(role: Role, bound: bool) -> ApiKeyCommand {
    ApiKeyCommand::Issue {
        key_id: key_id(),
        role,
        merchant_id: bound.then(merchant_id),
        merchant: bound.then(|| merchant(Tier::A, MerchantStatus::Active)),
        key_hash: HASH.into(),
        now: t(0),
    }
}

pub fn issued(role: Role, bound: bool) -> ApiKeyEvent {
    ApiKeyEvent::ApiKeyIssued {
        key_id: key_id(),
        role,
        merchant_id: bound.then(merchant_id),
        key_hash: HASH.into(),
        issued_at: t(0),
    }
}

#[test]
fn issue_a_merchant_key_bound_to_its_merchant() {
    let key =
        given::<ApiKeyAggregate>([]).when(issue(Role::Merchant, true)).then([issued(Role::Merchant, true)]).unwrap();
    assert_eq!((key.role, key.merchant_id, key.revoked), (Role::Merchant, Some(merchant_id()), false));
}

#[test]
fn issue_an_analyst_key() {
    given::<ApiKeyAggregate>([]).when(issue(Role::Analyst, false)).then([issued(Role::Analyst, false)]);
}

#[test]
fn revoke() {
    let key = given::<ApiKeyAggregate>([issued(Role::Auditor, false)])
        .when(ApiKeyCommand::Revoke { now: t(5) })
        .then([ApiKeyEvent::ApiKeyRevoked { key_id: key_id(), revoked_at: t(5) }])
        .unwrap();
    assert!(key.revoked);
}

#[test]
fn rejections() {
    given::<ApiKeyAggregate>([]).when(issue(Role::Merchant, false)).then_error("invalid_field");
    given::<ApiKeyAggregate>([]).when(issue(Role::Admin, true)).then_error("invalid_field");
    given::<ApiKeyAggregate>([issued(Role::Admin, false)])
        .when(issue(Role::Admin, false))
        .then_error("api_key_already_exists");
    given::<ApiKeyAggregate>([]).when(ApiKeyCommand::Revoke { now: t(1) }).then_error("api_key_not_found");
    given::<ApiKeyAggregate>([
        issued(Role::Admin, false),
        ApiKeyEvent::ApiKeyRevoked { key_id: key_id(), revoked_at: t(1) },
    ])
    .when(ApiKeyCommand::Revoke { now: t(2) })
    .then_error("api_key_already_revoked");
    let closed = ApiKeyCommand::Issue {
        key_id: key_id(),
        role: Role::Merchant,
        merchant_id: Some(merchant_id()),
        merchant: Some(merchant(Tier::A, MerchantStatus::Closed)),
        key_hash: HASH.into(),
        now: t(0),
    };
    given::<ApiKeyAggregate>([]).when(closed).then_error("merchant_closed");
}
