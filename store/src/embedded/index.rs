//! The in-memory part of the index: the log's tail that sled does not hold yet, and
//! the read path.
//!
//! Positions `1..=indexed_through` are indexed in sled ([`DiskIndex`]); the tail
//! `indexed_through + 1..=head` is held here, entry by entry, until the indexer writes
//! it to sled in chunks of 1,024 and prunes it. The tail is what was appended in the
//! last fraction of a second (the indexer runs every 50 ms), so its size is
//! proportional to live work, never to the length of the log; the appender waits when
//! it passes [`MAX_UNINDEXED_EVENTS`] (sled not keeping up).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::derived::{KeyEntry, POSITION_CHUNK};
use super::segment::{decode_body, parse_frame, Frame, Trailer};
use crate::error::StoreError;
use crate::types::{AppendResult, Position, RecordedEvent, StreamVersion};

/// Most bytes one `read_all` call reads from disk; it returns fewer events beyond this.
pub const READ_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Most positions the in-memory tail may hold before the appender waits for the
/// indexer (about 80 bytes each, so at most ~20 MiB; normally a few thousand).
pub const MAX_UNINDEXED_EVENTS: u64 = 256 * POSITION_CHUNK;

/// Where a record is: its segment (by first position), offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: Position,
    pub offset: u32,
    pub len: u32,
}

/// One position of the tail.
#[derive(Debug, Clone)]
pub(crate) struct TailEntry {
    pub loc: Loc,
    pub stream_id: Arc<str>,
    pub version: StreamVersion,
    pub hash: [u8; 32],
    /// Set on the first event of an append that carried an idempotency key.
    pub key: Option<Arc<str>>,
}

/// The versions of a stream that are in the tail.
#[derive(Debug)]
pub(crate) struct StreamTail {
    pub first_version: StreamVersion,
    pub positions: Vec<Position>,
}

impl StreamTail {
    fn last_version(&self) -> StreamVersion {
        self.first_version + self.positions.len() as u64 - 1
    }
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub first: Position,
    pub file: Arc<File>,
}

/// Most streams the stream cache holds (two generations of half as many).
pub const STREAM_CACHE_STREAMS: usize = 16_384;
/// Longest stream the cache keeps (versions in sled); longer ones are read from sled.
pub const STREAM_CACHE_MAX_VERSIONS: usize = 64;

/// Where each version of a stream is, for the versions sled holds: what a read of a
/// hot stream (a merchant, a payment being captured) needs without asking sled.
pub(crate) type CachedStream = Arc<Vec<(Position, Loc)>>;

/// A bounded cache of recently read streams, in two generations: lookups see both,
/// inserts go to the young one, and when it is full the old one is dropped. Filled by
/// readers only while no chunk was written since their sled read (checked against
/// `indexed_through` under the index's write lock), and emptied of a stream whenever a
/// chunk holding it goes to sled, so an entry is always exactly what sled holds.
#[derive(Debug, Default)]
pub(crate) struct StreamCache {
    young: HashMap<Arc<str>, CachedStream>,
    old: HashMap<Arc<str>, CachedStream>,
}

impl StreamCache {
    pub fn get(&self, stream_id: &str) -> Option<&CachedStream> {
        self.young.get(stream_id).or_else(|| self.old.get(stream_id))
    }

    fn insert(&mut self, stream_id: Arc<str>, versions: CachedStream) {
        if self.young.len() >= STREAM_CACHE_STREAMS / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(stream_id, versions);
    }

    fn remove(&mut self, stream_id: &str) {
        self.young.remove(stream_id);
        self.old.remove(stream_id);
    }
}

/// Everything readers and the appender consult in memory; the syncer (publish), the
/// indexer (prune) and recovery are its only writers.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub segments: Vec<SegmentFile>,
    pub head: Position,
    pub last_hash: [u8; 32],
    pub last_recorded_at_nanos: i64,
    /// Positions `1..=indexed_through` are in sled.
    pub indexed_through: Position,
    /// Positions `indexed_through + 1..=head`, in order.
    pub tail: VecDeque<TailEntry>,
    pub streams: HashMap<Arc<str>, StreamTail>,
    pub keys: HashMap<Arc<str>, KeyEntry>,
    pub stream_cache: StreamCache,
}

