//! How the facts are stored: one sled tree (`<data>/facts`) behind a bounded
//! write-back cache, and the checkpoint that says which log position the
//! stored facts reflect.
//!
//! # Keys
//!
//! ```text
//! \0checkpoint                         format | position u64 | hash [32] | latest_at i64 | since_prune u64 | prune cursor
//! wa<sha256(instrument)[..16]>         attempts window of a card or account (unix seconds, i64 each)
//! wc<sha256(merchant uuid ‖ customer id)[..16]>  attempts window of a merchant's customer
//! wn<sha256(instrument)[..16]>         declines window of an instrument
//! d<day u32><merchant uuid><currency>  volume authorized that UTC day (i64 minor units)
//! p<payment uuid>                      a payment awaiting the acquirer: merchant, initiated_at, instrument
//! e<payment uuid>                      an authorization and when its hold lapses (i64 unix s)
//! k<key hash>                          an API key (JSON)
//! ```
//!
//! Integers are big-endian; the day with its sign bit flipped, so sled's byte
//! order is the days' order (days before yesterday are deleted as a range).
//! Windows share the prefix `w`, so a prune step walks them in key order from
//! the cursor the checkpoint keeps.
//!
//! # Write-back
//!
//! Changes go to `dirty` (typed values, so a busy window is not re-encoded on
//! every event). A flush moves `dirty` into `flushing`, which readers still
//! consult while one `sled::Batch` (the changes and the checkpoint) is applied
//! outside the lock; then `flushing` is dropped. A key written for the first
//! time since the last flush and deleted before the next (a payment authorized
//! and captured within a second) never reaches sled.
//!
//! Values read from sled (absent ones too) are remembered in a small clean
//! cache ([`CLEAN_ENTRIES`] keys in each of two generations) until the key is
//! written: a payment's risk check reads its card's and customer's windows, and
//! the follower changes the same windows a few milliseconds later.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use paystream_domain::api_key::Role;
use paystream_domain::id::{ApiKeyId, MerchantId};
use paystream_store::Position;
use serde::{Deserialize, Serialize};

use super::{KeyRecord, PendingPayment};

/// The checkpoint key, first in key order.
pub(crate) const CHECKPOINT_KEY: &[u8] = b"\0checkpoint";
/// Layout version of everything in the facts database; another value in a
/// checkpoint means the database is dropped and rebuilt from the log.
pub(crate) const FACTS_FORMAT: u8 = 3;
/// Estimated bytes a cached entry costs beyond its key and value (map node,
/// allocation headers).
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// Keys in each generation of the clean cache (see the module docs): at most
/// twice this many values read from sled stay in memory, about 100 bytes each.
pub(crate) const CLEAN_ENTRIES: usize = 4_096;

/// First byte of every window key; the second says which window.
pub(crate) const WINDOW: u8 = b'w';
pub(crate) const ATTEMPTS: u8 = b'a';
pub(crate) const CUSTOMER_ATTEMPTS: u8 = b'c';
pub(crate) const DECLINES: u8 = b'n';
pub(crate) const VOLUME: u8 = b'd';
pub(crate) const PENDING: u8 = b'p';
pub(crate) const EXPIRY: u8 = b'e';
pub(crate) const KEY: u8 = b'k';

/// A stored fact, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// Event times (unix seconds), oldest first.
    Window(VecDeque<i64>),
    Volume(i64),
    Pending(PendingPayment),
    Expiry(i64),
    Key(KeyRecord),
}

/// An API key as stored.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: ApiKeyId,
    role: Role,
    merchant_id: Option<MerchantId>,
    revoked: bool,
}

/// Why stored bytes could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("facts database: cannot parse the value of key {key}")]
pub(crate) struct Unparsable {
    pub key: String,
}

fn unparsable(key: &[u8]) -> Unparsable {
    Unparsable { key: String::from_utf8_lossy(key).into_owned() }
}

