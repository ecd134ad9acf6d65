//! Idempotent replay: the same Idempotency-Key with the same body returns
//! the first response (marked `Idempotent-Replayed: true`) and does nothing
//! again; with another body it is a 409; concurrent duplicates make one
//! payment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Barrier};

use paystream_tests::fixtures::{card_payment, id_of, merchant_body, onboard};
use paystream_tests::{assert_error, assert_json, Response, Server};
use serde_json::{json, Value};

#[track_caller]
fn assert_replay_of(replay: &Response, first: &Response) {
    assert_eq!(first.header("idempotent-replayed"), None, "the first response is not a replay");
    assert_eq!(replay.status, first.status, "replay status; body {}", replay.text());
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), first.json(), "a replay returns the first response body");
}

#[test]
fn same_key_and_body_returns_the_first_response_and_acts_once() {
    let server = Server::start();
    let merchant = onboard(&server, "Replay Shop", "B");
    let shop = &merchant.client;
    let body = card_payment(5_000, "manual");

    let first = shop.post_idempotent("/v1/payments", &body, "order-5000");
    let payment = first.expect(201);
    let path = format!("/v1/payments/{}", id_of(&payment));
    let head = shop.head_position();
    let replay = shop.post_idempotent("/v1/payments", &body, "order-5000");
    assert_replay_of(&replay, &first);
    assert_eq!(shop.head_position(), head, "a replay writes nothing");

    let capture = shop.post_idempotent(&format!("{path}/capture"), &json!({"amount": 2_000}), "capture-1");
    capture.expect(200);
    let replay = shop.post_idempotent(&format!("{path}/capture"), &json!({"amount": 2_000}), "capture-1");
    assert_replay_of(&replay, &capture);
    let refund = shop.post_idempotent(&format!("{path}/refunds"), &json!({"amount": 500}), "refund-1");
    refund.expect(201);
    assert_replay_of(&shop.post_idempotent(&format!("{path}/refunds"), &json!({"amount": 500}), "refund-1"), &refund);
    let now = shop.get(&path).expect(200);
    assert_eq!((now["amount_captured"].as_i64(), now["amount_refunded"].as_i64()), (Some(2_000), Some(500)));
    assert_eq!(now["captures"].as_array().unwrap().len(), 1, "captured once");
    assert_eq!(now["refunds"].as_array().unwrap().len(), 1, "refunded once");

    // The replay of the creation still shows the payment as that request
    // left it (authorized), not as it is now (captured).
    let replay = shop.post_idempotent("/v1/payments", &body, "order-5000");
    assert_replay_of(&replay, &first);
    assert_eq!(replay.json()["status"], "authorized");

    let admin = server.admin();
    let merchant_first = admin.post_idempotent("/v1/merchants", &merchant_body("Once Ltd", "C"), "onboard-once");
    merchant_first.expect(201);
    assert_replay_of(
        &admin.post_idempotent("/v1/merchants", &merchant_body("Once Ltd", "C"), "onboard-once"),
        &merchant_first,
    );
}

/// An API key's secret is shown once: a replay of its creation returns the
/// same key object without the secret (docs/api.md: the secret is never
/// stored, so it cannot be shown again), and the key works.
#[test]
fn replayed_key_creation_does_not_show_the_secret_again() {
    let server = Server::start();
    let merchant = onboard(&server, "Key Replay", "B");
    let admin = server.admin();
    let body = json!({"role": "merchant", "merchant_id": merchant.id});
    let first = admin.post_idempotent("/v1/api_keys", &body, "key-once");
    let created = first.expect(201);
    assert!(created["key"].as_str().is_some_and(|k| k.starts_with("psk_")));
    let replay = admin.post_idempotent("/v1/api_keys", &body, "key-once");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("key");
    assert_json(&replay.expect(201), &without_secret);
    // One key was made, and its secret is the first answer's.
    let secret = created["key"].as_str().unwrap();
    server.client(secret).get(&format!("/v1/merchants/{}", merchant.id)).expect(200);
}

