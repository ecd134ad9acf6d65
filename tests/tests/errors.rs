//! Each error status over HTTP, and the one error shape:
//! `{"error": {"type", "code", "message", "param"}}` and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paystream_tests::fixtures::{
    card_method, card_payment, fresh_card, issue_key, merchant_body, onboard, payment_body,
};
use paystream_tests::{assert_error, Request, Server};
use serde_json::json;

/// A payment body as text, so tests can break it in ways JSON values cannot.
fn raw_payment(amount: &str, card: &str) -> String {
    format!(
        r#"{{"amount": {amount}, "currency": "USD", "method": {{"type": "card", "card": {{"number": {card}, "exp_month": 12, "exp_year": 2035, "cvc": "123"}}}}}}"#
    )
}

#[test]
fn every_error_is_json_with_the_one_shape() {
    let server = Server::start();
    let merchant = onboard(&server, "Shape Shop", "B");
    let response = merchant.client.request("POST", "/v1/payments").json(&json!({})).send(server.addr);
    assert_eq!(response.status, 400);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_error(&response.json(), "invalid_request_error", "invalid_body", Some("amount"));
    // Errors outside any handler have the same shape.
    let unknown_route = server.anonymous().get("/v1/nothing-here").expect(404);
    assert_error(&unknown_route, "invalid_request_error", "resource_missing", None);
    let wrong_method = merchant.client.call("PUT", "/v1/payments", Some(&json!({}))).expect(405);
    assert_error(&wrong_method, "invalid_request_error", "method_not_allowed", None);
}

#[test]
fn malformed_json_is_400_about_the_body() {
    let server = Server::start();
    let merchant = onboard(&server, "Parse Shop", "B");
    let card = fresh_card();
    let valid = raw_payment("1000", &format!("\"{card}\""));
    // Trailing garbage, a truncated document, a key without quotes.
    let truncated = &valid[..valid.len() - 2];
    for body in [format!("{valid} x"), truncated.to_string(), "{amount: 1000}".to_string()] {
        let response = merchant
            .client
            .request("POST", "/v1/payments")
            .header("Content-Type", "application/json")
            .body(body.clone().into_bytes())
            .send(server.addr);
        let message = assert_error(&response.expect(400), "invalid_request_error", "invalid_body", Some("body"));
        assert!(message.starts_with("malformed JSON"), "{body}: {message}");
    }
}

#[test]
fn missing_and_unknown_fields_are_named_in_param() {
    let server = Server::start();
    let merchant = onboard(&server, "Field Shop", "B");
    let admin = server.admin();
    let mut body = card_payment(1_000, "manual");
    body.as_object_mut().unwrap().remove("amount");
    let error = merchant.client.post("/v1/payments", &body).expect(400);
    let message = assert_error(&error, "invalid_request_error", "invalid_body", Some("amount"));
    assert!(message.contains("missing field `amount`"), "{message}");

    let mut body = card_payment(1_000, "manual");
    body["method"]["card"].as_object_mut().unwrap().remove("cvc");
    let error = merchant.client.post("/v1/payments", &body).expect(400);
    assert_error(&error, "invalid_request_error", "invalid_body", Some("method.card.cvc"));

    let error = admin
        .post(
            "/v1/merchants",
            &json!({"name": "No Fixed Fee", "country": "US", "default_currency": "USD",
                                        "tier": "B", "fees": {"percent_bps": 250}}),
        )
        .expect(400);
    assert_error(&error, "invalid_request_error", "invalid_body", Some("fees.fixed"));

    // An unknown field is refused and named (a typo must not be ignored).
    let mut body = card_payment(1_000, "manual");
    body["amout"] = body["amount"].take();
    body.as_object_mut().unwrap().remove("amount");
    let error = merchant.client.post("/v1/payments", &body).expect(400);
    let message = assert_error(&error, "invalid_request_error", "invalid_body", Some("amout"));
    assert!(message.contains("unknown field `amout`"), "{message}");

    let mut body = card_payment(1_000, "manual");
    body["method"]["card"]["colour"] = json!("gold");
    let error = merchant.client.post("/v1/payments", &body).expect(400);
    assert_error(&error, "invalid_request_error", "invalid_body", Some("method.card.colour"));
}

