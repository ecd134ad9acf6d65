//! Opening the log: load sled's marker, index the tail after it (checking every record),
//! cut a torn tail, refuse damage to anything acknowledged.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::derived::{DiskIndex, KeyEntry, Marker, POSITION_CHUNK};
use super::index::{Index, Loc, SegmentFile, TailEntry};
use super::segment::{self, decode_body, find_records_after, parse_frame, Frame};
use super::watermark::Synced;
use crate::chain::{compute_hash, unix_nanos, GENESIS_HASH};
use crate::error::StoreError;
use crate::types::{AppendResult, Position};

/// While recovery walks the log, complete chunks are written to sled once the tail
/// holds this many positions, so that rebuilding the index of a long log from position
/// 1 never holds more than this in memory.
const RECOVERY_FLUSH_EVENTS: usize = 64 * POSITION_CHUNK as usize;
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

/// What recovery found: the index (sled's marker plus the tail) and where the next
/// record goes.
pub(crate) struct Recovered {
    pub index: Index,
    pub write_offset: u64,
}

/// Rebuilds the in-memory tail. sled covers positions `1..=marker.indexed_through`;
/// everything after it is read from the log with every check (CRC, position, chain,
/// versions, append bounds), and complete chunks go to sled as the walk proceeds.
/// `synced` is the watermark: damage at or below it is `Corrupt`, never cut.
pub(crate) fn recover(
    log_dir: &Path,
    segment_bytes: u64,
    disk: &DiskIndex,
    marker: Marker,
    synced: Synced,
) -> Result<Recovered, RecoverError> {
    let (paths, mut index) = open_segments(log_dir, segment_bytes)?;
    let w = marker.indexed_through;
    let mut scan = Scan {
        w,
        synced,
        expect: 1,
        prev_hash: GENESIS_HASH,
        last_recorded_at_nanos: 0,
        indexed_hash: marker.indexed_hash,
    };
    // Resume after the record at `w` (sled's last indexed position), or at the start.
    let (mut seg, mut at) = (0usize, 0usize);
    if w > 0 {
        let chunk = disk.chunk((w - 1) / POSITION_CHUNK).map_err(|e| RecoverError::Untrusted(e.to_string()))?;
        let loc = chunk.last().copied().ok_or_else(|| RecoverError::Untrusted("empty chunk".to_owned()))?;
        seg = index
            .segments
            .iter()
            .position(|s| s.first == loc.segment)
            .ok_or_else(|| RecoverError::Untrusted(format!("position {w} in an unknown segment")))?;
        scan.check_indexed(&index.segments[seg].file, w, loc)?;
        at = loc.offset as usize + loc.len as usize;
        scan.expect = w + 1;
    }
    index.indexed_through = w;
    if synced.position > 0 && synced.position <= w {
        // The walk will not read the watermark's record: check it here.
        scan.check_synced_record(disk, &index)?;
    }

    let first_walked = seg;
    let write_offset = scan.walk(&mut index, disk, &paths, seg, at)?;
    if scan.expect <= w {
        return Err(RecoverError::Untrusted(format!(
            "sled indexed up to position {w}, the log ends at {}",
            scan.expect - 1
        )));
    }
    if scan.expect <= synced.position {
        return Err(corrupt(
            scan.expect,
            format!(
                "the log ends at position {}, but positions through {} were acknowledged (log/synced)",
                scan.expect - 1,
                synced.position
            ),
        ));
    }
    flush_chunks(&mut index, disk, 0)?;
    prepare_writes(&index, segment_bytes, first_walked)?;
    index.head = scan.expect - 1;
    index.last_hash = scan.prev_hash;
    index.last_recorded_at_nanos = scan.last_recorded_at_nanos;
    Ok(Recovered { index, write_offset })
}

/// The segment files, in order, opened into a fresh index (the first one is
/// created in an empty directory); the first must start at position 1.
fn open_segments(log_dir: &Path, segment_bytes: u64) -> Result<(Vec<(Position, PathBuf)>, Index), RecoverError> {
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
    let mut index = Index::default();
    for (first, path) in &paths {
        index.segments.push(SegmentFile { first: *first, file: Arc::new(segment::open_segment(path)?) });
    }
    Ok((paths, index))
}

/// Makes the log ready for the appender: the newest segment preallocated, and
/// every segment the walk read synced.
fn prepare_writes(index: &Index, segment_bytes: u64, first_walked: usize) -> Result<(), RecoverError> {
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
    Ok(())
}

/// Writes complete chunks of the tail to sled while it holds more than `keep` positions.
fn flush_chunks(index: &mut Index, disk: &DiskIndex, keep: usize) -> Result<(), RecoverError> {
    while index.tail.len() > keep {
        let Some(chunk) = index.complete_chunk() else { break };
        disk.write_chunk(&chunk)?;
        index.prune_chunk(&chunk);
    }
    Ok(())
}

