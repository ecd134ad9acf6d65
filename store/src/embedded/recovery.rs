//! Opening the log: rebuild the in-memory index from sled plus the log, cut a torn tail,
//! refuse damage in the middle.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::derived::Persisted;
use super::index::{Index, SegmentIndex};
use super::segment::{self, decode_body, find_records_after, parse_frame, Frame, HEADER_LEN, RECORD_MAGIC};
use crate::chain::{compute_hash, unix_nanos, GENESIS_HASH};
use crate::error::StoreError;
use crate::types::{AppendResult, Position, MAX_RECORD_BYTES};

/// Why recovery stopped.
pub(crate) enum RecoverError {
    /// sled does not describe this log; drop it and recover from the log alone.
    Untrusted(String),
    Store(StoreError),
}

impl From<StoreError> for RecoverError {
    fn from(err: StoreError) -> Self {
        RecoverError::Store(err)
    }
}

impl From<std::io::Error> for RecoverError {
    fn from(err: std::io::Error) -> Self {
        RecoverError::Store(StoreError::Io(err))
    }
}

fn corrupt(position: Position, detail: String) -> RecoverError {
    RecoverError::Store(StoreError::Corrupt { position: Some(position), detail })
}

/// Rebuilds the index. `persisted` covers positions `1..=indexed_through`; everything
/// after it is read from the log with every check (CRC, position, chain, versions).
pub(crate) fn recover(log_dir: &Path, segment_bytes: u64, persisted: Persisted) -> Result<Index, RecoverError> {
    let mut paths: Vec<(Position, PathBuf)> = segment::list_segments(log_dir)?;
    if paths.is_empty() {
        segment::create_segment(log_dir, 1, segment_bytes)?;
        paths = segment::list_segments(log_dir)?;
    }
    if paths.first().map(|(first, _)| *first) != Some(1) {
        return Err(RecoverError::Store(StoreError::Corrupt {
            position: Some(1),
            detail: "the first segment file does not start at position 1".to_owned(),
        }));
    }
    let mut index = Index { streams: persisted.streams, idempotency: persisted.idempotency, ..Index::default() };
    for (first, path) in &paths {
        index.segments.push(SegmentIndex {
            first: *first,
            file: Arc::new(segment::open_segment(path)?),
            offsets: Vec::new(),
            end: 0,
        });
    }

    // Positions 1..=C from sled's position chunks.
    let mut seg = 0usize;
    for (i, &(segment_first, offset)) in persisted.locations.iter().enumerate() {
        let position = i as u64 + 1;
        while seg < index.segments.len() && index.segments[seg].first != segment_first {
            seg += 1;
        }
        let Some(s) = index.segments.get_mut(seg) else {
            return Err(RecoverError::Untrusted(format!("position {position} in an unknown segment")));
        };
        if position - s.first != s.offsets.len() as u64 {
            return Err(RecoverError::Untrusted(format!("position {position} out of sequence in its segment")));
        }
        s.offsets.push(offset);
    }

    let w = persisted.indexed_through;
    let mut scan =
        Scan { w, w_hash: persisted.indexed_hash, expect: 1, prev_hash: GENESIS_HASH, last_recorded_at_nanos: 0 };
    // Resume at the last located record (re-read so its length is known), or at the start.
    let mut seg = 0usize;
    let mut at = 0usize;
    if let Some(last) = index.segments.iter().rposition(|s| !s.offsets.is_empty()) {
        seg = last;
        let s = &mut index.segments[seg];
        at = s.offsets.pop().map_or(0, |o| o as usize);
        scan.expect = s.first + s.offsets.len() as u64;
    }

    // Segments before the resume point are not walked: their end is after their last record.
    for s in &mut index.segments[..seg] {
        if let Some(&last) = s.offsets.last() {
            let mut header = [0u8; HEADER_LEN];
            s.file.read_exact_at(&mut header, u64::from(last))?;
            let body_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if header[..4] != RECORD_MAGIC || body_len as usize > MAX_RECORD_BYTES {
                return Err(RecoverError::Untrusted(format!(
                    "no record header at the offset sled gives for position {}",
                    s.first + s.offsets.len() as u64 - 1
                )));
            }
            s.end = u64::from(last) + (HEADER_LEN as u64) + u64::from(body_len);
        }
    }

    let first_walked = seg;
    while seg < index.segments.len() {
        let path = &paths[seg].1;
        let buf = fs::read(path)?;
        match scan.segment(&mut index, seg, &buf, at)? {
            SegmentEnd::Clean(end) => {
                index.segments[seg].end = end as u64;
                let next_first = index.segments.get(seg + 1).map(|s| s.first);
                match next_first {
                    None => break,
                    Some(first) if first == scan.expect => {
                        seg += 1;
                        at = 0;
                    }
                    Some(_) => {
                        // A later segment that does not continue this one: only the torn
                        // analysis can say whether that is a lost tail or damage.
                        scan.torn(&mut index, &paths, seg, &buf, end, "next segment does not continue this one")?;
                        break;
                    }
                }
            }
            SegmentEnd::Damaged(end, why) => {
                scan.torn(&mut index, &paths, seg, &buf, end, &why)?;
                break;
            }
        }
    }
    if scan.expect <= w {
        return Err(RecoverError::Untrusted(format!(
            "sled indexed up to position {w}, the log ends at {}",
            scan.expect - 1
        )));
    }

    // The newest segment is written next: make sure it is preallocated.
    if let Some(last) = index.segments.last() {
        if last.file.metadata()?.len() < segment_bytes {
            last.file.set_len(segment_bytes)?;
            last.file.sync_all()?;
        }
    }
    // What the walk found may only be in the page cache: a killed process leaves its last
    // writes there, unsynced (a power cut would still lose them). New records claim that
    // every position before their "batch first position" is durable, so make it true
    // before the appender writes any.
    for s in index.segments.iter().skip(first_walked) {
        s.file.sync_data()?;
    }
    index.head = scan.expect - 1;
    index.last_hash = scan.prev_hash;
    index.last_recorded_at_nanos = scan.last_recorded_at_nanos;
    Ok(index)
}

