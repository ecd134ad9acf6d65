//! The payment lifecycle over HTTP, one scenario per path through it. Each
//! onboards its own merchant, asserts whole responses, and returns the ids
//! of the payments it made, so the restart and card-data tests can run the
//! same scenarios and then look at what they left behind.

use serde_json::{json, Value};

use crate::fixtures::*;
use crate::json::{assert_error, assert_json, merged};
use crate::server::Server;

/// Every scenario, in order; returns all payment ids.
pub fn run_all(server: &Server) -> Vec<String> {
    let mut ids = Vec::new();
    ids.extend(manual_capture_then_refunds(server));
    ids.extend(automatic_capture_then_full_refund(server));
    ids.extend(void_before_capture(server));
    ids.extend(sandbox_declines(server));
    ids.extend(review_approve_and_reject(server));
    ids.extend(disputes_won_and_lost(server));
    ids
}

/// Merchant, merchant key, manual payment, partial capture, final capture,
/// partial refund, refund of the rest (status `refunded`), and the history.
pub fn manual_capture_then_refunds(server: &Server) -> Vec<String> {
    let admin = server.admin();
    let merchant = admin.post("/v1/merchants", &merchant_body("Acme Books", "B")).expect(201);
    assert_json(&merchant, &expected_merchant("Acme Books", "B"));
    let merchant_id = id_of(&merchant);
    assert_json(&admin.get(&format!("/v1/merchants/{merchant_id}")).expect(200), &merchant);

    let key = admin.post("/v1/api_keys", &json!({"role": "merchant", "merchant_id": merchant_id})).expect(201);
    assert_json(
        &key,
        &json!({"id": "key_*", "object": "api_key", "role": "merchant", "merchant_id": merchant_id,
                "revoked": false, "position": "*", "key": "psk_*"}),
    );
    let shop = server.client(key["key"].as_str().unwrap());
    // A merchant key sees its own merchant.
    assert_json(&shop.get(&format!("/v1/merchants/{merchant_id}")).expect(200), &merchant);

    let body = card_payment(10_000, "manual");
    let payment = shop.post("/v1/payments", &body).expect(201);
    let authorized = expected_authorized(&merchant_id, 10_000, summary_of(&body));
    assert_json(&payment, &authorized);
    let id = id_of(&payment);
    let path = format!("/v1/payments/{id}");
    assert_json(&shop.get(&path).expect(200), &payment);

    let partial = shop.post(&format!("{path}/capture"), &json!({"amount": 4_000})).expect(200);
    let first_capture = json!({"id": "cap_*", "amount": 4_000, "fee": fee(4_000, true), "created_at": "*"});
    let after_partial = merged(
        &authorized,
        json!({"status": "captured", "amount_capturable": 6_000, "amount_captured": 4_000,
               "amount_refundable": 4_000, "fees": fee(4_000, true), "captures": [first_capture]}),
    );
    assert_json(&partial, &after_partial);

    // The final capture takes 30.00 and releases the remaining 30.00.
    let last = shop.post(&format!("{path}/capture"), &json!({"amount": 3_000, "final": true})).expect(200);
    let second_capture = json!({"id": "cap_*", "amount": 3_000, "fee": fee(3_000, false), "created_at": "*"});
    let fees = fee(4_000, true) + fee(3_000, false);
    let captured = merged(
        &after_partial,
        json!({"amount_capturable": 0, "amount_captured": 7_000, "amount_refundable": 7_000, "fees": fees,
               "captures": [first_capture, second_capture]}),
    );
    assert_json(&last, &captured);
    let error = shop.post(&format!("{path}/capture"), &json!({"amount": 1})).expect(422);
    assert_error(&error, "rule_error", "payment_not_capturable", None);

    let refund =
        shop.post(&format!("{path}/refunds"), &json!({"amount": 2_000, "reason": "one book returned"})).expect(201);
    let refund_view = json!({"id": "re_*", "object": "refund", "payment_id": id, "amount": 2_000, "currency": "USD",
                             "reason": "one book returned", "status": "succeeded", "created_at": "*", "position": "*"});
    assert_json(&refund, &refund_view);
    let first_refund = json!({"id": refund["id"], "amount": 2_000, "reason": "one book returned", "created_at": "*"});
    let partly_refunded =
        merged(&captured, json!({"amount_refunded": 2_000, "amount_refundable": 5_000, "refunds": [first_refund]}));
    assert_json(&shop.get(&path).expect(200), &partly_refunded);

    // No amount: refund everything still refundable.
    let rest = shop.post(&format!("{path}/refunds"), &json!({})).expect(201);
    assert_json(&rest, &merged(&refund_view, json!({"amount": 5_000, "reason": null})));
    let second_refund = json!({"id": rest["id"], "amount": 5_000, "reason": null, "created_at": "*"});
    let refunded = merged(
        &partly_refunded,
        json!({"status": "refunded", "amount_refunded": 7_000, "amount_refundable": 0,
               "refunds": [first_refund, second_refund]}),
    );
    assert_json(&shop.get(&path).expect(200), &refunded);
    let error = shop.post(&format!("{path}/refunds"), &json!({"amount": 1})).expect(422);
    assert_error(&error, "rule_error", "payment_not_refundable", None);

    let events = shop.get(&format!("{path}/events")).expect(200);
    assert_history(
        &events,
        &id,
        &[
            ("PaymentInitiated", "merchant"),
            ("PaymentRiskAssessed", "merchant"),
            ("PaymentAuthorized", "merchant"),
            ("PaymentCaptured", "merchant"),
            ("PaymentCaptured", "merchant"),
            ("PaymentRefunded", "merchant"),
            ("PaymentRefunded", "merchant"),
        ],
    );
    let initiated = &events["data"][0]["data"];
    assert_json(&initiated["method"], &summary_of(&body));
    assert_json(&initiated["amount"], &json!({"amount_minor": 10_000, "currency": "USD"}));
    assert_json(
        &events["data"][4]["data"],
        &json!({"type": "PaymentCaptured", "capture_id": "cap_*", "amount": {"amount_minor": 3_000, "currency": "USD"},
                "fee": {"amount_minor": fee(3_000, false), "currency": "USD"}, "final_capture": true,
                "captured_at": "*"}),
    );
    vec![id]
}