enum SegmentEnd {
    /// Only zeros after this offset.
    Clean(usize),
    /// Something other than a whole record at this offset.
    Damaged(usize, String),
}

struct Scan {
    w: Position,
    indexed_hash: [u8; 32],
    synced: Synced,
    expect: Position,
    prev_hash: [u8; 32],
    last_recorded_at_nanos: i64,
}

impl Scan {
    /// Walks the segments from segment `seg`, offset `at`, to the end of the log
    /// (or to a torn tail, which it cuts); returns the write offset in the last
    /// segment.
    fn walk(
        &mut self,
        index: &mut Index,
        disk: &DiskIndex,
        paths: &[(Position, PathBuf)],
        mut seg: usize,
        mut at: usize,
    ) -> Result<u64, RecoverError> {
        let mut write_offset = 0u64;
        while seg < index.segments.len() {
            let path = &paths[seg].1;
            let buf = fs::read(path)?;
            match self.segment(index, disk, seg, &buf, at)? {
                SegmentEnd::Clean(end) => {
                    write_offset = end as u64;
                    let next_first = index.segments.get(seg + 1).map(|s| s.first);
                    match next_first {
                        None => break,
                        Some(first) if first == self.expect => {
                            seg += 1;
                            at = 0;
                        }
                        Some(_) => {
                            // A later segment that does not continue this one: only the torn
                            // analysis can say whether that is a lost tail or damage.
                            self.torn(index, paths, seg, &buf, end, "next segment does not continue this one")?;
                            break;
                        }
                    }
                }
                SegmentEnd::Damaged(end, why) => {
                    write_offset = end as u64;
                    self.torn(index, paths, seg, &buf, end, &why)?;
                    break;
                }
            }
        }
        Ok(write_offset)
    }