/// A complete chunk of the tail, as written to sled.
pub(crate) struct ChunkEntries {
    pub chunk_no: u64,
    pub last_position: Position,
    pub last_hash: [u8; 32],
    pub locations: Vec<Loc>,
    pub runs: Vec<Run>,
    pub keys: Vec<(Arc<str>, KeyEntry)>,
}

/// Consecutive versions of one stream within a chunk.
pub(crate) struct Run {
    pub stream_id: Arc<str>,
    pub first_version: StreamVersion,
    pub positions: Vec<Position>,
}

/// A contiguous byte range of one segment holding `count` records from `first`.
pub(crate) struct ReadRange {
    pub file: Arc<File>,
    pub start: u64,
    pub end: u64,
    pub first: Position,
    pub count: usize,
    /// First position of the segment the range is in.
    pub segment: Position,
}

impl Index {
    /// Appends one position to the tail (publish and recovery).
    pub fn push(&mut self, position: Position, entry: TailEntry, key: Option<KeyEntry>) {
        debug_assert_eq!(position, self.indexed_through + self.tail.len() as u64 + 1);
        match self.streams.get_mut(&entry.stream_id) {
            Some(s) => s.positions.push(position),
            None => {
                let s = StreamTail { first_version: entry.version, positions: vec![position] };
                self.streams.insert(Arc::clone(&entry.stream_id), s);
            }
        }
        if let (Some(k), Some(e)) = (&entry.key, key) {
            self.keys.insert(Arc::clone(k), e);
        }
        self.tail.push_back(entry);
    }

    /// The stream's last version if the tail holds any of it.
    pub fn tail_stream_version(&self, stream_id: &str) -> Option<StreamVersion> {
        self.streams.get(stream_id).map(StreamTail::last_version)
    }

    /// The idempotency key's entry if its append is in the tail.
    pub fn tail_key(&self, key: &str) -> Option<&KeyEntry> {
        self.keys.get(key)
    }

    /// The first complete chunk of the tail, if any.
    pub fn complete_chunk(&self) -> Option<ChunkEntries> {
        if (self.tail.len() as u64) < POSITION_CHUNK {
            return None;
        }
        let first = self.indexed_through + 1;
        let entries = self.tail.range(..POSITION_CHUNK as usize);
        let mut runs: Vec<Run> = Vec::new();
        let mut run_of: HashMap<&str, usize> = HashMap::new();
        let mut keys = Vec::new();
        let mut locations = Vec::with_capacity(POSITION_CHUNK as usize);
        let mut last_hash = [0u8; 32];
        for (i, e) in entries.enumerate() {
            let position = first + i as u64;
            locations.push(e.loc);
            last_hash = e.hash;
            match run_of.get(&*e.stream_id) {
                Some(&r) => runs[r].positions.push(position),
                None => {
                    run_of.insert(&e.stream_id, runs.len());
                    runs.push(Run {
                        stream_id: Arc::clone(&e.stream_id),
                        first_version: e.version,
                        positions: vec![position],
                    });
                }
            }
            if let Some(k) = &e.key {
                // A key used again after its window points at the newer append; the
                // older one is only written if the map still names it.
                if let Some(entry) = self.keys.get(k).filter(|k| k.result.first_position == position) {
                    keys.push((Arc::clone(k), entry.clone()));
                }
            }
        }
        Some(ChunkEntries {
            chunk_no: self.indexed_through / POSITION_CHUNK,
            last_position: first + POSITION_CHUNK - 1,
            last_hash,
            locations,
            runs,
            keys,
        })
    }

    /// Drops a chunk sled now holds from the tail.
    pub fn prune_chunk(&mut self, chunk: &ChunkEntries) {
        debug_assert_eq!(chunk.chunk_no, self.indexed_through / POSITION_CHUNK);
        for run in &chunk.runs {
            self.stream_cache.remove(&run.stream_id);
            if let Some(s) = self.streams.get_mut(&*run.stream_id) {
                let n = run.positions.len().min(s.positions.len());
                s.positions.drain(..n);
                s.first_version += n as u64;
                if s.positions.is_empty() {
                    self.streams.remove(&*run.stream_id);
                }
            }
        }
        for (k, entry) in &chunk.keys {
            if self.keys.get(k).is_some_and(|e| e.result.first_position == entry.result.first_position) {
                self.keys.remove(k);
            }
        }
        // Keys of older appends the chunk skipped (used again since) stay with their
        // newer entry; nothing else in `keys` can belong to this chunk.
        self.tail.drain(..POSITION_CHUNK as usize);
        self.indexed_through = chunk.last_position;
    }

