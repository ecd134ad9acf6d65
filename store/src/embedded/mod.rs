//! The embedded backend: an append-only log of segment files, plus sled for what is
//! derived from it. This is the default backend (`./data`).
//!
//! # On-disk format
//!
//! ```text
//! <dir>/log/00000000000000000001.seg   segment files, named by the position of their
//! <dir>/log/00000000000000052311.seg   first record (20 digits), preallocated to
//! ...                                  `segment_bytes` (64 MiB) with written zeros
//! <dir>/log/synced                     the synced watermark (see `watermark`)
//! <dir>/log/spare                      the next segment, prepared in the background
//! <dir>/index/                         sled database (derived; may be deleted)
//! ```
//!
//! A segment is a sequence of records followed by zeros. Records never span segments;
//! the appender starts a new segment when the next record does not fit. A record
//! (integers little-endian):
//!
//! ```text
//! [u8; 4]   magic "PSR1"
//! u32       body length
//! u32       CRC32C (Castagnoli) of the body
//! body:
//!   canonical envelope (see `chain`: version, position, stream id, stream version,
//!                       event id, event type, schema version, recorded-at, metadata,
//!                       payload)
//!   [u8; 32]  prev_hash
//!   [u8; 32]  hash = SHA-256(prev_hash || canonical envelope)
//!   u64       batch first position: every position before it was durable (its
//!             fdatasync had returned) when this record was written; see "Writing"
//!   u64       append first position: first position of its append
//!   u32       append event count
//! ```
//!
//! # The index: on disk, with only the tail in memory
//!
//! Readers and the appender need, for any stream, its last version and the positions of
//! its versions; for any idempotency key, the append that carried it; for any position,
//! where its record is. The sled tree `paystream-store/v2` holds all three for
//! positions `1..=indexed_through` (layout in `derived`); sled's page cache
//! ([`EmbeddedOptions::cache_bytes`]) keeps hot streams in memory. The positions after
//! it, the *tail*, are held in memory (`index`): the syncer adds each group commit to
//! it as it publishes it, and the indexer thread, every 50 ms, writes each complete
//! chunk of 1,024 positions to sled in one atomic batch (with the marker
//! `indexed_through` and the hash of the record there), then drops it from the tail.
//! So memory holds what was appended in the last fraction of a second, never the
//! history; if sled falls behind by [`MAX_UNINDEXED_EVENTS`] the appender waits.
//!
//! A lookup asks the tail first, then sled. That is exact without holding a lock across
//! both: only the appender creates versions and keys, and a chunk is in sled before it
//! leaves the tail, so a stream (or key) the tail does not hold is whole in sled.
//! sled's `flush` is never relied on (sled issue 1452): whatever sled lost is re-read
//! from the log on open.
//!
//! Idempotency keys are remembered for [`EmbeddedOptions::idempotency_window`] (24 hours
//! by default): within it a second append with the key is `DuplicateIdempotencyKey`;
//! after it the key is free again, and the indexer removes expired keys from sled in
//! bounded steps (a time-ordered copy of each key, `x/<recorded-at><key>`).
//!
//! # Writing
//!
//! Two threads own the write end and form a two-stage pipeline, so that the `fdatasync`
//! of one group commit overlaps the encoding and writing of the next:
//!
//! 1. The **appender** takes every append waiting on a bounded channel (up to 16,384
//!    events / 16 MiB), checks each in order (idempotency key first, then expected
//!    version; a failed check rejects only that request) against the published index
//!    overlaid with the streams and keys of every batch it has written but not yet seen
//!    published, including the requests before it in the same batch; assigns
//!    consecutive positions and versions; encodes and hashes the records into one buffer
//!    and writes it with one positional write. It then hands the batch to the syncer and
//!    goes on with the next one without waiting for the sync (it only waits when 65,536
//!    written events are not yet taken by the syncer).
//! 2. The **syncer** takes every batch written so far (a group, oldest first), calls
//!    `fdatasync` once on each segment the group wrote, and only then publishes the
//!    group to readers, batch by batch in order (the tail of the index, then the head
//!    position), and answers each request. Rejections are answered there too, since a
//!    rejection may rest on an in-flight batch (a duplicate key must not be reported
//!    before the original is durable). A group that wrote nothing (only rejections)
//!    needs no sync: everything before it was synced by earlier groups. At most every
//!    [`WATERMARK_INTERVAL`] (100 ms) while appends flow, within that interval of the
//!    last acknowledgement when they stop, and when the store closes, it records the
//!    published head and its hash in `log/synced` (two checksummed slots, written
//!    alternately, `fdatasync`ed).
//!
//! Every record stores in its "batch first position" field the position after the
//! syncer's durable head as the appender starts the batch (the syncer advances that head
//! only after `fdatasync` returned): every earlier position was durable when the record
//! was written. Without overlap (one writer, or logs written before the pipeline) that is
//! the first position of the record's own batch, as the field's name says; the format
//! did not change. Recovery relies on it (see below).
//!
//! A segment is filled with zeros before any record goes in (so that a record overwrites
//! allocated, initialised blocks and a group's `fdatasync` has no extent changes to
//! journal, which halves its cost on ext4), and `fsync`ed. The *spare* thread prepares
//! the next one in the background once the current segment is half full (`spare`); a
//! roll renames it into place and syncs the directory, instead of writing 64 MiB on the
//! write path. A batch that crosses segments is synced on both. If a write fails, the
//! appender stops for good (it answers its batch and everything queued with an error);
//! batches written before still get their sync and answer. If a sync fails, the syncer
//! answers that group and every later one with an error and publishes nothing more, and
//! the appender writes nothing more. Either way the page cache can no longer be trusted
//! (see "fsyncgate") and the store must be reopened; recovery decides from what is on
//! disk. On open, recovery also syncs the segments it walked: a killed process can leave
//! whole but unsynced records in the page cache, and the first new record claims that
//! everything before it is durable.
//!
//! # Recovery (on open)
//!
//! 1. Read the synced watermark `W` (before anything is written). Load sled's marker
//!    `indexed_through` (`w`); anything that does not parse drops sled, which is then
//!    rebuilt from the log.
//! 2. The record at `w` (located through sled's last chunk) must be whole and carry
//!    sled's hash, else sled is from another log (or ahead of it, e.g. the log was
//!    restored from an older backup) and is dropped and rebuilt from position 1.
//!    Records before it are not read: damage there is found by reads (CRC) and `verify`.
//!    Start-up therefore reads only the tail after `w` (under 1,024 records after a
//!    clean close), whatever the length of the log.
//! 3. Every record after `w` is fully checked (CRC, position, prev_hash, recomputed
//!    hash, stream version against the tail or sled, append bounds, the watermark's
//!    hash at `W`) and added to the tail; when the tail holds 64 chunks they go to sled,
//!    so rebuilding sled from position 1 holds no more than that in memory.
//! 4. The walk stops at the first place that is not a whole record, where position `p`
//!    should be. If only zeros follow and `p > W`, that is the end of the log. If
//!    `p <= W`, `p` was acknowledged: open fails with `Corrupt` naming `p`, cutting
//!    nothing. Otherwise the bytes after it (rest of the segment and any later segment)
//!    are searched for whole records: if one has a batch first position beyond `p`, it
//!    was written after `p`'s sync returned, so `p` had been acknowledged: `Corrupt`
//!    too. If not, everything after the point was written while `p`'s sync had not
//!    returned: it belongs to the batches in flight at the crash, none of them
//!    acknowledged, so the torn tail is zeroed and later segments removed.
//! 5. The watermark is set to the recovered head (recovery synced it all).
//!
//! # Why the invariants hold
//!
//! * Acknowledged means durable: a request is answered only after an `fdatasync` has
//!   returned on every segment its batch wrote, and that sync started after the batch's
//!   write returned (the appender hands a batch over only after writing it; the syncer
//!   syncs only batches it has taken). A new segment's directory entry was synced
//!   before its first record was written.
//! * Gap-free positions: one thread assigns them, consecutively, to accepted requests
//!   only; the syncer publishes whole groups in the order they were written, under the
//!   index lock, with the head last, so readers never see position n+1 before n nor a
//!   position whose sync has not returned.
//! * One winner per expected version: checks run on the single appender thread against
//!   the published index (tail, then sled) plus everything written since (earlier
//!   requests of the same batch and all in-flight batches). An in-flight entry is
//!   dropped only once the published index holds it, so no check ever sees an older
//!   version than was written.
//! * Idempotency: same, for the key index; a duplicate gets the original append result,
//!   answered only once the original is durable.
//! * Crash safety. Writes are issued in position order by one thread and an
//!   `fdatasync` covers every write that completed before it started, so once a group's
//!   sync returns, every batch up to that group's last is durable: acknowledged events
//!   are always a prefix of the log, and the only unacknowledged records are those of
//!   the batches in flight. After a crash, pages of those batches may have reached the
//!   disk in any order, so the first hole at position `p` may be followed by whole
//!   records of a later in-flight batch; they all carry a batch first position at most
//!   `p`, so recovery reads that as a torn tail and cuts it. Conversely, if `p` was
//!   acknowledged, either the watermark covers it (always after a clean close, and
//!   within 100 ms otherwise) or a batch written after its sync returned carries a
//!   batch first position beyond `p`; either way open fails with `Corrupt`.
//! * What recovery cannot tell apart: damage to records acknowledged in the last
//!   [`WATERMARK_INTERVAL`] before a crash, with no later group commit on disk, looks
//!   like a torn tail and is cut. A crash alone never causes it (synced data is whole);
//!   only a disk losing synced data at the same moment could.
//! * Reads check the CRC and the position of every record they return; a damaged
//!   record is an error, never data. `verify` additionally recomputes the hash chain;
//!   [`verify::verify_dir`] does so read-only, without the store.

