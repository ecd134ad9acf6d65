//! The event log of Paystream: the [`EventStore`] trait, the event envelope, the hash
//! chain, and the backends (the embedded one, [`EmbeddedStore`], is the default).
//!
//! Architecture invariant: this crate knows nothing about payments. Payloads are opaque
//! JSON bytes; it does not depend on `paystream-domain`.

pub mod bench;
pub mod chain;
/// The backend contract suite (feature `testkit`).
#[cfg(feature = "testkit")]
pub mod contract;
pub mod embedded;
mod error;
mod event_store;
pub mod metrics;
mod types;

pub use embedded::{
    open_derived_db, snapshot_derived_db, EmbeddedOptions, EmbeddedStore, OpenReport, TailReport,
    DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_INDEX_CACHE_BYTES, DEFAULT_SEGMENT_BYTES, INDEX_DIR,
};
pub use error::{InvalidAppend, StoreError};
pub use event_store::{
    CatchUp, EventStore, LogReader, Subscription, SubscriptionSource, VerifyReport, SUBSCRIPTION_READ_BATCH,
};
pub use types::{
    validate_append, Actor, AppendResult, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamVersion,
    MAX_APPEND_BYTES, MAX_EVENTS_PER_APPEND, MAX_EVENT_TYPE_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_RECORD_BYTES,
    MAX_STREAM_ID_BYTES,
};