enum SegmentEnd {
    /// Only zeros after this offset.
    Clean(usize),
    /// Something other than a whole record at this offset.
    Damaged(usize, String),
}

struct Scan {
    w: Position,
    w_hash: [u8; 32],
    expect: Position,
    prev_hash: [u8; 32],
    last_recorded_at_nanos: i64,
}

impl Scan {
    /// Walks one segment from `at`. Positions below `w` (already in sled) are only
    /// hopped over by their headers; position `w` must match sled's hash; later
    /// positions are fully checked and indexed.
    fn segment(
        &mut self,
        index: &mut Index,
        seg: usize,
        buf: &[u8],
        mut at: usize,
    ) -> Result<SegmentEnd, RecoverError> {
        loop {
            let full = self.expect >= self.w;
            let (body, len) = match parse_frame(buf, at, full) {
                Frame::Record { body, len } => (body, len),
                Frame::End => {
                    if buf[at.min(buf.len())..].iter().all(|&b| b == 0) {
                        return Ok(SegmentEnd::Clean(at));
                    }
                    return Ok(SegmentEnd::Damaged(at, "zeros followed by data".to_owned()));
                }
                Frame::Bad(why) => {
                    if self.expect <= self.w {
                        return Err(RecoverError::Untrusted(format!(
                            "position {} (indexed in sled) unreadable: {why}",
                            self.expect
                        )));
                    }
                    return Ok(SegmentEnd::Damaged(at, why));
                }
            };
            let offset = u32::try_from(at).map_err(|_| corrupt(self.expect, "offset beyond 4 GiB".to_owned()))?;
            if full {
                self.check_and_index(index, body)?;
            }
            index.segments[seg].offsets.push(offset);
            self.expect += 1;
            at += len;
        }
    }