#[test]
fn bad_values_are_400_with_the_field_in_param() {
    let server = Server::start();
    let merchant = onboard(&server, "Value Shop", "B");
    let card = fresh_card();
    let cases = [
        // Money is never a float, nor a string.
        (raw_payment("10.5", &format!("\"{card}\"")), "invalid_body", "amount"),
        (raw_payment("\"1000\"", &format!("\"{card}\"")), "invalid_body", "amount"),
        (raw_payment("-5", &format!("\"{card}\"")), "amount_not_positive", "amount"),
        (raw_payment("0", &format!("\"{card}\"")), "amount_not_positive", "amount"),
        // Luhn check fails.
        (raw_payment("1000", "\"4242424242424241\""), "invalid_card_number", "method.card.number"),
        (raw_payment("1000", "\"42424242\""), "invalid_card_number", "method.card.number"),
    ];
    for (body, code, param) in cases {
        let response = merchant
            .client
            .request("POST", "/v1/payments")
            .header("Content-Type", "application/json")
            .body(body.clone().into_bytes())
            .send(server.addr);
        assert_error(&response.expect(400), "invalid_request_error", code, Some(param));
    }
    let json_cases = [
        (json!({"amount": 1_000, "currency": "XXX", "method": card_method(&card)}), "invalid_body", "currency"),
        (
            json!({"amount": 1_000, "currency": "USD", "capture": "later", "method": card_method(&card)}),
            "invalid_body",
            "capture",
        ),
        (
            json!({"amount": 1_000, "currency": "USD", "method": {"type": "card", "card":
                {"number": card, "exp_month": 12, "exp_year": 2035, "cvc": "12a"}}}),
            "invalid_cvc",
            "method.card.cvc",
        ),
        (
            json!({"amount": 1_000, "currency": "USD", "method": {"type": "card", "card":
                {"number": card, "exp_month": 13, "exp_year": 2035, "cvc": "123"}}}),
            "invalid_expiry_month",
            "method.card.exp_month",
        ),
        (
            json!({"amount": 1_000, "currency": "USD", "method": {"type": "card", "card":
                {"number": card, "exp_month": 12, "exp_year": 2020, "cvc": "123"}}}),
            "card_expired",
            "method.card.exp_year",
        ),
        (
            payment_body(
                1_000,
                "manual",
                json!({"type": "wallet", "wallet": {"provider": "alipay", "account_id": ""}}),
            ),
            "invalid_field",
            "method.wallet.account_id",
        ),
        (
            json!({"amount": 1_000, "currency": "USD", "method": card_method(&card), "customer": {"email": "nope"}}),
            "invalid_field",
            "customer.email",
        ),
    ];
    for (body, code, param) in json_cases {
        let error = merchant.client.post("/v1/payments", &body).expect(400);
        assert_error(&error, "invalid_request_error", code, Some(param));
    }
}

/// docs/ARCHITECTURE.md (card data): the full card number never reaches an error message, even
/// when it arrives in the wrong JSON type or in the wrong field.
#[test]
fn error_messages_never_echo_a_card_number() {
    let server = Server::start();
    let merchant = onboard(&server, "Echo Shop", "B");
    let card = fresh_card();
    let as_integer = raw_payment("1000", &card);
    let in_wrong_field = format!(
        r#"{{"amount": 1000, "currency": "USD", "method": {{"type": "card", "card": {{"number": "{card}", "exp_month": "{card}", "exp_year": 2035, "cvc": "123"}}}}}}"#
    );
    for (body, param) in [(as_integer, "method.card.number"), (in_wrong_field, "method.card.exp_month")] {
        let response = merchant
            .client
            .request("POST", "/v1/payments")
            .header("Content-Type", "application/json")
            .body(body.into_bytes())
            .send(server.addr);
        let error = response.expect(400);
        assert_error(&error, "invalid_request_error", "invalid_body", Some(param));
        assert!(!response.text().contains(&card), "the error echoes the card number: {}", response.text());
    }
}

