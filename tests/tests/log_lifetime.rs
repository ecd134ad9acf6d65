//! A log that lives for years, seen from outside: damage to an acknowledged record is
//! reported (by `verify` and by `serve`, which refuses to start) and never cut; `verify`
//! runs read-only beside a live server; idempotency keys have a retention window; a
//! server whose derived checkpoints were deleted rebuilds them from the log and answers
//! as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use paystream_tests::fixtures::{card_payment, id_of, issue_key, onboard};
use paystream_tests::server::{binary, temp_data_dir};
use paystream_tests::Server;
use serde_json::{json, Value};

fn paystream(args: &[&str]) -> Output {
    Command::new(binary()).args(args).env("PAYSTREAM_LOG", "warn").output().expect("run paystream")
}

/// Every file of `<data>/log` with its bytes.
fn log_bytes(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    out.sort();
    out
}

/// (segment path, offset, length) of the last record of the log.
fn last_record(data: &Path) -> (PathBuf, usize, usize) {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let last = segments.pop().unwrap();
    let buf = std::fs::read(&last).unwrap();
    let (mut at, mut found) = (0usize, None);
    while at + 12 <= buf.len() && &buf[at..at + 4] == b"PSR1" {
        let len = 12 + u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap()) as usize;
        found = Some((at, len));
        at += len;
    }
    let (offset, len) = found.expect("a record in the last segment");
    (last, offset, len)
}

#[test]
fn a_flipped_byte_in_the_last_record_is_reported_by_verify_and_refused_by_serve() {
    let data = temp_data_dir();
    let dir = data.path().to_str().unwrap().to_string();
    let mut server = Server::start_in(data.path(), "warn");
    let merchant = onboard(&server, "Damage Shop", "B");
    let payment = merchant.pay(&card_payment(4_200, "manual"));
    assert_eq!(payment["status"], "authorized");
    let head = server.admin().head_position();
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());

    // The last record is the acknowledged authorization.
    let (segment, offset, len) = last_record(data.path());
    let mut buf = std::fs::read(&segment).unwrap();
    buf[offset + len / 2] ^= 0x20;
    std::fs::write(&segment, &buf).unwrap();
    let before = log_bytes(data.path());

    let verify = paystream(&["verify", "--data", &dir]);
    assert!(!verify.status.success(), "verify must fail on damage");
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(said.contains(&format!("FIRST BAD POSITION {head}")), "verify names position {head}: {said}");

    let mut serve = Command::new(binary())
        .args(["serve", "--data", &dir, "--listen", "127.0.0.1:0"])
        .env("PAYSTREAM_LOG", "warn")
        .env("PAYSTREAM_ADMIN_KEY", paystream_tests::server::ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve started on a damaged log");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = serve.wait_with_output().unwrap();
    assert!(!status.success(), "serve must refuse a damaged log");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("position {head}")), "serve names position {head}: {stderr}");
    assert_eq!(log_bytes(data.path()), before, "nothing was cut or rewritten");
}

#[test]
fn verify_runs_read_only_beside_a_live_server() {
    let data = temp_data_dir();
    let dir = data.path().to_str().unwrap().to_string();
    let server = Server::start_in(data.path(), "warn");
    let merchant = onboard(&server, "Live Verify Shop", "A");
    for amount in [1_000, 2_000, 3_000] {
        merchant.pay(&card_payment(amount, "automatic"));
    }
    let head = server.admin().head_position();
    // The watermark is written at most 100 ms after the last append.
    std::thread::sleep(Duration::from_millis(300));
    let before = log_bytes(data.path());
    let verify = paystream(&["verify", "--data", &dir]);
    let stdout = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        verify.status.success(),
        "verify beside a live server: {stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(stdout.contains(&format!("checked {head} events")), "{stdout}");
    assert!(stdout.contains("chain intact"), "{stdout}");
    assert!(stdout.contains(&format!("acknowledged through position {head}")), "{stdout}");
    assert_eq!(log_bytes(data.path()), before, "verify changed no byte");
    // And the server still works.
    merchant.pay(&card_payment(4_000, "automatic"));
}

