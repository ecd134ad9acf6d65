//! The read side over HTTP against the real binary: payment search (filters,
//! cursor pages, CSV), the merchant dashboard, the ledger and the
//! projections' own status and rebuild. Every read that follows a write
//! passes the write's `position` as `min_position`, so it sees the write
//! without sleeping or retrying. Each test runs its own server, as in
//! lifecycle.rs, so no test sees another's payments or rebuilds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use paystream_tests::fixtures::{
    card_method, card_payment, cards_used, fee, fresh_card, id_of, issue_key, onboard, payment_body, risk_approve,
    Merchant, CARD_DECLINED,
};
use paystream_tests::scan::{find_cards, luhn_runs, spellings, Finding};
use paystream_tests::{assert_error, assert_json, merged, Client, Server};
use serde_json::{json, Value};

/// Longest wait for a rebuild to finish before the test gives up. A bound
/// for a stuck rebuild, not a performance figure: it is never asserted.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two looks at `/v1/projections` while a rebuild runs.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const PROJECTIONS: [&str; 4] = ["merchant_dashboard", "payment_search", "platform_overview", "ledger"];
/// The payment method types a dashboard counts.
const METHOD_TYPES: [&str; 5] = ["card", "bank_transfer", "wallet", "qr_code", "nfc"];

/// The log position a write response carries.
fn position(response: &Value) -> u64 {
    response["position"].as_u64().unwrap_or_else(|| panic!("no position in {response}"))
}

/// The ids of a page, in order.
fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().expect("data array").iter().map(id_of).collect()
}

/// `GET /v1/payments?{query}`, expected to succeed.
fn search(client: &Client, query: &str) -> Value {
    client.get(&format!("/v1/payments?{query}")).expect(200)
}

/// The last four characters of a card number.
fn last4(number: &str) -> &str {
    &number[number.len() - 4..]
}

/// The method mix of a dashboard row where only `method` was attempted.
fn method_mix(method: &str, count: i64) -> Value {
    METHOD_TYPES.iter().map(|name| (name.to_string(), json!(if *name == method { count } else { 0 }))).collect()
}

#[test]
fn a_merchant_reads_its_write_at_once_in_search_and_on_its_dashboard() {
    let server = Server::start();
    let merchant = onboard(&server, "Fresh Reads", "B");
    let body = card_payment(10_000, "manual");
    let payment = merchant.pay(&body);
    let id = id_of(&payment);

    let page = search(&merchant.client, &format!("min_position={}", position(&payment)));
    let number = body["method"]["card"]["number"].as_str().unwrap();
    let authorized = json!({
        "id": id, "merchant_id": merchant.id, "status": "authorized", "amount": 10_000, "currency": "USD",
        "amount_capturable": 10_000, "amount_captured": 0, "amount_refunded": 0,
        "amount_disputed": 0, "amount_dispute_lost": 0, "amount_settled": 0, "fees": 0,
        "capture": "manual", "method_type": "card", "card_brand": "visa", "last4": last4(number),
        "customer_id": null, "customer_email": null, "risk_score": risk_approve()["score"],
        "risk_decision": "approve", "review": "not_required", "decline_code": null,
        "authorized": true, "voided": false, "expired": false,
        "created_at": payment["created_at"], "updated_at": payment["updated_at"],
    });
    assert_json(&page, &json!({"object": "list", "data": [authorized], "has_more": false, "next_cursor": null}));

    // Capture part of it: the next read at the capture's position shows it,
    // in search and on the dashboard of the capture's UTC day.
    let captured = merchant.client.post(&format!("/v1/payments/{id}/capture"), &json!({"amount": 4_000})).expect(200);
    let wait = format!("min_position={}", position(&captured));
    let page = search(&merchant.client, &wait);
    let fees = fee(4_000, true);
    let summary = merged(
        &authorized,
        json!({"status": "captured", "amount_capturable": 6_000, "amount_captured": 4_000,
               "fees": fees, "updated_at": captured["updated_at"]}),
    );
    assert_json(&page, &json!({"object": "list", "data": [summary], "has_more": false, "next_cursor": null}));

    let created_day = &payment["created_at"].as_str().unwrap()[..10];
    let capture_day = &captured["captures"][0]["created_at"].as_str().unwrap()[..10];
    let dashboard = merchant
        .client
        .get(&format!(
            "/v1/merchants/{}/dashboard?from={created_day}&to={capture_day}&currency=USD&{wait}",
            merchant.id
        ))
        .expect(200);
    let totals = json!({
        "currency": "USD", "attempted_count": 1, "authorized_count": 1, "declined_count": 0, "captured_count": 1,
        "refunded_count": 0, "disputed_count": 0, "authorized_minor": 10_000, "captured_minor": 4_000,
        "refunded_minor": 0, "disputed_minor": 0, "dispute_won_minor": 0, "dispute_lost_minor": 0,
        "fees_minor": fees, "settled_minor": 0, "settled_fees_minor": 0, "net_minor": 4_000 - fees,
        "approval_rate_bps": 10_000, "refund_rate_bps": 0, "dispute_rate_bps": 0, "average_ticket_minor": 10_000,
        "method_mix": method_mix("card", 1),
    });
    // The payment counts as attempted on the day it was created and as
    // captured on the day of the capture: one row, unless a UTC midnight
    // fell between the two requests.
    let days = dashboard["days"].as_array().expect("days");
    let capture_row = days.iter().find(|d| d["date"] == capture_day).expect("a row for the capture's day");
    assert_eq!(
        (&capture_row["currency"], &capture_row["captured_count"], &capture_row["captured_minor"]),
        (&json!("USD"), &json!(1), &json!(4_000)),
        "dashboard days: {days:?}"
    );
    assert_json(
        &dashboard,
        &json!({
            "merchant_id": merchant.id, "from": created_day, "to": capture_day, "currency": "USD",
            "days": dashboard["days"], "totals": [totals],
            "balances": [{"currency": "USD", "pending_minor": 4_000 - fees, "reserved_minor": 0,
                          "available_minor": 0, "paid_out_minor": 0}],
        }),
    );
    if created_day == capture_day {
        assert_json(&dashboard["days"], &json!([merged(&totals, json!({"date": capture_day}))]));
    }
}

