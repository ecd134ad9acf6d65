//! The role x tenant matrix: every route, called by each kind of caller,
//! answers the expected status; a refused call (and every read) leaves the
//! log exactly as it was, an accepted command moves it. So analysts and
//! auditors never change anything: every write they attempt is refused and
//! leaves the log head where it was, except the analyst's review decision.
//! Reads over the projections are called with `min_position` set to the
//! position of the write that made their target, and a payment search
//! shows a merchant key its own payments only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use paystream_tests::fixtures::{card_payment, id_of, issue_key, merchant_body, onboard, Merchant};
use paystream_tests::routes::ROUTES;
use paystream_tests::{assert_error, Client, Server};
use serde_json::{json, Value};

/// Who calls, in the order of a row's statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    /// A merchant key of the merchant that owns the target.
    MerchantOwn,
    /// A merchant key of another merchant.
    MerchantOther,
    Analyst,
    Auditor,
    NoKey,
    /// A well-formed bearer token that is no key.
    BadKey,
}

const CALLERS: [Caller; 7] = [
    Caller::Admin,
    Caller::MerchantOwn,
    Caller::MerchantOther,
    Caller::Analyst,
    Caller::Auditor,
    Caller::NoKey,
    Caller::BadKey,
];

/// A token shaped like a key that was never issued.
const BAD_KEY: &str = "psk_not_a_key_that_was_ever_issued";

struct Row {
    method: &'static str,
    path: &'static str,
    /// Expected status for admin, merchant (own), merchant (other),
    /// analyst, auditor, no key, bad key.
    expect: [u16; 7],
}

