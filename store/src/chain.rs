//! The canonical envelope encoding and the hash chain, shared by every backend.
//!
//! Every event's `hash` is `SHA-256(prev_hash || canonical_envelope)`, where `prev_hash`
//! is the `hash` of the event at the previous position (32 zero bytes for position 1).
//! Because the position is inside the hashed bytes and every hash covers its
//! predecessor, altering, removing, inserting or reordering any event breaks the chain
//! at the first affected position, which [`ChainVerifier`] names.
//!
//! Canonical envelope, version 1 (integers little-endian, strings UTF-8 with a `u32`
//! byte length in front, `bytes` likewise):
//!
//! ```text
//! u8        encoding version (1)
//! u64       position
//! string    stream id
//! u64       stream version
//! [u8; 16]  event id (UUID bytes)
//! string    event type
//! u32       schema version
//! i64       recorded at, Unix time in nanoseconds (UTC)
//! u8        metadata presence bits: 1 correlation, 2 causation, 4 idempotency key,
//!           8 request fingerprint, 16 actor
//! [u8; 16]  correlation id            (if bit 1)
//! [u8; 16]  causation id              (if bit 2)
//! string    idempotency key           (if bit 4)
//! string    request fingerprint       (if bit 8)
//! string    actor key id, string role (if bit 16)
//! bytes     payload
//! ```

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::types::{Actor, Metadata, NewEvent, Position, RecordedEvent, StreamVersion};

/// Version byte at the start of every canonical envelope.
pub const ENVELOPE_ENCODING_VERSION: u8 = 1;
/// `prev_hash` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

const HAS_CORRELATION: u8 = 1;
const HAS_CAUSATION: u8 = 2;
const HAS_IDEMPOTENCY_KEY: u8 = 4;
const HAS_FINGERPRINT: u8 = 8;
const HAS_ACTOR: u8 = 16;
const KNOWN_BITS: u8 = 31;

/// Borrowed view of the hashed envelope fields.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    pub position: Position,
    pub stream_id: &'a str,
    pub stream_version: StreamVersion,
    pub event_id: &'a Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at_nanos: i64,
    pub metadata: &'a Metadata,
    pub payload: &'a [u8],
}

impl<'a> EnvelopeRef<'a> {
    pub fn of(event: &'a RecordedEvent) -> Self {
        EnvelopeRef {
            position: event.position,
            stream_id: &event.stream_id,
            stream_version: event.stream_version,
            event_id: &event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            recorded_at_nanos: unix_nanos(event.recorded_at),
            metadata: &event.metadata,
            payload: &event.payload,
        }
    }
}

/// Unix nanoseconds of a timestamp, saturated to the `i64` range (years 1677..2262).
pub fn unix_nanos(at: OffsetDateTime) -> i64 {
    let nanos = at.unix_timestamp_nanos();
    i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
}

fn string_len(s: &str) -> usize {
    4 + s.len()
}

fn metadata_len(m: &Metadata) -> usize {
    1 + m.correlation_id.map_or(0, |_| 16)
        + m.causation_id.map_or(0, |_| 16)
        + m.idempotency_key.as_deref().map_or(0, string_len)
        + m.request_fingerprint.as_deref().map_or(0, string_len)
        + m.actor.as_ref().map_or(0, |a| string_len(&a.key_id) + string_len(&a.role))
}

/// Exact length of the canonical envelope of `event` appended to `stream_id`.
pub fn canonical_len(stream_id: &str, event: &NewEvent) -> usize {
    1 + 8
        + string_len(stream_id)
        + 8
        + 16
        + string_len(&event.event_type)
        + 4
        + 8
        + metadata_len(&event.metadata)
        + 4
        + event.payload.len()
}

