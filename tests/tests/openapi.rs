//! The served OpenAPI document lists every route the suite exercises
//! (src/routes.rs, each driven by the role matrix in tests/roles.rs), and
//! no route the suite does not know; it is the same at `/openapi.json` and
//! `/v1/openapi.json`; every operation has an `operationId`, declares its
//! parameters (path, query, the `Idempotency-Key` header of writes), its
//! errors in the one error shape and the headers the API sends. (Every answer
//! the suite receives is checked against it: src/schema.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use paystream_tests::routes::ROUTES;
use paystream_tests::Server;
use serde_json::Value;

/// Read routes that take no query parameter.
const NO_QUERY: &[&str] =
    &["/healthz", "/v1/openapi.json", "/openapi.json", "/v1/merchants/{id}", "/v1/payments/{id}", "/v1/projections"];

#[test]
fn openapi_lists_exactly_the_routes_the_suite_exercises() {
    let server = Server::start();
    let document = server.anonymous().get("/v1/openapi.json").expect(200);
    assert_eq!(server.anonymous().get("/openapi.json").expect(200), document, "one document at both paths");
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    let mut served = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().expect("operations") {
            let what = format!("{method} {path}");
            served.insert((method.to_uppercase(), path.clone()));
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{what}: no operationId"));
            assert!(operation_ids.insert(id.to_string()), "{what}: operationId {id} twice");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|status| status.starts_with('2')), "{what}: no success response");
            for (status, response) in responses {
                assert!(
                    response["headers"]["x-request-id"].is_object(),
                    "{what} {status}: the x-request-id header is not documented"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                        "{what} {status}: errors have the one error shape"
                    );
                }
            }
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            let named = |place: &str| -> BTreeSet<String> {
                parameters
                    .iter()
                    .filter(|p| p["in"] == place)
                    .map(|p| p["name"].as_str().unwrap().to_string())
                    .collect()
            };
            // Every {param} of the template is declared.
            let in_template: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_string)
                .collect();
            assert_eq!(named("path"), in_template, "{what}: path parameters");
            let secured = operation["security"].is_array();
            if secured {
                for status in ["400", "401", "403", "500"] {
                    assert!(responses.contains_key(status), "{what}: {status} not documented");
                }
                assert!(responses["401"]["headers"]["WWW-Authenticate"].is_object(), "{what}: WWW-Authenticate");
            }
            if method != "get" && secured {
                assert!(named("header").contains("Idempotency-Key"), "{what}: no Idempotency-Key header");
            }
            let success = responses.iter().find(|(status, _)| status.starts_with('2')).unwrap().1;
            if method == "post" && path != "/v1/projections/{name}/rebuild" || method == "delete" {
                assert!(success["headers"]["Idempotent-Replayed"].is_object(), "{what}: Idempotent-Replayed");
            }
            let is_list = success["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|r| r.starts_with("#/components/schemas/List_") || r.ends_with("OverviewList"));
            if is_list {
                assert!(success["headers"]["Paystream-Next-Cursor"].is_object(), "{what}: Paystream-Next-Cursor");
                assert!(success["content"]["text/csv"].is_object(), "{what}: a list answers CSV");
            }
            if method == "get" && !NO_QUERY.contains(&path.as_str()) {
                assert!(!named("query").is_empty(), "{what}: no query parameter declared");
                if secured && path != "/v1/projections" && !path.ends_with("/events") && path != "/v1/payments/{id}" {
                    assert!(named("query").contains("min_position"), "{what}: min_position");
                    assert!(responses.contains_key("503"), "{what}: 503 projection_lagging");
                }
            }
        }
    }
    let exercised: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path)| (method.to_string(), path.to_string())).collect();
    let missing: Vec<_> = exercised.difference(&served).collect();
    assert!(missing.is_empty(), "routes the tests use but the OpenAPI document does not list: {missing:?}");
    let untested: Vec<_> = served.difference(&exercised).collect();
    assert!(untested.is_empty(), "routes the OpenAPI document lists but no test exercises: {untested:?}");
}

/// Every object the API answers is typed in full: the schemas name every
/// field of a payment (the strict check of src/schema.rs then refuses any
/// field a schema does not name).
#[test]
fn the_payment_schema_names_every_field() {
    let server = Server::start();
    let document = server.anonymous().get("/v1/openapi.json").expect(200);
    let payment: &Value = &document["components"]["schemas"]["PaymentView"];
    let properties: BTreeSet<&str> = payment["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    assert!(properties.len() >= 29, "{properties:?}");
    for field in ["amount_refundable", "captures", "refunds", "disputes", "risk", "method", "customer", "metadata"] {
        assert!(properties.contains(field), "PaymentView lacks {field}");
    }
}

/// The check every answer goes through refuses a field the schema does not
/// name, a value of the wrong type and a status the operation does not
/// document, and passes the real answer.
#[test]
fn the_answer_check_refuses_what_the_document_does_not_say() {
    use paystream_tests::schema::check;
    use paystream_tests::Response;
    let server = Server::start();
    let merchant = paystream_tests::fixtures::onboard(&server, "Checked", "B");
    let path = format!("/v1/merchants/{}", merchant.id);
    let real = server.admin().get(&path);
    let body = real.json();
    let answer = |status: u16, body: &Value| Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    };
    check(server.addr, "GET", &path, &answer(200, &body));
    let refused = |status: u16, body: Value| {
        let response = answer(status, &body);
        std::panic::catch_unwind(|| check(server.addr, "GET", &path, &response)).is_err()
    };
    let mut extra = body.clone();
    extra["surprise"] = Value::Bool(true);
    assert!(refused(200, extra), "a field the schema does not name");
    let mut wrong = body.clone();
    wrong["position"] = Value::String("seven".into());
    assert!(refused(200, wrong), "a value of the wrong type");
    let mut nested = body.clone();
    nested["fees"]["extra"] = Value::from(1);
    assert!(refused(200, nested), "a nested field the schema does not name");
    assert!(refused(202, body), "a status the operation does not document");
}
