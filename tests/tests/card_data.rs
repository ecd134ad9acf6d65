//! No card number is ever stored or logged: after the lifecycle scenarios
//! and requests that carry card numbers into error paths, no Luhn-valid
//! 13-19 digit number appears in any file of the data directory or in
//! anything the server printed (logging at debug).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paystream_tests::fixtures::{card_method, card_payment, cards_used, fresh_card, issue_key, onboard, payment_body};
use paystream_tests::scan::{files_under, find_cards, luhn_runs, spellings, Finding};
use paystream_tests::server::temp_data_dir;
use paystream_tests::{scenarios, Server};
use serde_json::json;

/// Requests that carry a card number somewhere other than a clean payment.
fn card_numbers_in_odd_places(server: &Server) {
    let merchant = onboard(server, "Odd Places", "B");
    let shop = &merchant.client;
    // Typed with spaces and with dashes.
    let spaced = spellings(&fresh_card())[1].clone();
    shop.post("/v1/payments", &payment_body(1_000, "automatic", card_method(&spaced))).expect(201);
    let dashed = spellings(&fresh_card())[2].clone();
    shop.post("/v1/payments", &payment_body(1_000, "automatic", card_method(&dashed))).expect(201);
    // Idempotent create and its replay.
    let body = card_payment(1_000, "manual");
    shop.post_idempotent("/v1/payments", &body, "card-replay").expect(201);
    shop.post_idempotent("/v1/payments", &body, "card-replay").expect(201);
    shop.post_idempotent("/v1/payments", &card_payment(1_001, "manual"), "card-replay").expect(409);
    // Rejected: bad CVC, expired, unknown field, over the tier limit.
    let card = fresh_card();
    let method = |cvc: &str, year: u16| json!({"type": "card", "card": {"number": card, "exp_month": 12, "exp_year": year, "cvc": cvc}});
    shop.post("/v1/payments", &payment_body(1_000, "manual", method("1x3", 2035))).expect(400);
    shop.post("/v1/payments", &payment_body(1_000, "manual", method("123", 2020))).expect(400);
    let mut unknown = payment_body(1_000, "manual", method("123", 2035));
    unknown["card_number"] = json!(card);
    shop.post("/v1/payments", &unknown).expect(400);
    shop.post("/v1/payments", &payment_body(3_000_000, "manual", method("123", 2035))).expect(422);
    // The number in the wrong type or field.
    let raw = format!(
        r#"{{"amount": 1000, "currency": "USD", "method": {{"type": "card", "card": {{"number": {card}, "exp_month": "{card}", "exp_year": 2035, "cvc": "123"}}}}}}"#
    );
    shop.request("POST", "/v1/payments")
        .header("Content-Type", "application/json")
        .body(raw.into_bytes())
        .send(server.addr);
    // Malformed JSON, wrong content type, too large, no key, wrong role.
    let text = body.to_string();
    let post_raw = |content_type: &str, bytes: Vec<u8>| {
        shop.request("POST", "/v1/payments").header("Content-Type", content_type).body(bytes).send(server.addr)
    };
    post_raw("application/json", text.as_bytes()[..text.len() - 3].to_vec()).expect(400);
    post_raw("text/plain", text.clone().into_bytes()).expect(415);
    let mut large = text.clone().into_bytes();
    large.resize(2 * 1024 * 1024, b' ');
    post_raw("application/json", large).expect(413);
    server.anonymous().post("/v1/payments", &body).expect(401);
    let (_, analyst) = issue_key(&server.admin(), "analyst", None);
    server.client(&analyst).post("/v1/payments", &body).expect(403);
}

#[test]
fn no_card_number_in_the_data_directory_or_the_logs() {
    let data = temp_data_dir();
    let mut server = Server::start_in(data.path(), "debug");
    scenarios::run_all(&server);
    card_numbers_in_odd_places(&server);
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr_text());
    // Start and stop once more: opening the data logs too.
    let mut reopened = Server::start_in(data.path(), "debug");
    reopened.admin().head_position();
    assert_eq!(reopened.stop().code(), Some(0));

    let cards = cards_used();
    assert!(cards.len() >= 15, "the scenarios sent cards: {cards:?}");
    let mut findings: Vec<Finding> = Vec::new();
    let files = files_under(data.path());
    assert!(files.len() > 2, "the data directory holds the log: {files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let location = file.display().to_string();
        findings.extend(luhn_runs(&location, &bytes));
        findings.extend(find_cards(&location, &bytes, &cards));
    }
    for (name, bytes) in [
        ("first server stdout", server.stdout()),
        ("first server stderr", server.stderr()),
        ("second server stdout", reopened.stdout()),
        ("second server stderr", reopened.stderr()),
    ] {
        findings.extend(luhn_runs(name, &bytes));
        findings.extend(find_cards(name, &bytes, &cards));
    }
    let stderr = server.stderr_text();
    assert!(stderr.contains("DEBUG") || stderr.contains("handled"), "the server logged: {stderr}");
    assert!(findings.is_empty(), "card numbers found:\n{findings:#?}");
}

/// The scanner itself: it finds card numbers however they sit in bytes, and
/// does not mistake hashes or timestamps for them.
#[test]
fn the_scanner_finds_card_numbers_and_skips_hashes() {
    let cases: [(&[u8], usize); 7] = [
        (b"{\"number\":\"4242424242424242\"}", 1),
        (b"\x00\x1f4000000000000002\xff", 1),
        (b"\x1b[3mnumber\x1b[0m=4111111111111111 ", 1),
        (b"378282246310005", 1),
        (b"4242424242424241", 0),
        (b"hash=ab4242424242424242cd", 0),
        (b"2026-11-27T00:27:30.298936549Z position=1234567890123", 0),
    ];
    for (bytes, expected) in cases {
        assert_eq!(luhn_runs("case", bytes).len(), expected, "{}", String::from_utf8_lossy(bytes));
    }
    let cards = ["4242424242424242".to_string()];
    for spelling in spellings(&cards[0]) {
        let text = format!("pan: {spelling}.");
        assert_eq!(find_cards("case", text.as_bytes(), &cards).len(), 1, "{text}");
    }
    assert_eq!(find_cards("case", b"4242424242424241", &cards).len(), 0);
}