mod appender;
mod derived;
mod index;
mod recovery;
mod segment;
mod spare;
pub mod verify;
pub mod watermark;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use self::appender::{AppendRequest, WriteStart, APPEND_QUEUE_CAPACITY};
use self::derived::{DiskIndex, Indexer, Marker, OLD_TREE_NAMES, POSITION_CHUNK, TREE_NAME};
use self::index::{live_key, plan, read_range, Index, ReadRange, READ_MAX_BYTES};
use self::recovery::{recover, RecoverError, Recovered};
use self::spare::Spare;
use self::watermark::{Synced, Watermark};
use crate::chain::{unix_nanos, ChainVerifier};
use crate::error::StoreError;
use crate::event_store::{CatchUp, EventStore, LogReader, Subscription, VerifyReport};
use crate::metrics::StoreMetrics;
use crate::types::{
    validate_append, AppendResult, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamVersion, MAX_RECORD_BYTES,
};

pub use self::appender::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
pub use self::index::{
    MAX_UNINDEXED_EVENTS, READ_MAX_BYTES as EMBEDDED_READ_MAX_BYTES, STREAM_CACHE_MAX_VERSIONS, STREAM_CACHE_STREAMS,
};
pub use self::watermark::WATERMARK_INTERVAL;

/// Default size of a segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default size of sled's page cache for the log's index (stream versions and
/// positions, idempotency keys, record locations): what keeps hot streams in memory.
pub const DEFAULT_INDEX_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Default time an idempotency key is remembered: within it a retry replays (and a
/// different request with the key is refused); after it the key may be used again.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3_600);
/// Events `verify` reads per step.
const VERIFY_READ_BATCH: usize = 8_192;

/// Tuning of the embedded backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Size segment files are preallocated to; between `MAX_RECORD_BYTES` and 4 GiB.
    pub segment_bytes: u64,
    /// sled's cache for the index, in bytes.
    pub cache_bytes: u64,
    /// How long idempotency keys are remembered.
    pub idempotency_window: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            cache_bytes: DEFAULT_INDEX_CACHE_BYTES,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

/// State shared by the store handle, the appender, the syncer and the indexer.
pub(crate) struct Shared {
    index: RwLock<Index>,
    pub(crate) disk: DiskIndex,
    /// Mirrors `Index::indexed_through` for the appender's backpressure check.
    pub(crate) indexed_through: AtomicU64,
    pub(crate) indexer_failed: AtomicBool,
    /// The idempotency window in nanoseconds.
    pub(crate) window_nanos: i64,
    failure: Mutex<Option<String>>,
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_failure(&self, reason: String) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn stopped_error(&self) -> StoreError {
        match self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            Some(reason) => StoreError::Unavailable(reason),
            None => StoreError::Closed,
        }
    }

    /// The stream's last version: the tail if it holds the stream, else sled. Exact:
    /// only the appender adds versions, and the indexer writes a chunk to sled before it
    /// prunes it from the tail, so a stream absent from the tail is whole in sled.
    pub(crate) fn stream_version(&self, stream_id: &str) -> Result<StreamVersion, StoreError> {
        {
            let index = self.read_index();
            if let Some(version) = index.tail_stream_version(stream_id) {
                return Ok(version);
            }
            if let Some(cached) = index.stream_cache.get(stream_id) {
                return Ok(cached.len() as u64);
            }
        }
        self.disk.stream_version(stream_id)
    }

    /// The append that carried `key` if it was recorded within the window before
    /// `now_nanos` (the same argument as `stream_version` makes this exact).
    pub(crate) fn idempotent(&self, key: &str, now_nanos: i64) -> Result<Option<AppendResult>, StoreError> {
        let tail = self.read_index().tail_key(key).cloned();
        let entry = match tail {
            Some(entry) => Some(entry),
            None => self.disk.idempotent(key)?,
        };
        Ok(entry.and_then(|e| live_key(e, now_nanos, self.window_nanos)))
    }

    fn read_ranges(&self, ranges: &[ReadRange]) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::with_capacity(ranges.iter().map(|r| r.count).sum());
        for range in ranges {
            read_range(range, &mut out)?;
        }
        Ok(out.into_iter().map(|(event, _)| event).collect())
    }

    /// Byte ranges of positions `from..` (at most `max` events, about `max_bytes`):
    /// sled's chunks for what is indexed, the tail for the rest.
    fn plan_read_all(&self, from: Position, max: usize) -> Result<Vec<ReadRange>, StoreError> {
        let mut ranges = Vec::new();
        let mut position = from.max(1);
        let mut remaining = max;
        while remaining > 0
            && ranges.iter().map(|r: &ReadRange| (r.end - r.start) as usize).sum::<usize>() < READ_MAX_BYTES
        {
            let (indexed_through, head) = {
                let index = self.read_index();
                (index.indexed_through, index.head)
            };
            if position > head {
                break;
            }
            let planned = if position <= indexed_through {
                let chunk_no = (position - 1) / POSITION_CHUNK;
                let locs = self.disk.chunk(chunk_no)?;
                let skip = ((position - 1) % POSITION_CHUNK) as usize;
                let take = remaining.min(locs.len() - skip);
                let index = self.read_index();
                plan(
                    &mut ranges,
                    position,
                    locs[skip..skip + take].iter().copied(),
                    |s| index.file_of(s),
                    READ_MAX_BYTES,
                )?
            } else {
                let index = self.read_index();
                if position <= index.indexed_through {
                    continue; // indexed meanwhile: read it from sled
                }
                let start = (position - index.indexed_through - 1) as usize;
                let locs = index.tail.range(start..).take(remaining).map(|e| e.loc);
                plan(&mut ranges, position, locs, |s| index.file_of(s), READ_MAX_BYTES)?
            };
            if planned == 0 {
                break;
            }
            position += planned as u64;
            remaining -= planned;
        }
        Ok(ranges)
    }

    fn read_all_blocking(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.check_open()?;
        let ranges = self.plan_read_all(from, max)?;
        self.read_ranges(&ranges)
    }

    /// What sled holds of a stream's versions `from_version..` (at most `max`): each
    /// version's position and location, through the stream cache. A stream read whole
    /// from sled (short enough) is cached.
    fn sled_stream(
        &self,
        stream_id: &str,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<(Position, index::Loc)>, StoreError> {
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        let indexed_before = {
            let index = self.read_index();
            if let Some(cached) = index.stream_cache.get(stream_id) {
                return Ok(cached.iter().skip(skip).take(max).copied().collect());
            }
            index.indexed_through
        };
        let positions = self.disk.stream_positions(stream_id, from_version, max)?;
        let whole = from_version <= 1 && positions.len() < max;
        let mut versions = Vec::with_capacity(positions.len());
        let mut chunk: Option<(u64, Vec<index::Loc>)> = None;
        for position in positions {
            let chunk_no = (position - 1) / POSITION_CHUNK;
            let locs = match chunk.take() {
                Some((no, locs)) if no == chunk_no => locs,
                _ => self.disk.chunk(chunk_no)?,
            };
            versions.push((position, locs[((position - 1) % POSITION_CHUNK) as usize]));
            chunk = Some((chunk_no, locs));
        }
        if whole && versions.len() <= index::STREAM_CACHE_MAX_VERSIONS {
            self.write_index().cache_stream(stream_id, indexed_before, versions.clone());
        }
        Ok(versions)
    }

    fn read_stream_blocking(
        &self,
        stream_id: &str,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.check_open()?;
        let from_version = from_version.max(1);
        // The tail first: versions before its first are in sled (and the cache).
        let tail: Option<(StreamVersion, Vec<(Position, index::Loc)>)> = {
            let index = self.read_index();
            index.tail_stream_positions(stream_id).map(|(first, positions)| {
                let locs = positions.iter().filter_map(|&p| index.tail_loc(p).map(|loc| (p, loc))).collect();
                (first, locs)
            })
        };
        let tail_first = tail.as_ref().map_or(StreamVersion::MAX, |(first, _)| *first);
        let mut wanted: Vec<(Position, index::Loc)> = Vec::new();
        if from_version < tail_first {
            // sled may already hold versions the tail held when we looked: keep those
            // before the tail's first.
            let before_tail = usize::try_from(tail_first - from_version).unwrap_or(usize::MAX);
            let sled = self.sled_stream(stream_id, from_version, max.min(before_tail))?;
            wanted.extend(sled);
        }
        if let Some((first, locs)) = tail {
            let skip = usize::try_from(from_version.saturating_sub(first)).unwrap_or(usize::MAX);
            let room = max.saturating_sub(wanted.len());
            wanted.extend(locs.into_iter().skip(skip).take(room));
        }
        let mut ranges: Vec<ReadRange> = Vec::new();
        {
            let index = self.read_index();
            for (position, loc) in wanted {
                plan(&mut ranges, position, std::iter::once(loc), |s| index.file_of(s), usize::MAX)?;
            }
        }
        self.read_ranges(&ranges)
    }
}