#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //                                                                    admin own  other analyst auditor none bad
    Row { method: "GET",    path: "/healthz",                             expect: [200, 200, 200, 200, 200, 200, 200] },
    Row { method: "POST",   path: "/v1/merchants",                        expect: [201, 403, 403, 403, 403, 401, 401] },
    // Listing merchants is for every role but merchants.
    Row { method: "GET",    path: "/v1/merchants",                        expect: [200, 403, 403, 200, 200, 401, 401] },
    Row { method: "GET",    path: "/v1/merchants/{id}",                   expect: [200, 200, 404, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/merchants/{id}/suspend",           expect: [200, 403, 403, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/merchants/{id}/reactivate",        expect: [200, 403, 403, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/merchants/{id}/tier",              expect: [200, 403, 403, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/merchants/{id}/close",             expect: [200, 403, 403, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/api_keys",                         expect: [201, 403, 403, 403, 403, 401, 401] },
    Row { method: "DELETE", path: "/v1/api_keys/{id}",                    expect: [200, 403, 403, 403, 403, 401, 401] },
    // "Other" creates a payment of its own: any merchant may.
    Row { method: "POST",   path: "/v1/payments",                         expect: [403, 201, 201, 403, 403, 401, 401] },
    Row { method: "GET",    path: "/v1/payments/{id}",                    expect: [200, 200, 404, 200, 200, 401, 401] },
    Row { method: "GET",    path: "/v1/payments/{id}/events",             expect: [200, 200, 404, 200, 200, 401, 401] },
    Row { method: "POST",   path: "/v1/payments/{id}/capture",            expect: [403, 200, 404, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/payments/{id}/void",               expect: [403, 200, 404, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/payments/{id}/refunds",            expect: [403, 201, 404, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/payments/{id}/review",             expect: [200, 403, 403, 200, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/payments/{id}/disputes",           expect: [201, 403, 403, 403, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/payments/{id}/disputes/{dispute_id}/resolve", expect: [200, 403, 403, 403, 403, 401, 401] },
    // Search answers every reading role; "other" gets a page of its own
    // payments only (checked in `check_body`).
    Row { method: "GET",    path: "/v1/payments",                         expect: [200, 200, 200, 200, 200, 401, 401] },
    // Another merchant's dashboard does not exist for this key: 404, as
    // for its merchant object.
    Row { method: "GET",    path: "/v1/merchants/{id}/dashboard",         expect: [200, 200, 404, 200, 403, 401, 401] },
    Row { method: "GET",    path: "/v1/analytics/overview",               expect: [200, 403, 403, 200, 403, 401, 401] },
    Row { method: "GET",    path: "/v1/ledger/accounts",                  expect: [200, 403, 403, 200, 403, 401, 401] },
    Row { method: "GET",    path: "/v1/ledger/trial_balance",             expect: [200, 403, 403, 200, 403, 401, 401] },
    Row { method: "GET",    path: "/v1/ledger/journal",                   expect: [200, 403, 403, 200, 200, 401, 401] },
    Row { method: "GET",    path: "/v1/projections",                      expect: [200, 403, 403, 200, 403, 401, 401] },
    Row { method: "POST",   path: "/v1/projections/{name}/rebuild",       expect: [202, 403, 403, 403, 403, 401, 401] },
    Row { method: "GET",    path: "/v1/openapi.json",                     expect: [200, 200, 200, 200, 200, 200, 200] },
    Row { method: "GET",    path: "/openapi.json",                        expect: [200, 200, 200, 200, 200, 200, 200] },
];

/// Whether a successful call of `row` appends to the log. A rebuild
/// recomputes a read model from the log and never appends to it.
fn writes_log(row: &Row) -> bool {
    row.method != "GET" && row.path != "/v1/projections/{name}/rebuild"
}

/// The keys that exist for the whole matrix.
struct World {
    server: Server,
    admin: Client,
    other: Merchant,
    analyst: Client,
    auditor: Client,
}

/// A request ready to send, and the merchant that owns its target.
struct Target {
    path: String,
    body: Option<Value>,
    owner: Merchant,
    /// The owner's payment a search must show to those who may see it.
    payment: Option<String>,
}

/// Fresh objects for one cell, in the state where the allowed caller
/// succeeds: a new tier D merchant (payments of 10.00 are approved; 600.00
/// goes to review) with its key, and a payment, key or dispute of it.
fn target(world: &World, row: &Row) -> Target {
    let admin = &world.admin;
    let owner = onboard(&world.server, "Matrix Merchant", "D");
    let merchant_path = format!("/v1/merchants/{}", owner.id);
    let pay = |amount: i64, capture: &str| id_of(&owner.pay(&card_payment(amount, capture)));
    // A captured payment of the owner, and the query string that waits
    // until the read models have applied it.
    let paid = || {
        let payment = owner.pay(&card_payment(1_000, "automatic"));
        (id_of(&payment), format!("?min_position={}", payment["position"]))
    };
    let mut payment = None;
    let (path, body) = match row.path {
        "/healthz" | "/v1/openapi.json" | "/openapi.json" => (row.path.to_string(), None),
        "/v1/merchants" if row.method == "POST" => (row.path.to_string(), Some(merchant_body("Matrix New", "C"))),
        "/v1/merchants" => (format!("/v1/merchants?min_position={}", admin.head_position()), None),
        "/v1/merchants/{id}" => (merchant_path, None),
        "/v1/merchants/{id}/suspend" => (format!("{merchant_path}/suspend"), Some(json!({"reason": "kyc review"}))),
        "/v1/merchants/{id}/reactivate" => {
            admin.post(&format!("{merchant_path}/suspend"), &json!({"reason": "kyc review"})).expect(200);
            (format!("{merchant_path}/reactivate"), Some(json!({})))
        }
        "/v1/merchants/{id}/tier" => (format!("{merchant_path}/tier"), Some(json!({"tier": "C", "reason": "history"}))),
        "/v1/merchants/{id}/close" => (format!("{merchant_path}/close"), Some(json!({"reason": "left the platform"}))),
        "/v1/api_keys" => (row.path.to_string(), Some(json!({"role": "merchant", "merchant_id": owner.id}))),
        "/v1/api_keys/{id}" => {
            let (key_id, _) = issue_key(admin, "merchant", Some(&owner.id));
            (format!("/v1/api_keys/{key_id}"), None)
        }
        "/v1/payments" if row.method == "POST" => (row.path.to_string(), Some(card_payment(1_000, "manual"))),
        "/v1/payments/{id}" => (format!("/v1/payments/{}", pay(1_000, "automatic")), None),
        "/v1/payments/{id}/events" => (format!("/v1/payments/{}/events", pay(1_000, "automatic")), None),
        "/v1/payments/{id}/capture" => {
            (format!("/v1/payments/{}/capture", pay(1_000, "manual")), Some(json!({"amount": 400})))
        }
        "/v1/payments/{id}/void" => (format!("/v1/payments/{}/void", pay(1_000, "manual")), Some(json!({}))),
        "/v1/payments/{id}/refunds" => {
            (format!("/v1/payments/{}/refunds", pay(1_000, "automatic")), Some(json!({"amount": 300})))
        }
        "/v1/payments/{id}/review" => {
            let id = pay(60_000, "automatic");
            assert_eq!(owner.client.get(&format!("/v1/payments/{id}")).expect(200)["status"], "requires_review");
            (format!("/v1/payments/{id}/review"), Some(json!({"decision": "approve"})))
        }
        "/v1/payments/{id}/disputes" => (
            format!("/v1/payments/{}/disputes", pay(1_000, "automatic")),
            Some(json!({"amount": 500, "reason": "fraudulent"})),
        ),
        "/v1/payments/{id}/disputes/{dispute_id}/resolve" => {
            let id = pay(1_000, "automatic");
            let dispute = admin
                .post(&format!("/v1/payments/{id}/disputes"), &json!({"amount": 500, "reason": "fraudulent"}))
                .expect(201);
            (format!("/v1/payments/{id}/disputes/{}/resolve", id_of(&dispute)), Some(json!({"outcome": "won"})))
        }
        "/v1/payments" => {
            let (id, wait) = paid();
            payment = Some(id);
            (format!("/v1/payments{wait}"), None)
        }
        "/v1/merchants/{id}/dashboard" => (format!("{merchant_path}/dashboard{}", paid().1), None),
        "/v1/analytics/overview" | "/v1/ledger/accounts" | "/v1/ledger/trial_balance" | "/v1/ledger/journal" => {
            (format!("{}{}", row.path, paid().1), None)
        }
        "/v1/projections" => (row.path.to_string(), None),
        "/v1/projections/{name}/rebuild" => ("/v1/projections/ledger/rebuild".to_string(), None),
        other => panic!("no target for {other}: add one"),
    };
    Target { path, body, owner, payment }
}

fn client_for(world: &World, caller: Caller, target: &Target) -> Client {
    match caller {
        Caller::Admin => world.admin.clone(),
        Caller::MerchantOwn => target.owner.client.clone(),
        Caller::MerchantOther => world.other.client.clone(),
        Caller::Analyst => world.analyst.clone(),
        Caller::Auditor => world.auditor.clone(),
        Caller::NoKey => world.server.anonymous(),
        Caller::BadKey => world.server.client(BAD_KEY),
    }
}

/// What a successful read must show beyond its status: a search holds the
/// target payment for every caller that may see it and nothing of another
/// merchant for a merchant key; a dashboard is the target merchant's.
fn check_body(world: &World, caller: Caller, row: &Row, target: &Target, body: &Value) -> Result<(), String> {
    match row.path {
        "/v1/payments" => {
            let data = body["data"].as_array().ok_or("no data array")?;
            let ids: Vec<&str> = data.iter().filter_map(|p| p["id"].as_str()).collect();
            let payment = target.payment.as_deref().ok_or("no target payment")?;
            let own_merchant = match caller {
                Caller::MerchantOwn => Some(&target.owner.id),
                Caller::MerchantOther => Some(&world.other.id),
                _ => None,
            };
            if let Some(merchant) = own_merchant {
                let foreign: Vec<&Value> = data.iter().filter(|p| p["merchant_id"] != json!(merchant)).collect();
                if !foreign.is_empty() {
                    return Err(format!("a merchant key saw other merchants' payments: {foreign:?}"));
                }
            }
            let visible = caller != Caller::MerchantOther;
            if ids.contains(&payment) != visible {
                return Err(format!("payment {payment} visible: expected {visible}, page {ids:?}"));
            }
            Ok(())
        }
        // Newest first: the target merchant, made last, heads the first page.
        "/v1/merchants" if body["data"][0]["id"] != json!(target.owner.id) => {
            Err(format!("the first merchant listed is {} instead of {}", body["data"][0]["id"], target.owner.id))
        }
        "/v1/merchants/{id}/dashboard" if body["merchant_id"] != json!(target.owner.id) => {
            Err(format!("dashboard of {} instead of {}", body["merchant_id"], target.owner.id))
        }
        _ => Ok(()),
    }
}

#[test]
fn every_route_answers_each_role_and_tenant_as_documented() {
    let server = Server::start();
    let admin = server.admin();
    let other = onboard(&server, "Other Merchant", "B");
    let analyst = server.client(&issue_key(&admin, "analyst", None).1);
    let auditor = server.client(&issue_key(&admin, "auditor", None).1);
    let world = World { server, admin, other, analyst, auditor };

    let mut failures = Vec::new();
    for row in MATRIX {
        for (caller, expected) in CALLERS.iter().zip(row.expect) {
            let target = target(&world, row);
            let client = client_for(&world, *caller, &target);
            let before = world.admin.head_position();
            let response = client.call(row.method, &target.path, target.body.as_ref());
            let after = world.admin.head_position();
            let cell = format!("{} {} as {caller:?}", row.method, row.path);
            if response.status != expected {
                failures.push(format!("{cell}: expected {expected}, got {} {}", response.status, response.text()));
                continue;
            }
            if (200..300).contains(&expected) && row.method == "GET" {
                if let Err(wrong) = check_body(&world, *caller, row, &target, &response.json()) {
                    failures.push(format!("{cell}: {wrong}"));
                }
            }
            let changes = writes_log(row) && (200..300).contains(&expected);
            if changes && after == before {
                failures.push(format!("{cell}: succeeded but wrote nothing to the log"));
            }
            if !changes && after != before {
                failures.push(format!("{cell}: changed the log ({before} -> {after}) though it may not"));
            }
            if expected >= 400 {
                let (error_type, code) = match expected {
                    401 => ("authentication_error", "unauthenticated"),
                    403 => ("permission_error", "forbidden"),
                    _ => ("invalid_request_error", "resource_missing"),
                };
                assert_error(&response.json(), error_type, code, None);
            }
        }
    }
    assert!(failures.is_empty(), "{} cells wrong:\n{}", failures.len(), failures.join("\n"));

    let covered: BTreeSet<(&str, &str)> = MATRIX.iter().map(|row| (row.method, row.path)).collect();
    let listed: BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    assert_eq!(covered, listed, "the matrix covers exactly the routes in src/routes.rs");
}
