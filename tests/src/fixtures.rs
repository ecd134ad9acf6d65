//! Request bodies, test instruments and the objects the API is expected to
//! return, written out in full so tests compare whole responses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::http::Client;
use crate::server::Server;

/// Sandbox cards (docs/api.md, "Sandbox instruments").
pub const CARD_DECLINED: &str = "4000000000000002";
pub const CARD_INSUFFICIENT_FUNDS: &str = "4000000000009995";
pub const CARD_ACQUIRER_UNAVAILABLE: &str = "4000000000000119";
/// Approving sandbox cards (any other valid card approves too).
pub const CARD_VISA: &str = "4242424242424242";
pub const CARD_MASTERCARD: &str = "5555555555554444";
pub const CARD_UNIONPAY: &str = "6200000000000005";
/// Expiry used for every test card: far enough ahead of any clock.
pub const EXP_MONTH: u8 = 12;
pub const EXP_YEAR: u16 = 2035;

/// Every card number a test in this process put in a request, so the
/// card-data test can look for each one verbatim.
static CARDS_USED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT_CARD: AtomicU64 = AtomicU64::new(1);

/// The domain's Luhn: the one implementation (`paystream_domain::method`).
pub use paystream_domain::method::{luhn_check_digit, luhn_valid};

/// A new valid Visa number, different on every call. The risk rules count
/// payments per instrument (5 in an hour send a payment to review), so
/// tests that are not about velocity pay with fresh cards.
pub fn fresh_card() -> String {
    let n = NEXT_CARD.fetch_add(1, Ordering::Relaxed);
    let payload = format!("424242{n:09}");
    // `payload` is all digits, so there is always a check digit.
    let number = format!("{payload}{}", luhn_check_digit(&payload).unwrap_or_default());
    record_card(&number);
    number
}

/// Notes a card number a test sends (see [`cards_used`]).
pub fn record_card(number: &str) {
    let mut cards = CARDS_USED.lock().unwrap();
    if !cards.iter().any(|c| c == number) {
        cards.push(number.to_string());
    }
}

/// Every card number sent by this process so far.
pub fn cards_used() -> Vec<String> {
    CARDS_USED.lock().unwrap().clone()
}

pub fn card_method(number: &str) -> Value {
    record_card(&number.replace([' ', '-'], ""));
    json!({"type": "card", "card": {"number": number, "exp_month": EXP_MONTH, "exp_year": EXP_YEAR, "cvc": "123"}})
}

/// A payment body: `amount` minor units of USD by `method`.
pub fn payment_body(amount: i64, capture: &str, method: Value) -> Value {
    json!({"amount": amount, "currency": "USD", "capture": capture, "method": method})
}

/// A card payment with a fresh card.
pub fn card_payment(amount: i64, capture: &str) -> Value {
    payment_body(amount, capture, card_method(&fresh_card()))
}

/// The method summary a payment shows for a Visa card ending in `last4`.
pub fn visa_summary(last4: &str) -> Value {
    json!({"type": "card", "brand": "visa", "last4": last4, "exp_month": EXP_MONTH, "exp_year": EXP_YEAR, "fingerprint": "*"})
}

/// The summary for the card in a body built by [`card_payment`].
pub fn summary_of(body: &Value) -> Value {
    let number = body["method"]["card"]["number"].as_str().expect("card body");
    visa_summary(&number[number.len() - 4..])
}

pub const FEES: (u32, i64) = (250, 30);

pub fn merchant_body(name: &str, tier: &str) -> Value {
    json!({
        "name": name,
        "country": "US",
        "default_currency": "USD",
        "tier": tier,
        "fees": {"percent_bps": FEES.0, "fixed": FEES.1},
    })
}

/// The merchant object for [`merchant_body`].
pub fn expected_merchant(name: &str, tier: &str) -> Value {
    let (single, daily) = match tier {
        "A" => (100_000, 5_000_000),
        "B" => (25_000, 1_000_000),
        "C" => (5_000, 100_000),
        _ => (1_000, 10_000),
    };
    json!({
        "id": "mer_*",
        "object": "merchant",
        "name": name,
        "country": "US",
        "default_currency": "USD",
        "settlement_currency": "USD",
        "tier": tier,
        "limits": {"max_single_payment_major": single, "max_daily_volume_major": daily},
        "fees": {"percent_bps": FEES.0, "fixed": FEES.1},
        "status": "active",
        "created_at": "*",
        "position": "*",
    })
}

