//! The single appender: group commit of concurrent appends into one write + one fdatasync.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use super::index::SegmentIndex;
use super::segment::{create_segment, encode_record};
use super::Shared;
use crate::chain::{unix_nanos, EnvelopeRef};
use crate::error::StoreError;
use crate::types::{AppendResult, ExpectedVersion, NewEvent, Position, MAX_APPEND_BYTES};

/// Most events one group commit writes.
pub const MAX_BATCH_EVENTS: usize = 16_384;
/// Most record bytes one group commit writes (at least one maximal append fits).
pub const MAX_BATCH_BYTES: usize = MAX_APPEND_BYTES;
/// Appends waiting for the appender; senders wait (backpressure) beyond this.
pub const APPEND_QUEUE_CAPACITY: usize = 4_096;

pub(crate) type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

pub(crate) struct AppendRequest {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Sum of the records' encoded sizes.
    pub bytes: usize,
    pub reply: Reply,
}

/// An accepted append, applied to the in-memory index once the batch is durable.
struct Accepted {
    result: AppendResult,
    idempotency_key: Option<String>,
}

/// Where a record of the batch went.
struct Placed {
    segment_first: Position,
    offset: u64,
    len: u64,
}

pub(crate) struct Appender {
    pub shared: Arc<Shared>,
    pub log_dir: PathBuf,
    pub segment_bytes: u64,
    /// Segment being written: first position, file, write offset.
    pub segment_first: Position,
    pub file: Arc<File>,
    pub write_offset: u64,
    pub head: Position,
    pub last_hash: [u8; 32],
    pub last_recorded_at_nanos: i64,
    pub head_tx: watch::Sender<Position>,
    /// Dropped when the appender exits, which tells the indexer to finish.
    pub _indexer_stop: SyncSender<()>,
    pub buf: Vec<u8>,
}

