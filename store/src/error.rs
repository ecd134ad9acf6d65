//! The store's one error enum.

use std::path::PathBuf;

use crate::types::{AppendResult, ExpectedVersion, Position, StreamVersion};

/// Everything an [`EventStore`](crate::EventStore) operation can fail with.
///
/// `WrongExpectedVersion` and `DuplicateIdempotencyKey` are expected outcomes of
/// concurrency and retries; `Invalid` is a caller bug; the rest are store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("wrong expected version for stream {stream_id}: expected {expected:?}, actual {actual}")]
    WrongExpectedVersion { stream_id: String, expected: ExpectedVersion, actual: StreamVersion },
    #[error("idempotency key {key} was already used by the append at positions {}..={}", existing.first_position, existing.last_position)]
    DuplicateIdempotencyKey { key: String, existing: AppendResult },
    #[error("invalid append: {0}")]
    Invalid(#[from] InvalidAppend),
    #[error("event log is corrupt{}: {detail}", position.map(|p| format!(" at position {p}")).unwrap_or_default())]
    Corrupt { position: Option<Position>, detail: String },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("derived index error: {0}")]
    Index(String),
    /// The appender stopped after a failed write or sync; the store must be reopened,
    /// which recovers the log from disk.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    #[error("event store is closed")]
    Closed,
    /// Another process has the log of `dir` open: its index's file lock is held
    /// (one process per data directory).
    #[error("another process has the event log in {} open (its index is locked)", dir.display())]
    Locked { dir: PathBuf },
}

/// Why an append was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAppend {
    #[error("an append needs at least one event")]
    NoEvents,
    #[error("{count} events in one append, at most {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("empty stream id")]
    EmptyStreamId,
    #[error("stream id of {bytes} bytes, at most {max}")]
    StreamIdTooLong { bytes: usize, max: usize },
    #[error("event {index}: empty event type")]
    EmptyEventType { index: usize },
    #[error("event {index}: event type of {bytes} bytes, at most {max}")]
    EventTypeTooLong { index: usize, bytes: usize, max: usize },
    #[error("event {index}: idempotency key of {bytes} bytes, must be 1..={max}")]
    BadIdempotencyKey { index: usize, bytes: usize, max: usize },
    #[error("event {index}: record of {bytes} bytes, at most {max}")]
    RecordTooLarge { index: usize, bytes: usize, max: usize },
    #[error("append of {bytes} bytes, at most {max}")]
    AppendTooLarge { bytes: usize, max: usize },
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        StoreError::Index(err.to_string())
    }
}
