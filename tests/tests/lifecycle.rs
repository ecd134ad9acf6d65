//! The payment lifecycle over HTTP against the real binary: every path
//! through it (src/scenarios.rs), each on its own server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paystream_tests::scenarios;
use paystream_tests::Server;

#[test]
fn manual_capture_partial_and_final_then_partial_and_full_refund() {
    let server = Server::start();
    scenarios::manual_capture_then_refunds(&server);
}

#[test]
fn automatic_capture_then_refunds_to_status_refunded() {
    let server = Server::start();
    scenarios::automatic_capture_then_full_refund(&server);
}

#[test]
fn void_releases_an_authorization_before_capture() {
    let server = Server::start();
    scenarios::void_before_capture(&server);
}

#[test]
fn sandbox_instruments_decline_with_their_codes() {
    let server = Server::start();
    scenarios::sandbox_declines(&server);
}

#[test]
fn tier_d_payment_over_half_the_limit_is_reviewed_then_approved_or_rejected() {
    let server = Server::start();
    scenarios::review_approve_and_reject(&server);
}

#[test]
fn disputes_are_opened_then_won_or_lost() {
    let server = Server::start();
    scenarios::disputes_won_and_lost(&server);
}