fn i64_at(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl Value {
    /// Estimated bytes in memory.
    fn size(&self) -> usize {
        match self {
            Value::Window(window) => 8 * window.len(),
            Value::Pending(pending) => 32 + pending.instrument.len(),
            Value::Key(_) => 64,
            Value::Volume(_) | Value::Expiry(_) => 8,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Value::Window(window) => window.iter().flat_map(|t| t.to_be_bytes()).collect(),
            Value::Volume(v) | Value::Expiry(v) => v.to_be_bytes().to_vec(),
            Value::Pending(p) => {
                let mut out = Vec::with_capacity(24 + p.instrument.len());
                out.extend_from_slice(p.merchant_id.as_uuid().as_bytes());
                out.extend_from_slice(&p.initiated_at.to_be_bytes());
                out.extend_from_slice(p.instrument.as_bytes());
                out
            }
            Value::Key(k) => {
                let stored = StoredKey { id: k.id, role: k.role, merchant_id: k.merchant_id, revoked: k.revoked };
                // A struct of ids, an enum and a bool always serializes.
                serde_json::to_vec(&stored).unwrap_or_default()
            }
        }
    }

    /// Decodes the value stored under `key` (its first byte says the kind).
    pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<Value, Unparsable> {
        let parsed = match key.first() {
            Some(&WINDOW) if bytes.len().is_multiple_of(8) => {
                Some(Value::Window(bytes.chunks_exact(8).filter_map(|c| i64_at(c, 0)).collect()))
            }
            Some(&VOLUME) if bytes.len() == 8 => i64_at(bytes, 0).map(Value::Volume),
            Some(&EXPIRY) if bytes.len() == 8 => i64_at(bytes, 0).map(Value::Expiry),
            Some(&PENDING) if bytes.len() >= 24 => {
                let merchant = uuid::Uuid::from_slice(&bytes[..16]).ok();
                let instrument = std::str::from_utf8(&bytes[24..]).ok();
                match (merchant, i64_at(bytes, 16), instrument) {
                    (Some(m), Some(initiated_at), Some(i)) => Some(Value::Pending(PendingPayment {
                        merchant_id: MerchantId::from_uuid(m),
                        instrument: i.to_string(),
                        initiated_at,
                    })),
                    _ => None,
                }
            }
            Some(&KEY) => serde_json::from_slice::<StoredKey>(bytes).ok().map(|k| {
                Value::Key(KeyRecord { id: k.id, role: k.role, merchant_id: k.merchant_id, revoked: k.revoked })
            }),
            _ => None,
        };
        parsed.ok_or_else(|| unparsable(key))
    }
}

/// The last entry of the window stored as `bytes` under `key`, without decoding the rest.
pub(crate) fn last_entry(key: &[u8], bytes: &[u8]) -> Result<Option<i64>, Unparsable> {
    if key.first() != Some(&WINDOW) || !bytes.len().is_multiple_of(8) {
        return Err(unparsable(key));
    }
    Ok(bytes.len().checked_sub(8).and_then(|at| i64_at(bytes, at)))
}

/// What the stored facts reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub position: Position,
    /// `RecordedEvent::hash` of the event at `position` (zeros for position 0).
    pub hash: [u8; 32],
    /// Latest event time seen: the clock windows are pruned by.
    pub latest_at: i64,
    /// Events applied since the last prune step.
    pub since_prune: u64,
    /// The last window key the last prune step looked at (empty: start over).
    pub prune_cursor: Vec<u8>,
}

impl Checkpoint {
    pub(crate) const EMPTY: Checkpoint =
        Checkpoint { position: 0, hash: [0; 32], latest_at: 0, since_prune: 0, prune_cursor: Vec::new() };

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(57 + self.prune_cursor.len());
        out.push(FACTS_FORMAT);
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.latest_at.to_be_bytes());
        out.extend_from_slice(&self.since_prune.to_be_bytes());
        out.extend_from_slice(&self.prune_cursor);
        out
    }

    /// `None` when the bytes are not a checkpoint of this [`FACTS_FORMAT`].
    pub(crate) fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() < 57 || bytes[0] != FACTS_FORMAT {
            return None;
        }
        Some(Checkpoint {
            position: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            hash: bytes[9..41].try_into().ok()?,
            latest_at: i64_at(bytes, 41)?,
            since_prune: u64::from_be_bytes(bytes[49..57].try_into().ok()?),
            prune_cursor: bytes[57..].to_vec(),
        })
    }
}