/// Checks a payment's event list: the types in order, each with the role of
/// the key that caused it, versions 1..n on the payment's stream, positions
/// rising, and the envelope fields present.
#[track_caller]
pub fn assert_history(events: &Value, payment_id: &str, expected: &[(&str, &str)]) {
    let data = events["data"].as_array().expect("data array");
    assert_eq!(events["object"], "list");
    assert_eq!(events["has_more"], false);
    let types: Vec<(&str, &str)> = data
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("?"), e["metadata"]["actor"]["role"].as_str().unwrap_or("none")))
        .collect();
    assert_eq!(types, expected, "history of {payment_id}");
    let uuid = payment_id.strip_prefix("pay_").expect("pay_ id");
    let mut last_position = 0;
    for (i, event) in data.iter().enumerate() {
        assert_json(
            event,
            &json!({
                "position": "*",
                "stream_id": "payment-*",
                "stream_version": i + 1,
                "event_id": "*",
                "type": expected[i].0,
                "schema_version": 1,
                "recorded_at": "*",
                "metadata": {"correlation_id": "*", "causation_id": event["metadata"]["causation_id"],
                             "actor": {"key_id": "key_*", "role": expected[i].1}},
                "data": event["data"],
                "prev_hash": "*",
                "hash": "*",
            }),
        );
        assert_eq!(event["data"]["type"], expected[i].0);
        let stream = event["stream_id"].as_str().unwrap().replace('-', "");
        assert_eq!(stream, format!("payment{uuid}"), "stream id names the payment");
        let position = event["position"].as_u64().unwrap();
        assert!(position > last_position, "positions rise: {data:?}");
        last_position = position;
    }
}

/// Automatic capture, a partial refund, then a full one: status `refunded`.
pub fn automatic_capture_then_full_refund(server: &Server) -> Vec<String> {
    let merchant = onboard(server, "Tea House", "B");
    let body = card_payment(2_500, "automatic");
    let payment = merchant.pay(&body);
    let captured = expected_captured(&merchant.id, 2_500, summary_of(&body));
    assert_json(&payment, &captured);
    let path = format!("/v1/payments/{}", id_of(&payment));

    let refund = merchant.client.post(&format!("{path}/refunds"), &json!({"amount": 1_000})).expect(201);
    assert_eq!((refund["amount"].as_i64(), refund["status"].as_str()), (Some(1_000), Some("succeeded")));
    let refund = merchant.client.post(&format!("{path}/refunds"), &json!({"amount": 1_500})).expect(201);
    assert_eq!(refund["amount"], 1_500);
    let refunded = merchant.client.get(&path).expect(200);
    assert_json(
        &refunded,
        &merged(
            &captured,
            json!({"status": "refunded", "amount_refunded": 2_500, "amount_refundable": 0, "refunds": [
                {"id": "re_*", "amount": 1_000, "reason": null, "created_at": "*"},
                {"id": "re_*", "amount": 1_500, "reason": null, "created_at": "*"}]}),
        ),
    );
    let error = merchant.client.post(&format!("{path}/capture"), &json!({})).expect(422);
    assert_error(&error, "rule_error", "payment_not_capturable", None);
    vec![id_of(&payment)]
}