    fn check_and_index(&mut self, index: &mut Index, body: &[u8]) -> Result<(), RecoverError> {
        let position = self.expect;
        let (event, trailer) = decode_body(body).map_err(|why| corrupt(position, why))?;
        if event.position != position {
            let why = format!("record holds position {}, expected {position}", event.position);
            return Err(if position <= self.w { RecoverError::Untrusted(why) } else { corrupt(position, why) });
        }
        if position == self.w {
            if event.hash != self.w_hash {
                return Err(RecoverError::Untrusted(format!("hash of position {position} differs from sled's")));
            }
        } else {
            if event.prev_hash != self.prev_hash {
                return Err(corrupt(position, "prev_hash does not match the previous record".to_owned()));
            }
            if compute_hash(&event) != event.hash {
                return Err(corrupt(position, "hash does not match the record".to_owned()));
            }
            let count = u64::from(trailer.append_count);
            if trailer.append_first > position || position >= trailer.append_first + count.max(1) {
                return Err(corrupt(position, "append bounds do not contain the record".to_owned()));
            }
            let positions = index.streams.entry(event.stream_id.clone()).or_default();
            if event.stream_version != positions.len() as u64 + 1 {
                return Err(corrupt(
                    position,
                    format!(
                        "stream {} version {} follows version {}",
                        event.stream_id,
                        event.stream_version,
                        positions.len()
                    ),
                ));
            }
            positions.push(position);
            if position == trailer.append_first {
                if let Some(key) = &event.metadata.idempotency_key {
                    index.idempotency.insert(
                        key.clone(),
                        AppendResult {
                            stream_id: event.stream_id.clone(),
                            first_version: event.stream_version,
                            last_version: event.stream_version + count - 1,
                            first_position: position,
                            last_position: position + count - 1,
                        },
                    );
                }
            }
        }
        self.prev_hash = event.hash;
        self.last_recorded_at_nanos = unix_nanos(event.recorded_at);
        Ok(())
    }

