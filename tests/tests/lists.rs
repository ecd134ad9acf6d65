//! One list shape everywhere: every list answers
//! `{"object": "list", "data": [...], "has_more": bool, "next_cursor": string|null}`
//! (`next_cursor` set exactly when `has_more`, and then also in the
//! `Paystream-Next-Cursor` header), pages by passing `next_cursor` back as
//! `starting_after`, and answers CSV for `Accept: text/csv`. Filters users
//! combine take several values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use paystream_tests::fixtures::{card_method, card_payment, id_of, issue_key, onboard, payment_body, CARD_DECLINED};
use paystream_tests::{assert_error, Client, Response, Server};
use serde_json::{json, Value};

/// Checks the list shape of `response` and that its cursor header agrees;
/// returns the body.
#[track_caller]
fn list(response: &Response, what: &str) -> Value {
    let body = response.expect(200);
    assert_eq!(body["object"], "list", "{what}: {body}");
    assert!(body["data"].is_array(), "{what}: data {body}");
    let has_more = body["has_more"].as_bool().unwrap_or_else(|| panic!("{what}: has_more {body}"));
    let cursor = &body["next_cursor"];
    assert!(cursor.is_string() || cursor.is_null(), "{what}: next_cursor {cursor}");
    assert_eq!(has_more, cursor.is_string(), "{what}: next_cursor is set exactly when has_more: {body}");
    assert_eq!(response.header("paystream-next-cursor"), cursor.as_str(), "{what}: the header is next_cursor");
    body
}

