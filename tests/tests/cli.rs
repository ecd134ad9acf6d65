//! The offline commands, run as a user would on a stopped server's data
//! directory: `verify` checks the hash chain, `replay` rebuilds read models from
//! position 0 (and the server started again answers exactly as before), `export`
//! writes a read model as CSV; a mistyped `--data` is refused and creates nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use paystream_tests::fixtures::{card_payment, id_of, onboard};
use paystream_tests::server::{binary, temp_data_dir};
use paystream_tests::Server;
use serde_json::Value;

fn paystream(args: &[&str]) -> Output {
    Command::new(binary()).args(args).env("PAYSTREAM_LOG", "warn").output().expect("run paystream")
}

fn succeeded(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn search(server: &Server, min_position: u64) -> Value {
    server.admin().get(&format!("/v1/payments?limit=100&min_position={min_position}")).expect(200)
}

#[test]
fn offline_verify_replay_and_export_on_a_stopped_servers_data() {
    let data = temp_data_dir();
    let dir = data.path().to_str().unwrap().to_string();
    let mut server = Server::start_in(data.path(), "warn");
    let merchant = onboard(&server, "Cli Shop", "B");
    let mut ids = Vec::new();
    for (amount, capture) in [(1_000, "automatic"), (2_000, "manual"), (3_000, "automatic")] {
        ids.push(id_of(&merchant.pay(&card_payment(amount, capture))));
    }
    let head = server.admin().head_position();
    let before = search(&server, head);
    assert_eq!(before["data"].as_array().unwrap().len(), 3);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());

    succeeded(paystream(&["verify", "--data", &dir]), "verify");

    // A full replay: every projection rebuilt into its next version, up to the head.
    let report: Value = serde_json::from_str(&succeeded(paystream(&["replay", "--data", &dir]), "replay")).unwrap();
    assert_eq!(
        report["projections"],
        serde_json::json!(["merchant_dashboard", "payment_search", "platform_overview", "ledger"])
    );
    assert_eq!(report["versions"], serde_json::json!([2, 2, 2, 2]));
    assert_eq!(report["checkpoint"].as_u64(), Some(head));
    assert_eq!(report["events"].as_u64(), Some(head));
    let one = paystream(&["replay", "--projection", "payment_search", "--data", &dir]);
    let report: Value = serde_json::from_str(&succeeded(one, "replay --projection")).unwrap();
    assert_eq!(report["versions"], serde_json::json!([3]));

    // Export: a header and one row per payment, the id first.
    let csv = succeeded(paystream(&["export", "--projection", "payment_search", "--data", &dir]), "export");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,merchant_id,status,amount,currency,"), "{}", lines[0]);
    let mut exported: Vec<String> = lines[1..].iter().map(|line| line.split(',').next().unwrap().to_string()).collect();
    exported.sort();
    ids.sort();
    assert_eq!(exported, ids);
    let ledger =
        succeeded(paystream(&["export", "--projection", "ledger", "--format", "csv", "--data", &dir]), "export");
    assert!(ledger.lines().count() > 1, "{ledger}");
    let refused = paystream(&["export", "--projection", "ledger", "--format", "xlsx", "--data", &dir]);
    assert!(!refused.status.success());

    // The server on the replayed data answers exactly as before.
    let server = Server::start_in(data.path(), "warn");
    assert_eq!(search(&server, head), before);
}

#[test]
fn a_data_directory_without_a_log_is_refused_and_left_uncreated() {
    let data = temp_data_dir();
    let missing = data.path().join("typo");
    let missing_arg = missing.to_str().unwrap();
    for args in [
        vec!["replay", "--data", missing_arg],
        vec!["export", "--projection", "ledger", "--data", missing_arg],
        vec!["verify", "--data", missing_arg],
    ] {
        let output = paystream(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("holds no event log"), "{args:?}: {stderr}");
        assert!(!Path::new(&missing).exists(), "{args:?} created {}", missing.display());
    }
}