    /// The log stops being whole at `(seg, at)`, where position `expect` should be.
    /// If any whole record after that point has a batch first position beyond `expect`,
    /// it was written after `expect`'s sync returned, so `expect` had been acknowledged:
    /// this is damage, reported as `Corrupt`. Otherwise everything after the point was
    /// written while `expect`'s sync had not returned (the batches in flight at the
    /// crash, never acknowledged): a torn tail, which is cut (zeroed, later segments
    /// deleted).
    fn torn(
        &mut self,
        index: &mut Index,
        paths: &[(Position, PathBuf)],
        seg: usize,
        buf: &[u8],
        at: usize,
        why: &str,
    ) -> Result<(), RecoverError> {
        let expect = self.expect;
        if expect <= self.w {
            return Err(RecoverError::Untrusted(format!(
                "the log ends at position {} before sled's {}",
                expect - 1,
                self.w
            )));
        }
        let last_nonzero = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut later = find_records_after(&buf[..last_nonzero.max(at)], at + 1);
        for (_, path) in &paths[seg + 1..] {
            later.extend(find_records_after(&fs::read(path)?, 0));
        }
        if let Some((_, trailer, position)) =
            later.iter().find(|(_, trailer, position)| trailer.batch_first > expect || *position < expect)
        {
            return Err(corrupt(
                expect,
                format!(
                    "{why} at offset {at} of {}, but position {position} (group commit from {}) was written after it: acknowledged events would be lost, refusing to truncate",
                    paths[seg].1.display(),
                    trailer.batch_first
                ),
            ));
        }
        tracing::warn!(
            segment = %paths[seg].1.display(),
            offset = at,
            position = expect,
            reason = why,
            "cutting a torn tail of the event log"
        );
        let s = &mut index.segments[seg];
        if last_nonzero > at {
            s.file.write_all_at(&vec![0u8; last_nonzero - at], at as u64)?;
            s.file.sync_data()?;
        }
        s.end = at as u64;
        let removed = index.segments.split_off(seg + 1);
        if !removed.is_empty() {
            for (_, path) in &paths[seg + 1..] {
                fs::remove_file(path)?;
            }
            segment::sync_dir(paths[seg].1.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::chain::EnvelopeRef;
    use crate::types::Metadata;
    use uuid::Uuid;

    const SEGMENT_BYTES: u64 = 64 * 1024;

    /// Writes single-event appends to segment 1, one group commit per `(events, batch
    /// first position)`, as the pipelined appender does; returns each record's
    /// (offset, length).
    fn write_log(log_dir: &Path, batches: &[(u64, Position)]) -> Vec<(usize, usize)> {
        let file = segment::create_segment(log_dir, 1, SEGMENT_BYTES).unwrap();
        let mut buf = Vec::new();
        let mut records = Vec::new();
        let mut prev_hash = GENESIS_HASH;
        let mut position = 1;
        let metadata = Metadata::default();
        for &(events, durable_before) in batches {
            for _ in 0..events {
                let event_id = Uuid::now_v7();
                let payload = format!(r#"{{"n":{position}}}"#).into_bytes();
                let envelope = EnvelopeRef {
                    position,
                    stream_id: "stream-1",
                    stream_version: position,
                    event_id: &event_id,
                    event_type: "Tested",
                    schema_version: 1,
                    recorded_at_nanos: 1_700_000_000_000_000_000,
                    metadata: &metadata,
                    payload: &payload,
                };
                let start = buf.len();
                prev_hash = segment::encode_record(&mut buf, &envelope, &prev_hash, durable_before, position, 1);
                records.push((start, buf.len() - start));
                position += 1;
            }
        }
        file.write_all_at(&buf, 0).unwrap();
        records
    }

    fn tear(log_dir: &Path, (offset, len): (usize, usize)) {
        let file = segment::open_segment(&segment::segment_path(log_dir, 1)).unwrap();
        file.write_all_at(&vec![0u8; len / 2], (offset + len / 4) as u64).unwrap();
    }

    /// Batches A (1..=3), B (4..=6), C (7..=9). B was written while A's sync was running,
    /// C after A's returned but while B's was: a crash can leave B torn and C whole. C's
    /// records say only 1..=3 were durable when they were written, so this is a torn
    /// tail, cut back to 3 (plus whatever of B is whole before the tear).
    #[test]
    fn torn_in_flight_batch_with_a_whole_later_in_flight_batch_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let records = write_log(dir.path(), &[(3, 1), (3, 1), (3, 4)]);
        tear(dir.path(), records[4]); // position 5
        let index = match recover(dir.path(), SEGMENT_BYTES, Persisted::default()) {
            Ok(index) => index,
            Err(RecoverError::Store(err)) => panic!("{err}"),
            Err(RecoverError::Untrusted(why)) => panic!("{why}"),
        };
        assert_eq!(index.head, 4);
        let buf = fs::read(segment::segment_path(dir.path(), 1)).unwrap();
        assert!(buf[records[4].0..].iter().all(|&b| b == 0), "the torn tail was zeroed");
    }

    /// The same log, but C was written after B's sync returned (its records say 1..=6
    /// were durable): B was acknowledged, so a tear in it is damage, never cut.
    #[test]
    fn tear_before_a_later_batch_that_saw_it_durable_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let records = write_log(dir.path(), &[(3, 1), (3, 1), (3, 7)]);
        tear(dir.path(), records[4]);
        let before = fs::read(segment::segment_path(dir.path(), 1)).unwrap();
        match recover(dir.path(), SEGMENT_BYTES, Persisted::default()) {
            Err(RecoverError::Store(StoreError::Corrupt { position: Some(5), .. })) => {}
            Err(RecoverError::Store(err)) => panic!("expected Corrupt at 5, got {err}"),
            Err(RecoverError::Untrusted(why)) => panic!("expected Corrupt at 5, got {why}"),
            Ok(index) => panic!("expected Corrupt at 5, recovered to {}", index.head),
        }
        assert_eq!(fs::read(segment::segment_path(dir.path(), 1)).unwrap(), before, "nothing was cut");
    }
}
