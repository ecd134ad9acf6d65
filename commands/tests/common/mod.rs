//! Helpers shared by the write side's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use paystream_commands::bus::RequestMeta;
use uuid::Uuid;

/// Metadata of a new request without an idempotency key.
pub fn meta() -> RequestMeta {
    RequestMeta::new(Uuid::now_v7(), None)
}

/// A card payment method for `number`.
pub fn card(number: &str) -> paystream_domain::method::PaymentMethodInput {
    serde_json::from_value(serde_json::json!({
        "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}
    }))
    .unwrap()
}
