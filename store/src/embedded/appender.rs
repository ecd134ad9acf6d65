//! The write path, pipelined over two threads: the appender checks, encodes and writes
//! group commits; the syncer makes them durable (`fdatasync`), publishes them and answers.
//! One group's sync overlaps the writing of the next (see the module docs of `embedded`,
//! "Writing" and "Why the invariants hold").

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use super::derived::KeyEntry;
use super::index::{Loc, SegmentFile, TailEntry, MAX_UNINDEXED_EVENTS};
use super::segment::encode_record;
use super::spare::Spare;
use super::watermark::{Synced, Watermark, WATERMARK_INTERVAL};
use super::Shared;
use crate::chain::{unix_nanos, EnvelopeRef};
use crate::error::StoreError;
use crate::metrics::StoreMetrics;
use crate::types::{AppendResult, ExpectedVersion, NewEvent, Position, StreamVersion, MAX_APPEND_BYTES};

/// Most events one group commit writes.
pub const MAX_BATCH_EVENTS: usize = 16_384;
/// Most record bytes one group commit writes (at least one maximal append fits).
pub const MAX_BATCH_BYTES: usize = MAX_APPEND_BYTES;
/// Appends waiting for the appender; senders wait (backpressure) beyond this.
pub const APPEND_QUEUE_CAPACITY: usize = 4_096;
/// Most events written but not yet taken by the syncer; the appender waits beyond this.
const MAX_UNSYNCED_EVENTS: usize = 4 * MAX_BATCH_EVENTS;

pub(crate) type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

pub(crate) struct AppendRequest {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Sum of the records' encoded sizes.
    pub bytes: usize,
    pub reply: Reply,
}

/// Where the write path starts (what recovery found).
pub(crate) struct WriteStart {
    pub shared: Arc<Shared>,
    pub segment_bytes: u64,
    /// Segment to write next: first position, file, write offset.
    pub segment_first: Position,
    pub file: Arc<File>,
    pub write_offset: u64,
    /// Last position of the log; durable (recovery synced what it found).
    pub head: Position,
    pub last_hash: [u8; 32],
    pub last_recorded_at_nanos: i64,
    pub head_tx: watch::Sender<Position>,
    /// Dropped when the write path ends, which tells the indexer to finish.
    pub indexer_stop: SyncSender<()>,
    /// The synced watermark, rewritten by the syncer.
    pub watermark: Watermark,
    /// Prepares the next segment file in the background.
    pub spare: Spare,
    /// Group commit sizes and the head, recorded by the syncer.
    pub metrics: StoreMetrics,
}

/// Starts the appender and the syncer thread (in that order in the result). The appender
/// runs until `rx` closes or the log fails; the syncer until the appender is gone and
/// everything it wrote is answered.
pub(crate) fn spawn(start: WriteStart, rx: mpsc::Receiver<AppendRequest>) -> io::Result<Vec<JoinHandle<()>>> {
    let pipe = Arc::new(Pipe::new(start.head));
    let syncer = Syncer {
        shared: Arc::clone(&start.shared),
        pipe: Arc::clone(&pipe),
        head_tx: start.head_tx,
        watermark: start.watermark,
        watermark_at: std::time::Instant::now(),
        _indexer_stop: start.indexer_stop,
        metrics: start.metrics,
    };
    let syncer_thread =
        std::thread::Builder::new().name("paystream-store-syncer".into()).spawn(move || syncer.run())?;
    let appender = Appender {
        shared: start.shared,
        pipe,
        spare: start.spare,
        segment_bytes: start.segment_bytes,
        segment_first: start.segment_first,
        file: start.file,
        write_offset: start.write_offset,
        head: start.head,
        last_hash: start.last_hash,
        last_recorded_at_nanos: start.last_recorded_at_nanos,
        buf: Vec::with_capacity(1024 * 1024),
        unpublished_versions: HashMap::new(),
        unpublished_keys: HashMap::new(),
    };
    // If this fails the closure (and so the appender) is dropped, which closes the pipe
    // and lets the syncer exit.
    let appender_thread =
        std::thread::Builder::new().name("paystream-store-appender".into()).spawn(move || appender.run(rx))?;
    Ok(vec![appender_thread, syncer_thread])
}