    /// The record at `w` must be whole and carry sled's hash, else sled is from another
    /// log (or ahead of it) and is rebuilt.
    fn check_indexed(&mut self, file: &fs::File, w: Position, loc: Loc) -> Result<(), RecoverError> {
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, u64::from(loc.offset))
            .map_err(|e| RecoverError::Untrusted(format!("position {w} (indexed in sled) unreadable: {e}")))?;
        let body = match parse_frame(&buf, 0, true) {
            Frame::Record { body, .. } => body,
            Frame::End => return Err(RecoverError::Untrusted(format!("position {w} (indexed in sled) is zeros"))),
            Frame::Bad(why) => {
                return Err(RecoverError::Untrusted(format!("position {w} (indexed in sled) unreadable: {why}")))
            }
        };
        let (event, _) = decode_body(body).map_err(RecoverError::Untrusted)?;
        if event.position != w || event.hash != self.indexed_hash {
            return Err(RecoverError::Untrusted(format!("position {w} differs from sled's")));
        }
        self.prev_hash = event.hash;
        self.last_recorded_at_nanos = unix_nanos(event.recorded_at);
        Ok(())
    }

    /// The watermark's record, when sled already covers it.
    fn check_synced_record(&self, disk: &DiskIndex, index: &Index) -> Result<(), RecoverError> {
        let p = self.synced.position;
        let chunk = disk.chunk((p - 1) / POSITION_CHUNK).map_err(|e| RecoverError::Untrusted(e.to_string()))?;
        let loc = chunk[((p - 1) % POSITION_CHUNK) as usize];
        let file = index.file_of(loc.segment).ok_or_else(|| RecoverError::Untrusted(format!("{p}: no segment")))?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, u64::from(loc.offset))?;
        let hash = match parse_frame(&buf, 0, true) {
            Frame::Record { body, .. } => decode_body(body).map_err(|why| corrupt(p, why))?.0.hash,
            Frame::End => return Err(corrupt(p, "acknowledged record is zeros".to_owned())),
            Frame::Bad(why) => return Err(corrupt(p, why)),
        };
        if hash != self.synced.hash {
            return Err(corrupt(p, "hash differs from the synced watermark's (log/synced)".to_owned()));
        }
        Ok(())
    }

    /// Walks one segment from `at`, checking and indexing every record.
    fn segment(
        &mut self,
        index: &mut Index,
        disk: &DiskIndex,
        seg: usize,
        buf: &[u8],
        mut at: usize,
    ) -> Result<SegmentEnd, RecoverError> {
        let segment_first = index.segments[seg].first;
        loop {
            let (body, len) = match parse_frame(buf, at, true) {
                Frame::Record { body, len } => (body, len),
                Frame::End => {
                    if buf[at.min(buf.len())..].iter().all(|&b| b == 0) {
                        return Ok(SegmentEnd::Clean(at));
                    }
                    return Ok(SegmentEnd::Damaged(at, "zeros followed by data".to_owned()));
                }
                Frame::Bad(why) => return Ok(SegmentEnd::Damaged(at, why)),
            };
            let offset = u32::try_from(at).map_err(|_| corrupt(self.expect, "offset beyond 4 GiB".to_owned()))?;
            let loc = Loc { segment: segment_first, offset, len: len as u32 };
            self.check_and_index(index, disk, body, loc)?;
            self.expect += 1;
            at += len;
            if index.tail.len() >= RECOVERY_FLUSH_EVENTS + POSITION_CHUNK as usize {
                flush_chunks(index, disk, RECOVERY_FLUSH_EVENTS)?;
            }
        }
    }

    fn check_and_index(
        &mut self,
        index: &mut Index,
        disk: &DiskIndex,
        body: &[u8],
        loc: Loc,
    ) -> Result<(), RecoverError> {
        let position = self.expect;
        let (event, trailer) = decode_body(body).map_err(|why| corrupt(position, why))?;
        if event.position != position {
            return Err(corrupt(position, format!("record holds position {}, expected {position}", event.position)));
        }
        if event.prev_hash != self.prev_hash {
            return Err(corrupt(position, "prev_hash does not match the previous record".to_owned()));
        }
        if compute_hash(&event) != event.hash {
            return Err(corrupt(position, "hash does not match the record".to_owned()));
        }
        if position == self.synced.position && event.hash != self.synced.hash {
            return Err(corrupt(position, "hash differs from the synced watermark's (log/synced)".to_owned()));
        }
        let count = u64::from(trailer.append_count);
        if trailer.append_first > position || position >= trailer.append_first + count.max(1) {
            return Err(corrupt(position, "append bounds do not contain the record".to_owned()));
        }
        let previous = match index.tail_stream_version(&event.stream_id) {
            Some(v) => v,
            None => disk.stream_version(&event.stream_id)?,
        };
        if event.stream_version != previous + 1 {
            return Err(corrupt(
                position,
                format!("stream {} version {} follows version {previous}", event.stream_id, event.stream_version),
            ));
        }
        let recorded_at_nanos = unix_nanos(event.recorded_at);
        let key = match &event.metadata.idempotency_key {
            Some(k) if position == trailer.append_first => Some((
                Arc::<str>::from(k.as_str()),
                KeyEntry {
                    result: AppendResult {
                        stream_id: event.stream_id.clone(),
                        first_version: event.stream_version,
                        last_version: event.stream_version + count - 1,
                        first_position: position,
                        last_position: position + count - 1,
                    },
                    recorded_at_nanos,
                },
            )),
            _ => None,
        };
        let stream_id = match index.streams.get_key_value(event.stream_id.as_str()) {
            Some((id, _)) => Arc::clone(id),
            None => Arc::from(event.stream_id.as_str()),
        };
        let (key_name, key_entry) = match key {
            Some((name, entry)) => (Some(name), Some(entry)),
            None => (None, None),
        };
        let entry = TailEntry { loc, stream_id, version: event.stream_version, hash: event.hash, key: key_name };
        index.push(position, entry, key_entry);
        self.prev_hash = event.hash;
        self.last_recorded_at_nanos = recorded_at_nanos;
        Ok(())
    }

    /// The log stops being whole at `(seg, at)`, where position `expect` should be.
    /// If `expect` is at or below the synced watermark, it was acknowledged: damage,
    /// reported as `Corrupt`. Likewise if any whole record after that point has a batch
    /// first position beyond `expect` (it was written after `expect`'s sync returned).
    /// Otherwise everything after the point was written while `expect`'s sync had not
    /// returned (the batches in flight at the crash, never acknowledged): a torn tail,
    /// which is cut (zeroed, later segments deleted).
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
        if expect <= self.synced.position {
            return Err(corrupt(
                expect,
                format!(
                    "{why} at offset {at} of {}, but positions through {} were acknowledged (log/synced): refusing to truncate",
                    paths[seg].1.display(),
                    self.synced.position
                ),
            ));
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
        let s = &index.segments[seg];
        if last_nonzero > at {
            s.file.write_all_at(&vec![0u8; last_nonzero - at], at as u64)?;
            s.file.sync_data()?;
        }
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

    fn scratch_disk() -> (sled::Db, DiskIndex) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let disk = DiskIndex::new(db.open_tree("t").unwrap());
        (db, disk)
    }

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
        let (_db, disk) = scratch_disk();
        let index = match recover(dir.path(), SEGMENT_BYTES, &disk, Marker::default(), Synced::default()) {
            Ok(recovered) => recovered.index,
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
        let (_db, disk) = scratch_disk();
        match recover(dir.path(), SEGMENT_BYTES, &disk, Marker::default(), Synced::default()) {
            Err(RecoverError::Store(StoreError::Corrupt { position: Some(5), .. })) => {}
            Err(RecoverError::Store(err)) => panic!("expected Corrupt at 5, got {err}"),
            Err(RecoverError::Untrusted(why)) => panic!("expected Corrupt at 5, got {why}"),
            Ok(recovered) => panic!("expected Corrupt at 5, recovered to {}", recovered.index.head),
        }
        assert_eq!(fs::read(segment::segment_path(dir.path(), 1)).unwrap(), before, "nothing was cut");
    }
}