/// A pending write: the value (`None` deletes) and whether the key is known
/// to be absent from sled and from the batch being flushed, so that deleting
/// it needs no write at all.
#[derive(Debug, Clone)]
struct Slot {
    value: Option<Value>,
    fresh: bool,
}

fn slot_size(key: &[u8], slot: &Slot) -> usize {
    key.len() + ENTRY_OVERHEAD_BYTES + slot.value.as_ref().map_or(0, Value::size)
}

type Changes = BTreeMap<Vec<u8>, Slot>;

/// A batch being written: the frozen changes and the checkpoint written with them.
pub(crate) struct Frozen {
    changes: Arc<Changes>,
    checkpoint: Checkpoint,
}

impl Frozen {
    /// Writes the changes and the checkpoint in one atomic sled batch.
    pub(crate) fn write(&self, tree: &sled::Tree) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (key, slot) in self.changes.iter() {
            match &slot.value {
                Some(value) => batch.insert(key.as_slice(), value.encode()),
                None if !slot.fresh => batch.remove(key.as_slice()),
                None => {}
            }
        }
        batch.insert(CHECKPOINT_KEY, self.checkpoint.encode());
        tree.apply_batch(batch)
    }
}

/// The write-back cache in front of the facts tree.
pub(crate) struct WriteBack {
    tree: sled::Tree,
    dirty: Changes,
    dirty_bytes: usize,
    flushing: Option<Arc<Changes>>,
    clean: Clean,
}

/// Values as sled holds them (`None`: absent) for keys not written since they
/// were read, in two generations.
#[derive(Default)]
struct Clean {
    current: HashMap<Vec<u8>, Option<Value>>,
    previous: HashMap<Vec<u8>, Option<Value>>,
}

impl Clean {
    fn get(&self, key: &[u8]) -> Option<&Option<Value>> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    fn insert(&mut self, key: &[u8], value: Option<Value>) {
        if self.current.len() >= CLEAN_ENTRIES {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key.to_vec(), value);
    }

    fn remove(&mut self, key: &[u8]) -> Option<Option<Value>> {
        let current = self.current.remove(key);
        let previous = self.previous.remove(key);
        current.or(previous)
    }
}

impl WriteBack {
    pub(crate) fn new(tree: sled::Tree) -> WriteBack {
        WriteBack { tree, dirty: Changes::new(), dirty_bytes: 0, flushing: None, clean: Clean::default() }
    }

    pub(crate) fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Calls `f` with the current value of `key`: unflushed changes first,
    /// then the batch being written, then the clean cache, then sled.
    pub(crate) fn read<R>(&mut self, key: &[u8], f: impl FnOnce(Option<&Value>) -> R) -> Result<R, ReadError> {
        if let Some(slot) = self.dirty.get(key) {
            return Ok(f(slot.value.as_ref()));
        }
        if let Some(slot) = self.flushing.as_ref().and_then(|changes| changes.get(key)) {
            return Ok(f(slot.value.as_ref()));
        }
        if let Some(value) = self.clean.get(key) {
            return Ok(f(value.as_ref()));
        }
        let value = match self.tree.get(key)? {
            Some(bytes) => Some(Value::decode(key, &bytes)?),
            None => None,
        };
        let answer = f(value.as_ref());
        self.clean.insert(key, value);
        Ok(answer)
    }