#[test]
fn pages_follow_next_cursor_newest_first_without_duplicates() {
    let server = Server::start();
    let merchant = onboard(&server, "Paged Shop", "B");
    let mut created = Vec::new();
    let mut last = 0;
    for amount in 1_001..=1_005 {
        let payment = merchant.pay(&card_payment(amount, "automatic"));
        created.push(id_of(&payment));
        last = position(&payment);
    }
    created.reverse();

    let mut seen: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    let mut query = format!("limit=2&min_position={last}");
    loop {
        let page = search(&merchant.client, &query);
        seen.extend(ids(&page));
        pages.push(page.clone());
        assert!(pages.len() <= created.len(), "pagination does not end: {pages:#?}");
        if page["has_more"] == false {
            assert_eq!(page["next_cursor"], Value::Null, "last page: {page}");
            break;
        }
        let cursor = page["next_cursor"].as_str().expect("next_cursor on a page with more");
        assert_eq!(Some(cursor), seen.last().map(String::as_str), "the cursor is the page's last payment");
        query = format!("limit=2&starting_after={cursor}");
    }
    assert_eq!(seen, created, "every payment once, newest first");
    let sizes: Vec<usize> = pages.iter().map(|p| p["data"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [2, 2, 1]);

    // A page that holds exactly what is left says there is no more.
    let all = search(&merchant.client, "limit=5");
    assert_eq!((ids(&all), &all["has_more"], &all["next_cursor"]), (created.clone(), &json!(false), &Value::Null));
    let four = search(&merchant.client, "limit=4");
    assert_eq!((ids(&four), &four["has_more"]), (created[..4].to_vec(), &json!(true)));
    // An admin sees the same pages through the merchant_id filter.
    let admin_page = search(&server.admin(), &format!("merchant_id={}&limit=2", merchant.id));
    assert_json(&admin_page, &pages[0]);
}

/// One payment of each status, newest last: captured, authorized, voided,
/// declined, captured with a customer, captured by wallet.
struct Mix {
    merchant: Merchant,
    captured: String,
    authorized: String,
    voided: String,
    declined: String,
    customer: String,
    wallet: String,
}

fn payments_of_every_status(server: &Server) -> (Mix, u64) {
    let merchant = onboard(server, "Filter Shop", "B");
    let captured = id_of(&merchant.pay(&card_payment(1_000, "automatic")));
    let authorized = id_of(&merchant.pay(&card_payment(5_000, "manual")));
    let voided = id_of(&merchant.pay(&card_payment(9_000, "manual")));
    merchant.client.post(&format!("/v1/payments/{voided}/void"), &json!({})).expect(200);
    let declined = merchant.pay(&payment_body(2_000, "automatic", card_method(CARD_DECLINED)));
    assert_eq!(declined["status"], "declined");
    let mut with_customer = card_payment(3_000, "automatic");
    with_customer["customer"] = json!({"id": "cus_42", "email": "Ana.Lima@Example.com"});
    let customer = id_of(&merchant.pay(&with_customer));
    let wallet = json!({"type": "wallet", "wallet": {"provider": "alipay", "account_id": "2088102146225135"}});
    let last = merchant.pay(&payment_body(7_000, "automatic", wallet));
    let mix =
        Mix { merchant, captured, authorized, voided, declined: id_of(&declined), customer, wallet: id_of(&last) };
    (mix, position(&last))
}

#[test]
fn filters_narrow_the_search() {
    let server = Server::start();
    let (mix, last) = payments_of_every_status(&server);
    let Mix { merchant, captured, authorized, voided, declined, customer, wallet } = &mix;
    // Another merchant's payments never show in this merchant's results.
    let other = onboard(&server, "Noise Shop", "B");
    let noise = other.pay(&card_payment(3_000, "automatic"));
    let wait = format!("min_position={}", last.max(position(&noise)));

    let cases: [(&str, Vec<&String>); 14] = [
        ("", vec![wallet, customer, declined, voided, authorized, captured]),
        ("status=captured", vec![wallet, customer, captured]),
        ("status=authorized", vec![authorized]),
        ("status=voided", vec![voided]),
        ("status=declined", vec![declined]),
        ("min_amount=2000&max_amount=5000", vec![customer, declined, authorized]),
        ("min_amount=5000", vec![wallet, voided, authorized]),
        ("max_amount=1000", vec![captured]),
        ("status=captured&min_amount=2000", vec![wallet, customer]),
        ("method=wallet", vec![wallet]),
        ("method=card&max_amount=2000", vec![declined, captured]),
        ("customer=ana.lima@example.com", vec![customer]),
        ("customer=cus_42", vec![customer]),
        ("currency=EUR", vec![]),
    ];
    for (filter, expected) in cases {
        let page = search(&merchant.client, &format!("{filter}&{wait}"));
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(ids(&page), expected, "filter {filter:?}");
        assert_eq!((&page["has_more"], &page["next_cursor"]), (&json!(false), &Value::Null), "filter {filter:?}");
    }
    // from is inclusive, to exclusive; both take RFC 3339 times.
    let all = search(&merchant.client, &wait);
    let created_at = |id: &String| {
        let data = all["data"].as_array().unwrap();
        data.iter().find(|p| p["id"] == json!(id)).unwrap()["created_at"].as_str().unwrap().to_string()
    };
    let window = format!("from={}&to={}", created_at(authorized), created_at(declined));
    assert_eq!(ids(&search(&merchant.client, &window)), [voided.clone(), authorized.clone()], "{window}");
    // An analyst searches across merchants, or one merchant by merchant_id.
    let analyst = server.client(&issue_key(&server.admin(), "analyst", None).1);
    let everyone = search(&analyst, &format!("min_amount=3000&max_amount=3000&{wait}"));
    assert_eq!(ids(&everyone), [id_of(&noise), customer.clone()]);
    let one = search(&analyst, &format!("merchant_id={}&min_amount=3000&max_amount=3000", merchant.id));
    assert_eq!(ids(&one), vec![customer.clone()]);
}

#[test]
fn bad_queries_are_400_in_the_one_error_shape() {
    let server = Server::start();
    let admin = server.admin();
    let merchant = onboard(&server, "Strict Shop", "B");
    let other = onboard(&server, "Other Shop", "B");
    let theirs = id_of(&other.pay(&card_payment(1_000, "automatic")));
    let dashboard = format!("/v1/merchants/{}/dashboard", merchant.id);
    let cases = [
        (&merchant.client, "/v1/payments?limit=0".to_string(), "invalid_query", "limit"),
        (&merchant.client, "/v1/payments?limit=101".to_string(), "invalid_query", "limit"),
        (&merchant.client, "/v1/payments?limit=ten".to_string(), "invalid_query", "limit"),
        (&merchant.client, "/v1/payments?colour=red".to_string(), "unknown_parameter", "colour"),
        (
            &merchant.client,
            "/v1/payments?customer_email=a@b.example".to_string(),
            "unknown_parameter",
            "customer_email",
        ),
        (&merchant.client, "/v1/payments?status=paid".to_string(), "invalid_query", "status"),
        (&merchant.client, "/v1/payments?min_amount=5000&max_amount=1000".to_string(), "invalid_query", "min_amount"),
        (&merchant.client, "/v1/payments?max_amount=lots".to_string(), "invalid_query", "max_amount"),
        (&merchant.client, "/v1/payments?from=2024-02-30".to_string(), "invalid_query", "from"),
        (&merchant.client, "/v1/payments?currency=DOLLARS".to_string(), "invalid_query", "currency"),
        (&merchant.client, "/v1/payments?min_position=soon".to_string(), "invalid_query", "min_position"),
        (
            &merchant.client,
            "/v1/payments?starting_after=pay_0190f3c4a1b27c3d8e9f0a1b2c3d4e5f".to_string(),
            "invalid_query",
            "starting_after",
        ),
        // Another merchant's payment is no cursor for this one.
        (&merchant.client, format!("/v1/payments?starting_after={theirs}"), "invalid_query", "starting_after"),
        (&merchant.client, format!("{dashboard}?colour=red"), "unknown_parameter", "colour"),
        (&merchant.client, format!("{dashboard}?from=2024-03-02&to=2024-03-01"), "invalid_query", "from"),
        (&merchant.client, format!("{dashboard}?currency=XYZ"), "invalid_query", "currency"),
        (&admin, "/v1/analytics/overview?group_by=planet".to_string(), "invalid_query", "group_by"),
        (&admin, "/v1/analytics/overview?colour=red".to_string(), "unknown_parameter", "colour"),
        (&admin, "/v1/ledger/accounts?colour=red".to_string(), "unknown_parameter", "colour"),
        (&admin, "/v1/ledger/trial_balance?colour=red".to_string(), "unknown_parameter", "colour"),
        (&admin, "/v1/ledger/journal?limit=0".to_string(), "invalid_query", "limit"),
        (&admin, "/v1/ledger/journal?limit=1001".to_string(), "invalid_query", "limit"),
        (&admin, "/v1/ledger/journal?after=first".to_string(), "invalid_query", "after"),
    ];
    for (client, path, code, param) in cases {
        let response = client.get(&path);
        assert_eq!(response.status, 400, "GET {path}: {}", response.text());
        assert_error(&response.json(), "invalid_request_error", code, Some(param));
    }
    // A client that asked for CSV still gets the error as JSON.
    let response =
        merchant.client.request("GET", "/v1/payments?limit=0").header("Accept", "text/csv").send(server.addr);
    assert_error(&response.expect(400), "invalid_request_error", "invalid_query", Some("limit"));
    // An unknown projection does not exist.
    let response = admin.call("POST", "/v1/projections/balance_sheet/rebuild", None);
    assert_error(&response.expect(404), "invalid_request_error", "resource_missing", None);
}

/// The error names the parameter the client sent (`method`), not the field
/// it fills.
#[test]
fn a_bad_method_filter_names_the_method_parameter() {
    let server = Server::start();
    let merchant = onboard(&server, "Method Shop", "B");
    let response = merchant.client.get("/v1/payments?method=bitcoin");
    assert_error(&response.expect(400), "invalid_request_error", "invalid_query", Some("method"));
}

/// `/v1/projections` refuses a typo in its query string like every other read.
#[test]
fn the_projection_list_refuses_unknown_parameters() {
    let server = Server::start();
    let response = server.admin().get("/v1/projections?colour=red");
    assert_error(&response.expect(400), "invalid_request_error", "unknown_parameter", Some("colour"));
}

/// A `min_position` beyond the log's head names no write: refused at once.
#[test]
fn min_position_beyond_the_head_is_a_400_at_once() {
    let server = Server::start();
    let merchant = onboard(&server, "Impatient Shop", "B");
    let beyond = merchant.client.head_position() + 1_000_000;
    let started = std::time::Instant::now();
    let response = merchant.client.get(&format!("/v1/payments?min_position={beyond}"));
    let message = assert_error(&response.expect(400), "invalid_request_error", "invalid_query", Some("min_position"));
    assert!(message.contains(&beyond.to_string()), "the message names the position asked for: {message}");
    assert!(started.elapsed() < Duration::from_secs(4), "answered without waiting for the projection");
}

/// Splits CSV text (RFC 4180: quoted cells may hold commas, quotes and line
/// breaks) into rows of cells.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(!quoted, "unterminated quoted cell in CSV:\n{text}");
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    rows
}