/// How a request of a batch is answered once the batch is durable.
enum Answer {
    Rejected(StoreError),
    /// The next entry of the batch's `accepted`.
    Accepted,
}

/// An accepted append, applied to the in-memory index when its batch is published.
struct Accepted {
    result: AppendResult,
    idempotency_key: Option<String>,
}

/// Where a record of the batch went, and its hash.
struct Placed {
    loc: Loc,
    hash: [u8; 32],
}

/// A batch the appender has written (its `pwrite` returned), waiting for a sync.
struct Written {
    answers: Vec<(Reply, Answer)>,
    accepted: Vec<Accepted>,
    placed: Vec<Placed>,
    /// Segments the batch created, in order (not yet in the index).
    new_segments: Vec<(Position, Arc<File>)>,
    /// Files the batch wrote to; empty if it rejected every request.
    wrote: Vec<Arc<File>>,
    /// The hash of the record before the batch's first (the chain's link).
    prev_hash: [u8; 32],
    /// Appender state after the batch: what readers see once it is published.
    head: Position,
    last_hash: [u8; 32],
    last_recorded_at_nanos: i64,
    events: usize,
}

/// What the checks of a batch decided (step 1 of a commit).
struct Checked {
    /// Every request, in order, with how it will be answered.
    answers: Vec<(Reply, Answer)>,
    accepted: Vec<Accepted>,
    /// The events of each accepted append.
    to_encode: Vec<Vec<NewEvent>>,
}

/// The encoded batch (step 2 of a commit): the records are in the appender's
/// buffer, to be written at `buf_offset` of the current segment.
struct Encoded {
    placed: Vec<Placed>,
    new_segments: Vec<(Position, Arc<File>)>,
    wrote: Vec<Arc<File>>,
    buf_offset: u64,
    io_error: Option<io::Error>,
}

/// Whether an idempotency key recorded at `entry` still counts at `now_nanos`.
fn key_live(entry: &KeyEntry, now_nanos: i64, window_nanos: i64) -> bool {
    entry.recorded_at_nanos > now_nanos.saturating_sub(window_nanos)
}

/// What [`Pipe::take`] found.
enum Taken {
    /// Written batches, moved into the caller's vector.
    Batches,
    /// Nothing came before the deadline.
    TimedOut,
    /// The appender is gone and everything was taken.
    Closed,
}

/// The hand-over from the appender to the syncer.
struct Pipe {
    state: Mutex<PipeState>,
    syncer_wake: Condvar,
    appender_wake: Condvar,
    /// Last position whose `fdatasync` has returned (the durable prefix of the log).
    synced_head: AtomicU64,
    /// A sync failed: the appender must not write anything more.
    failed: AtomicBool,
}

#[derive(Default)]
struct PipeState {
    /// Written batches, oldest first, that no sync has been started for.
    written: Vec<Written>,
    written_events: usize,
    /// The appender is gone; nothing more will be written.
    closed: bool,
    syncer_waiting: bool,
    appender_waiting: bool,
}

