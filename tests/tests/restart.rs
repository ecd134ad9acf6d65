//! Restart: SIGTERM stops the server cleanly (exit status 0), and a server
//! started again on the same data directory shows every payment, its
//! history, the keys and the idempotency records exactly as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paystream_tests::fixtures::{card_payment, id_of, onboard};
use paystream_tests::server::temp_data_dir;
use paystream_tests::{scenarios, Server};
use serde_json::Value;

#[test]
fn restart_on_the_same_data_keeps_every_payment_as_it_was() {
    let data = temp_data_dir();
    let mut server = Server::start_in(data.path(), "info");
    let mut ids = scenarios::run_all(&server);
    let merchant = onboard(&server, "Restart Shop", "B");
    let body = card_payment(3_300, "manual");
    let first = merchant.client.post_idempotent("/v1/payments", &body, "before-restart");
    ids.push(id_of(&first.expect(201)));

    let admin = server.admin();
    let snapshot = |admin: &paystream_tests::Client| -> Vec<(Value, Value)> {
        ids.iter()
            .map(|id| {
                let payment = admin.get(&format!("/v1/payments/{id}")).expect(200);
                let events = admin.get(&format!("/v1/payments/{id}/events")).expect(200);
                (payment, events)
            })
            .collect()
    };
    let before = snapshot(&admin);
    let head = admin.head_position();

    let status = server.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM must stop the server cleanly; stderr:\n{}", server.stderr_text());

    let mut server = Server::start_in(data.path(), "info");
    let admin = server.admin();
    assert_eq!(admin.head_position(), head, "the log is where it was");
    let after = snapshot(&admin);
    for ((payment_before, events_before), (payment_after, events_after)) in before.iter().zip(&after) {
        assert_eq!(payment_after, payment_before, "payment changed across a restart");
        assert_eq!(events_after, events_before, "history changed across a restart");
    }

    // Keys and idempotency records survived too; the server takes new work.
    let merchant = paystream_tests::Client { addr: server.addr, ..merchant.client.clone() };
    let replay = merchant.post_idempotent("/v1/payments", &body, "before-restart");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), first.json());
    let next = merchant.post("/v1/payments", &card_payment(1_100, "manual")).expect(201);
    assert!(next["position"].as_u64().unwrap() > head);

    let status = server.stop();
    assert_eq!(status.code(), Some(0), "second stop; stderr:\n{}", server.stderr_text());
}
