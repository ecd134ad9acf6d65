//! Envelope types shared by every backend, and the limits every append is checked against.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{InvalidAppend, StoreError};

/// Global position of an event: gap-free over the whole log, the first event is 1.
/// 0 means "before everything" (`read_all(0, ..)` and `subscribe(0)` start at the first event).
pub type Position = u64;

/// Version of an event inside its stream: gap-free per stream, the first event is 1.
/// 0 means the stream is empty (has never been appended to).
pub type StreamVersion = u64;

/// Most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1_000;
/// Largest encoded record (envelope, metadata, payload and hash fields) the store accepts.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Largest sum of encoded records of one append.
pub const MAX_APPEND_BYTES: usize = 16 * 1024 * 1024;
/// Longest stream id, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 256;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Longest idempotency key, in bytes (the caller scopes it, e.g. `"mer_x:key123"`).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 512;

/// What the caller believes about the stream's last version at the moment of the append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check: append after whatever is there.
    Any,
    /// The stream must be empty (same as `Exact(0)`).
    NoStream,
    /// The stream's last version is exactly this right now.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` satisfies this expectation.
    pub fn accepts(self, actual: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(n) => actual == n,
        }
    }
}

/// Who caused an event: which API key, acting in which role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub key_id: String,
    pub role: String,
}

/// Metadata carried by every event. The store interprets only `idempotency_key`
/// (of the first event of an append); the rest is stored and returned as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// Already scoped by the caller, e.g. `"mer_x:key123"`.
    pub idempotency_key: Option<String>,
    /// Hex hash of the request body, set by the caller.
    pub request_fingerprint: Option<String>,
    pub actor: Option<Actor>,
}

/// An event as the caller hands it to `append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub metadata: Metadata,
    /// Canonical JSON; opaque to the store.
    pub payload: Vec<u8>,
}

/// An event as stored: the caller's fields plus everything the store assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream_id: String,
    pub stream_version: StreamVersion,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    /// UTC, set by the store at append; never decreases along the log.
    pub recorded_at: OffsetDateTime,
    pub metadata: Metadata,
    pub payload: Vec<u8>,
    /// `hash` of the event at `position - 1`; all zeros for position 1.
    pub prev_hash: [u8; 32],
    /// SHA-256 over `prev_hash` and the canonical envelope (see [`crate::chain`]).
    pub hash: [u8; 32],
}

/// Where an accepted append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    pub stream_id: String,
    pub first_version: StreamVersion,
    pub last_version: StreamVersion,
    pub first_position: Position,
    pub last_position: Position,
}

/// Checks an append against the limits above; every backend calls this before anything else.
/// Returns the encoded size of each record, which the embedded backend reuses.
pub fn validate_append(stream_id: &str, events: &[NewEvent]) -> Result<Vec<usize>, StoreError> {
    let invalid = |reason| Err(StoreError::Invalid(reason));
    if stream_id.is_empty() {
        return invalid(InvalidAppend::EmptyStreamId);
    }
    if stream_id.len() > MAX_STREAM_ID_BYTES {
        return invalid(InvalidAppend::StreamIdTooLong { bytes: stream_id.len(), max: MAX_STREAM_ID_BYTES });
    }
    if events.is_empty() {
        return invalid(InvalidAppend::NoEvents);
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return invalid(InvalidAppend::TooManyEvents { count: events.len(), max: MAX_EVENTS_PER_APPEND });
    }
    let mut sizes = Vec::with_capacity(events.len());
    let mut total = 0usize;
    for (index, event) in events.iter().enumerate() {
        if event.event_type.is_empty() {
            return invalid(InvalidAppend::EmptyEventType { index });
        }
        if event.event_type.len() > MAX_EVENT_TYPE_BYTES {
            return invalid(InvalidAppend::EventTypeTooLong {
                index,
                bytes: event.event_type.len(),
                max: MAX_EVENT_TYPE_BYTES,
            });
        }
        if let Some(key) = &event.metadata.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return invalid(InvalidAppend::BadIdempotencyKey {
                    index,
                    bytes: key.len(),
                    max: MAX_IDEMPOTENCY_KEY_BYTES,
                });
            }
        }
        let bytes = crate::chain::record_len_estimate(stream_id, event);
        if bytes > MAX_RECORD_BYTES {
            return invalid(InvalidAppend::RecordTooLarge { index, bytes, max: MAX_RECORD_BYTES });
        }
        total += bytes;
        sizes.push(bytes);
    }
    if total > MAX_APPEND_BYTES {
        return invalid(InvalidAppend::AppendTooLarge { bytes: total, max: MAX_APPEND_BYTES });
    }
    Ok(sizes)
}