/// Reads through the shared state; what subscriptions hold (not the store handle, so
/// a subscription never keeps a closed store open).
#[derive(Clone)]
struct SharedReader(Arc<Shared>);

#[async_trait]
impl LogReader for SharedReader {
    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared = Arc::clone(&self.0);
        run_blocking(move || shared.read_all_blocking(from, max)).await
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Unavailable(format!("blocking task failed: {e}")))?
}

/// The embedded event store. Open one per data directory (sled's lock enforces it).
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    control: Arc<Control>,
    head_rx: watch::Receiver<Position>,
    dir: PathBuf,
    open_report: OpenReport,
    metrics: StoreMetrics,
}

/// What `open` found, for logs and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Last position of the log after recovery.
    pub head: Position,
    /// Positions whose index came from sled; the rest were read from the log.
    pub indexed_in_sled: Position,
    /// Why sled's content was dropped and rebuilt from the log, if it was.
    pub sled_dropped: Option<String>,
}

/// The size of the in-memory tail of the index ([`EmbeddedStore::index_tail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailReport {
    /// Positions after `indexed_through`.
    pub positions: u64,
    /// Streams with a version among them.
    pub streams: usize,
    /// Idempotency keys of appends among them.
    pub keys: usize,
    /// Positions `1..=indexed_through` are indexed in sled.
    pub indexed_through: Position,
}

