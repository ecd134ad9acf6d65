//! One process per data directory: a second open of a log that is open is
//! `StoreError::Locked`, naming the directory (what the CLI turns into "a server
//! is using this data directory"), and the directory opens again once closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paystream_store::{EmbeddedStore, EventStore, StoreError};

#[tokio::test(flavor = "multi_thread")]
async fn a_second_open_of_an_open_log_is_locked_and_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let first = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path)).await.unwrap().unwrap();
    let path = dir.path().to_path_buf();
    let second = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path)).await.unwrap();
    match second {
        Err(StoreError::Locked { dir: locked }) => assert_eq!(locked, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    first.close().await.unwrap();
    drop(first);
    let path = dir.path().to_path_buf();
    let again = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path)).await.unwrap().unwrap();
    again.close().await.unwrap();
}