/// A JSON scalar as a CSV cell shows it.
fn csv_cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[test]
fn search_as_csv_has_a_header_and_one_row_per_payment_and_no_card_number() {
    let server = Server::start();
    let merchant = onboard(&server, "Csv Shop", "B");
    let spaced = spellings(&fresh_card())[1].clone();
    let dashed = spellings(&fresh_card())[2].clone();
    let mut quoted = card_payment(1_500, "automatic");
    // A customer id that needs quoting in CSV.
    quoted["customer"] = json!({"id": "cus \"7\", shelf 2"});
    let bodies = [
        payment_body(1_000, "automatic", card_method(&spaced)),
        payment_body(2_000, "manual", card_method(&dashed)),
        quoted,
        payment_body(2_500, "automatic", card_method(&fresh_card())),
    ];
    let mut last = 0;
    for body in &bodies {
        last = position(&merchant.pay(body));
    }
    let path = format!("/v1/payments?min_position={last}");
    let page = merchant.client.get(&path).expect(200);
    let response = merchant.client.request("GET", &path).header("Accept", "text/csv").send(server.addr);
    assert_eq!(response.status, 200, "{}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/csv"), "content type {content_type}");

    let rows = parse_csv(&response.text());
    let summaries = page["data"].as_array().unwrap();
    assert_eq!(summaries.len(), bodies.len());
    assert_eq!(rows.len(), 1 + bodies.len(), "a header line and one row per payment:\n{}", response.text());
    let header = &rows[0];
    let columns: BTreeSet<&str> = header.iter().map(String::as_str).collect();
    let fields: BTreeSet<&str> = summaries[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(columns.len(), header.len(), "no column twice: {header:?}");
    assert_eq!(columns, fields, "one column per field of a search result");
    assert_eq!(header[0], "id", "the payment id comes first: {header:?}");
    // Row by row, cell by cell, the CSV says what the JSON page says.
    for (row, summary) in rows[1..].iter().zip(summaries) {
        assert_eq!(row.len(), header.len(), "row {row:?}");
        for (column, cell) in header.iter().zip(row) {
            assert_eq!(cell, &csv_cell(&summary[column]), "column {column} of {}", summary["id"]);
        }
    }

    // A CSV page with more after it carries the JSON page's cursor in a header.
    assert_eq!(response.header("paystream-next-cursor"), None, "a last page has no cursor");
    let half = format!("/v1/payments?limit=2&min_position={last}");
    let json_half = merchant.client.get(&half).expect(200);
    let csv_half = merchant.client.request("GET", &half).header("Accept", "text/csv").send(server.addr);
    assert_eq!(parse_csv(&csv_half.text()).len(), 3, "{}", csv_half.text());
    assert_eq!(csv_half.header("paystream-next-cursor"), json_half["next_cursor"].as_str());

    let cards = cards_used();
    let mut findings: Vec<Finding> = Vec::new();
    for (location, bytes) in [("search CSV", &response.body), ("search JSON", &page.to_string().into_bytes())] {
        findings.extend(luhn_runs(location, bytes));
        findings.extend(find_cards(location, bytes, &cards));
    }
    assert!(findings.is_empty(), "card numbers in search results:\n{findings:#?}");
}