/// What closing releases.
struct Control {
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    db: Mutex<Option<sled::Db>>,
}

impl Control {
    /// Stops the appender (it answers everything queued), lets the indexer catch up,
    /// releases sled. Idempotent.
    fn close_blocking(&self) {
        self.shared.closed.store(true, Ordering::Release);
        drop(self.sender.lock().unwrap_or_else(PoisonError::into_inner).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an event log thread panicked");
            }
        }
        drop(self.db.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Opens the index: drops trees of earlier layouts, reads sled's marker and
/// recovers the log's tail after it; an unusable or mismatched index is
/// cleared and rebuilt from the whole log.
fn recover_index(
    db: &sled::Db,
    disk: &DiskIndex,
    log_dir: &Path,
    segment_bytes: u64,
    synced: Synced,
) -> Result<(Recovered, OpenReport), StoreError> {
    for old in OLD_TREE_NAMES {
        if db.tree_names().iter().any(|n| n.as_ref() == old.as_bytes()) {
            tracing::info!(tree = old, "dropping the index of an earlier layout; it is rebuilt from the log");
            db.drop_tree(old)?;
        }
    }
    let mut sled_dropped = None;
    let marker = disk.marker().unwrap_or_else(|reason| {
        tracing::warn!(%reason, "derived index unusable; rebuilding it from the event log");
        sled_dropped = Some(reason);
        Marker::default()
    });
    if sled_dropped.is_some() {
        disk.clear()?;
    }
    let recovered = match recover(log_dir, segment_bytes, disk, marker, synced) {
        Ok(recovered) => recovered,
        Err(RecoverError::Store(err)) => return Err(err),
        Err(RecoverError::Untrusted(reason)) => {
            tracing::warn!(%reason, "derived index does not match the event log; rebuilding it");
            sled_dropped = Some(reason);
            disk.clear()?;
            match recover(log_dir, segment_bytes, disk, Marker::default(), synced) {
                Ok(recovered) => recovered,
                Err(RecoverError::Store(err)) => return Err(err),
                Err(RecoverError::Untrusted(reason)) => {
                    return Err(StoreError::Corrupt { position: None, detail: reason })
                }
            }
        }
    };
    let indexed_in_sled = if sled_dropped.is_some() { 0 } else { marker.indexed_through };
    let open_report = OpenReport { head: recovered.index.head, indexed_in_sled, sled_dropped };
    Ok((recovered, open_report))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, with default options. Blocking:
    /// recovery reads the log tail (call from `spawn_blocking` in latency-sensitive code).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        if options.segment_bytes < MAX_RECORD_BYTES as u64 || options.segment_bytes > u64::from(u32::MAX) {
            return Err(StoreError::Unavailable(format!(
                "segment_bytes must be within {MAX_RECORD_BYTES}..=4 GiB, got {}",
                options.segment_bytes
            )));
        }
        let window_nanos = i64::try_from(options.idempotency_window.as_nanos()).unwrap_or(i64::MAX);
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir)?;
        // Read before anything is written: damage at or below it is never cut.
        let synced_file = watermark::read(&log_dir)
            .map_err(|e| StoreError::Corrupt { position: None, detail: format!("log/synced: {e}") })?;
        let db = open_sled(dir, options.cache_bytes)?;
        let disk = DiskIndex::new(db.open_tree(TREE_NAME)?);
        let (Recovered { index, write_offset }, open_report) =
            recover_index(&db, &disk, &log_dir, options.segment_bytes, synced_file.unwrap_or_default())?;

