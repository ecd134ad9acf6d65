//! The sled copy of the derived indexes, and the indexer thread that keeps it up to date.
//!
//! sled is a cache of the log, never the record: the indexer tails the log *after*
//! appends are durable and acknowledged, and on open everything sled has is checked
//! against the log (and dropped and rebuilt if it does not match).

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::index::{read_range, READ_MAX_BYTES};
use super::Shared;
use crate::error::StoreError;
use crate::types::{AppendResult, Position};

/// Positions per persisted position-index chunk.
pub(crate) const POSITION_CHUNK: u64 = 1_024;
/// Most events the indexer writes to sled in one atomic batch.
const INDEX_BATCH_EVENTS: usize = 8_192;
/// After being woken, the indexer waits this long so that one sled batch covers many
/// group commits (sled work off the critical path, and far less of it).
const INDEX_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(50);
/// Name of the sled tree the store owns; other trees of the same database are free
/// for read models and checkpoints.
pub(crate) const TREE_NAME: &str = "paystream-store/v1";

const META_INDEXED_THROUGH: &[u8] = b"m/indexed_through";
const META_INDEXED_HASH: &[u8] = b"m/indexed_hash";
const STREAM_PREFIX: &[u8] = b"s/";
const CHUNK_PREFIX: &[u8] = b"p/";
const IDEMPOTENCY_PREFIX: &[u8] = b"i/";
/// Separates stream id and version in stream keys; never occurs in UTF-8.
const STREAM_KEY_SEPARATOR: u8 = 0xFF;

/// What sled holds, loaded and sanity-checked.
#[derive(Debug, Default)]
pub(crate) struct Persisted {
    /// Every position `1..=indexed_through` is in the stream and idempotency indexes.
    pub indexed_through: Position,
    /// Hash of the record at `indexed_through`, to prove sled belongs to this log.
    pub indexed_hash: [u8; 32],
    pub streams: HashMap<String, Vec<Position>>,
    pub idempotency: HashMap<String, AppendResult>,
    /// Segment (first position) and offset of positions `1..=locations.len()`.
    pub locations: Vec<(Position, u32)>,
}

fn stream_key(stream_id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(STREAM_PREFIX.len() + stream_id.len() + 9);
    key.extend_from_slice(STREAM_PREFIX);
    key.extend_from_slice(stream_id.as_bytes());
    key.push(STREAM_KEY_SEPARATOR);
    key.extend_from_slice(&version.to_be_bytes());
    key
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

fn encode_append_result(r: &AppendResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.stream_id.len());
    for n in [r.first_version, r.last_version, r.first_position, r.last_position] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(r.stream_id.as_bytes());
    out
}

fn decode_append_result(b: &[u8]) -> Result<AppendResult, String> {
    if b.len() < 32 {
        return Err("short idempotency entry".to_owned());
    }
    Ok(AppendResult {
        first_version: u64_of(&b[0..8])?,
        last_version: u64_of(&b[8..16])?,
        first_position: u64_of(&b[16..24])?,
        last_position: u64_of(&b[24..32])?,
        stream_id: String::from_utf8(b[32..].to_vec()).map_err(|e| e.to_string())?,
    })
}

/// Loads the derived indexes; `Err` means sled cannot be trusted and must be rebuilt.
pub(crate) fn load(tree: &sled::Tree) -> Result<Persisted, String> {
    let mut p = Persisted::default();
    let Some(w) = tree.get(META_INDEXED_THROUGH).map_err(|e| e.to_string())? else {
        return if tree.is_empty() { Ok(p) } else { Err("entries without an indexed_through marker".to_owned()) };
    };
    p.indexed_through = u64_of(&w)?;
    let hash = tree.get(META_INDEXED_HASH).map_err(|e| e.to_string())?.ok_or("missing indexed_hash")?;
    p.indexed_hash = hash.as_ref().try_into().map_err(|_| "indexed_hash is not 32 bytes".to_owned())?;

    let mut total = 0u64;
    for item in tree.scan_prefix(STREAM_PREFIX) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let rest = &key[STREAM_PREFIX.len()..];
        let sep =
            rest.len().checked_sub(9).filter(|&i| rest[i] == STREAM_KEY_SEPARATOR).ok_or("malformed stream key")?;
        let stream = std::str::from_utf8(&rest[..sep]).map_err(|e| e.to_string())?;
        let version = u64_of(&rest[sep + 1..])?;
        let position = u64_of(&value)?;
        if position == 0 || position > p.indexed_through {
            return Err(format!("stream {stream} v{version} at position {position} beyond the indexed range"));
        }
        let positions = p.streams.entry(stream.to_owned()).or_default();
        if version != positions.len() as u64 + 1 || positions.last().is_some_and(|&l| l >= position) {
            return Err(format!("stream {stream}: version {version} out of sequence"));
        }
        positions.push(position);
        total += 1;
    }
    if total != p.indexed_through {
        return Err(format!("{total} stream entries for {} indexed positions", p.indexed_through));
    }

    for item in tree.scan_prefix(IDEMPOTENCY_PREFIX) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let k = std::str::from_utf8(&key[IDEMPOTENCY_PREFIX.len()..]).map_err(|e| e.to_string())?;
        let result = decode_append_result(&value)?;
        if result.last_position > p.indexed_through {
            return Err(format!("idempotency key {k} beyond the indexed range"));
        }
        p.idempotency.insert(k.to_owned(), result);
    }

    for (chunk_no, item) in tree.scan_prefix(CHUNK_PREFIX).enumerate() {
        let (key, value) = item.map_err(|e| e.to_string())?;
        if u64_of(&key[CHUNK_PREFIX.len()..])? != chunk_no as u64 {
            return Err(format!("position chunk {chunk_no} missing"));
        }
        if value.len() != POSITION_CHUNK as usize * 12 {
            return Err(format!("position chunk {chunk_no} has {} bytes", value.len()));
        }
        for entry in value.chunks_exact(12) {
            let first = u64_of(&entry[..8])?;
            let offset = u32::from_be_bytes([entry[8], entry[9], entry[10], entry[11]]);
            p.locations.push((first, offset));
        }
    }
    if p.locations.len() as u64 > p.indexed_through {
        return Err("position chunks beyond the indexed range".to_owned());
    }
    Ok(p)
}