    /// Takes the current value of `key` out for a change that [`WriteBack::put`]
    /// brings back; the flag says whether the key is absent from sled and the
    /// batch being written.
    pub(crate) fn take(&mut self, key: &[u8]) -> Result<(Option<Value>, bool), ReadError> {
        if let Some(slot) = self.dirty.remove(key) {
            self.dirty_bytes -= slot_size(key, &slot);
            return Ok((slot.value, slot.fresh));
        }
        if let Some(slot) = self.flushing.as_ref().and_then(|changes| changes.get(key)) {
            let fresh = slot.value.is_none();
            return Ok((slot.value.clone(), fresh));
        }
        // Absent from sled when read, and not written since (a write forgets it).
        if let Some(value) = self.clean.remove(key) {
            let fresh = value.is_none();
            return Ok((value, fresh));
        }
        match self.tree.get(key)? {
            Some(bytes) => Ok((Some(Value::decode(key, &bytes)?), false)),
            None => Ok((None, true)),
        }
    }

    /// Writes `value` under `key`; `fresh` as returned by [`WriteBack::take`]
    /// (or `true` for a key that cannot exist yet, such as a new payment's).
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Value, fresh: bool) {
        self.clean.remove(&key);
        // A key already changed since the last flush keeps what is known of it.
        let fresh = match self.dirty.remove(&key) {
            Some(old) => {
                self.dirty_bytes -= slot_size(&key, &old);
                old.fresh
            }
            None => fresh,
        };
        let slot = Slot { value: Some(value), fresh };
        self.dirty_bytes += slot_size(&key, &slot);
        self.dirty.insert(key, slot);
    }

    /// Deletes `key`.
    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.clean.remove(&key);
        if let Some(old) = self.dirty.remove(&key) {
            self.dirty_bytes -= slot_size(&key, &old);
            if old.fresh {
                return;
            }
        }
        let slot = Slot { value: None, fresh: false };
        self.dirty_bytes += slot_size(&key, &slot);
        self.dirty.insert(key, slot);
    }

    /// Moves the unflushed changes into the batch being written; the caller
    /// writes it with [`Frozen::write`] and then calls [`WriteBack::flushed`].
    pub(crate) fn freeze(&mut self, checkpoint: Checkpoint) -> Frozen {
        debug_assert!(self.flushing.is_none(), "one flush at a time");
        let changes = Arc::new(std::mem::take(&mut self.dirty));
        self.dirty_bytes = 0;
        self.flushing = Some(Arc::clone(&changes));
        Frozen { changes, checkpoint }
    }

    /// The frozen batch is in sled (or failed: then its changes are lost with
    /// the process, which rebuilds from the last checkpoint).
    pub(crate) fn flushed(&mut self) {
        self.flushing = None;
    }

    /// Up to `max` stored entries in `range`, in key order. Only called right
    /// after a flush, when sled holds every change.
    pub(crate) fn stored<R: std::ops::RangeBounds<Vec<u8>>>(
        &self,
        range: R,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, sled::IVec)>, sled::Error> {
        debug_assert!(self.dirty.is_empty() && self.flushing.is_none(), "scans run on flushed state");
        self.tree.range(range).take(max).map(|entry| entry.map(|(k, v)| (k.to_vec(), v))).collect()
    }
}

/// A read from the facts database failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Unparsable(#[from] Unparsable),
}

/// Opens (creating it if needed) the facts database with a page cache of
/// `cache_bytes`; a database sled reports as corrupt is moved aside
/// (`facts.corrupt-<unix time>`) and started anew (the facts are rebuilt from
/// the log).
pub(crate) fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    // Derived data: sled's throughput mode, and no background fsync (a crash
    // loses at most what the log still holds; the checkpoint moves with the data).
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None);
    paystream_store::open_derived_db(path, &config, "facts database")
}

