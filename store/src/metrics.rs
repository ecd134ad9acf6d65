//! The event log's metrics, recorded through the `metrics` facade (a no-op until a
//! recorder is installed; `paystream serve` installs the Prometheus one before it opens
//! the log, and renders them at `GET /metrics`: docs/operations.md, "Metrics").
//!
//! The handles are resolved once, when the log opens, and kept by the appender threads
//! and the store: recording one is an atomic operation, with no lookup and no lock on
//! the write path.

use metrics::{Gauge, Histogram};

/// Histogram: seconds from an `append` call to its durable acknowledgement (queueing,
/// checks, write and `fdatasync` of its group commit), successful appends only.
pub const APPEND_DURATION_SECONDS: &str = "paystream_store_append_duration_seconds";
/// Histogram: events made durable by one group commit (one `fdatasync`).
pub const GROUP_COMMIT_EVENTS: &str = "paystream_store_group_commit_events";
/// Gauge: the log's last durable, published position.
pub const HEAD_POSITION: &str = "paystream_store_head_position";

/// The handles of the log's metrics, from the recorder installed when the log opened.
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    pub append_seconds: Histogram,
    pub group_commit_events: Histogram,
    pub head: Gauge,
}

impl StoreMetrics {
    pub(crate) fn new() -> StoreMetrics {
        StoreMetrics {
            append_seconds: metrics::histogram!(APPEND_DURATION_SECONDS),
            group_commit_events: metrics::histogram!(GROUP_COMMIT_EVENTS),
            head: metrics::gauge!(HEAD_POSITION),
        }
    }
}