/// A manual authorization voided before any capture.
pub fn void_before_capture(server: &Server) -> Vec<String> {
    let merchant = onboard(server, "Night Market", "B");
    let body = card_payment(8_800, "manual");
    let payment = merchant.pay(&body);
    let path = format!("/v1/payments/{}", id_of(&payment));
    let voided = merchant.client.post(&format!("{path}/void"), &json!({"reason": "customer cancelled"})).expect(200);
    assert_json(
        &voided,
        &merged(
            &expected_authorized(&merchant.id, 8_800, summary_of(&body)),
            json!({"status": "voided", "amount_capturable": 0}),
        ),
    );
    let error = merchant.client.post(&format!("{path}/capture"), &json!({})).expect(422);
    assert_error(&error, "rule_error", "payment_not_capturable", None);
    let error = merchant.client.post(&format!("{path}/void"), &json!({})).expect(422);
    assert_error(&error, "rule_error", "payment_not_voidable", None);
    let events = merchant.client.get(&format!("{path}/events")).expect(200);
    assert_history(
        &events,
        &id_of(&payment),
        &[
            ("PaymentInitiated", "merchant"),
            ("PaymentRiskAssessed", "merchant"),
            ("PaymentAuthorized", "merchant"),
            ("PaymentVoided", "merchant"),
        ],
    );
    vec![id_of(&payment)]
}

/// One instrument of each kind: what to send, what the payment shows.
pub struct Instrument {
    pub method: Value,
    pub summary: Value,
}

pub fn card(number: &str) -> Instrument {
    Instrument { method: card_method(number), summary: visa_summary(&number[number.len() - 4..]) }
}

pub fn wallet(account_id: &str) -> Instrument {
    Instrument {
        method: json!({"type": "wallet", "wallet": {"provider": "alipay", "account_id": account_id}}),
        summary: json!({"type": "wallet", "provider": "alipay", "account_id": account_id}),
    }
}

pub fn bank_transfer(account_id: &str) -> Instrument {
    Instrument {
        method: json!({"type": "bank_transfer", "bank_transfer":
            {"bank_code": "ICBKCNBJ", "account_holder": "Li Wei", "account_id": account_id}}),
        summary: json!({"type": "bank_transfer", "bank_code": "ICBKCNBJ", "account_holder": "Li Wei",
                        "account_last4": account_id[account_id.len() - 4..]}),
    }
}

pub fn qr_code(payer_id: &str) -> Instrument {
    Instrument {
        method: json!({"type": "qr_code", "qr_code": {"scheme": "wechat_pay", "payer_id": payer_id}}),
        summary: json!({"type": "qr_code", "scheme": "wechat_pay", "payer_id": payer_id}),
    }
}

pub fn nfc(device_token: &str) -> Instrument {
    Instrument {
        method: json!({"type": "nfc", "nfc": {"device_token": device_token}}),
        summary: json!({"type": "nfc", "token_last4": device_token[device_token.len() - 4..], "fingerprint": "*"}),
    }
}

