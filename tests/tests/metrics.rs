//! Observability from outside (docs/operations.md, "Metrics" and "Logs"): after some
//! traffic `GET /metrics` shows every documented series with sensible values, by
//! route template and never by raw path; `PAYSTREAM_LOG_FORMAT=json` writes one JSON
//! object per line; a 4xx line names the error code, the caller's key id and the
//! client's address; `listening` is said once; no colour codes in a piped log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use paystream_tests::fixtures::{card_payment, onboard};
use paystream_tests::routes::ROUTES;
use paystream_tests::server::temp_data_dir;
use paystream_tests::{Server, ADMIN_KEY};
use serde_json::{json, Value};

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped), and the `# TYPE`
/// of each metric.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("value of {line}: {e}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels of {line}"));
                let labels = inner
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("label in {line}"));
                        (key.to_string(), value.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        samples.push(Sample { name, labels, value });
    }
    (samples, types)
}

/// The value of the one sample of `name` with (at least) `labels`.
#[track_caller]
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "one sample of {name} {labels:?}: {found:?}");
    found[0].value
}

fn scrape(server: &Server) -> (Vec<Sample>, BTreeMap<String, String>) {
    // No API key: like /healthz.
    let response = server.anonymous().get("/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "content-type {content_type}");
    parse(&response.text())
}

#[test]
fn metrics_show_every_series_after_traffic() {
    let server = Server::start();
    let merchant = onboard(&server, "Metrics Shop", "A");
    let payment = merchant.pay(&card_payment(1_250, "automatic"));
    let payment_id = payment["id"].as_str().unwrap();
    merchant.client.get(&format!("/v1/payments/{payment_id}")).expect(200);
    // A 4xx on the same route, and a path that matches no route.
    let refused = merchant.client.post("/v1/payments", &json!({"amount": -5, "currency": "USD"}));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(server.anonymous().get("/v1/no-such-thing/4242").status, 404);
    let head = server.anonymous().head_position();

    let (samples, types) = scrape(&server);
    let requests = "paystream_http_requests_total";
    let created = [("route", "/v1/payments"), ("method", "POST"), ("status", "201")];
    assert!(value(&samples, requests, &created) >= 1.0);
    assert!(value(&samples, requests, &[("route", "/v1/payments"), ("method", "POST"), ("status", "400")]) >= 1.0);
    assert!(value(&samples, requests, &[("route", "/v1/merchants"), ("method", "POST"), ("status", "201")]) >= 1.0);
    let fetched = [("route", "/v1/payments/{id}"), ("method", "GET"), ("status", "200")];
    assert!(value(&samples, requests, &fetched) >= 1.0);
    assert!(value(&samples, requests, &[("route", "unmatched"), ("status", "404")]) >= 1.0);
    // Bounded cardinality: every route label is a template (or `unmatched`), never a path.
    for sample in samples.iter().filter(|s| s.name.starts_with("paystream_http_request")) {
        let route = sample.labels.get("route").expect("a route label");
        assert!(
            route == "unmatched" || ROUTES.iter().any(|(_, template)| template == route),
            "route label {route} is not a template"
        );
    }
    let latency = [("route", "/v1/payments"), ("method", "POST")];
    assert!(value(&samples, "paystream_http_request_duration_seconds_count", &latency) >= 2.0);
    assert!(value(&samples, "paystream_http_request_duration_seconds_sum", &latency) > 0.0);
    let buckets = [("route", "/v1/payments"), ("method", "POST"), ("le", "+Inf")];
    assert!(value(&samples, "paystream_http_request_duration_seconds_bucket", &buckets) >= 2.0);
    // This scrape's own connection at least.
    assert!(value(&samples, "paystream_http_open_connections", &[]) >= 1.0);

    // The store: the admin key, the merchant, its key and the payment were appended.
    assert!(value(&samples, "paystream_store_append_duration_seconds_count", &[]) >= 4.0);
    assert!(value(&samples, "paystream_store_append_duration_seconds_sum", &[]) > 0.0);
    let commits = value(&samples, "paystream_store_group_commit_events_count", &[]);
    assert!(commits >= 1.0);
    assert!(value(&samples, "paystream_store_group_commit_events_sum", &[]) >= commits);
    let store_head = value(&samples, "paystream_store_head_position", &[]);
    assert!(store_head >= head as f64 && head > 0, "store head {store_head}, /healthz head {head}");

    // Conflict retries, by stream category: none in this run, shown at 0.
    for category in ["payment", "merchant", "apikey"] {
        assert_eq!(value(&samples, "paystream_command_conflict_retries_total", &[("category", category)]), 0.0);
    }

    // Lags, read at the scrape.
    for projection in ["merchant_dashboard", "payment_search", "platform_overview", "ledger"] {
        let lag = value(&samples, "paystream_projection_lag_events", &[("projection", projection)]);
        let checkpoint = value(&samples, "paystream_projection_checkpoint_position", &[("projection", projection)]);
        assert!(lag >= 0.0 && checkpoint + lag >= head as f64, "{projection}: lag {lag}, checkpoint {checkpoint}");
    }
    let facts_lag = value(&samples, "paystream_facts_lag_events", &[]);
    assert!((0.0..=store_head).contains(&facts_lag), "facts lag {facts_lag}");

    let expected_types = [
        ("paystream_http_requests_total", "counter"),
        ("paystream_http_request_duration_seconds", "histogram"),
        ("paystream_http_open_connections", "gauge"),
        ("paystream_store_append_duration_seconds", "histogram"),
        ("paystream_store_group_commit_events", "histogram"),
        ("paystream_store_head_position", "gauge"),
        ("paystream_command_conflict_retries_total", "counter"),
        ("paystream_projection_lag_events", "gauge"),
        ("paystream_projection_checkpoint_position", "gauge"),
        ("paystream_facts_lag_events", "gauge"),
    ];
    for (name, kind) in expected_types {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "# TYPE of {name}");
    }

    // Scrapes are not counted as requests; the payment's id is in no label.
    let (again, _) = scrape(&server);
    assert!(again.iter().all(|s| s.labels.values().all(|v| v != "/metrics" && !v.contains(payment_id))));
    assert!(value(&again, requests, &created) >= 1.0);
}

