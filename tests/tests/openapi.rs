//! The served OpenAPI document lists every route the suite exercises
//! (src/routes.rs, each driven by the role matrix in tests/roles.rs), and
//! no route the suite does not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use paystream_tests::routes::ROUTES;
use paystream_tests::Server;

#[test]
fn openapi_lists_exactly_the_routes_the_suite_exercises() {
    let server = Server::start();
    let document = server.anonymous().get("/v1/openapi.json").expect(200);
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    let mut served = BTreeSet::new();
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().expect("operations") {
            served.insert((method.to_uppercase(), path.clone()));
            let responses = operation["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: no success response");
            // Every {param} of the template is declared.
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let in_template: BTreeSet<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
            assert_eq!(declared, in_template, "{method} {path}: path parameters");
        }
    }
    let exercised: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path)| (method.to_string(), path.to_string())).collect();
    let missing: Vec<_> = exercised.difference(&served).collect();
    assert!(missing.is_empty(), "routes the tests use but the OpenAPI document does not list: {missing:?}");
    let untested: Vec<_> = served.difference(&exercised).collect();
    assert!(untested.is_empty(), "routes the OpenAPI document lists but no test exercises: {untested:?}");
}