        // Everything recovery kept is synced now: the watermark covers it.
        let mut watermark = Watermark::open(&log_dir, synced_file)?;
        watermark.store(Synced { position: index.head, hash: index.last_hash })?;

        let head = index.head;
        let last_hash = index.last_hash;
        let last_recorded_at_nanos = index.last_recorded_at_nanos;
        let (segment_first, file) = match index.segments.last() {
            Some(s) => (s.first, Arc::clone(&s.file)),
            None => return Err(StoreError::Corrupt { position: None, detail: "no segment".to_owned() }),
        };
        let indexed_through = AtomicU64::new(index.indexed_through);
        let shared = Arc::new(Shared {
            index: RwLock::new(index),
            disk,
            indexed_through,
            indexer_failed: AtomicBool::new(false),
            window_nanos,
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let (head_tx, head_rx) = watch::channel(head);
        let metrics = StoreMetrics::new();
        metrics.head.set(head as f64);
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel(1);
        let (sender, receiver) = mpsc::channel(APPEND_QUEUE_CAPACITY);

        let indexer = Indexer { shared: Arc::clone(&shared) };
        let indexer_thread =
            std::thread::Builder::new().name("paystream-store-indexer".into()).spawn(move || indexer.run(stop_rx))?;
        let (spare, spare_thread) = Spare::start(&log_dir, options.segment_bytes)?;
        let write_start = WriteStart {
            shared: Arc::clone(&shared),
            segment_bytes: options.segment_bytes,
            segment_first,
            file,
            write_offset,
            head,
            last_hash,
            last_recorded_at_nanos,
            head_tx,
            indexer_stop: stop_tx,
            watermark,
            spare,
            metrics: metrics.clone(),
        };
        let mut threads = appender::spawn(write_start, receiver)?;
        threads.push(indexer_thread);
        threads.push(spare_thread);

        Ok(EmbeddedStore {
            control: Arc::new(Control {
                shared: Arc::clone(&shared),
                sender: Mutex::new(Some(sender)),
                threads: Mutex::new(threads),
                db: Mutex::new(Some(db)),
            }),
            shared,
            head_rx,
            dir: dir.to_path_buf(),
            open_report,
            metrics,
        })
    }

    /// What the in-memory part of the index holds now (the tail sled does not hold yet).
    pub fn index_tail(&self) -> TailReport {
        let index = self.shared.read_index();
        TailReport {
            positions: index.tail.len() as u64,
            streams: index.streams.len(),
            keys: index.keys.len(),
            indexed_through: index.indexed_through,
        }
    }

    /// What recovery found when this store was opened.
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sled database, for read models and checkpoints kept next to the log (use your
    /// own trees; the store's is `paystream-store/v1`). `None` once closed.
    pub fn derived_db(&self) -> Option<sled::Db> {
        self.control.db.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Blocking close (what `close` and `Drop` do): stop the appender, answering
    /// everything queued; let the indexer catch up; release sled. Idempotent.
    pub fn close_blocking(&self) {
        self.control.close_blocking();
    }

    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>, StoreError> {
        self.control
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| self.shared.stopped_error())
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close_blocking();
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let started = std::time::Instant::now();
        let sizes = validate_append(stream_id, &events)?;
        let sender = self.sender()?;
        let (reply, answer) = oneshot::channel();
        let request =
            AppendRequest { stream_id: stream_id.to_owned(), expected, events, bytes: sizes.iter().sum(), reply };
        if sender.send(request).await.is_err() {
            return Err(self.shared.stopped_error());
        }
        let result = answer.await.map_err(|_| self.shared.stopped_error())?;
        if result.is_ok() {
            self.metrics.append_seconds.record(started.elapsed());
        }
        result
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Streams are short (one payment): small positional reads from the page cache
        // and sled lookups in its cache, done inline.
        self.shared.read_stream_blocking(stream_id, from_version, max)
    }

    async fn read_all(&self, from_position: Position, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || shared.read_all_blocking(from_position, max)).await
    }

    async fn subscribe(&self, from_position: Position) -> Result<Subscription, StoreError> {
        self.shared.check_open()?;
        Ok(Subscription::new(CatchUp::new(SharedReader(Arc::clone(&self.shared)), self.head_rx.clone(), from_position)))
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.shared.check_open()?;
        Ok(self.shared.read_index().head)
    }

    async fn stream_version(&self, stream_id: &str) -> Result<StreamVersion, StoreError> {
        self.shared.check_open()?;
        self.shared.stream_version(stream_id)
    }

    async fn find_idempotent(&self, key: &str) -> Result<Option<AppendResult>, StoreError> {
        self.shared.check_open()?;
        self.shared.idempotent(key, unix_nanos(time::OffsetDateTime::now_utc()))
    }

    async fn verify(&self, from: Position, to: Option<Position>) -> Result<VerifyReport, StoreError> {
        let shared = Arc::clone(&self.shared);
        run_blocking(move || verify_blocking(&shared, from, to)).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Joining the threads waits for at most one group commit and the indexer's catch-up.
        let control = Arc::clone(&self.control);
        run_blocking(move || {
            control.close_blocking();
            Ok(())
        })
        .await
    }
}

/// The log's sled index, under the data directory.
pub const INDEX_DIR: &str = "index";

/// Opens the log's sled index (`<dir>/index`); see [`open_derived_db`]. Its lock held
/// by another process is [`StoreError::Locked`].
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let path = dir.join(INDEX_DIR);
    let config = sled::Config::new().path(&path).cache_capacity(cache_bytes);
    open_derived_db(&path, &config, "the log's index").map_err(|err| {
        if is_lock_error(&err) {
            StoreError::Locked { dir: dir.to_path_buf() }
        } else {
            err.into()
        }
    })
}