    /// Caches what sled holds of a stream, read while `indexed_through` was
    /// `indexed_before`; refused if a chunk was written since (it may hold the stream).
    pub fn cache_stream(&mut self, stream_id: &str, indexed_before: Position, versions: Vec<(Position, Loc)>) {
        if self.indexed_through == indexed_before {
            self.stream_cache.insert(Arc::from(stream_id), Arc::new(versions));
        }
    }

    /// The stream's positions of versions `from_version..` that are in the tail, and
    /// the first version the tail holds (versions before it are in sled).
    pub fn tail_stream_positions(&self, stream_id: &str) -> Option<(StreamVersion, &[Position])> {
        self.streams.get(stream_id).map(|s| (s.first_version, s.positions.as_slice()))
    }

    pub fn file_of(&self, segment: Position) -> Option<Arc<File>> {
        let i = self.segments.partition_point(|s| s.first <= segment).checked_sub(1)?;
        let s = &self.segments[i];
        (s.first == segment).then(|| Arc::clone(&s.file))
    }

    /// Location of a tail position.
    pub fn tail_loc(&self, position: Position) -> Option<Loc> {
        let i = position.checked_sub(self.indexed_through + 1)?;
        self.tail.get(usize::try_from(i).ok()?).map(|e| e.loc)
    }
}

/// Adds the records at `locs` (positions `first..`) to `ranges`, merging neighbours;
/// stops after `max_bytes`. Returns how many positions were planned.
pub(crate) fn plan(
    ranges: &mut Vec<ReadRange>,
    first: Position,
    locs: impl Iterator<Item = Loc>,
    file_of: impl Fn(Position) -> Option<Arc<File>>,
    max_bytes: usize,
) -> Result<usize, StoreError> {
    let mut planned = 0;
    let mut bytes: usize = ranges.iter().map(|r| (r.end - r.start) as usize).sum();
    for (i, loc) in locs.enumerate() {
        if bytes >= max_bytes {
            break;
        }
        let position = first + i as u64;
        let start = u64::from(loc.offset);
        let end = start + u64::from(loc.len);
        bytes += loc.len as usize;
        planned += 1;
        if let Some(last) = ranges.last_mut() {
            if last.end == start && last.first + last.count as u64 == position && last.segment == loc.segment {
                last.end = end;
                last.count += 1;
                continue;
            }
        }
        let file = file_of(loc.segment).ok_or_else(|| StoreError::Corrupt {
            position: Some(position),
            detail: format!("segment {} is not in the log", loc.segment),
        })?;
        ranges.push(ReadRange { file, start, end, first: position, count: 1, segment: loc.segment });
    }
    Ok(planned)
}

/// Reads and decodes one range; every record's CRC and position is checked, and a
/// record that fails is an error, never data.
pub(crate) fn read_range(range: &ReadRange, out: &mut Vec<(RecordedEvent, Trailer)>) -> Result<(), StoreError> {
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| StoreError::Corrupt { position: Some(range.first), detail: "read range too large".to_owned() })?;
    let mut buf = vec![0u8; len];
    range.file.read_exact_at(&mut buf, range.start)?;
    let mut at = 0usize;
    for k in 0..range.count {
        let position = range.first + k as u64;
        let corrupt = |detail: String| StoreError::Corrupt { position: Some(position), detail };
        let (body, rec_len) = match parse_frame(&buf, at, true) {
            Frame::Record { body, len } => (body, len),
            Frame::End => return Err(corrupt("record missing (zeroed)".to_owned())),
            Frame::Bad(why) => return Err(corrupt(why)),
        };
        let (event, trailer) = decode_body(body).map_err(&corrupt)?;
        if event.position != position {
            return Err(corrupt(format!("record holds position {}", event.position)));
        }
        out.push((event, trailer));
        at += rec_len;
    }
    Ok(())
}

/// An append result and when it was recorded, for the idempotency window.
pub(crate) fn live_key(entry: KeyEntry, now_nanos: i64, window_nanos: i64) -> Option<AppendResult> {
    (entry.recorded_at_nanos > now_nanos.saturating_sub(window_nanos)).then_some(entry.result)
}
