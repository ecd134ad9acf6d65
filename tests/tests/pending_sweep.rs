//! No payment stuck in `pending`: a server killed between a payment's
//! initiation and the acquirer's answer finishes it after a restart. The
//! sandbox's slow card keeps the acquirer busy long enough to kill the server;
//! the restarted sandbox has no record of the authorization, so the recovery
//! sweep records `declined` with `acquirer_unavailable` (nothing is held).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use paystream_tests::fixtures::{card_method, onboard, payment_body};
use paystream_tests::server::temp_data_dir;
use paystream_tests::Server;
use serde_json::Value;

/// Sandbox card that approves after 5 s (docs/api.md, "Sandbox").
const CARD_SLOW: &str = "4000000000005977";
/// Longest wait for the pending payment to show, well within the slow card's 5 s.
const PENDING_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest wait for the sweep to finish the payment after the restart.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(30);

fn poll<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = attempt() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_payment_cut_off_before_the_acquirer_answered_is_finished_after_a_restart() {
    let data = temp_data_dir();
    let mut server = Server::start_in(data.path(), "info");
    let merchant = onboard(&server, "Slow Lane Cafe", "B");
    let body = payment_body(4_200, "automatic", card_method(CARD_SLOW));
    let client = merchant.client.clone();
    // The request waits for the slow acquirer; the server dies before it answers.
    let request = std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| client.post("/v1/payments", &body));
    });

    let search = "/v1/payments?status=pending";
    let pending = poll(PENDING_TIMEOUT, || {
        let page = merchant.client.get(search).expect(200);
        page["data"].as_array().and_then(|rows| rows.first()).map(|row| row["id"].as_str().unwrap().to_string())
    })
    .expect("the payment shows as pending while the acquirer takes its time");
    let path = format!("/v1/payments/{pending}");
    assert_eq!(merchant.client.get(&path).expect(200)["status"], "pending");
    server.kill();
    let _ = request.join();

    let server = Server::start_in_with(data.path(), "info", &["--pending-after-seconds", "1"]);
    let admin = server.admin();
    let finished: Value = poll(SWEEP_TIMEOUT, || {
        let payment = admin.get(&path).expect(200);
        (payment["status"] != "pending").then_some(payment)
    })
    .unwrap_or_else(|| panic!("still pending after {SWEEP_TIMEOUT:?}; stderr:\n{}", server.stderr_text()));
    assert_eq!(
        (&finished["status"], &finished["decline_code"], &finished["amount_capturable"], &finished["amount_captured"]),
        (&Value::from("declined"), &Value::from("acquirer_unavailable"), &Value::from(0), &Value::from(0)),
        "{finished}"
    );
    assert!(server.stderr_text().contains("pending payments finished"), "{}", server.stderr_text());
}
