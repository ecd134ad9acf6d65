//! The on-disk index (sled), and the indexer thread that moves the log's tail into it.
//!
//! sled is a cache of the log, never the record: the indexer writes a chunk only after
//! its appends are durable and acknowledged, and on open what sled says is checked
//! against the log (and dropped and rebuilt if it does not match).
//!
//! Tree `paystream-store/v2` (integers big-endian):
//!
//! ```text
//! c/<chunk no u64>                     for each of the chunk's 1,024 positions: segment
//!                                      (first position u64), offset u32, length u32
//! s/<u16 len><stream id><version u64>  positions (u64 each) of the stream's versions
//!                                      `version..` that fell into one chunk (a "run")
//! i/<idempotency key>                  first/last version and position, recorded-at
//!                                      (i64 nanos), stream id of the append
//! x/<recorded-at i64><key>             the same key, ordered by time: what the
//!                                      retention sweep walks
//! m/indexed_through                    last indexed position (a multiple of 1,024)
//! m/indexed_hash                       hash of the record there (ties sled to this log)
//! ```
//!
//! Every key is written once per chunk in one atomic sled batch together with the
//! marker, so sled holds the index of exactly `1..=indexed_through`. Lookups read sled
//! directly (its cache, [`EmbeddedOptions::cache_bytes`](super::EmbeddedOptions), keeps
//! hot pages in memory); nothing here holds an in-memory copy of the history.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use super::index::{ChunkEntries, Loc};
use super::Shared;
use crate::error::StoreError;
use crate::types::{AppendResult, Position, StreamVersion};

/// Positions per index chunk: the unit in which the index moves to sled.
pub(crate) const POSITION_CHUNK: u64 = 1_024;
/// How often the indexer looks for complete chunks. It polls rather than being woken per
/// group commit: a wake-up per commit cost the appender a futex syscall each time.
const INDEX_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Most expired idempotency keys removed per indexer pass (bounded work per step).
const EXPIRE_KEYS_PER_PASS: usize = 4_096;
/// Name of the sled tree the store owns; other trees of the same database are free
/// for read models and checkpoints.
pub(crate) const TREE_NAME: &str = "paystream-store/v2";
/// Layouts of earlier versions, dropped on open (the index is rebuilt from the log).
pub(crate) const OLD_TREE_NAMES: &[&str] = &["paystream-store/v1"];

const META_INDEXED_THROUGH: &[u8] = b"m/indexed_through";
const META_INDEXED_HASH: &[u8] = b"m/indexed_hash";
const CHUNK_PREFIX: &[u8] = b"c/";
const STREAM_PREFIX: &[u8] = b"s/";
const IDEMPOTENCY_PREFIX: &[u8] = b"i/";
const EXPIRY_PREFIX: &[u8] = b"x/";
/// Bytes of one location in a chunk value.
const LOC_BYTES: usize = 16;

/// An idempotency key's append and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    pub result: AppendResult,
    pub recorded_at_nanos: i64,
}

/// What sled's marker says.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Marker {
    /// Every position `1..=indexed_through` is in sled.
    pub indexed_through: Position,
    /// Hash of the record at `indexed_through`.
    pub indexed_hash: [u8; 32],
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + rest.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(rest);
    key
}

fn u64_of(bytes: &[u8]) -> Result<u64, String> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| format!("expected 8 bytes, found {}", bytes.len()))?;
    Ok(u64::from_be_bytes(arr))
}

fn u32_of(bytes: &[u8]) -> Result<u32, String> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| format!("expected 4 bytes, found {}", bytes.len()))?;
    Ok(u32::from_be_bytes(arr))
}

/// `s/<len><stream id>`: every run of the stream sorts under it, by version.
fn stream_prefix(stream_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(STREAM_PREFIX.len() + 2 + stream_id.len() + 8);
    key.extend_from_slice(STREAM_PREFIX);
    // Stream ids are at most MAX_STREAM_ID_BYTES (256) long.
    key.extend_from_slice(&(stream_id.len() as u16).to_be_bytes());
    key.extend_from_slice(stream_id.as_bytes());
    key
}

