//! The durable "synced through" watermark: `<dir>/log/synced`.
//!
//! It names the highest position known to have been acknowledged (its group commit's
//! `fdatasync` had returned) and that record's hash. Recovery and `verify` treat damage
//! at or below it as corruption, never as a torn tail. The syncer rewrites it at most
//! every [`WATERMARK_INTERVAL`] while appends flow, within that interval of the last
//! acknowledgement when they stop, and at clean close; open writes it after recovery (everything recovery kept was synced by it).
//!
//! File layout: two 64-byte slots, written alternately so that a torn write of one
//! leaves the other whole. A slot (integers little-endian):
//!
//! ```text
//! [u8; 4]  magic "PSW1"
//! u64      sequence (the newer whole slot wins)
//! u64      position
//! [u8; 32] hash of the record at that position
//! u32      CRC32C of the 52 bytes before it
//! [u8; 8]  zero
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::types::Position;

/// Longest time acknowledged appends go without being covered by the watermark.
/// Damage to records acknowledged within this window before a crash, with no later
/// group commit on disk, is indistinguishable from a torn tail (it is cut).
pub const WATERMARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

const MAGIC: [u8; 4] = *b"PSW1";
const SLOT_BYTES: usize = 64;
const FILE_NAME: &str = "synced";

/// What the watermark says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    pub position: Position,
    pub hash: [u8; 32],
}

pub(crate) fn path(log_dir: &Path) -> PathBuf {
    log_dir.join(FILE_NAME)
}

fn decode_slot(b: &[u8]) -> Option<(u64, Synced)> {
    if b.len() < SLOT_BYTES || b[0..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[52..56].try_into().ok()?);
    if crc32c::crc32c(&b[..52]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(b[4..12].try_into().ok()?);
    let position = u64::from_le_bytes(b[12..20].try_into().ok()?);
    let hash: [u8; 32] = b[20..52].try_into().ok()?;
    Some((seq, Synced { position, hash }))
}

fn encode_slot(seq: u64, synced: Synced) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..20].copy_from_slice(&synced.position.to_le_bytes());
    b[20..52].copy_from_slice(&synced.hash);
    let crc = crc32c::crc32c(&b[..52]);
    b[52..56].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads the watermark without writing anything: `Ok(None)` if there is no file (a
/// log written before the watermark existed); `Err` if the file exists but neither
/// slot is whole.
pub fn read(log_dir: &Path) -> io::Result<Option<Synced>> {
    let bytes = match std::fs::read(path(log_dir)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    if bytes.iter().all(|&b| b == 0) {
        // Created (zeroed) but never written: a crash right after the first open.
        return Ok(None);
    }
    let slots = [bytes.get(..SLOT_BYTES), bytes.get(SLOT_BYTES..2 * SLOT_BYTES)];
    let best = slots.iter().flatten().filter_map(|b| decode_slot(b)).max_by_key(|(seq, _)| *seq);
    match best {
        Some((_, synced)) => Ok(Some(synced)),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, "the synced watermark file has no whole slot")),
    }
}

/// Overwrites the watermark with `synced` (both slots). For tests that simulate a
/// crash before the watermark covered the last group commits, and for operators who
/// restore a log from a backup taken without its watermark. Never while a store is open.
pub fn rewrite(log_dir: &Path, synced: Synced) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(path(log_dir))?;
    file.write_all_at(&encode_slot(1, synced), 0)?;
    file.write_all_at(&encode_slot(0, synced), SLOT_BYTES as u64)?;
    file.sync_all()?;
    super::segment::sync_dir(log_dir)
}

/// The writer (one per open store).
pub(crate) struct Watermark {
    file: File,
    seq: u64,
    last: Synced,
}

impl Watermark {
    /// Opens (creating durably if needed) the watermark file.
    pub fn open(log_dir: &Path, current: Option<Synced>) -> io::Result<Watermark> {
        let path = path(log_dir);
        let existed = path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if !existed {
            file.set_len(2 * SLOT_BYTES as u64)?;
            file.sync_all()?;
            super::segment::sync_dir(log_dir)?;
        }
        let mut seq = 0;
        let bytes = std::fs::read(&path)?;
        for b in [bytes.get(..SLOT_BYTES), bytes.get(SLOT_BYTES..2 * SLOT_BYTES)].into_iter().flatten() {
            if let Some((s, _)) = decode_slot(b) {
                seq = seq.max(s);
            }
        }
        // Nothing to compare with on a new file: the first `store` always writes.
        let last = current.unwrap_or(Synced { position: u64::MAX, hash: [0; 32] });
        Ok(Watermark { file, seq, last })
    }

    /// The position the watermark last recorded (`u64::MAX` before the first write).
    pub fn position(&self) -> Position {
        self.last.position
    }

    /// Durably records that everything through `synced.position` was acknowledged.
    pub fn store(&mut self, synced: Synced) -> io::Result<()> {
        if synced == self.last {
            return Ok(());
        }
        self.seq += 1;
        let slot = (self.seq % 2) * SLOT_BYTES as u64;
        self.file.write_all_at(&encode_slot(self.seq, synced), slot)?;
        self.file.sync_data()?;
        self.last = synced;
        Ok(())
    }
}