/// "The same request" is the same method, path and JSON meaning: keys in
/// another order, other whitespace or escapes replay; another value is a 409.
#[test]
fn the_same_json_written_differently_replays() {
    let server = Server::start();
    let merchant = onboard(&server, "Canonical Shop", "B");
    let shop = &merchant.client;
    let card = paystream_tests::fixtures::fresh_card();
    let compact = format!(
        r#"{{"amount":2500,"currency":"USD","capture":"manual","method":{{"type":"card","card":{{"number":"{card}","exp_month":12,"exp_year":2035,"cvc":"123"}}}},"metadata":{{"order":"77","channel":"web"}}}}"#
    );
    let reordered = format!(
        "{{\n  \"metadata\": {{\"channel\": \"web\", \"order\": \"77\"}},\n  \"method\": {{\"card\": {{\"cvc\": \"123\", \"exp_year\": 2035, \"exp_month\": 12, \"number\": \"{card}\"}}, \"type\": \"card\"}},\n  \"capture\": \"man\\u0075al\",\n  \"currency\": \"USD\", \"amount\": 2500\n}}\n"
    );
    let send = |body: &str| {
        shop.request("POST", "/v1/payments")
            .header("Idempotency-Key", "canonical-1")
            .header("Content-Type", "application/json")
            .body(body.as_bytes().to_vec())
            .send(server.addr)
    };
    let first = send(&compact);
    first.expect(201);
    let head = shop.head_position();
    assert_replay_of(&send(&reordered), &first);
    assert_eq!(shop.head_position(), head, "a replay writes nothing");
    // Another value is another request.
    let error = send(&compact.replace("\"order\":\"77\"", "\"order\":\"78\"")).expect(409);
    assert_error(&error, "idempotency_error", "idempotency_key_reused", None);

    // No body and `{}` are the same request (a refund of everything refundable).
    let payment = first.json();
    let capture = format!("/v1/payments/{}/capture", id_of(&payment));
    let captured = shop.request("POST", &capture).header("Idempotency-Key", "capture-all").send(server.addr);
    captured.expect(200);
    assert_replay_of(&shop.post_idempotent(&capture, &json!({}), "capture-all"), &captured);
}

#[test]
fn same_key_with_another_body_or_route_is_409() {
    let server = Server::start();
    let merchant = onboard(&server, "Reuse Shop", "B");
    let shop = &merchant.client;
    let body = card_payment(1_000, "manual");
    let first = shop.post_idempotent("/v1/payments", &body, "order-1");
    let payment = first.expect(201);
    let head = shop.head_position();
    let error = shop.post_idempotent("/v1/payments", &card_payment(1_001, "manual"), "order-1").expect(409);
    assert_error(&error, "idempotency_error", "idempotency_key_reused", None);
    let capture = format!("/v1/payments/{}/capture", id_of(&payment));
    let error = shop.post_idempotent(&capture, &json!({}), "order-1").expect(409);
    assert_error(&error, "idempotency_error", "idempotency_key_reused", None);
    assert_eq!(shop.head_position(), head, "a refused reuse writes nothing");
    // The key still replays the first request.
    assert_replay_of(&shop.post_idempotent("/v1/payments", &body, "order-1"), &first);
}

/// Keys belong to the merchant that sent them: two merchants may use the
/// same one.
#[test]
fn idempotency_keys_are_scoped_to_the_merchant() {
    let server = Server::start();
    let one = onboard(&server, "One", "B");
    let two = onboard(&server, "Two", "B");
    let body = card_payment(1_000, "manual");
    let first = one.client.post_idempotent("/v1/payments", &body, "order-1");
    let second = two.client.post_idempotent("/v1/payments", &body, "order-1");
    assert_eq!(second.header("idempotent-replayed"), None);
    assert_ne!(id_of(&first.expect(201)), id_of(&second.expect(201)));
    assert_eq!(second.json()["merchant_id"], two.id.as_str());
}

#[test]
fn twenty_concurrent_identical_creates_make_exactly_one_payment() {
    const CLIENTS: usize = 20;
    let server = Server::start();
    let merchant = onboard(&server, "Rush Shop", "B");
    let body = card_payment(4_200, "automatic");
    let head = merchant.client.head_position();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, body, barrier) = (merchant.client.clone(), body.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                client.post_idempotent("/v1/payments", &body, "rush-order-42")
            })
        })
        .collect();
    let responses: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let bodies: Vec<Value> = responses.iter().map(|r| r.expect(201)).collect();
    let id = id_of(&bodies[0]);
    for body in &bodies {
        assert_eq!(id_of(body), id, "every response names the same payment");
        assert_eq!(body, &bodies[0], "every response is the same");
    }
    let fresh = responses.iter().filter(|r| r.header("idempotent-replayed").is_none()).count();
    assert_eq!(fresh, 1, "one request did the work, the others replayed it");
    // The log grew by that one payment's events and nothing else.
    let events = merchant.client.get(&format!("/v1/payments/{id}/events")).expect(200);
    let written = events["data"].as_array().unwrap().len() as u64;
    assert_eq!(merchant.client.head_position(), head + written);
    assert_eq!(bodies[0]["status"], "captured");
}