fn expiry_key(recorded_at_nanos: i64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(EXPIRY_PREFIX.len() + 8 + key.len());
    out.extend_from_slice(EXPIRY_PREFIX);
    // Offset so that the byte order is the time order for negative times too.
    out.extend_from_slice(&((recorded_at_nanos as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn encode_key_entry(e: &KeyEntry) -> Vec<u8> {
    let r = &e.result;
    let mut out = Vec::with_capacity(40 + r.stream_id.len());
    for n in [r.first_version, r.last_version, r.first_position, r.last_position] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&e.recorded_at_nanos.to_be_bytes());
    out.extend_from_slice(r.stream_id.as_bytes());
    out
}

fn decode_key_entry(b: &[u8]) -> Result<KeyEntry, String> {
    if b.len() < 40 {
        return Err("short idempotency entry".to_owned());
    }
    Ok(KeyEntry {
        result: AppendResult {
            first_version: u64_of(&b[0..8])?,
            last_version: u64_of(&b[8..16])?,
            first_position: u64_of(&b[16..24])?,
            last_position: u64_of(&b[24..32])?,
            stream_id: String::from_utf8(b[40..].to_vec()).map_err(|e| e.to_string())?,
        },
        recorded_at_nanos: u64_of(&b[32..40])? as i64,
    })
}

fn corrupt_index(detail: String) -> StoreError {
    StoreError::Index(detail)
}

/// The sled side of the index: lookups and chunk writes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct DiskIndex {
    tree: sled::Tree,
}

impl DiskIndex {
    pub fn new(tree: sled::Tree) -> DiskIndex {
        DiskIndex { tree }
    }

    /// Loads the marker; `Err` means sled cannot be trusted and must be rebuilt.
    pub fn marker(&self) -> Result<Marker, String> {
        let Some(w) = self.tree.get(META_INDEXED_THROUGH).map_err(|e| e.to_string())? else {
            return if self.tree.is_empty() {
                Ok(Marker::default())
            } else {
                Err("entries without a marker".to_owned())
            };
        };
        let indexed_through = u64_of(&w)?;
        if indexed_through % POSITION_CHUNK != 0 {
            return Err(format!("indexed_through {indexed_through} is not a chunk boundary"));
        }
        let hash = self.tree.get(META_INDEXED_HASH).map_err(|e| e.to_string())?.ok_or("missing indexed_hash")?;
        let indexed_hash = hash.as_ref().try_into().map_err(|_| "indexed_hash is not 32 bytes".to_owned())?;
        Ok(Marker { indexed_through, indexed_hash })
    }

    /// Empties the tree (sled is rebuilt from the log).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        Ok(())
    }

    /// Locations of the 1,024 positions of chunk `chunk_no` (positions
    /// `chunk_no * 1024 + 1 ..`).
    pub fn chunk(&self, chunk_no: u64) -> Result<Vec<Loc>, StoreError> {
        let value = self
            .tree
            .get(prefixed(CHUNK_PREFIX, &chunk_no.to_be_bytes()))?
            .ok_or_else(|| corrupt_index(format!("index chunk {chunk_no} missing")))?;
        if value.len() != POSITION_CHUNK as usize * LOC_BYTES {
            return Err(corrupt_index(format!("index chunk {chunk_no} holds {} bytes", value.len())));
        }
        value
            .chunks_exact(LOC_BYTES)
            .map(|b| Ok(Loc { segment: u64_of(&b[0..8])?, offset: u32_of(&b[8..12])?, len: u32_of(&b[12..16])? }))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| corrupt_index(format!("index chunk {chunk_no}: {e}")))
    }

    /// Last version of the stream in sled (0 if none).
    pub fn stream_version(&self, stream_id: &str) -> Result<StreamVersion, StoreError> {
        let prefix = stream_prefix(stream_id);
        let Some(item) = self.tree.scan_prefix(&prefix).next_back() else { return Ok(0) };
        let (key, value) = item?;
        let first = u64_of(&key[prefix.len()..]).map_err(corrupt_index)?;
        let count = (value.len() / 8) as u64;
        Ok(first + count - 1)
    }

    /// Positions of the stream's versions `from_version..` (at most `max`), in sled.
    pub fn stream_positions(
        &self,
        stream_id: &str,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<Position>, StoreError> {
        let prefix = stream_prefix(stream_id);
        let from_version = from_version.max(1);
        let mut out = Vec::new();
        // The run holding `from_version` starts at or before it: begin at the last run
        // key not above `prefix + from_version`.
        let mut start = prefix.clone();
        start.extend_from_slice(&from_version.to_be_bytes());
        let first_key = match self.tree.range(prefix.clone()..=start).next_back() {
            Some(item) => item?.0.to_vec(),
            None => prefix.clone(),
        };
        for item in self.tree.range(first_key..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || key.len() != prefix.len() + 8 {
                break;
            }
            let first = u64_of(&key[prefix.len()..]).map_err(corrupt_index)?;
            for (i, p) in value.chunks_exact(8).enumerate() {
                if first + i as u64 >= from_version {
                    out.push(u64_of(p).map_err(corrupt_index)?);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The append that carried `key`, as sled has it.
    pub fn idempotent(&self, key: &str) -> Result<Option<KeyEntry>, StoreError> {
        match self.tree.get(prefixed(IDEMPOTENCY_PREFIX, key.as_bytes()))? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_key_entry(&value).map_err(corrupt_index)?)),
        }
    }

    /// Writes one complete chunk and moves the marker, in one atomic batch.
    pub fn write_chunk(&self, chunk: &ChunkEntries) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut blob = Vec::with_capacity(POSITION_CHUNK as usize * LOC_BYTES);
        for loc in &chunk.locations {
            blob.extend_from_slice(&loc.segment.to_be_bytes());
            blob.extend_from_slice(&loc.offset.to_be_bytes());
            blob.extend_from_slice(&loc.len.to_be_bytes());
        }
        batch.insert(prefixed(CHUNK_PREFIX, &chunk.chunk_no.to_be_bytes()), blob);
        for run in &chunk.runs {
            let mut key = stream_prefix(&run.stream_id);
            key.extend_from_slice(&run.first_version.to_be_bytes());
            let mut value = Vec::with_capacity(run.positions.len() * 8);
            for p in &run.positions {
                value.extend_from_slice(&p.to_be_bytes());
            }
            batch.insert(key, value);
        }
        for (key, entry) in &chunk.keys {
            batch.insert(prefixed(IDEMPOTENCY_PREFIX, key.as_bytes()), encode_key_entry(entry));
            batch.insert(expiry_key(entry.recorded_at_nanos, key), &[]);
        }
        batch.insert(META_INDEXED_THROUGH, &chunk.last_position.to_be_bytes());
        batch.insert(META_INDEXED_HASH, &chunk.last_hash);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Forgets idempotency keys recorded before `cutoff_nanos` (at most `max`); a key
    /// used again since keeps its newer entry. Returns how many were removed.
    pub fn expire_keys(&self, cutoff_nanos: i64, max: usize) -> Result<usize, StoreError> {
        let end = expiry_key(cutoff_nanos, "");
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self.tree.range(EXPIRY_PREFIX.to_vec()..end).take(max) {
            let (x_key, _) = item?;
            let at = (u64_of(&x_key[EXPIRY_PREFIX.len()..EXPIRY_PREFIX.len() + 8]).map_err(corrupt_index)? ^ (1 << 63))
                as i64;
            let key = &x_key[EXPIRY_PREFIX.len() + 8..];
            let i_key = prefixed(IDEMPOTENCY_PREFIX, key);
            if let Some(value) = self.tree.get(&i_key)? {
                if decode_key_entry(&value).map_err(corrupt_index)?.recorded_at_nanos == at {
                    batch.remove(i_key);
                }
            }
            batch.remove(x_key);
            removed += 1;
        }
        if removed > 0 {
            self.tree.apply_batch(batch)?;
        }
        Ok(removed)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// Moves complete chunks of the in-memory tail to sled, on its own thread; exits (after
/// a last pass and a flush) when the write path ends.
pub(crate) struct Indexer {
    pub shared: Arc<Shared>,
}

impl Indexer {
    /// Runs until `stop` hangs up (the write path ended), then does a last pass.
    pub fn run(self, stop: Receiver<()>) {
        loop {
            let stopping = matches!(stop.recv_timeout(INDEX_INTERVAL), Err(RecvTimeoutError::Disconnected));
            if let Err(err) = self.pass() {
                let reason = format!("event log indexer stopped: {err}; appends are refused, reopen the store");
                tracing::error!(%reason);
                self.shared.set_failure(reason);
                self.shared.indexer_failed.store(true, Ordering::Release);
                return;
            }
            if stopping {
                break;
            }
        }
        if let Err(err) = self.shared.disk.flush() {
            tracing::warn!(error = %err, "sled flush failed at close (the index is rebuilt from the log on open)");
        }
    }

    fn pass(&self) -> Result<(), StoreError> {
        persist_complete_chunks(&self.shared)?;
        let cutoff = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 - self.shared.window_nanos;
        self.shared.disk.expire_keys(cutoff, EXPIRE_KEYS_PER_PASS)?;
        Ok(())
    }
}

/// Writes every complete chunk of the tail to sled, then drops it from memory.
pub(crate) fn persist_complete_chunks(shared: &Shared) -> Result<(), StoreError> {
    loop {
        let chunk = {
            let index = shared.read_index();
            match index.complete_chunk() {
                Some(chunk) => chunk,
                None => return Ok(()),
            }
        };
        shared.disk.write_chunk(&chunk)?;
        shared.write_index().prune_chunk(&chunk);
        shared.indexed_through.store(chunk.last_position, Ordering::Release);
    }
}