/// Whether sled could not take a database's file lock: another process has it open.
fn is_lock_error(err: &sled::Error) -> bool {
    // sled 0.34 reports it as `ErrorKind::Other` with this message (when it opens the database).
    matches!(err, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// How long opening a sled database waits for its file lock to be released.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens a sled database of derived data (the log's index, the facts, the read models)
/// at `path` with `config` (whose path must be `path`):
///
/// * retrying for up to [`SLED_LOCK_WAIT`] while the database lock is held: sled 0.34
///   releases it from a background thread shortly *after* the last handle is dropped
///   (sled issue 1289), so a close followed at once by an open of the same directory
///   can find it still taken. A second process keeping it open still fails (after the
///   wait);
/// * moving a database sled itself reports as corrupt aside (`<path>.corrupt-<unix
///   time>`) and starting anew, since it only ever holds what the log can rebuild.
pub fn open_derived_db(path: &Path, config: &sled::Config, what: &str) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(err) if is_lock_error(&err) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(sled::Error::Corruption { .. }) => {
                let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
                let aside = path.with_extension(format!("corrupt-{stamp}"));
                tracing::warn!(path = %path.display(), aside = %aside.display(), "{what}: sled reports corruption; moving it aside and rebuilding from the log");
                fs::rename(path, &aside)?;
                return config.open();
            }
            other => return other,
        }
    }
}

