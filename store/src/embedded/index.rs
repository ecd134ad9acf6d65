//! The in-memory indexes (rebuilt on open from sled plus the log tail) and the read path.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::segment::{decode_body, parse_frame, Frame, Trailer};
use crate::error::StoreError;
use crate::types::{AppendResult, Position, RecordedEvent, StreamVersion};

/// Most bytes one `read_all` call reads from disk; it returns fewer events beyond this.
pub const READ_MAX_BYTES: usize = 32 * 1024 * 1024;

/// One segment file and where each of its records starts.
#[derive(Debug)]
pub(crate) struct SegmentIndex {
    pub first: Position,
    pub file: Arc<File>,
    /// `offsets[i]` is where the record of position `first + i` starts.
    pub offsets: Vec<u32>,
    /// End of the last whole record (where the next one will be written).
    pub end: u64,
}

impl SegmentIndex {
    fn record_end(&self, i: usize) -> u64 {
        self.offsets.get(i + 1).map_or(self.end, |&next| u64::from(next))
    }
}

/// Everything readers and the appender consult; the appender is its only writer.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub segments: Vec<SegmentIndex>,
    pub head: Position,
    pub last_hash: [u8; 32],
    pub last_recorded_at_nanos: i64,
    /// Stream id -> position of each version (`positions[v - 1]`).
    pub streams: HashMap<String, Vec<Position>>,
    pub idempotency: HashMap<String, AppendResult>,
}

/// A contiguous byte range of one segment holding `count` records from `first`.
pub(crate) struct ReadRange {
    pub file: Arc<File>,
    pub start: u64,
    pub end: u64,
    pub first: Position,
    pub count: usize,
}

impl Index {
    pub fn stream_version(&self, stream_id: &str) -> StreamVersion {
        self.streams.get(stream_id).map_or(0, |p| p.len() as u64)
    }

    fn locate(&self, position: Position) -> Option<(usize, usize)> {
        if position == 0 || position > self.head {
            return None;
        }
        let seg = self.segments.partition_point(|s| s.first <= position).checked_sub(1)?;
        let i = usize::try_from(position - self.segments[seg].first).ok()?;
        (i < self.segments[seg].offsets.len()).then_some((seg, i))
    }

    /// Byte ranges covering positions `from..` (at most `max` events, about `max_bytes`).
    pub fn plan_read_all(&self, from: Position, max: usize, max_bytes: usize) -> Vec<ReadRange> {
        let mut ranges = Vec::new();
        let mut position = from.max(1);
        let mut remaining = max;
        let mut bytes = 0usize;
        while remaining > 0 && bytes < max_bytes {
            let Some((seg, i)) = self.locate(position) else {
                break;
            };
            let s = &self.segments[seg];
            let start = u64::from(s.offsets[i]);
            let mut count = 0usize;
            let mut end = start;
            while i + count < s.offsets.len() && count < remaining {
                end = s.record_end(i + count);
                count += 1;
                if (end - start) as usize + bytes >= max_bytes {
                    break;
                }
            }
            bytes += (end - start) as usize;
            ranges.push(ReadRange { file: Arc::clone(&s.file), start, end, first: position, count });
            position += count as u64;
            remaining -= count;
        }
        ranges
    }

    /// Byte ranges of the given positions (merged where adjacent).
    pub fn plan_read_positions(&self, positions: &[Position]) -> Vec<ReadRange> {
        let mut ranges: Vec<ReadRange> = Vec::new();
        for &position in positions {
            let Some((seg, i)) = self.locate(position) else {
                continue;
            };
            let s = &self.segments[seg];
            let start = u64::from(s.offsets[i]);
            let end = s.record_end(i);
            if let Some(last) = ranges.last_mut() {
                if Arc::ptr_eq(&last.file, &s.file) && last.end == start && last.first + last.count as u64 == position {
                    last.end = end;
                    last.count += 1;
                    continue;
                }
            }
            ranges.push(ReadRange { file: Arc::clone(&s.file), start, end, first: position, count: 1 });
        }
        ranges
    }

    pub fn stream_positions(&self, stream_id: &str, from_version: StreamVersion, max: usize) -> Vec<Position> {
        let Some(positions) = self.streams.get(stream_id) else {
            return Vec::new();
        };
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        positions.iter().skip(skip).take(max).copied().collect()
    }
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

impl Index {
    /// Segment (by first position) and offset of a stored position.
    pub fn location(&self, position: Position) -> Option<(Position, u32)> {
        let (seg, i) = self.locate(position)?;
        let s = &self.segments[seg];
        Some((s.first, s.offsets[i]))
    }
}