#[test]
fn missing_bad_and_revoked_keys_are_401() {
    let server = Server::start();
    let merchant = onboard(&server, "Key Shop", "B");
    let path = format!("/v1/merchants/{}", merchant.id);
    let requests = [
        Request::new("GET", &path),
        Request::new("GET", &path).header("Authorization", "Basic dXNlcjpwYXNz"),
        Request::new("GET", &path).header("Authorization", "Bearer "),
        Request::new("GET", &path).header("Authorization", "Bearer psk_not_a_key"),
    ];
    for request in requests {
        let response = request.send(server.addr);
        assert_error(&response.expect(401), "authentication_error", "unauthenticated", None);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }

    // A key works until it is revoked, then never again.
    let admin = server.admin();
    let (key_id, secret) = issue_key(&admin, "merchant", Some(&merchant.id));
    let revocable = server.client(&secret);
    revocable.get(&path).expect(200);
    let revoked = admin.delete(&format!("/v1/api_keys/{key_id}")).expect(200);
    assert_eq!(revoked["revoked"], true);
    assert_error(&revocable.get(&path).expect(401), "authentication_error", "unauthenticated", None);
    let error = revocable.post("/v1/payments", &card_payment(1_000, "manual")).expect(401);
    assert_error(&error, "authentication_error", "unauthenticated", None);
    // Revoking twice is a rule violation; the original key still works.
    let error = admin.delete(&format!("/v1/api_keys/{key_id}")).expect(422);
    assert_error(&error, "rule_error", "api_key_already_revoked", None);
    merchant.client.get(&path).expect(200);
}

#[test]
fn a_role_that_may_not_act_gets_403() {
    let server = Server::start();
    let admin = server.admin();
    let merchant = onboard(&server, "Role Shop", "B");
    let (_, analyst_key) = issue_key(&admin, "analyst", None);
    let error = server.client(&analyst_key).post("/v1/payments", &card_payment(1_000, "manual")).expect(403);
    assert_error(&error, "permission_error", "forbidden", None);
    let error = merchant.client.post("/v1/merchants", &merchant_body("Not Mine", "A")).expect(403);
    assert_error(&error, "permission_error", "forbidden", None);
    // An admin cannot take payments: it has no merchant.
    let error = admin.post("/v1/payments", &card_payment(1_000, "manual")).expect(403);
    assert_error(&error, "permission_error", "forbidden", None);
}

/// Whether a key may call a route does not depend on the body it sends: a
/// merchant key gets 403 from an admin route, not a 400 describing what the
/// route would accept.
#[test]
fn the_role_is_checked_before_the_body() {
    let server = Server::start();
    let merchant = onboard(&server, "Order Shop", "B");
    for body in [json!({"name": "x"}), json!({"unknown": true})] {
        let error = merchant.client.post("/v1/merchants", &body).expect(403);
        assert_error(&error, "permission_error", "forbidden", None);
    }
    let response = merchant
        .client
        .request("POST", "/v1/api_keys")
        .header("Content-Type", "application/json")
        .body(b"{not json".to_vec())
        .send(server.addr);
    assert_error(&response.expect(403), "permission_error", "forbidden", None);
}

#[test]
fn unknown_ids_and_other_merchants_objects_are_404() {
    let server = Server::start();
    let admin = server.admin();
    let mine = onboard(&server, "Mine", "B");
    let theirs = onboard(&server, "Theirs", "B");
    let their_payment = theirs.pay(&card_payment(1_000, "manual"));
    let their_path = format!("/v1/payments/{}", their_payment["id"].as_str().unwrap());

    let not_found = |response: paystream_tests::Response| {
        assert_error(&response.expect(404), "invalid_request_error", "resource_missing", None);
    };
    not_found(mine.client.get("/v1/payments/pay_0190f3c4a1b27c3d8e9f0a1b2c3d4e5f"));
    not_found(mine.client.get("/v1/payments/not-an-id"));
    not_found(admin.get("/v1/merchants/mer_0190f3c4a1b27c3d8e9f0a1b2c3d4e5f"));
    // Another merchant's payment does not exist for this key, whatever the verb.
    not_found(mine.client.get(&their_path));
    not_found(mine.client.get(&format!("{their_path}/events")));
    not_found(mine.client.post(&format!("{their_path}/capture"), &json!({})));
    not_found(mine.client.post(&format!("{their_path}/void"), &json!({})));
    not_found(mine.client.get(&format!("/v1/merchants/{}", theirs.id)));
    // It is still there, untouched, for its owner.
    assert_eq!(theirs.client.get(&their_path).expect(200), their_payment);

    let error = admin
        .post(&format!("{their_path}/disputes/dp_0190f3c4a1b27c3d8e9f0a1b2c3d4e5f/resolve"), &json!({"outcome": "won"}))
        .expect(404);
    assert_error(&error, "invalid_request_error", "dispute_not_found", Some("dispute_id"));
    let error = admin
        .post("/v1/api_keys", &json!({"role": "merchant", "merchant_id": "mer_0190f3c4a1b27c3d8e9f0a1b2c3d4e5f"}))
        .expect(404);
    assert_error(&error, "invalid_request_error", "merchant_not_found", Some("merchant_id"));
}