/// Page cache of a database opened only to be snapshotted.
const SNAPSHOT_CACHE_BYTES: u64 = 1 << 20;

/// Opens the derived database at `path` (if there is one) and closes it again, for
/// what sled 0.34 does only when it opens a database: it replays its own log from the
/// last snapshot of its page table and writes a new snapshot. Run after a clean stop,
/// this moves that replay (which grows with everything written since the last open,
/// seconds after hours of load) from the next start to the stop. Blocking; every
/// handle of the database must be dropped first.
pub fn snapshot_derived_db(path: &Path, what: &str) -> sled::Result<()> {
    if !path.join("conf").exists() {
        return Ok(());
    }
    let config = sled::Config::new().path(path).cache_capacity(SNAPSHOT_CACHE_BYTES);
    let db = open_derived_db(path, &config, what)?;
    drop(db);
    Ok(())
}

fn verify_blocking(shared: &Shared, from: Position, to: Option<Position>) -> Result<VerifyReport, StoreError> {
    shared.check_open()?;
    let from = from.max(1);
    let head = shared.read_index().head;
    let to = to.unwrap_or(head).min(head);
    // The link into `from` is checked against the hash stored in `from - 1`.
    let prev_hash = if from > 1 {
        match shared.read_all_blocking(from - 1, 1) {
            Ok(mut events) => match events.pop() {
                Some(event) => event.hash,
                None => crate::chain::GENESIS_HASH,
            },
            Err(StoreError::Corrupt { position, detail }) => {
                return Ok(VerifyReport {
                    checked: 0,
                    head_hash: crate::chain::GENESIS_HASH,
                    first_bad: Some((position.unwrap_or(from - 1), detail)),
                })
            }
            Err(err) => return Err(err),
        }
    } else {
        crate::chain::GENESIS_HASH
    };
    let mut verifier = ChainVerifier::new(from, prev_hash);
    let report = |verifier: &ChainVerifier, first_bad| VerifyReport {
        checked: verifier.checked(),
        head_hash: verifier.head_hash(),
        first_bad,
    };
    let mut next = from;
    while next <= to {
        let want = usize::try_from(to - next + 1).unwrap_or(usize::MAX).min(VERIFY_READ_BATCH);
        let (events, damaged) = match shared.read_all_blocking(next, want) {
            Ok(events) => (events, None),
            Err(StoreError::Corrupt { position, detail }) => {
                // Check what precedes the damaged record, then report the damage.
                let bad = position.unwrap_or(next).max(next);
                let before = usize::try_from(bad - next).unwrap_or(0);
                let events = if before > 0 { shared.read_all_blocking(next, before)? } else { Vec::new() };
                (events, Some((bad, detail)))
            }
            Err(err) => return Err(err),
        };
        if events.is_empty() && damaged.is_none() {
            return Ok(report(&verifier, Some((next, "missing".to_owned()))));
        }
        for event in &events {
            if let Err(reason) = verifier.check(event) {
                let bad = verifier.next_position();
                return Ok(report(&verifier, Some((bad, reason))));
            }
        }
        if damaged.is_some() {
            return Ok(report(&verifier, damaged));
        }
        next += events.len() as u64;
    }
    Ok(report(&verifier, None))
}
