//! `paystream verify` on a data directory: read-only, no recovery, no lock.
//!
//! It reads the segment files and the synced watermark (`log/synced`) and nothing else:
//! it writes no byte and takes no lock, so it can run beside a live server. Every whole
//! record is checked (CRC, position, hash chain, append bounds). Where the log stops
//! being whole at position `p`:
//!
//! * `p` at or below the watermark: `p` was acknowledged, so this is damage (first bad
//!   position `p`). Likewise if a whole record after that point carries a batch first
//!   position beyond `p` (it was written after `p`'s sync returned), or if the log ends
//!   before the watermark.
//! * otherwise: the bytes belong to group commits whose sync had not returned when the
//!   watermark was last written: a running server's writes in flight, or a torn tail a
//!   crash left (the next open cuts it). Reported, not damage.
//!
//! Beside a live server the watermark lags the acknowledged head by at most
//! [`WATERMARK_INTERVAL`](super::WATERMARK_INTERVAL); records after it are still
//! checked whenever they are whole.

use std::fs;
use std::path::Path;

use super::segment::{self, decode_body, find_records_after, parse_frame, Frame};
use super::watermark::{self, Synced};
use crate::chain::{ChainVerifier, GENESIS_HASH};
use crate::error::StoreError;
use crate::event_store::VerifyReport;
use crate::types::Position;

/// What an offline verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineReport {
    /// Events checked, head hash, and the first bad position (damage) if any.
    pub report: VerifyReport,
    /// The synced watermark: positions through it were acknowledged.
    pub synced: Option<Synced>,
    /// Where the log stops being whole beyond the watermark (writes in flight or a
    /// torn tail the next open cuts), if it does: not damage.
    pub unacknowledged_tail: Option<(Position, String)>,
}

impl OfflineReport {
    pub fn is_ok(&self) -> bool {
        self.report.is_ok()
    }
}

impl std::fmt::Display for OfflineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.report)?;
        match &self.synced {
            Some(s) => write!(f, "; acknowledged through position {} (log/synced)", s.position)?,
            None => write!(f, "; no synced watermark (log/synced) yet")?,
        }
        if let Some((position, why)) = &self.unacknowledged_tail {
            write!(f, "; not yet acknowledged from position {position} ({why}): not damage")?;
        }
        Ok(())
    }
}

/// Verifies the log in `dir` (the data directory) without opening the store.
pub fn verify_dir(dir: &Path) -> Result<OfflineReport, StoreError> {
    let log_dir = dir.join("log");
    let synced = watermark::read(&log_dir)
        .map_err(|e| StoreError::Corrupt { position: None, detail: format!("log/synced: {e}") })?;
    let acknowledged = synced.map_or(0, |s| s.position);
    let segments = segment::list_segments(&log_dir)?;
    let mut verifier = ChainVerifier::new(1, GENESIS_HASH);
    let done = |verifier: &ChainVerifier, first_bad, tail| OfflineReport {
        report: VerifyReport { checked: verifier.checked(), head_hash: verifier.head_hash(), first_bad },
        synced,
        unacknowledged_tail: tail,
    };
    if let Some((first, _)) = segments.first() {
        if *first != 1 {
            return Ok(done(&verifier, Some((1, "the first segment does not start at position 1".to_owned())), None));
        }
    }
    for (i, (first, path)) in segments.iter().enumerate() {
        let expect = verifier.next_position();
        if *first != expect {
            let why = format!("segment {} starts at position {first}, expected {expect}", path.display());
            return Ok(stop(verifier, &segments[i..], &[], 0, expect, acknowledged, why, done));
        }
        let buf = fs::read(path)?;
        let mut at = 0usize;
        loop {
            let position = verifier.next_position();
            let (body, len) = match parse_frame(&buf, at, true) {
                Frame::Record { body, len } => (body, len),
                Frame::End if buf[at.min(buf.len())..].iter().all(|&b| b == 0) => break,
                Frame::End => {
                    let why = "zeros followed by data".to_owned();
                    return Ok(stop(verifier, &segments[i + 1..], &buf, at, position, acknowledged, why, done));
                }
                Frame::Bad(why) => {
                    return Ok(stop(verifier, &segments[i + 1..], &buf, at, position, acknowledged, why, done));
                }
            };
            let (event, trailer) = match decode_body(body) {
                Ok(decoded) => decoded,
                Err(why) => return Ok(done(&verifier, Some((position, why)), None)),
            };
            if let Err(why) = verifier.check(&event) {
                return Ok(done(&verifier, Some((position, why)), None));
            }
            let count = u64::from(trailer.append_count);
            if trailer.append_first > position || position >= trailer.append_first + count.max(1) {
                let why = "append bounds do not contain the record".to_owned();
                return Ok(done(&verifier, Some((position, why)), None));
            }
            if let Some(s) = synced.filter(|s| s.position == position && s.hash != event.hash) {
                let why = format!("hash differs from the synced watermark's ({})", hex::encode(s.hash));
                return Ok(done(&verifier, Some((position, why)), None));
            }
            at += len;
        }
    }
    let end = verifier.next_position();
    if end <= acknowledged {
        let why =
            format!("the log ends at position {}, but positions through {acknowledged} were acknowledged", end - 1);
        return Ok(done(&verifier, Some((end, why)), None));
    }
    Ok(done(&verifier, None, None))
}

/// The log stops being whole at `position` (offset `at` of `buf`): damage if it was
/// acknowledged, else an unacknowledged tail.
#[allow(clippy::too_many_arguments)]
fn stop(
    verifier: ChainVerifier,
    later_segments: &[(Position, std::path::PathBuf)],
    buf: &[u8],
    at: usize,
    position: Position,
    acknowledged: Position,
    why: String,
    done: impl Fn(&ChainVerifier, Option<(Position, String)>, Option<(Position, String)>) -> OfflineReport,
) -> OfflineReport {
    if position <= acknowledged {
        let why = format!("{why}; positions through {acknowledged} were acknowledged (log/synced)");
        return done(&verifier, Some((position, why)), None);
    }
    let mut later = if buf.is_empty() { Vec::new() } else { find_records_after(buf, at + 1) };
    for (_, path) in later_segments {
        match fs::read(path) {
            Ok(bytes) => later.extend(find_records_after(&bytes, 0)),
            Err(err) => return done(&verifier, Some((position, format!("{why}; {}: {err}", path.display()))), None),
        }
    }
    if let Some((_, trailer, p)) = later.iter().find(|(_, t, p)| t.batch_first > position || *p < position) {
        let why = format!(
            "{why}, but position {p} (group commit from {}) was written after it was acknowledged",
            trailer.batch_first
        );
        return done(&verifier, Some((position, why)), None);
    }
    done(&verifier, None, Some((position, why)))
}