/// Size of a stored record: the canonical envelope plus both hashes plus a storage
/// overhead of at most 32 bytes (the embedded backend's frame and trailer).
pub fn record_len_estimate(stream_id: &str, event: &NewEvent) -> usize {
    canonical_len(stream_id, event) + 64 + 32
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths are bounded by MAX_RECORD_BYTES (checked by validate_append), far below u32::MAX.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends the canonical envelope to `out`.
pub fn encode_canonical(e: &EnvelopeRef<'_>, out: &mut Vec<u8>) {
    out.push(ENVELOPE_ENCODING_VERSION);
    out.extend_from_slice(&e.position.to_le_bytes());
    put_str(out, e.stream_id);
    out.extend_from_slice(&e.stream_version.to_le_bytes());
    out.extend_from_slice(e.event_id.as_bytes());
    put_str(out, e.event_type);
    out.extend_from_slice(&e.schema_version.to_le_bytes());
    out.extend_from_slice(&e.recorded_at_nanos.to_le_bytes());
    let m = e.metadata;
    let mut bits = 0u8;
    if m.correlation_id.is_some() {
        bits |= HAS_CORRELATION;
    }
    if m.causation_id.is_some() {
        bits |= HAS_CAUSATION;
    }
    if m.idempotency_key.is_some() {
        bits |= HAS_IDEMPOTENCY_KEY;
    }
    if m.request_fingerprint.is_some() {
        bits |= HAS_FINGERPRINT;
    }
    if m.actor.is_some() {
        bits |= HAS_ACTOR;
    }
    out.push(bits);
    if let Some(id) = &m.correlation_id {
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(id) = &m.causation_id {
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(key) = &m.idempotency_key {
        put_str(out, key);
    }
    if let Some(fp) = &m.request_fingerprint {
        put_str(out, fp);
    }
    if let Some(actor) = &m.actor {
        put_str(out, &actor.key_id);
        put_str(out, &actor.role);
    }
    put_bytes(out, e.payload);
}

/// `SHA-256(prev_hash || canonical)`.
pub fn chain_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// Recomputes the hash an event should carry given its `prev_hash`.
pub fn compute_hash(event: &RecordedEvent) -> [u8; 32] {
    let mut buf = Vec::with_capacity(256 + event.payload.len());
    encode_canonical(&EnvelopeRef::of(event), &mut buf);
    chain_hash(&event.prev_hash, &buf)
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("envelope truncated at byte {}", self.at))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn uuid(&mut self) -> Result<Uuid, String> {
        Ok(Uuid::from_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, String> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
}

/// Decodes a canonical envelope that must fill `buf` exactly. The returned event has
/// zero `prev_hash` and `hash`; the caller fills them from wherever it keeps them.
pub fn decode_canonical(buf: &[u8]) -> Result<RecordedEvent, String> {
    let mut c = Cursor { buf, at: 0 };
    let version = c.u8()?;
    if version != ENVELOPE_ENCODING_VERSION {
        return Err(format!("unknown envelope encoding version {version}"));
    }
    let position = c.u64()?;
    let stream_id = c.string()?;
    let stream_version = c.u64()?;
    let event_id = c.uuid()?;
    let event_type = c.string()?;
    let schema_version = c.u32()?;
    let nanos = c.i64()?;
    let recorded_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .map_err(|e| format!("recorded_at out of range: {e}"))?;
    let bits = c.u8()?;
    if bits & !KNOWN_BITS != 0 {
        return Err(format!("unknown metadata bits {bits:#x}"));
    }
    let mut metadata = Metadata::default();
    if bits & HAS_CORRELATION != 0 {
        metadata.correlation_id = Some(c.uuid()?);
    }
    if bits & HAS_CAUSATION != 0 {
        metadata.causation_id = Some(c.uuid()?);
    }
    if bits & HAS_IDEMPOTENCY_KEY != 0 {
        metadata.idempotency_key = Some(c.string()?);
    }
    if bits & HAS_FINGERPRINT != 0 {
        metadata.request_fingerprint = Some(c.string()?);
    }
    if bits & HAS_ACTOR != 0 {
        let key_id = c.string()?;
        let role = c.string()?;
        metadata.actor = Some(Actor { key_id, role });
    }
    let payload = c.bytes()?.to_vec();
    if c.at != buf.len() {
        return Err(format!("{} trailing bytes after the envelope", buf.len() - c.at));
    }
    Ok(RecordedEvent {
        position,
        stream_id,
        stream_version,
        event_id,
        event_type,
        schema_version,
        recorded_at,
        metadata,
        payload,
        prev_hash: GENESIS_HASH,
        hash: GENESIS_HASH,
    })
}

/// Walks events in position order and finds the first one that breaks the chain.
/// Every backend's `verify` feeds its events through one of these.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_position: Position,
    prev_hash: [u8; 32],
    checked: u64,
}

impl ChainVerifier {
    /// Starts at `first_position`, whose predecessor's hash is `prev_hash`
    /// ([`GENESIS_HASH`] when starting at position 1).
    pub fn new(first_position: Position, prev_hash: [u8; 32]) -> Self {
        ChainVerifier { next_position: first_position, prev_hash, checked: 0 }
    }

    /// Checks the next event; on failure returns why, and the verifier must not be fed further.
    pub fn check(&mut self, event: &RecordedEvent) -> Result<(), String> {
        if event.position != self.next_position {
            return Err(format!(
                "expected position {}, found {} (event removed, inserted or reordered)",
                self.next_position, event.position
            ));
        }
        if event.prev_hash != self.prev_hash {
            return Err(format!(
                "prev_hash {} does not match the hash of position {} ({})",
                hex::encode(event.prev_hash),
                self.next_position.saturating_sub(1),
                hex::encode(self.prev_hash)
            ));
        }
        let computed = compute_hash(event);
        if computed != event.hash {
            return Err(format!(
                "stored hash {} does not match the recomputed hash {} (event altered)",
                hex::encode(event.hash),
                hex::encode(computed)
            ));
        }
        self.prev_hash = event.hash;
        self.next_position += 1;
        self.checked += 1;
        Ok(())
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Hash of the last event that passed (the predecessor hash given to `new` if none did).
    pub fn head_hash(&self) -> [u8; 32] {
        self.prev_hash
    }

    pub fn next_position(&self) -> Position {
        self.next_position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RecordedEvent {
        RecordedEvent {
            position: 7,
            stream_id: "payment-1".into(),
            stream_version: 3,
            event_id: Uuid::now_v7(),
            event_type: "PaymentCaptured".into(),
            schema_version: 2,
            recorded_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap(),
            metadata: Metadata {
                correlation_id: Some(Uuid::now_v7()),
                causation_id: None,
                idempotency_key: Some("mer_x:k".into()),
                request_fingerprint: Some("abcd".into()),
                actor: Some(Actor { key_id: "key_1".into(), role: "merchant".into() }),
            },
            payload: br#"{"amount_minor":100}"#.to_vec(),
            prev_hash: [1; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn canonical_round_trip_and_length() {
        let ev = event();
        let mut buf = Vec::new();
        encode_canonical(&EnvelopeRef::of(&ev), &mut buf);
        let new = NewEvent {
            event_id: ev.event_id,
            event_type: ev.event_type.clone(),
            schema_version: ev.schema_version,
            metadata: ev.metadata.clone(),
            payload: ev.payload.clone(),
        };
        assert_eq!(buf.len(), canonical_len(&ev.stream_id, &new));
        let mut decoded = decode_canonical(&buf).unwrap();
        decoded.prev_hash = ev.prev_hash;
        decoded.hash = ev.hash;
        assert_eq!(decoded, ev);
    }

    #[test]
    fn verifier_names_the_first_bad_position() {
        let mut a = event();
        a.position = 1;
        a.prev_hash = GENESIS_HASH;
        a.hash = compute_hash(&a);
        let mut b = event();
        b.position = 2;
        b.prev_hash = a.hash;
        b.hash = compute_hash(&b);
        let mut v = ChainVerifier::new(1, GENESIS_HASH);
        assert!(v.check(&a).is_ok());
        let mut altered = b.clone();
        altered.payload = b"{}".to_vec();
        assert!(v.clone().check(&altered).is_err());
        assert!(v.check(&b).is_ok());
        assert_eq!(v.checked(), 2);
        assert_eq!(v.head_hash(), b.hash);
    }
}