/// The fee on a capture of `amount` (percent rounded half away from zero,
/// plus the fixed part on the first capture).
pub fn fee(amount: i64, first_capture: bool) -> i64 {
    let percent = (amount * i64::from(FEES.0) + 5_000) / 10_000;
    percent + if first_capture { FEES.1 } else { 0 }
}

/// The risk block of a small payment by a tier A-C merchant without a
/// customer IP.
pub fn risk_approve() -> Value {
    json!({"score": 5, "decision": "approve", "rules": ["missing_customer_ip"]})
}

/// A payment of `amount` USD just authorized (manual capture), paid with
/// `method`: the base every expected payment is patched from.
pub fn expected_authorized(merchant_id: &str, amount: i64, method: Value) -> Value {
    json!({
        "id": "pay_*",
        "object": "payment",
        "merchant_id": merchant_id,
        "status": "authorized",
        "amount": amount,
        "currency": "USD",
        "amount_capturable": amount,
        "amount_captured": 0,
        "amount_refunded": 0,
        "amount_refundable": 0,
        "amount_disputed": 0,
        "amount_dispute_lost": 0,
        "amount_settled": 0,
        "fees": 0,
        "capture": "manual",
        "method": method,
        "customer": {"id": null, "email": null, "ip": null, "country": null},
        "description": null,
        "metadata": {},
        "risk": risk_approve(),
        "decline_code": null,
        "acquirer_reference": "sbx_*",
        "authorization_expires_at": "*",
        "captures": [],
        "refunds": [],
        "disputes": [],
        "created_at": "*",
        "updated_at": "*",
        "position": "*",
    })
}

/// A payment with automatic capture, captured in full at authorization.
pub fn expected_captured(merchant_id: &str, amount: i64, method: Value) -> Value {
    crate::json::merged(
        &expected_authorized(merchant_id, amount, method),
        json!({
            "status": "captured",
            "capture": "automatic",
            "amount_capturable": 0,
            "amount_captured": amount,
            "amount_refundable": amount,
            "fees": fee(amount, true),
            "captures": [{"id": "cap_*", "amount": amount, "fee": fee(amount, true), "created_at": "*"}],
        }),
    )
}

/// A payment the acquirer declined with `code`.
pub fn expected_declined(merchant_id: &str, amount: i64, capture: &str, method: Value, code: &str) -> Value {
    crate::json::merged(
        &expected_authorized(merchant_id, amount, method),
        json!({
            "status": "declined",
            "capture": capture,
            "amount_capturable": 0,
            "decline_code": code,
            "acquirer_reference": null,
            "authorization_expires_at": null,
        }),
    )
}

/// A merchant with its own merchant key.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: String,
    pub key_id: String,
    pub client: Client,
    pub view: Value,
}

impl Merchant {
    /// Creates a payment and returns it (201 expected).
    pub fn pay(&self, body: &Value) -> Value {
        self.client.post("/v1/payments", body).expect(201)
    }
}

/// Onboards a merchant in `tier` (admin) and issues it a key.
pub fn onboard(server: &Server, name: &str, tier: &str) -> Merchant {
    let admin = server.admin();
    let view = admin.post("/v1/merchants", &merchant_body(name, tier)).expect(201);
    let id = view["id"].as_str().expect("merchant id").to_string();
    let (key_id, secret) = issue_key(&admin, "merchant", Some(&id));
    Merchant { id, key_id, client: server.client(&secret), view }
}

/// Issues an API key; returns its id and secret.
pub fn issue_key(admin: &Client, role: &str, merchant_id: Option<&str>) -> (String, String) {
    let body = match merchant_id {
        Some(id) => json!({"role": role, "merchant_id": id}),
        None => json!({"role": role}),
    };
    let key = admin.post("/v1/api_keys", &body).expect(201);
    (key["id"].as_str().expect("key id").to_string(), key["key"].as_str().expect("key secret").to_string())
}

/// The id of a JSON object.
pub fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_string()
}