/// The ledger account lines of one currency, as `/v1/ledger/accounts`
/// lists them: (account, kind, debit, credit), in account order.
fn account_lines(currency: &str, lines: &[(&str, &str, i64, i64)]) -> Value {
    let accounts: Vec<Value> = lines
        .iter()
        .map(|&(account, kind, debit, credit)| {
            let balance = if kind == "asset" { debit - credit } else { credit - debit };
            json!({"account": account, "kind": kind, "currency": currency, "debit_minor": debit,
                   "credit_minor": credit, "balance_minor": balance})
        })
        .collect();
    Value::Array(accounts)
}

#[test]
fn the_ledger_balances_in_every_currency_after_captures_refunds_and_disputes() {
    let server = Server::start();
    let admin = server.admin();
    let merchant = onboard(&server, "Ledger Shop", "B");
    let shop = &merchant.client;
    let mut last = 0;
    let mut write = |response: Value| {
        last = last.max(position(&response));
        response
    };
    // USD: two captures and a refund; a full refund; a dispute won and one
    // lost; a void, which posts nothing.
    let split = id_of(&write(merchant.pay(&card_payment(10_000, "manual"))));
    write(shop.post(&format!("/v1/payments/{split}/capture"), &json!({"amount": 4_000})).expect(200));
    write(shop.post(&format!("/v1/payments/{split}/capture"), &json!({"amount": 3_000, "final": true})).expect(200));
    write(shop.post(&format!("/v1/payments/{split}/refunds"), &json!({"amount": 2_000})).expect(201));
    let whole = id_of(&write(merchant.pay(&card_payment(2_500, "automatic"))));
    write(shop.post(&format!("/v1/payments/{whole}/refunds"), &json!({})).expect(201));
    let disputed = id_of(&write(merchant.pay(&card_payment(8_000, "automatic"))));
    let disputes = format!("/v1/payments/{disputed}/disputes");
    let won = write(admin.post(&disputes, &json!({"amount": 3_000, "reason": "fraudulent"})).expect(201));
    write(admin.post(&format!("{disputes}/{}/resolve", id_of(&won)), &json!({"outcome": "won"})).expect(200));
    let lost = write(admin.post(&disputes, &json!({"amount": 2_000, "reason": "duplicate"})).expect(201));
    write(admin.post(&format!("{disputes}/{}/resolve", id_of(&lost)), &json!({"outcome": "lost"})).expect(200));
    let voided = id_of(&write(merchant.pay(&card_payment(5_000, "manual"))));
    write(shop.post(&format!("/v1/payments/{voided}/void"), &json!({})).expect(200));
    // EUR and JPY (no minor unit): a capture each, a refund in EUR.
    let mut euros = card_payment(3_000, "automatic");
    euros["currency"] = json!("EUR");
    let euros = id_of(&write(merchant.pay(&euros)));
    write(shop.post(&format!("/v1/payments/{euros}/refunds"), &json!({"amount": 500})).expect(201));
    let mut yen = card_payment(1_234, "automatic");
    yen["currency"] = json!("JPY");
    write(merchant.pay(&yen));
    let wait = format!("min_position={last}");

    let fees = fee(4_000, true) + fee(3_000, false) + fee(2_500, true) + fee(8_000, true);
    let captured = 4_000 + 3_000 + 2_500 + 8_000;
    let refunded = 2_000 + 2_500;
    let usd = account_lines(
        "USD",
        &[
            ("acquirer_receivable", "asset", captured, 0),
            ("merchant_payable", "liability", refunded + 3_000 + 2_000, captured - fees + 3_000),
            ("dispute_reserve", "liability", 3_000 + 2_000, 3_000 + 2_000),
            ("refunds", "liability", 0, refunded),
            ("chargebacks", "liability", 0, 2_000),
            ("platform_fee_revenue", "revenue", 0, fees),
        ],
    );
    let accounts = admin.get(&format!("/v1/ledger/accounts?currency=USD&{wait}")).expect(200);
    assert_json(&accounts, &json!({"object": "list", "data": usd, "has_more": false, "next_cursor": null}));

    let trial = admin.get(&format!("/v1/ledger/trial_balance?{wait}")).expect(200);
    assert_eq!(trial["balanced"], true, "{trial:#}");
    let currencies = trial["currencies"].as_array().expect("currencies");
    let names: BTreeSet<&str> = currencies.iter().filter_map(|c| c["currency"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["EUR", "JPY", "USD"]));
    for currency in currencies {
        let lines = currency["accounts"].as_array().expect("accounts");
        let debits: i64 = lines.iter().map(|a| a["debit_minor"].as_i64().unwrap()).sum();
        let credits: i64 = lines.iter().map(|a| a["credit_minor"].as_i64().unwrap()).sum();
        assert_eq!(debits, credits, "{currency:#}");
        assert_json(
            currency,
            &json!({"currency": currency["currency"], "debit_minor": debits, "credit_minor": credits,
                    "difference_minor": 0, "balanced": true, "accounts": currency["accounts"]}),
        );
    }
    let usd_trial = currencies.iter().find(|c| c["currency"] == "USD").unwrap();
    assert_json(&usd_trial["accounts"], &accounts["data"]);
    assert_eq!(usd_trial["debit_minor"], captured + refunded + 5_000 + 5_000);

    // The journal, as an auditor reads it: one balanced entry per posting
    // event, in log order.
    let auditor = server.client(&issue_key(&admin, "auditor", None).1);
    let journal = auditor.get(&format!("/v1/ledger/journal?limit=1000&{wait}")).expect(200);
    let entries = journal["data"].as_array().expect("entries");
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "PaymentCaptured",
            "PaymentCaptured",
            "PaymentRefunded",
            "PaymentCaptured",
            "PaymentRefunded",
            "PaymentCaptured",
            "PaymentDisputeOpened",
            "PaymentDisputeWon",
            "PaymentDisputeOpened",
            "PaymentDisputeLost",
            "PaymentCaptured",
            "PaymentRefunded",
            "PaymentCaptured",
        ]
    );
    assert_eq!((&journal["has_more"], &journal["next_cursor"]), (&json!(false), &Value::Null));
    let mut previous = 0;
    for entry in entries {
        let lines = entry["lines"].as_array().unwrap();
        let debits: i64 = lines.iter().map(|l| l["debit_minor"].as_i64().unwrap()).sum();
        let credits: i64 = lines.iter().map(|l| l["credit_minor"].as_i64().unwrap()).sum();
        assert_eq!(debits, credits, "unbalanced entry {entry:#}");
        let at = position(entry);
        assert!(at > previous && at <= last, "positions rise within the log: {entries:#?}");
        previous = at;
    }
}