/// Every sandbox decline, and each non-card method approving.
pub fn sandbox_declines(server: &Server) -> Vec<String> {
    let merchant = onboard(server, "Sandbox Shop", "B");
    let declines = [
        (card(CARD_DECLINED), "card_declined"),
        (card(CARD_INSUFFICIENT_FUNDS), "insufficient_funds"),
        (card(CARD_ACQUIRER_UNAVAILABLE), "acquirer_unavailable"),
        (wallet("decline_wallet_01"), "instrument_declined"),
        (bank_transfer("decline_acct_0042"), "instrument_declined"),
        (qr_code("decline_payer_7"), "instrument_declined"),
        (nfc("decline_token_9876"), "instrument_declined"),
    ];
    let mut ids = Vec::new();
    for (instrument, code) in declines {
        let payment = merchant.pay(&payment_body(1_234, "automatic", instrument.method));
        assert_json(&payment, &expected_declined(&merchant.id, 1_234, "automatic", instrument.summary, code));
        let path = format!("/v1/payments/{}", id_of(&payment));
        let error = merchant.client.post(&format!("{path}/capture"), &json!({})).expect(422);
        assert_error(&error, "rule_error", "payment_not_capturable", None);
        let events = merchant.client.get(&format!("{path}/events")).expect(200);
        assert_history(
            &events,
            &id_of(&payment),
            &[("PaymentInitiated", "merchant"), ("PaymentRiskAssessed", "merchant"), ("PaymentDeclined", "merchant")],
        );
        assert_eq!(events["data"][2]["data"]["decline_code"], code);
        ids.push(id_of(&payment));
    }
    let approvals = [
        card(CARD_VISA),
        Instrument {
            method: card_method(CARD_MASTERCARD),
            summary: json!({"type": "card", "brand": "mastercard", "last4": "4444", "exp_month": EXP_MONTH,
                            "exp_year": EXP_YEAR, "fingerprint": "*"}),
        },
        Instrument {
            method: card_method(CARD_UNIONPAY),
            summary: json!({"type": "card", "brand": "unionpay", "last4": "0005", "exp_month": EXP_MONTH,
                            "exp_year": EXP_YEAR, "fingerprint": "*"}),
        },
        wallet("2088102146225135"),
        bank_transfer("acct_0042"),
        qr_code("wxp_payer_7"),
        nfc("tok_device_9876"),
    ];
    for instrument in approvals {
        let payment = merchant.pay(&payment_body(1_234, "automatic", instrument.method));
        assert_json(&payment, &expected_captured(&merchant.id, 1_234, instrument.summary));
        ids.push(id_of(&payment));
    }
    ids
}

/// A tier D merchant (single limit 1,000.00) taking 600.00: held for
/// review; an analyst approves one (captured, automatic capture) and
/// rejects another (declined, `review_rejected`).
pub fn review_approve_and_reject(server: &Server) -> Vec<String> {
    let merchant = onboard(server, "Risky Gadgets", "D");
    assert_json(&merchant.view, &expected_merchant("Risky Gadgets", "D"));
    let admin = server.admin();
    let (_, analyst_key) = issue_key(&admin, "analyst", None);
    let analyst = server.client(&analyst_key);
    let review_risk = json!({"score": 70, "decision": "review",
                             "rules": ["amount_near_tier_limit", "high_risk_tier", "missing_customer_ip"]});

    let body = card_payment(60_000, "automatic");
    let held = merchant.pay(&body);
    let in_review = merged(
        &expected_authorized(&merchant.id, 60_000, summary_of(&body)),
        json!({"status": "requires_review", "capture": "automatic", "risk": review_risk}),
    );
    assert_json(&held, &in_review);
    let path = format!("/v1/payments/{}", id_of(&held));
    // Nothing can be captured while the payment waits for a decision.
    let error = merchant.client.post(&format!("{path}/capture"), &json!({})).expect(422);
    assert_error(&error, "rule_error", "payment_not_capturable", None);
    // A merchant cannot review its own payment.
    let error = merchant.client.post(&format!("{path}/review"), &json!({"decision": "approve"})).expect(403);
    assert_error(&error, "permission_error", "forbidden", None);

    let approved = analyst
        .post(&format!("{path}/review"), &json!({"decision": "approve", "reason": "known customer"}))
        .expect(200);
    assert_json(
        &approved,
        &merged(&expected_captured(&merchant.id, 60_000, summary_of(&body)), json!({"risk": review_risk})),
    );
    let error = analyst.post(&format!("{path}/review"), &json!({"decision": "reject"})).expect(422);
    assert_error(&error, "rule_error", "payment_not_under_review", None);
    assert_history(
        &analyst.get(&format!("{path}/events")).expect(200),
        &id_of(&held),
        &[
            ("PaymentInitiated", "merchant"),
            ("PaymentRiskAssessed", "merchant"),
            ("PaymentAuthorized", "merchant"),
            ("PaymentReviewApproved", "analyst"),
            ("PaymentCaptured", "analyst"),
        ],
    );

    let body = card_payment(60_000, "manual");
    let held_again = merchant.pay(&body);
    let in_review = merged(
        &expected_authorized(&merchant.id, 60_000, summary_of(&body)),
        json!({"status": "requires_review", "risk": review_risk}),
    );
    assert_json(&held_again, &in_review);
    let path = format!("/v1/payments/{}", id_of(&held_again));
    let rejected = analyst
        .post(&format!("{path}/review"), &json!({"decision": "reject", "reason": "mismatched address"}))
        .expect(200);
    assert_json(
        &rejected,
        &merged(&in_review, json!({"status": "declined", "decline_code": "review_rejected", "amount_capturable": 0})),
    );
    vec![id_of(&held), id_of(&held_again)]
}

