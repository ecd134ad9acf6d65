//! The sled copy of the derived indexes, and the indexer thread that keeps it up to date.
//!
//! sled is a cache of the log, never the record: the indexer tails the log *after*
//! appends are durable and acknowledged, and on open everything sled has is checked
//! against the log (and dropped and rebuilt if it does not match).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use super::index::{read_range, READ_MAX_BYTES};
use super::Shared;
use crate::error::StoreError;
use crate::types::{AppendResult, Position};

/// Positions per index chunk: the unit in which the indexer writes to sled.
pub(crate) const POSITION_CHUNK: u64 = 1_024;
/// How often the indexer looks for complete chunks. It polls rather than being woken per
/// group commit: a wake-up per commit cost the appender a futex syscall each time.
const INDEX_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Name of the sled tree the store owns; other trees of the same database are free
/// for read models and checkpoints.
pub(crate) const TREE_NAME: &str = "paystream-store/v1";

const META_INDEXED_THROUGH: &[u8] = b"m/indexed_through";
const META_INDEXED_HASH: &[u8] = b"m/indexed_hash";
const CHUNK_PREFIX: &[u8] = b"c/";
const IDEMPOTENCY_PREFIX: &[u8] = b"i/";

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

    for (chunk_no, item) in tree.scan_prefix(CHUNK_PREFIX).enumerate() {
        let (key, value) = item.map_err(|e| e.to_string())?;
        if u64_of(&key[CHUNK_PREFIX.len()..])? != chunk_no as u64 {
            return Err(format!("index chunk {chunk_no} missing"));
        }
        decode_chunk(&value, &mut p).map_err(|e| format!("index chunk {chunk_no}: {e}"))?;
    }
    if p.locations.len() as u64 != p.indexed_through {
        return Err(format!(
            "index chunks cover {} positions, indexed_through is {}",
            p.locations.len(),
            p.indexed_through
        ));
    }

    for item in tree.scan_prefix(IDEMPOTENCY_PREFIX) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let k = std::str::from_utf8(&key[IDEMPOTENCY_PREFIX.len()..]).map_err(|e| e.to_string())?;
        let result = decode_append_result(&value)?;
        // Written with the chunk of the append's first event; the append may end after it.
        if result.first_position > p.indexed_through {
            return Err(format!("idempotency key {k} beyond the indexed range"));
        }
        p.idempotency.insert(k.to_owned(), result);
    }

    Ok(p)
}

/// Chunk value: for each of its positions, in order: segment (first position, u64),
/// offset (u32), stream version (u64), stream id (u16 length + UTF-8), all big-endian.
fn encode_chunk_entry(out: &mut Vec<u8>, segment: Position, offset: u32, version: u64, stream_id: &str) {
    out.extend_from_slice(&segment.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    // Stream ids are at most MAX_STREAM_ID_BYTES (256) long.
    out.extend_from_slice(&(stream_id.len() as u16).to_be_bytes());
    out.extend_from_slice(stream_id.as_bytes());
}

fn decode_chunk(mut b: &[u8], p: &mut Persisted) -> Result<(), String> {
    let mut entries = 0;
    while !b.is_empty() {
        if b.len() < 22 {
            return Err("truncated entry".to_owned());
        }
        let segment = u64_of(&b[0..8])?;
        let offset = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let version = u64_of(&b[12..20])?;
        let len = u16::from_be_bytes([b[20], b[21]]) as usize;
        let stream = b.get(22..22 + len).ok_or("truncated stream id")?;
        let stream = std::str::from_utf8(stream).map_err(|e| e.to_string())?;
        let position = p.locations.len() as u64 + 1;
        let positions = p.streams.entry(stream.to_owned()).or_default();
        if version != positions.len() as u64 + 1 {
            return Err(format!("stream {stream}: version {version} out of sequence"));
        }
        positions.push(position);
        p.locations.push((segment, offset));
        b = &b[22 + len..];
        entries += 1;
    }
    if entries != POSITION_CHUNK {
        return Err(format!("{entries} entries"));
    }
    Ok(())
}

/// Tails the log into sled, on its own thread; exits (after a last catch-up and a flush)
/// when the appender hangs up.
pub(crate) struct Indexer {
    pub tree: sled::Tree,
    pub shared: Arc<Shared>,
    pub indexed_through: Position,
}

impl Indexer {
    /// Runs until `stop` hangs up (the appender exits), then does a last pass.
    pub fn run(mut self, stop: Receiver<()>) {
        loop {
            let stopping = matches!(stop.recv_timeout(INDEX_INTERVAL), Err(RecvTimeoutError::Disconnected));
            if let Err(err) = self.catch_up() {
                tracing::error!(error = %err, "event log indexer stopped; sled is rebuilt from the log on the next open");
                return;
            }
            if stopping {
                break;
            }
        }
        if let Err(err) = self.tree.flush() {
            tracing::warn!(error = %err, "sled flush failed at close (the index is rebuilt from the log on open)");
        }
    }

    /// Writes every complete chunk not yet in sled: one atomic sled batch per chunk
    /// (its entries, the idempotency keys of appends starting in it, the marker).
    pub fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let first = self.indexed_through + 1;
            let ranges = {
                let index = self.shared.read_index();
                if index.head < self.indexed_through + POSITION_CHUNK {
                    return Ok(());
                }
                index.plan_read_all(first, POSITION_CHUNK as usize, READ_MAX_BYTES)
            };
            let mut events = Vec::with_capacity(POSITION_CHUNK as usize);
            for range in &ranges {
                read_range(range, &mut events)?;
            }
            if events.len() as u64 != POSITION_CHUNK {
                // READ_MAX_BYTES is far above 1,024 maximal records, so this is a bug.
                return Err(StoreError::Index(format!("chunk from {first} read {} events", events.len())));
            }
            let mut batch = sled::Batch::default();
            let mut blob = Vec::with_capacity(POSITION_CHUNK as usize * 64);
            {
                let index = self.shared.read_index();
                for (event, _) in &events {
                    let (segment, offset) = index
                        .location(event.position)
                        .ok_or_else(|| StoreError::Index(format!("position {} not in the index", event.position)))?;
                    encode_chunk_entry(&mut blob, segment, offset, event.stream_version, &event.stream_id);
                }
            }
            for (event, trailer) in &events {
                if event.position != trailer.append_first {
                    continue;
                }
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
            let chunk_no = self.indexed_through / POSITION_CHUNK;
            batch.insert(prefixed(CHUNK_PREFIX, &chunk_no.to_be_bytes()), blob);
            let last = events.last().map(|(e, _)| (e.position, e.hash));
            let Some((position, hash)) = last else { return Ok(()) };
            batch.insert(META_INDEXED_THROUGH, &position.to_be_bytes());
            batch.insert(META_INDEXED_HASH, &hash);
            self.tree.apply_batch(batch)?;
            self.indexed_through = position;
        }
    }
}