impl Appender {
    pub fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
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
            if let Err(err) = self.commit(batch) {
                // After a failed write or fdatasync the state of the file (and of the page
                // cache) is unknown, so nothing more is written: the store must be reopened,
                // and recovery decides from what is on disk.
                let reason = format!("append failed and the log was stopped: {err}; reopen the store");
                tracing::error!(%reason);
                self.shared.set_failure(reason.clone());
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

    /// Checks, writes and syncs one batch, then publishes it and answers every request.
    /// `Err` only for I/O failures, after which every request of the batch was answered.
    fn commit(&mut self, batch: Vec<AppendRequest>) -> io::Result<()> {
        let batch_first = self.head + 1;
        let now = unix_nanos(OffsetDateTime::now_utc()).max(self.last_recorded_at_nanos);
        self.buf.clear();
        let mut buf_offset = self.write_offset;
        let mut outcomes: Vec<(Reply, Result<AppendResult, StoreError>)> = Vec::with_capacity(batch.len());
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut placed: Vec<Placed> = Vec::new();
        let mut new_segments: Vec<(Position, Arc<File>)> = Vec::new();
        let mut to_sync: Vec<Arc<File>> = vec![Arc::clone(&self.file)];
        let mut io_error: Option<io::Error> = None;
        {
            let shared = Arc::clone(&self.shared);
            let index = shared.read_index();
            let mut versions: HashMap<String, u64> = HashMap::new();
            let mut keys: HashMap<String, AppendResult> = HashMap::new();
            for request in batch {
                if io_error.is_some() {
                    outcomes.push((request.reply, Err(StoreError::Closed)));
                    continue;
                }
                let key = request.events[0].metadata.idempotency_key.clone();
                if let Some(k) = &key {
                    if let Some(existing) = keys.get(k).or_else(|| index.idempotency.get(k)) {
                        let err = StoreError::DuplicateIdempotencyKey { key: k.clone(), existing: existing.clone() };
                        outcomes.push((request.reply, Err(err)));
                        continue;
                    }
                }
                let actual = versions
                    .get(&request.stream_id)
                    .copied()
                    .unwrap_or_else(|| index.stream_version(&request.stream_id));
                if !request.expected.accepts(actual) {
                    let err = StoreError::WrongExpectedVersion {
                        stream_id: request.stream_id,
                        expected: request.expected,
                        actual,
                    };
                    outcomes.push((request.reply, Err(err)));
                    continue;
                }
                let count = request.events.len() as u64;
                let result = AppendResult {
                    stream_id: request.stream_id,
                    first_version: actual + 1,
                    last_version: actual + count,
                    first_position: self.head + 1,
                    last_position: self.head + count,
                };
                for (i, event) in request.events.iter().enumerate() {
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
                        batch_first,
                        result.first_position,
                        request.events.len() as u32,
                    );
                    let len = (self.buf.len() - start) as u64;
                    if buf_offset + self.buf.len() as u64 > self.segment_bytes {
                        // The record does not fit: write what precedes it, start a new segment.
                        let record = self.buf.split_off(start);
                        if let Err(err) = self.roll(buf_offset, envelope.position) {
                            io_error = Some(err);
                            break;
                        }
                        to_sync.push(Arc::clone(&self.file));
                        new_segments.push((self.segment_first, Arc::clone(&self.file)));
                        self.buf = record;
                        buf_offset = 0;
                    }
                    placed.push(Placed {
                        segment_first: self.segment_first,
                        offset: buf_offset + self.buf.len() as u64 - len,
                        len,
                    });
                    self.last_hash = hash;
                }
                if io_error.is_some() {
                    outcomes.push((request.reply, Err(StoreError::Closed)));
                    continue;
                }
                self.head = result.last_position;
                versions.insert(result.stream_id.clone(), result.last_version);
                if let Some(k) = &key {
                    keys.insert(k.clone(), result.clone());
                }
                outcomes.push((request.reply, Ok(result.clone())));
                accepted.push(Accepted { result, idempotency_key: key });
            }
        }

        let written = match io_error {
            Some(err) => Err(err),
            None => self.write_and_sync(buf_offset, &to_sync),
        };
        if let Err(err) = written {
            for (reply, _) in outcomes {
                let _ = reply.send(Err(StoreError::Unavailable(format!("append not written: {err}"))));
            }
            return Err(err);
        }
        self.write_offset = buf_offset + self.buf.len() as u64;
        self.last_recorded_at_nanos = now;

        // Durable: publish to readers, then answer.
        {
            let mut index = self.shared.write_index();
            for (first, file) in new_segments {
                index.segments.push(SegmentIndex { first, file, offsets: Vec::new(), end: 0 });
            }
            for p in &placed {
                // Records are placed in order, nearly always in the newest segment.
                if let Some(s) = index.segments.iter_mut().rev().find(|s| s.first == p.segment_first) {
                    s.offsets.push(p.offset as u32);
                    s.end = p.offset + p.len;
                }
            }
            for a in &accepted {
                let new_positions = a.result.first_position..=a.result.last_position;
                match index.streams.get_mut(&a.result.stream_id) {
                    Some(positions) => positions.extend(new_positions),
                    None => {
                        let positions = new_positions.collect();
                        index.streams.insert(a.result.stream_id.clone(), positions);
                    }
                }
                if let Some(k) = &a.idempotency_key {
                    index.idempotency.insert(k.clone(), a.result.clone());
                }
            }
            index.head = self.head;
            index.last_hash = self.last_hash;
            index.last_recorded_at_nanos = now;
        }
        self.head_tx.send_replace(self.head);
        for (reply, outcome) in outcomes {
            let _ = reply.send(outcome);
        }
        Ok(())
    }

    fn write_and_sync(&mut self, buf_offset: u64, to_sync: &[Arc<File>]) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, buf_offset)?;
        }
        for file in to_sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Writes the buffered records to the current segment and opens a new one whose
    /// first record will be `next_position`.
    fn roll(&mut self, buf_offset: u64, next_position: Position) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, buf_offset)?;
        }
        self.buf.clear();
        let file = create_segment(&self.log_dir, next_position, self.segment_bytes)?;
        self.file = Arc::new(file);
        self.segment_first = next_position;
        Ok(())
    }
}