/// A temporary facts database (tests, tools): removed when dropped.
pub(crate) fn temporary_db(cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    sled::Config::new().temporary(true).cache_capacity(cache_bytes).open()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn values_and_checkpoints_round_trip() {
        let merchant = MerchantId::from_uuid(uuid::Uuid::from_u128(42));
        let cases = [
            (vec![WINDOW, ATTEMPTS, b'z'], Value::Window(VecDeque::from([-5, 0, 1_799_020_800]))),
            (vec![VOLUME, 1], Value::Volume(-12)),
            (vec![EXPIRY, 1], Value::Expiry(99)),
            (
                vec![PENDING, 1],
                Value::Pending(PendingPayment { merchant_id: merchant, instrument: "card:fp".into(), initiated_at: 7 }),
            ),
            (
                vec![KEY, b'h'],
                Value::Key(KeyRecord {
                    id: ApiKeyId::from_uuid(uuid::Uuid::from_u128(1)),
                    role: Role::Merchant,
                    merchant_id: Some(merchant),
                    revoked: true,
                }),
            ),
        ];
        for (key, value) in cases {
            assert_eq!(Value::decode(&key, &value.encode()).unwrap(), value);
        }
        assert!(Value::decode(&[VOLUME], b"short").is_err());
        let checkpoint =
            Checkpoint { position: 9, hash: [3; 32], latest_at: -1, since_prune: 17, prune_cursor: b"wa42".to_vec() };
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Some(checkpoint.clone()));
        let mut other_format = checkpoint.encode();
        other_format[0] = FACTS_FORMAT + 1;
        assert_eq!(Checkpoint::decode(&other_format), None);
    }

    #[test]
    fn the_clean_cache_never_answers_for_a_key_written_since_it_was_read() {
        let db = temporary_db(1 << 20).unwrap();
        let mut cache = WriteBack::new((*db).clone());
        let key = vec![VOLUME, 7];
        assert_eq!(cache.read(&key, |v| v.cloned()).unwrap(), None, "absent, and remembered as absent");
        let (value, fresh) = cache.take(&key).unwrap();
        assert_eq!((value, fresh), (None, true), "absent from sled: a delete before the flush needs no write");
        cache.put(key.clone(), Value::Volume(5), true);
        cache.freeze(Checkpoint::EMPTY).write(&db).unwrap();
        cache.flushed();
        assert_eq!(cache.read(&key, |v| v.cloned()).unwrap(), Some(Value::Volume(5)));
        // A write forgets the remembered value at once.
        cache.put(key.clone(), Value::Volume(9), false);
        assert_eq!(cache.read(&key, |v| v.cloned()).unwrap(), Some(Value::Volume(9)));
        cache.freeze(Checkpoint::EMPTY).write(&db).unwrap();
        cache.flushed();
        assert_eq!(cache.read(&key, |v| v.cloned()).unwrap(), Some(Value::Volume(9)));
        let (value, fresh) = cache.take(&key).unwrap();
        assert_eq!((value, fresh), (Some(Value::Volume(9)), false));
        cache.delete(key.clone());
        cache.freeze(Checkpoint::EMPTY).write(&db).unwrap();
        cache.flushed();
        assert_eq!(cache.read(&key, |v| v.cloned()).unwrap(), None);
        assert!(db.get(&key).unwrap().is_none());
    }

    #[test]
    fn a_key_written_and_deleted_between_flushes_never_reaches_sled() {
        let db = temporary_db(1 << 20).unwrap();
        let mut cache = WriteBack::new((*db).clone());
        cache.put(vec![EXPIRY, 1], Value::Expiry(1), true);
        cache.put(vec![EXPIRY, 2], Value::Expiry(2), true);
        cache.delete(vec![EXPIRY, 1]);
        let frozen = cache.freeze(Checkpoint::EMPTY);
        assert_eq!(
            cache.read(&[EXPIRY, 2], |v| v.cloned()).unwrap(),
            Some(Value::Expiry(2)),
            "readable while flushing"
        );
        frozen.write(&db).unwrap();
        cache.flushed();
        assert_eq!(cache.read(&[EXPIRY, 2], |v| v.cloned()).unwrap(), Some(Value::Expiry(2)));
        cache.delete(vec![EXPIRY, 2]);
        cache.freeze(Checkpoint::EMPTY).write(&db).unwrap();
        cache.flushed();
        let keys: Vec<_> = db.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        assert_eq!(keys, [CHECKPOINT_KEY.to_vec()]);
    }
}