impl Pipe {
    fn new(durable_head: Position) -> Pipe {
        Pipe {
            state: Mutex::new(PipeState::default()),
            syncer_wake: Condvar::new(),
            appender_wake: Condvar::new(),
            synced_head: AtomicU64::new(durable_head),
            failed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a written batch to the syncer; waits while too much is written but unsynced.
    fn push(&self, batch: Written) {
        let mut state = self.lock();
        while state.written_events >= MAX_UNSYNCED_EVENTS && !self.failed.load(Ordering::Acquire) {
            state.appender_waiting = true;
            state = self.appender_wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.appender_waiting = false;
        }
        state.written_events += batch.events;
        state.written.push(batch);
        let wake = state.syncer_waiting;
        drop(state);
        if wake {
            self.syncer_wake.notify_one();
        }
    }

    /// Everything written so far, oldest first; waits for something. `None` once the
    /// appender is gone and everything was taken.
    fn take(&self, into: &mut Vec<Written>, until: Option<std::time::Instant>) -> Taken {
        let mut state = self.lock();
        loop {
            if !state.written.is_empty() {
                std::mem::swap(&mut state.written, into);
                state.written_events = 0;
                let wake = state.appender_waiting;
                drop(state);
                if wake {
                    self.appender_wake.notify_one();
                }
                return Taken::Batches;
            }
            if state.closed {
                return Taken::Closed;
            }
            state.syncer_waiting = true;
            state = match until {
                None => self.syncer_wake.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(until) => {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        state.syncer_waiting = false;
                        return Taken::TimedOut;
                    }
                    self.syncer_wake.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
            state.syncer_waiting = false;
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let wake = state.syncer_waiting;
        drop(state);
        if wake {
            self.syncer_wake.notify_one();
        }
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        let wake = self.lock().appender_waiting;
        if wake {
            self.appender_wake.notify_one();
        }
    }
}

struct Appender {
    shared: Arc<Shared>,
    pipe: Arc<Pipe>,
    spare: Spare,
    segment_bytes: u64,
    /// Segment being written: first position, file, write offset.
    segment_first: Position,
    file: Arc<File>,
    write_offset: u64,
    /// Last position assigned (written or about to be), ahead of the published head.
    head: Position,
    last_hash: [u8; 32],
    last_recorded_at_nanos: i64,
    buf: Vec<u8>,
    /// Streams and idempotency keys of batches handed to the syncer but possibly not yet
    /// published, with the last position of the append that set them. Checks consult
    /// these before the index; entries the index already has are pruned.
    unpublished_versions: HashMap<String, (StreamVersion, Position)>,
    unpublished_keys: HashMap<String, KeyEntry>,
}

impl Drop for Appender {
    fn drop(&mut self) {
        // Nothing more will be written: the syncer answers what it has and exits.
        self.pipe.close();
    }
}

impl Appender {
    fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let mut carry: Option<AppendRequest> = None;
        loop {
            let first = match carry.take() {
                Some(request) => request,
                None => match rx.blocking_recv() {
                    Some(request) => request,
                    None => return,
                },
            };
            let mut events = first.events.len();
            let mut bytes = first.bytes;
            let mut batch = vec![first];
            while events < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
                let Ok(request) = rx.try_recv() else { break };
                if events + request.events.len() > MAX_BATCH_EVENTS || bytes + request.bytes > MAX_BATCH_BYTES {
                    carry = Some(request);
                    break;
                }
                events += request.events.len();
                bytes += request.bytes;
                batch.push(request);
            }
            let stopped = if self.pipe.failed.load(Ordering::Acquire) {
                // A sync failed (the syncer recorded why): write nothing more.
                let reason = match self.shared.stopped_error() {
                    StoreError::Unavailable(reason) => reason,
                    other => other.to_string(),
                };
                for request in batch {
                    let _ = request.reply.send(Err(StoreError::Unavailable(reason.clone())));
                }
                Some(reason)
            } else if let Err(err) = self.commit(batch) {
                // After a failed write the state of the file (and of the page cache) is
                // unknown, so nothing more is written: the store must be reopened, and
                // recovery decides from what is on disk.
                let reason = format!("append failed and the log was stopped: {err}; reopen the store");
                tracing::error!(%reason);
                self.shared.set_failure(reason.clone());
                Some(reason)
            } else {
                None
            };
            if let Some(reason) = stopped {
                rx.close();
                if let Some(request) = carry.take() {
                    let _ = request.reply.send(Err(StoreError::Unavailable(reason.clone())));
                }
                while let Ok(request) = rx.try_recv() {
                    let _ = request.reply.send(Err(StoreError::Unavailable(reason.clone())));
                }
                return;
            }
        }
    }

    /// Waits while the in-memory tail holds more than [`MAX_UNINDEXED_EVENTS`] (sled is
    /// not keeping up), so that memory stays bounded; fails if the indexer stopped.
    fn wait_for_indexer(&self) -> io::Result<()> {
        loop {
            if self.shared.indexer_failed.load(Ordering::Acquire) {
                return Err(io::Error::other("the event log indexer stopped"));
            }
            let indexed = self.shared.indexed_through.load(Ordering::Acquire);
            if self.head.saturating_sub(indexed) <= MAX_UNINDEXED_EVENTS {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The stream's last version: unpublished batches first, then the index.
    fn stream_version(&self, stream_id: &str) -> Result<StreamVersion, StoreError> {
        match self.unpublished_versions.get(stream_id) {
            Some(&(version, _)) => Ok(version),
            None => self.shared.stream_version(stream_id),
        }
    }

    /// The live append that carried `key`, if any: unpublished batches first.
    fn existing_key(&self, key: &str, now: i64) -> Result<Option<AppendResult>, StoreError> {
        if let Some(entry) = self.unpublished_keys.get(key) {
            if key_live(entry, now, self.shared.window_nanos) {
                return Ok(Some(entry.result.clone()));
            }
        }
        self.shared.idempotent(key, now)
    }

    /// Checks, encodes and writes one batch, then hands it to the syncer, which answers
    /// it once it is durable. `Err` only for I/O failures, after which every request of
    /// the batch was answered.
    fn commit(&mut self, batch: Vec<AppendRequest>) -> io::Result<()> {
        if let Err(err) = self.wait_for_indexer() {
            for request in batch {
                let _ = request.reply.send(Err(StoreError::Unavailable(err.to_string())));
            }
            return Err(err);
        }
        // Every position before this one is durable (its sync returned) as this batch is
        // written: recovery relies on it (the record's "batch first position" field).
        let durable_before = self.pipe.synced_head.load(Ordering::Acquire) + 1;
        let now = unix_nanos(OffsetDateTime::now_utc()).max(self.last_recorded_at_nanos);

        // 1. Checks, in order, against the published index plus every unpublished batch
        //    (including the requests before this one in this batch); positions.
        let head_before = self.head;
        let prev_hash = self.last_hash;
        let Checked { answers, accepted, to_encode } = self.check(batch, now);
        let events: usize = to_encode.iter().map(Vec::len).sum();
        // Positions are gap-free and increasing within the group commit.
        debug_assert_eq!(self.head, head_before + events as u64, "positions of a group commit have a gap");
        debug_assert!(
            accepted.windows(2).all(|w| w[1].result.first_position == w[0].result.last_position + 1),
            "appends of a group commit are not consecutive"
        );

        // 2. Encode and hash into one buffer, roll segments as needed, one positional write.
        let encoded = self.encode(&accepted, &to_encode, now, durable_before);
        drop(to_encode);
        let Encoded { placed, new_segments, wrote, buf_offset, io_error } = encoded;
        debug_assert!(io_error.is_some() || placed.len() == events, "a record of the group commit was not placed");
        let written = match io_error {
            Some(err) => Err(err),
            None if self.buf.is_empty() => Ok(()),
            None => self.file.write_all_at(&self.buf, buf_offset),
        };
        if let Err(err) = written {
            for (reply, _) in answers {
                let _ = reply.send(Err(StoreError::Unavailable(format!("append not written: {err}"))));
            }
            return Err(err);
        }
        self.write_offset = buf_offset + self.buf.len() as u64;
        self.last_recorded_at_nanos = now;
        if self.write_offset > self.segment_bytes / 2 {
            self.spare.want();
        }

        // 3. The syncer makes it durable, publishes it and answers.
        self.pipe.push(Written {
            answers,
            accepted,
            placed,
            new_segments,
            wrote,
            prev_hash,
            head: self.head,
            last_hash: self.last_hash,
            last_recorded_at_nanos: now,
            events,
        });
        Ok(())
    }

    /// Step 1 of [`Appender::commit`]: checks each request in order (idempotency
    /// key, expected version) and assigns the accepted ones their positions.
    fn check(&mut self, batch: Vec<AppendRequest>, now: i64) -> Checked {
        let mut checked = Checked {
            answers: Vec::with_capacity(batch.len()),
            accepted: Vec::with_capacity(batch.len()),
            to_encode: Vec::with_capacity(batch.len()),
        };
        let published = self.shared.read_index().head;
        if !self.unpublished_versions.is_empty() {
            self.unpublished_versions.retain(|_, (_, last)| *last > published);
        }
        if !self.unpublished_keys.is_empty() {
            self.unpublished_keys.retain(|_, entry| entry.result.last_position > published);
        }
        for request in batch {
            let AppendRequest { stream_id, expected, events, reply, .. } = request;
            let key = events.first().and_then(|e| e.metadata.idempotency_key.clone());
            let result = match self.check_one(stream_id, expected, key.as_deref(), events.len() as u64, now) {
                Ok(result) => result,
                Err(err) => {
                    checked.answers.push((reply, Answer::Rejected(err)));
                    continue;
                }
            };
            self.head = result.last_position;
            match self.unpublished_versions.get_mut(&result.stream_id) {
                Some(entry) => *entry = (result.last_version, result.last_position),
                None => {
                    self.unpublished_versions
                        .insert(result.stream_id.clone(), (result.last_version, result.last_position));
                }
            }
            if let Some(k) = &key {
                self.unpublished_keys.insert(k.clone(), KeyEntry { result: result.clone(), recorded_at_nanos: now });
            }
            checked.answers.push((reply, Answer::Accepted));
            checked.accepted.push(Accepted { result, idempotency_key: key });
            checked.to_encode.push(events);
        }
        checked
    }

    /// One request's checks: a live idempotency key or a wrong expected version
    /// rejects it; otherwise its place after the current head.
    fn check_one(
        &self,
        stream_id: String,
        expected: ExpectedVersion,
        key: Option<&str>,
        count: u64,
        now: i64,
    ) -> Result<AppendResult, StoreError> {
        if let Some(k) = key {
            if let Some(existing) = self.existing_key(k, now)? {
                return Err(StoreError::DuplicateIdempotencyKey { key: k.to_owned(), existing });
            }
        }
        let actual = self.stream_version(&stream_id)?;
        if !expected.accepts(actual) {
            return Err(StoreError::WrongExpectedVersion { stream_id, expected, actual });
        }
        Ok(AppendResult {
            stream_id,
            first_version: actual + 1,
            last_version: actual + count,
            first_position: self.head + 1,
            last_position: self.head + count,
        })
    }

    /// Step 2 of [`Appender::commit`]: encodes and hashes the accepted events into
    /// `buf`, each record linked to the one before, rolling segments as needed
    /// (what precedes a roll is written to the old segment).
    fn encode(&mut self, accepted: &[Accepted], to_encode: &[Vec<NewEvent>], now: i64, durable_before: u64) -> Encoded {
        let events: usize = to_encode.iter().map(Vec::len).sum();
        let mut out = Encoded {
            placed: Vec::with_capacity(events),
            new_segments: Vec::new(),
            wrote: Vec::new(),
            buf_offset: self.write_offset,
            io_error: None,
        };
        if events > 0 {
            out.wrote.push(Arc::clone(&self.file));
        }
        self.buf.clear();
        let Encoded { placed, new_segments, wrote, buf_offset, io_error } = &mut out;
        'appends: for (a, events) in accepted.iter().zip(to_encode) {
            let result = &a.result;
            for (i, event) in events.iter().enumerate() {
                let envelope = EnvelopeRef {
                    position: result.first_position + i as u64,
                    stream_id: &result.stream_id,
                    stream_version: result.first_version + i as u64,
                    event_id: &event.event_id,
                    event_type: &event.event_type,
                    schema_version: event.schema_version,
                    recorded_at_nanos: now,
                    metadata: &event.metadata,
                    payload: &event.payload,
                };
                let start = self.buf.len();
                let hash = encode_record(
                    &mut self.buf,
                    &envelope,
                    &self.last_hash,
                    durable_before,
                    result.first_position,
                    events.len() as u32,
                );
                let len = (self.buf.len() - start) as u64;
                if *buf_offset + self.buf.len() as u64 > self.segment_bytes {
                    // The record does not fit: write what precedes it, start a new segment.
                    let record = self.buf.split_off(start);
                    if let Err(err) = self.roll(*buf_offset, envelope.position) {
                        *io_error = Some(err);
                        break 'appends;
                    }
                    wrote.push(Arc::clone(&self.file));
                    new_segments.push((self.segment_first, Arc::clone(&self.file)));
                    self.buf = record;
                    *buf_offset = 0;
                }
                // Offsets fit in u32: segments are at most 4 GiB (checked at open).
                let offset = (*buf_offset + self.buf.len() as u64 - len) as u32;
                placed.push(Placed { loc: Loc { segment: self.segment_first, offset, len: len as u32 }, hash });
                self.last_hash = hash;
            }
        }
        out
    }

    /// Writes the buffered records to the current segment and opens a new one whose
    /// first record will be `next_position` (the spare prepared in the background,
    /// renamed; created here only if none is ready).
    fn roll(&mut self, buf_offset: u64, next_position: Position) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, buf_offset)?;
        }
        self.buf.clear();
        let file = self.spare.take(next_position, self.segment_bytes)?;
        self.file = Arc::new(file);
        self.segment_first = next_position;
        Ok(())
    }
}

/// Syncs what the appender wrote, then publishes it (index, then head) and answers.
struct Syncer {
    shared: Arc<Shared>,
    pipe: Arc<Pipe>,
    head_tx: watch::Sender<Position>,
    watermark: Watermark,
    /// When the watermark was last written.
    watermark_at: std::time::Instant,
    /// Dropped when the syncer exits (after the last publish), which tells the indexer
    /// to finish.
    _indexer_stop: SyncSender<()>,
    metrics: StoreMetrics,
}

impl Syncer {
    fn run(mut self) {
        let mut failed: Option<String> = None;
        let mut group: Vec<Written> = Vec::new();
        let mut files: Vec<Arc<File>> = Vec::new();
        loop {
            // While acknowledged appends are not yet covered by the watermark, wait for
            // more work only until it is due, then write it (an idle log is covered
            // within WATERMARK_INTERVAL of its last acknowledgement).
            let until = (failed.is_none() && self.watermark_behind()).then(|| self.watermark_at + WATERMARK_INTERVAL);
            match self.pipe.take(&mut group, until) {
                Taken::Closed => break,
                Taken::TimedOut => {
                    self.store_watermark();
                    continue;
                }
                Taken::Batches => {}
            }
            if let Some(reason) = &failed {
                answer_all(&mut group, || StoreError::Unavailable(reason.clone()));
                continue;
            }
            // Every batch of the group was written before this point, so one sync of each
            // file it touched covers all of them.
            files.clear();
            for file in group.iter().flat_map(|batch| &batch.wrote) {
                if !files.iter().any(|f| Arc::ptr_eq(f, file)) {
                    files.push(Arc::clone(file));
                }
            }
            if let Some(err) = files.iter().find_map(|file| file.sync_data().err()) {
                // As after a failed write: the page cache can no longer be trusted
                // ("fsyncgate"); nothing more is written or acknowledged.
                let reason = format!("fdatasync failed and the log was stopped: {err}; reopen the store");
                tracing::error!(%reason);
                self.shared.set_failure(reason.clone());
                self.pipe.fail();
                answer_all(&mut group, || StoreError::Unavailable(format!("append not written: {err}")));
                failed = Some(reason);
                continue;
            }
            let events: usize = group.iter().map(|batch| batch.events).sum();
            if events > 0 {
                self.metrics.group_commit_events.record(events as f64);
            }
            self.publish(&mut group);
            if self.watermark_at.elapsed() >= WATERMARK_INTERVAL {
                self.store_watermark();
            }
        }
        if failed.is_none() {
            self.store_watermark();
        }
    }