/// A server with `PAYSTREAM_LOG_FORMAT` set to `format` (None: unset), a merchant and
/// a refused payment; returns its stdout and stderr after a clean stop, and the
/// refusal's error code.
fn run_and_log(format: Option<&str>) -> (String, String, String) {
    let data = temp_data_dir();
    let dir = data.path().to_str().unwrap();
    let mut env = vec![("PAYSTREAM_ADMIN_KEY", ADMIN_KEY), ("PAYSTREAM_LOG", "info")];
    if let Some(format) = format {
        env.push(("PAYSTREAM_LOG_FORMAT", format));
    }
    let mut server = Server::start_command_line(data.path(), &["--data", dir, "--listen", "127.0.0.1:0"], &env);
    let merchant = onboard(&server, "Log Shop", "A");
    let refused = merchant.client.post("/v1/payments", &json!({"amount": -5, "currency": "USD"}));
    assert_eq!(refused.status, 400, "{}", refused.text());
    let code = refused.json()["error"]["code"].as_str().unwrap().to_string();
    server.admin().get("/v1/payments/pay_nothing").expect(404);
    scrape(&server);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());
    let stdout = String::from_utf8(server.stdout()).unwrap();
    let stderr = server.stderr_text();
    // The metrics route holds no handle of a database past the stop's snapshot.
    assert!(!stderr.contains("no snapshot at stop"), "{stderr}");
    assert!(!stderr.contains(ADMIN_KEY), "a key secret in the log:\n{stderr}");
    assert_eq!(stdout.matches("listening").count() + stderr.matches("listening").count(), 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("listening on http://127.0.0.1:"), "{stdout}");
    (stdout, stderr, code)
}

#[test]
fn json_logs_are_one_object_per_line_and_a_4xx_line_carries_its_code() {
    let (_, stderr, code) = run_and_log(Some("json"));
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    for line in &lines {
        assert!(line.is_object(), "{line}");
        for field in ["timestamp", "level", "message", "target"] {
            assert!(line[field].is_string(), "{field} in {line}");
        }
    }
    assert!(lines.iter().any(|l| l["message"] == "paystream started" && l["store_cache_mib"].is_u64()), "{stderr}");
    let refused = lines
        .iter()
        .find(|l| l["message"] == "handled" && l["status"] == 400)
        .unwrap_or_else(|| panic!("no 400 line:\n{stderr}"));
    assert_eq!(refused["code"], code.as_str(), "{refused}");
    assert_eq!(refused["level"], "INFO");
    let span = &refused["span"];
    assert_eq!(span["name"], "request", "{refused}");
    assert_eq!(span["method"], "POST");
    assert_eq!(span["path"], "/v1/payments");
    assert_eq!(span["role"], "merchant");
    assert!(span["key_id"].as_str().is_some_and(|id| id.starts_with("key_")), "{refused}");
    assert!(span["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{refused}");
    assert!(span["request_id"].is_string() && span["merchant_id"].is_string(), "{refused}");
    assert!(refused["elapsed_us"].is_u64(), "{refused}");
    let missing = lines
        .iter()
        .find(|l| l["message"] == "handled" && l["status"] == 404)
        .unwrap_or_else(|| panic!("no 404 line:\n{stderr}"));
    assert_eq!(missing["code"], "resource_missing", "{missing}");
    assert_eq!(missing["span"]["role"], "admin", "{missing}");
    // A success carries no code.
    let created = lines.iter().find(|l| l["message"] == "handled" && l["status"] == 201).expect("a 201 line");
    assert!(created.get("code").is_none(), "{created}");
}

#[test]
fn text_logs_name_the_code_key_and_client_of_a_4xx_without_colour() {
    for format in [None, Some("text")] {
        let (_, stderr, code) = run_and_log(format);
        assert!(!stderr.contains('\u{1b}'), "ANSI escape codes in a piped log:\n{stderr}");
        let line = stderr
            .lines()
            .find(|line| line.contains("handled") && line.contains("status=400"))
            .unwrap_or_else(|| panic!("no 400 line:\n{stderr}"));
        for field in [format!("code={code}"), "path=/v1/payments".to_string()] {
            assert!(line.split([' ', '{', '}']).any(|word| word == field), "{field} in: {line}");
        }
        assert!(line.contains(" key_id=key_") && line.contains(" client=127.0.0.1:"), "{line}");
        assert!(stderr.lines().any(|line| line.contains("paystream started")), "{stderr}");
    }
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let output = paystream_tests::server::paystream_command()
        .args(["verify", "--data", "/nonexistent"])
        .env("PAYSTREAM_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("PAYSTREAM_LOG_FORMAT must be text or json"), "{said}");
}