/// Tails the log into sled. Runs on its own thread; woken by the appender after each
/// group commit; exits (after a last catch-up and a flush) when the appender hangs up.
pub(crate) struct Indexer {
    pub tree: sled::Tree,
    pub shared: Arc<Shared>,
    pub indexed_through: Position,
    pub chunks_done: u64,
}

impl Indexer {
    pub fn run(mut self, wake: Receiver<()>) {
        loop {
            let mut hung_up = wake.recv().is_err();
            if !hung_up {
                // Let more commits accumulate; a hang-up (close) ends the wait early.
                let deadline = std::time::Instant::now() + INDEX_DEBOUNCE;
                loop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match wake.recv_timeout(left) {
                        Ok(()) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            hung_up = true;
                            break;
                        }
                    }
                }
            }
            if let Err(err) = self.catch_up() {
                tracing::error!(error = %err, "event log indexer stopped; sled will be rebuilt on the next open");
                return;
            }
            if hung_up {
                break;
            }
        }
        if let Err(err) = self.tree.flush() {
            tracing::warn!(error = %err, "sled flush failed at close (the index is rebuilt from the log on open)");
        }
    }

    pub fn catch_up(&mut self) -> Result<(), StoreError> {
        if std::env::var("NOIDX").is_ok() {
            return Ok(());
        }
        loop {
            let (head, ranges) = {
                let index = self.shared.read_index();
                let ranges = index.plan_read_all(self.indexed_through + 1, INDEX_BATCH_EVENTS, READ_MAX_BYTES);
                (index.head, ranges)
            };
            if self.indexed_through >= head || ranges.is_empty() {
                return Ok(());
            }
            let mut events = Vec::new();
            for range in &ranges {
                read_range(range, &mut events)?;
            }
            let mut batch = sled::Batch::default();
            let mut last_hash = [0u8; 32];
            for (event, trailer) in &events {
                batch.insert(stream_key(&event.stream_id, event.stream_version), &event.position.to_be_bytes());
                if event.position == trailer.append_first {
                    if let Some(key) = &event.metadata.idempotency_key {
                        let count = u64::from(trailer.append_count);
                        let result = AppendResult {
                            stream_id: event.stream_id.clone(),
                            first_version: event.stream_version,
                            last_version: event.stream_version + count - 1,
                            first_position: event.position,
                            last_position: event.position + count - 1,
                        };
                        batch.insert(prefixed(IDEMPOTENCY_PREFIX, key.as_bytes()), encode_append_result(&result));
                    }
                }
                self.indexed_through = event.position;
                last_hash = event.hash;
            }
            let index = self.shared.read_index();
            while (self.chunks_done + 1) * POSITION_CHUNK <= self.indexed_through {
                let first = self.chunks_done * POSITION_CHUNK + 1;
                let mut blob = Vec::with_capacity(POSITION_CHUNK as usize * 12);
                for position in first..first + POSITION_CHUNK {
                    let (segment, offset) = index
                        .location(position)
                        .ok_or_else(|| StoreError::Index(format!("position {position} not in the index")))?;
                    blob.extend_from_slice(&segment.to_be_bytes());
                    blob.extend_from_slice(&offset.to_be_bytes());
                }
                batch.insert(prefixed(CHUNK_PREFIX, &self.chunks_done.to_be_bytes()), blob);
                self.chunks_done += 1;
            }
            drop(index);
            batch.insert(META_INDEXED_THROUGH, &self.indexed_through.to_be_bytes());
            batch.insert(META_INDEXED_HASH, &last_hash);
            self.tree.apply_batch(batch)?;
        }
    }
}