#[test]
fn idempotency_key_reused_with_another_body_is_409() {
    let server = Server::start();
    let merchant = onboard(&server, "Twice Shop", "B");
    let first = merchant.client.post_idempotent("/v1/payments", &card_payment(1_000, "manual"), "order-1001");
    first.expect(201);
    let error = merchant.client.post_idempotent("/v1/payments", &card_payment(2_000, "manual"), "order-1001");
    assert_error(&error.expect(409), "idempotency_error", "idempotency_key_reused", None);
}

#[test]
fn body_over_one_mib_is_413_and_exactly_one_mib_is_accepted() {
    const MIB: usize = 1024 * 1024;
    let server = Server::start();
    let merchant = onboard(&server, "Big Shop", "B");
    let body = card_payment(1_000, "manual").to_string();
    let pad = |len: usize| {
        let mut padded = body.clone().into_bytes();
        padded.resize(len, b' ');
        padded
    };
    let send = |bytes: Vec<u8>| {
        merchant
            .client
            .request("POST", "/v1/payments")
            .header("Content-Type", "application/json")
            .body(bytes)
            .send(server.addr)
    };
    let error = send(pad(MIB + 1)).expect(413);
    assert_error(&error, "invalid_request_error", "body_too_large", None);
    let error = send(pad(4 * MIB)).expect(413);
    assert_error(&error, "invalid_request_error", "body_too_large", None);
    // Trailing whitespace is valid JSON: a body of exactly 1 MiB is taken.
    assert_eq!(send(pad(MIB)).expect(201)["status"], "authorized");
}

#[test]
fn a_body_that_is_not_json_is_415() {
    let server = Server::start();
    let merchant = onboard(&server, "Type Shop", "B");
    let body = card_payment(1_000, "manual").to_string().into_bytes();
    let send = |content_type: Option<&str>| {
        let request = merchant.client.request("POST", "/v1/payments").body(body.clone());
        match content_type {
            Some(content_type) => request.header("Content-Type", content_type),
            None => request,
        }
        .send(server.addr)
    };
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let error = send(content_type).expect(415);
        assert_error(&error, "invalid_request_error", "unsupported_media_type", None);
    }
    send(Some("application/json; charset=utf-8")).expect(201);
}

#[test]
fn a_business_rule_violation_is_422_with_its_code() {
    let server = Server::start();
    let merchant = onboard(&server, "Rule Shop", "D");
    let payment = merchant.pay(&card_payment(5_000, "manual"));
    let path = format!("/v1/payments/{}/capture", payment["id"].as_str().unwrap());
    let error = merchant.client.post(&path, &json!({"amount": 5_001})).expect(422);
    let message = assert_error(&error, "rule_error", "amount_exceeds_capturable", Some("amount"));
    assert!(message.contains("50.01") || message.contains("5001"), "message names the amount: {message}");
    let error = merchant.client.post(&path, &json!({"amount": 100, "currency": "EUR"})).expect(400);
    assert_error(&error, "invalid_request_error", "currency_mismatch", Some("currency"));
    // Tier D takes at most 1,000.00 per payment.
    let error = merchant.client.post("/v1/payments", &card_payment(100_001, "manual")).expect(422);
    assert_error(&error, "rule_error", "amount_exceeds_tier_limit", Some("amount"));
}

/// A rule error's message names the payment's status as the API shows it
/// (`voided`, `requires_review`), not as the code spells it.
#[test]
fn rule_messages_name_statuses_as_the_api_does() {
    let server = Server::start();
    let merchant = onboard(&server, "Words Shop", "B");
    let payment = merchant.pay(&card_payment(1_000, "manual"));
    let path = format!("/v1/payments/{}", payment["id"].as_str().unwrap());
    merchant.client.post(&format!("{path}/void"), &json!({})).expect(200);
    let error = merchant.client.post(&format!("{path}/capture"), &json!({})).expect(422);
    let message = assert_error(&error, "rule_error", "payment_not_capturable", None);
    assert!(message.contains("voided") && !message.contains("Voided"), "{message}");
}

/// Bodies are JSON objects: serde would fill a struct from an array by
/// position, which no client means and the OpenAPI schema does not allow.
#[test]
fn an_array_body_is_400() {
    let server = Server::start();
    let body = json!(["Array Ltd", "US", "USD", null, "B", {"percent_bps": 0, "fixed": 0}]);
    let error = server.admin().post("/v1/merchants", &body).expect(400);
    assert_error(&error, "invalid_request_error", "invalid_body", Some("body"));
}