    /// Whether acknowledged appends are not yet covered by the watermark.
    fn watermark_behind(&self) -> bool {
        self.shared.read_index().head > self.watermark.position()
    }

    /// Records the published head as acknowledged (`log/synced`).
    fn store_watermark(&mut self) {
        let synced = {
            let index = self.shared.read_index();
            Synced { position: index.head, hash: index.last_hash }
        };
        if let Err(err) = self.watermark.store(synced) {
            // The log itself is fine; only the tell-tale for damage after a crash lags.
            tracing::warn!(error = %err, "could not write the synced watermark (log/synced)");
        }
        self.watermark_at = std::time::Instant::now();
    }

    /// The group is durable: publish it to readers (index, then head), then answer.
    fn publish(&self, group: &mut Vec<Written>) {
        let Some(head) = group.last().map(|batch| batch.head) else { return };
        self.pipe.synced_head.store(head, Ordering::Release);
        {
            let mut index = self.shared.write_index();
            for batch in group.iter_mut() {
                // Invariants 2 and 4 (module docs of `embedded`): each group commit
                // starts right after the published head and links to its hash.
                debug_assert_eq!(batch.prev_hash, index.last_hash, "a group commit does not link to the chain");
                debug_assert!(
                    batch.accepted.first().is_none_or(|a| a.result.first_position == index.head + 1),
                    "a group commit does not start right after the published head"
                );
                debug_assert!(batch.placed.last().is_none_or(|p| p.hash == batch.last_hash), "the batch's last hash");
                for (first, file) in batch.new_segments.drain(..) {
                    index.segments.push(SegmentFile { first, file });
                }
                let mut placed = batch.placed.iter();
                for a in &batch.accepted {
                    let stream_id: Arc<str> = match index.streams.get_key_value(a.result.stream_id.as_str()) {
                        Some((id, _)) => Arc::clone(id),
                        None => Arc::from(a.result.stream_id.as_str()),
                    };
                    let key: Option<Arc<str>> = a.idempotency_key.as_deref().map(Arc::from);
                    for (i, position) in (a.result.first_position..=a.result.last_position).enumerate() {
                        let Some(p) = placed.next() else { break };
                        let entry = TailEntry {
                            loc: p.loc,
                            stream_id: Arc::clone(&stream_id),
                            version: a.result.first_version + i as u64,
                            hash: p.hash,
                            key: if i == 0 { key.clone() } else { None },
                        };
                        let key_entry = (i == 0 && key.is_some()).then(|| KeyEntry {
                            result: a.result.clone(),
                            recorded_at_nanos: batch.last_recorded_at_nanos,
                        });
                        index.push(position, entry, key_entry);
                    }
                }
                index.head = batch.head;
                index.last_hash = batch.last_hash;
                index.last_recorded_at_nanos = batch.last_recorded_at_nanos;
            }
        }
        self.head_tx.send_replace(head);
        self.metrics.head.set(head as f64);
        for batch in group.drain(..) {
            let mut accepted = batch.accepted.into_iter();
            for (reply, answer) in batch.answers {
                let outcome = match answer {
                    Answer::Rejected(err) => Err(err),
                    Answer::Accepted => accepted
                        .next()
                        .map(|a| a.result)
                        .ok_or_else(|| StoreError::Unavailable("append result missing".to_owned())),
                };
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Answers every request of the group with an error, nothing published.
fn answer_all(group: &mut Vec<Written>, err: impl Fn() -> StoreError) {
    for batch in group.drain(..) {
        for (reply, _) in batch.answers {
            let _ = reply.send(Err(err()));
        }
    }
}