/// `/v1/projections`, one entry per projection, by name.
fn projection_status(admin: &Client) -> Vec<Value> {
    let list = admin.get("/v1/projections").expect(200);
    assert_eq!(list["object"], "list");
    list["data"].as_array().expect("data").clone()
}

#[test]
fn projections_report_their_lag_and_a_rebuild_keeps_search_answers() {
    let server = Server::start();
    let admin = server.admin();
    let merchant = onboard(&server, "Rebuilt Shop", "B");
    let mut last = 0;
    for amount in [1_000, 2_000, 3_000] {
        last = position(&merchant.pay(&card_payment(amount, "automatic")));
    }
    let query = format!("merchant_id={}&min_position={last}", merchant.id);
    let before = search(&admin, &query);
    assert_eq!(before["data"].as_array().unwrap().len(), 3);

    let status = projection_status(&admin);
    let expected: Vec<Value> = PROJECTIONS
        .iter()
        .map(|name| {
            json!({"name": name, "version": 1, "schema": "*", "checkpoint": "*", "head": "*", "lag": "*",
                   "state": "running", "rebuild": null, "error": null})
        })
        .collect();
    assert_json(&Value::Array(status.clone()), &Value::Array(expected));
    for projection in &status {
        let (checkpoint, head, lag) = (
            projection["checkpoint"].as_u64().unwrap(),
            projection["head"].as_u64().unwrap(),
            projection["lag"].as_u64().unwrap(),
        );
        assert!(head >= last && checkpoint <= head && lag == head - checkpoint, "{projection}");
    }

    let head = admin.head_position();
    let accepted = admin.call("POST", "/v1/projections/payment_search/rebuild", None).expect(202);
    assert_eq!(
        (&accepted["object"], &accepted["projection"]),
        (&json!("projection_rebuild"), &json!("payment_search"))
    );
    assert_eq!(accepted["status"]["name"], "payment_search", "{accepted}");
    assert_eq!(admin.head_position(), head, "a rebuild appends nothing to the log");

    // Bounded wait for the switch to version 2.
    let deadline = Instant::now() + REBUILD_TIMEOUT;
    let rebuilt = loop {
        let status = projection_status(&admin);
        let search_status = status.iter().find(|p| p["name"] == "payment_search").cloned().unwrap();
        if search_status["version"] == 2 && search_status["state"] == "running" {
            break status;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish within {REBUILD_TIMEOUT:?}: {status:#?}");
        std::thread::sleep(POLL_INTERVAL);
    };
    let versions: Vec<(&str, u64)> =
        rebuilt.iter().map(|p| (p["name"].as_str().unwrap(), p["version"].as_u64().unwrap())).collect();
    assert_eq!(
        versions,
        [("merchant_dashboard", 1), ("payment_search", 2), ("platform_overview", 1), ("ledger", 1)],
        "only the rebuilt projection has a new version"
    );
    assert_json(&search(&admin, &query), &before);
    assert_json(&search(&merchant.client, &format!("min_position={last}")), &before);

    // The new version follows the log: a new payment is read at once.
    let newer = merchant.pay(&card_payment(4_000, "automatic"));
    let page = search(&merchant.client, &format!("min_position={}", position(&newer)));
    let mut expected = vec![id_of(&newer)];
    expected.extend(ids(&before));
    assert_eq!(ids(&page), expected);
}

/// GET `path` as CSV: the parsed rows (header first) and the next-page cursor header.
fn csv_of(server: &Server, client: &Client, path: &str) -> (Vec<Vec<String>>, Option<String>) {
    let response = client.request("GET", path).header("Accept", "text/csv").send(server.addr);
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    assert!(response.header("content-type").unwrap_or_default().starts_with("text/csv"), "{path}");
    assert!(!response.text().contains('\r'), "{path}: LF line ends only");
    (parse_csv(&response.text()), response.header("paystream-next-cursor").map(str::to_string))
}

/// Every list endpoint answers CSV with a header line; the ledger and the journal
/// in their own fixed columns (the journal with its next-page cursor), and a field
/// that would run as a spreadsheet formula is neutralised.
#[test]
fn every_list_answers_csv_with_a_header() {
    let server = Server::start();
    let merchant = onboard(&server, "Csv Everywhere", "B");
    let mut formula = card_payment(2_000, "automatic");
    formula["customer"] = json!({"id": "=HYPERLINK(\"http://x\")"});
    let paid = merchant.pay(&formula);
    let last = position(&paid);
    let today = paid["created_at"].as_str().unwrap()[..10].to_string();
    let analyst = server.client(&issue_key(&server.admin(), "analyst", None).1);
    let wait = format!("min_position={last}");

    let (rows, _) = csv_of(&server, &merchant.client, &format!("/v1/payments?{wait}"));
    let customer = rows[0].iter().position(|c| c == "customer_id").unwrap();
    assert_eq!(rows[1][customer], "'=HYPERLINK(\"http://x\")", "a formula is ticked, never run");

    let (rows, _) = csv_of(&server, &analyst, &format!("/v1/ledger/accounts?{wait}"));
    assert_eq!(rows[0], ["currency", "account", "kind", "debit_minor", "credit_minor", "balance_minor"]);
    assert!(rows.len() > 2 && rows[1..].iter().all(|r| r[0] == "USD"), "{rows:?}");
    let (trial, _) = csv_of(&server, &analyst, &format!("/v1/ledger/trial_balance?{wait}"));
    assert_eq!(trial, rows, "the trial balance lists the same accounts");
    let (debits, credits) = trial[1..]
        .iter()
        .fold((0i64, 0i64), |(d, c), r| (d + r[3].parse::<i64>().unwrap(), c + r[4].parse::<i64>().unwrap()));
    assert_eq!(debits, credits, "debits equal credits");

    let (journal, cursor) = csv_of(&server, &analyst, &format!("/v1/ledger/journal?limit=1&{wait}"));
    assert!(journal.len() >= 3, "one row per journal line: {journal:?}");
    let page = analyst.get(&format!("/v1/ledger/journal?limit=1&{wait}")).expect(200);
    assert_eq!(cursor.as_deref(), page["next_cursor"].as_str());

    let (overview, _) = csv_of(&server, &analyst, &format!("/v1/analytics/overview?from={today}&to={today}&{wait}"));
    assert_eq!(&overview[0][..2], ["date", "currency"]);
    assert_eq!(overview.len(), 2, "one group (USD): {overview:?}");

    let dashboard = format!("/v1/merchants/{}/dashboard?from={today}&to={today}&{wait}", merchant.id);
    let (days, _) = csv_of(&server, &merchant.client, &dashboard);
    assert_eq!(&days[0][..2], ["date", "currency"]);
    assert!(days[0].iter().any(|c| c == "method_card_count"), "{:?}", days[0]);
    assert_eq!(days.len(), 2, "one day with activity: {days:?}");
    assert_eq!((days[1][0].as_str(), days[1][1].as_str()), (today.as_str(), "USD"));

    let (projections, _) = csv_of(&server, &analyst, "/v1/projections");
    assert_eq!(projections.len(), 5, "a header and the four projections: {projections:?}");
}

/// A server started on a log without its projections database (deleted, or lost)
/// rebuilds every read model from the log, and answers exactly as before once it
/// has caught up: nothing of the read side needs keeping.
#[test]
fn read_models_are_rebuilt_from_the_log_when_their_database_is_gone() {
    let data = paystream_tests::server::temp_data_dir();
    let mut server = Server::start_in(data.path(), "warn");
    let merchant = onboard(&server, "Phoenix Shop", "B");
    for amount in [1_000, 2_500, 4_000] {
        merchant.pay(&card_payment(amount, "automatic"));
    }
    let analyst_key = issue_key(&server.admin(), "analyst", None).1;
    let head = server.admin().head_position();
    let reads = |server: &Server| {
        let analyst = server.client(&analyst_key);
        let wait = format!("min_position={head}");
        (
            analyst.get(&format!("/v1/payments?{wait}")).expect(200),
            analyst.get(&format!("/v1/ledger/trial_balance?{wait}")).expect(200),
            analyst.get(&format!("/v1/ledger/accounts?{wait}")).expect(200),
        )
    };
    let before = reads(&server);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    std::fs::remove_dir_all(data.path().join("projections")).unwrap();

    let server = Server::start_in(data.path(), "warn");
    assert_eq!(reads(&server), before);
    // The reads waited for the models they read; the other two may still be building.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let states = loop {
        let states: Vec<Value> = projection_status(&server.admin()).iter().map(|p| p["state"].clone()).collect();
        if states == vec![json!("running"); 4] || std::time::Instant::now() > deadline {
            break states;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(states, vec![json!("running"); 4]);
}