#[test]
fn an_idempotency_key_may_be_used_again_after_its_window() {
    let data = temp_data_dir();
    let server = Server::start_in_with(data.path(), "warn", &["--idempotency-window-seconds", "2"]);
    let merchant = onboard(&server, "Window Shop", "B");
    let shop = &merchant.client;
    let body = card_payment(1_500, "manual");
    let first = shop.post_idempotent("/v1/payments", &body, "order-window");
    let first_id = id_of(&first.expect(201));
    // Within the window: the same key with another body is refused, the same body replays.
    shop.post_idempotent("/v1/payments", &card_payment(2_500, "manual"), "order-window").expect(409);
    let replay = shop.post_idempotent("/v1/payments", &body, "order-window");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(id_of(&replay.expect(201)), first_id);

    std::thread::sleep(Duration::from_millis(2_500));
    let again = shop.post_idempotent("/v1/payments", &card_payment(2_500, "manual"), "order-window");
    assert_eq!(again.header("idempotent-replayed"), None, "after the window the key is new again");
    let again = again.expect(201);
    assert_ne!(id_of(&again), first_id);
    assert_eq!(again["amount"], 2_500);
}

/// What a client can read back, to compare a server with its rebuilt self.
fn answers(server: &Server, payments: &[String], min_position: u64) -> Value {
    let admin = server.admin();
    let mut out = serde_json::Map::new();
    for id in payments {
        out.insert(id.clone(), admin.get(&format!("/v1/payments/{id}")).expect(200));
    }
    // A projection rebuilt from position 0 answers 503 until it holds the log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let read = |path: &str| loop {
        let response = admin.get(path);
        if response.status == 200 || Instant::now() > deadline {
            return response.expect(200);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    out.insert("search".into(), read(&format!("/v1/payments?limit=100&min_position={min_position}")));
    out.insert("trial_balance".into(), read(&format!("/v1/ledger/trial_balance?min_position={min_position}")));
    Value::Object(out)
}

#[test]
fn a_server_whose_checkpoints_were_deleted_rebuilds_them_and_answers_the_same() {
    let data = temp_data_dir();
    let mut server = Server::start_in(data.path(), "warn");
    let merchant = onboard(&server, "Rebuild Shop", "B");
    let (_, secret) = issue_key(&server.admin(), "merchant", Some(&merchant.id));
    let shop = &server.client(&secret);
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    for (amount, capture) in [(1_000, "automatic"), (2_000, "manual"), (3_000, "automatic"), (4_000, "manual")] {
        let body = card_payment(amount, capture);
        ids.push(id_of(&shop.post_idempotent("/v1/payments", &body, &format!("o-{amount}")).expect(201)));
        bodies.push(body);
    }
    shop.post(&format!("/v1/payments/{}/capture", ids[1]), &json!({"amount": 1_500})).expect(200);
    shop.post(&format!("/v1/payments/{}/refunds", ids[0]), &json!({"amount": 400})).expect(201);
    shop.post(&format!("/v1/payments/{}/void", ids[3]), &json!({})).expect(200);
    let head = server.admin().head_position();
    let before = answers(&server, &ids, head);
    assert_eq!(server.stop().code(), Some(0), "{}", server.stderr_text());

    // Every derived checkpoint gone: the log's index, the facts, the read models.
    for derived in ["index", "facts", "projections"] {
        let path = data.path().join(derived);
        if path.exists() {
            std::fs::remove_dir_all(&path).unwrap();
        }
    }
    let server = Server::start_in(data.path(), "warn");
    assert_eq!(server.admin().head_position(), head);
    assert_eq!(answers(&server, &ids, head), before);
    // The idempotency index and the merchant's key came back from the log too.
    let replay = server.client(&secret).post_idempotent("/v1/payments", &bodies[2], "o-3000");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(id_of(&replay.expect(201)), ids[2]);
}