/// A captured payment disputed twice (admin, the acquirer's notice): the
/// first dispute won, the second lost; lost money can never be refunded.
pub fn disputes_won_and_lost(server: &Server) -> Vec<String> {
    let merchant = onboard(server, "Concert Tickets", "B");
    let admin = server.admin();
    let body = card_payment(10_000, "automatic");
    let payment = merchant.pay(&body);
    let id = id_of(&payment);
    let path = format!("/v1/payments/{id}");
    let captured = expected_captured(&merchant.id, 10_000, summary_of(&body));

    let opened = admin.post(&format!("{path}/disputes"), &json!({"amount": 3_000, "reason": "fraudulent"})).expect(201);
    let dispute_view = json!({"id": "dp_*", "object": "dispute", "payment_id": id, "amount": 3_000, "currency": "USD",
                              "reason": "fraudulent", "status": "open", "created_at": "*", "position": "*"});
    assert_json(&opened, &dispute_view);
    let first =
        json!({"id": opened["id"], "amount": 3_000, "reason": "fraudulent", "status": "open", "created_at": "*"});
    assert_json(
        &merchant.client.get(&path).expect(200),
        &merged(&captured, json!({"amount_disputed": 3_000, "amount_refundable": 7_000, "disputes": [first]})),
    );
    // Money under dispute cannot be refunded meanwhile.
    let error = merchant.client.post(&format!("{path}/refunds"), &json!({"amount": 7_001})).expect(422);
    assert_error(&error, "rule_error", "amount_exceeds_refundable", Some("amount"));

    let resolve = format!("{path}/disputes/{}/resolve", id_of(&opened));
    let won = admin.post(&resolve, &json!({"outcome": "won"})).expect(200);
    assert_json(&won, &merged(&dispute_view, json!({"status": "won"})));
    let error = admin.post(&resolve, &json!({"outcome": "lost"})).expect(422);
    assert_error(&error, "rule_error", "dispute_already_resolved", Some("dispute_id"));
    let first = merged(&first, json!({"status": "won"}));

    let opened = admin
        .post(&format!("{path}/disputes"), &json!({"amount": 4_000, "reason": "product_not_received"}))
        .expect(201);
    let lost =
        admin.post(&format!("{path}/disputes/{}/resolve", id_of(&opened)), &json!({"outcome": "lost"})).expect(200);
    assert_json(
        &lost,
        &merged(&dispute_view, json!({"amount": 4_000, "reason": "product_not_received", "status": "lost"})),
    );
    let second = json!({"id": opened["id"], "amount": 4_000, "reason": "product_not_received", "status": "lost",
                        "created_at": "*"});
    let after = merged(
        &captured,
        json!({"amount_dispute_lost": 4_000, "amount_refundable": 6_000, "disputes": [first, second]}),
    );
    assert_json(&merchant.client.get(&path).expect(200), &after);
    let error = merchant.client.post(&format!("{path}/refunds"), &json!({"amount": 6_001})).expect(422);
    assert_error(&error, "rule_error", "amount_exceeds_refundable", Some("amount"));
    let error = admin.post(&format!("{path}/disputes"), &json!({"amount": 6_001, "reason": "duplicate"})).expect(422);
    assert_error(&error, "rule_error", "amount_exceeds_disputable", Some("amount"));

    assert_history(
        &merchant.client.get(&format!("{path}/events")).expect(200),
        &id,
        &[
            ("PaymentInitiated", "merchant"),
            ("PaymentRiskAssessed", "merchant"),
            ("PaymentAuthorized", "merchant"),
            ("PaymentCaptured", "merchant"),
            ("PaymentDisputeOpened", "admin"),
            ("PaymentDisputeWon", "admin"),
            ("PaymentDisputeOpened", "admin"),
            ("PaymentDisputeLost", "admin"),
        ],
    );
    vec![id]
}