/// Follows `next_cursor` from `first` (a path with `limit`), returning every
/// item's `key` in the order listed.
fn walk(client: &Client, first: &str, key: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut path = first.to_string();
    for _ in 0..100 {
        let page = list(&client.get(&path), &path);
        items.extend(page["data"].as_array().unwrap().iter().map(|item| match &item[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{first}&starting_after={cursor}"),
            None => return items,
        }
    }
    panic!("{first}: more than 100 pages");
}

/// GET `path` as CSV: the lines (header first) and the cursor header.
fn csv(client: &Client, path: &str) -> (Vec<String>, Option<String>) {
    let response = client.request("GET", path).header("Accept", "text/csv").send(client.addr);
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    assert!(response.header("content-type").unwrap_or_default().starts_with("text/csv"), "{path}");
    (
        response.text().lines().map(str::to_string).collect(),
        response.header("paystream-next-cursor").map(str::to_string),
    )
}

#[test]
fn every_list_has_the_one_shape() {
    let server = Server::start();
    onboard(&server, "Shape Shop Too", "B");
    let merchant = onboard(&server, "Shape Shop", "B");
    merchant.pay(&card_payment(1_000, "automatic"));
    let paid = merchant.pay(&card_payment(2_000, "automatic"));
    let id = id_of(&paid);
    merchant.client.post(&format!("/v1/payments/{id}/refunds"), &json!({"amount": 500})).expect(201);
    let admin = server.admin();
    let wait = format!("min_position={}", admin.head_position());
    let analyst = server.client(&issue_key(&admin, "analyst", None).1);
    for path in [
        format!("/v1/payments?{wait}"),
        format!("/v1/payments?limit=1&{wait}"),
        format!("/v1/payments/{id}/events"),
        format!("/v1/payments/{id}/events?limit=1"),
        format!("/v1/ledger/journal?{wait}"),
        format!("/v1/ledger/journal?limit=1&{wait}"),
        format!("/v1/ledger/accounts?{wait}"),
        "/v1/projections".to_string(),
        format!("/v1/analytics/overview?group_by=merchant&{wait}"),
        format!("/v1/merchants?{wait}"),
        format!("/v1/merchants?limit=1&{wait}"),
    ] {
        let body = list(&analyst.get(&path), &path);
        if path.contains("limit=1") {
            assert_eq!(body["has_more"], true, "{path}: {body}");
        }
        // Every list answers CSV, with the same cursor.
        let (lines, cursor) = csv(&analyst, &path);
        assert!(!lines.is_empty(), "{path}: a header line");
        assert_eq!(cursor.as_deref(), body["next_cursor"].as_str(), "{path}: CSV cursor");
    }
    // The overview is a list of rows that also says how they were grouped.
    let overview = analyst.get(&format!("/v1/analytics/overview?group_by=merchant&{wait}")).expect(200);
    assert_eq!(overview["group_by"], json!(["merchant", "currency"]));
    assert_eq!(overview["data"][0]["merchant_id"], merchant.id.as_str());
}

#[test]
fn merchants_are_listed_newest_first_in_pages() {
    let server = Server::start();
    let admin = server.admin();
    let mut made: Vec<String> = (0..5).map(|i| onboard(&server, &format!("Listed {i}"), "C").id).collect();
    made.reverse();
    let wait = format!("min_position={}", admin.head_position());
    let auditor = server.client(&issue_key(&admin, "auditor", None).1);
    assert_eq!(walk(&auditor, &format!("/v1/merchants?limit=2&{wait}"), "id"), made, "newest first, each once");
    let whole = list(&admin.get(&format!("/v1/merchants?{wait}")), "all merchants");
    assert_eq!(whole["data"].as_array().unwrap().len(), 5);
    assert_eq!(whole["data"][0]["object"], "merchant");
    assert_eq!(whole["data"][0], admin.get(&format!("/v1/merchants/{}", made[0])).expect(200), "the merchant object");

    let (lines, cursor) = csv(&admin, &format!("/v1/merchants?limit=2&{wait}"));
    assert_eq!(lines.len(), 3, "a header and two merchants: {lines:?}");
    assert!(lines[0].split(',').any(|c| c == "fees.percent_bps"), "{}", lines[0]);
    assert_eq!(cursor.as_deref(), Some(made[1].as_str()));

    let merchant = onboard(&server, "Not A Lister", "B");
    assert_error(&merchant.client.get("/v1/merchants").expect(403), "permission_error", "forbidden", None);
    for (query, param) in [("limit=0", "limit"), ("limit=101", "limit"), ("starting_after=pay_1", "starting_after")] {
        let error = admin.get(&format!("/v1/merchants?{query}")).expect(400);
        assert_error(&error, "invalid_request_error", "invalid_query", Some(param));
    }
    let error = admin.get("/v1/merchants?status=active").expect(400);
    assert_error(&error, "invalid_request_error", "unknown_parameter", Some("status"));
}

#[test]
fn a_payments_events_come_in_pages_and_as_csv() {
    let server = Server::start();
    let merchant = onboard(&server, "Event Pages", "B");
    let id = id_of(&merchant.pay(&card_payment(9_000, "manual")));
    let path = format!("/v1/payments/{id}");
    merchant.client.post(&format!("{path}/capture"), &json!({"amount": 6_000})).expect(200);
    for amount in [1_000, 2_000] {
        merchant.client.post(&format!("{path}/refunds"), &json!({"amount": amount})).expect(201);
    }
    let all = list(&merchant.client.get(&format!("{path}/events")), "events");
    let positions: Vec<String> = all["data"].as_array().unwrap().iter().map(|e| e["position"].to_string()).collect();
    assert!(positions.len() >= 6, "{all}");
    assert_eq!(walk(&merchant.client, &format!("{path}/events?limit=2"), "position"), positions);
    let (lines, _) = csv(&merchant.client, &format!("{path}/events"));
    assert_eq!(lines.len(), 1 + positions.len(), "{lines:?}");
    assert!(lines[0].split(',').any(|c| c == "type"), "{}", lines[0]);
    for (query, param) in [("limit=0", "limit"), ("starting_after=x", "starting_after")] {
        let error = merchant.client.get(&format!("{path}/events?{query}")).expect(400);
        assert_error(&error, "invalid_request_error", "invalid_query", Some(param));
    }
}

#[test]
fn search_filters_take_several_values() {
    let server = Server::start();
    let merchant = onboard(&server, "Many Filters", "B");
    let captured = id_of(&merchant.pay(&card_payment(1_000, "automatic")));
    let refunded = id_of(&merchant.pay(&card_payment(1_100, "automatic")));
    merchant.client.post(&format!("/v1/payments/{refunded}/refunds"), &json!({})).expect(201);
    let authorized = id_of(&merchant.pay(&card_payment(1_200, "manual")));
    let declined = id_of(&merchant.pay(&payment_body(1_300, "automatic", card_method(CARD_DECLINED))));
    let wallet = json!({"type": "wallet", "wallet": {"provider": "alipay", "account_id": "acct_many_1"}});
    let by_wallet = id_of(&merchant.pay(&payment_body(1_400, "automatic", wallet)));
    let wait = format!("min_position={}", merchant.client.head_position());
    let found = |query: &str| -> BTreeSet<String> {
        let page = list(&merchant.client.get(&format!("/v1/payments?{query}&{wait}")), query);
        page["data"].as_array().unwrap().iter().map(id_of).collect()
    };
    let set = |ids: &[&String]| ids.iter().map(|id| id.to_string()).collect::<BTreeSet<_>>();
    let captured_or_refunded = set(&[&captured, &refunded, &by_wallet]);
    assert_eq!(found("status=captured,refunded"), captured_or_refunded);
    assert_eq!(found("status=captured&status=refunded"), captured_or_refunded);
    assert_eq!(found("status=authorized,declined"), set(&[&authorized, &declined]));
    assert_eq!(found("method=wallet,nfc"), set(&[&by_wallet]));
    assert_eq!(found("method=card&status=captured,refunded"), set(&[&captured, &refunded]));
    assert_eq!(found("currency=EUR,USD").len(), 5);
    assert!(found("currency=EUR,JPY").is_empty());
    let error = merchant.client.get("/v1/payments?status=captured,bogus").expect(400);
    assert_error(&error, "invalid_request_error", "invalid_query", Some("status"));
    let error = merchant.client.get("/v1/payments?limit=1&limit=2").expect(400);
    assert_error(&error, "invalid_request_error", "invalid_query", Some("limit"));
}

#[test]
fn the_journal_pages_with_string_cursors() {
    let server = Server::start();
    let merchant = onboard(&server, "Journal Pages", "B");
    for amount in [1_000, 2_000, 3_000] {
        merchant.pay(&card_payment(amount, "automatic"));
    }
    let admin = server.admin();
    let wait = format!("min_position={}", admin.head_position());
    let entries = walk(&admin, &format!("/v1/ledger/journal?limit=1&{wait}"), "position");
    assert_eq!(entries.len(), 3, "{entries:?}");
    let first = list(&admin.get(&format!("/v1/ledger/journal?limit=1&{wait}")), "journal");
    let cursor = first["next_cursor"].as_str().unwrap();
    // `after` is the older name of `starting_after`.
    assert_eq!(
        admin.get(&format!("/v1/ledger/journal?limit=1&after={cursor}")).expect(200),
        admin.get(&format!("/v1/ledger/journal?limit=1&starting_after={cursor}")).expect(200)
    );
    let error = admin.get(&format!("/v1/ledger/journal?after={cursor}&starting_after={cursor}")).expect(400);
    assert_error(&error, "invalid_request_error", "invalid_query", Some("after"));
}
