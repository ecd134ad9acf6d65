#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use paystream_store::contract::StoreFactory;
use paystream_store::{EmbeddedOptions, EmbeddedStore, EventStore, StoreError};

/// Small segments so tests cross segment boundaries.
pub const TEST_SEGMENT_BYTES: u64 = 1024 * 1024;

pub fn options() -> EmbeddedOptions {
    EmbeddedOptions { segment_bytes: TEST_SEGMENT_BYTES, ..EmbeddedOptions::default() }
}

/// Simulates a crash that came before the synced watermark covered positions after
/// `event` (the group commits after it were in flight): the watermark names `event`.
pub fn rewind_synced(dir: &Path, event: &paystream_store::RecordedEvent) {
    let synced = paystream_store::embedded::watermark::Synced { position: event.position, hash: event.hash };
    paystream_store::embedded::watermark::rewrite(&dir.join("log"), synced).unwrap();
}

pub async fn open_embedded_with(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options)).await.unwrap()
}

pub async fn open_embedded(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options())).await.unwrap()
}

/// One fresh embedded log in a temporary directory.
pub struct EmbeddedFactory {
    dir: tempfile::TempDir,
}

impl EmbeddedFactory {
    pub fn new() -> Self {
        EmbeddedFactory { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

#[async_trait]
impl StoreFactory for EmbeddedFactory {
    async fn open(&self) -> Result<Arc<dyn EventStore>, StoreError> {
        Ok(Arc::new(open_embedded(self.dir.path()).await?))
    }
}
