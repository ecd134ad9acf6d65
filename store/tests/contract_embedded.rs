//! The backend contract suite, run against the embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::EmbeddedFactory;
use paystream_store::contract;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basics() {
    contract::basics(&EmbeddedFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expected_version_semantics() {
    contract::expected_version_semantics(&EmbeddedFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_one_winner() {
    contract::concurrent_appends_one_winner(&EmbeddedFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_gap_free() {
    contract::concurrent_writers_gap_free(&EmbeddedFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_catch_up_then_live() {
    contract::subscriptions_catch_up_then_live(&EmbeddedFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopen_keeps_everything() {
    contract::reopen_keeps_everything(&EmbeddedFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys() {
    contract::idempotency_keys(&EmbeddedFactory::new()).await;
}

/// The contract also holds on a current-thread runtime (as in `#[tokio::test]` defaults).
#[tokio::test]
async fn basics_on_current_thread_runtime() {
    contract::basics(&EmbeddedFactory::new()).await;
}
