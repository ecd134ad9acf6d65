//! The next segment file, prepared in the background.
//!
//! A new segment is filled with written zeros and synced before any record goes in
//! (see `segment::create_segment`): 64 MiB of writes that used to stall the appender
//! for ~40 ms at every roll. A preparer thread keeps one such file ready as
//! `log/spare` (prepared as `log/spare.tmp`, synced, then renamed, so `spare` is always
//! whole); a roll renames it to the segment's name and syncs the directory, which takes
//! a fraction of a millisecond, then the preparer starts the next one. If no spare is
//! ready (the preparer is behind, or failed), the roll creates the segment itself, as
//! before. Neither name matches a segment file name, so recovery never reads them.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::segment::{create_segment_at, open_segment, segment_path, sync_dir};
use crate::types::Position;

const SPARE_NAME: &str = "spare";
const SPARE_TMP_NAME: &str = "spare.tmp";

#[derive(Default)]
struct State {
    /// A whole, synced spare of `segment_bytes` is at `log/spare`.
    ready: bool,
    /// The current segment is past half full: prepare the next one.
    wanted: bool,
    stopped: bool,
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    log_dir: PathBuf,
    segment_bytes: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The appender's handle; dropping it stops the preparer.
pub(crate) struct Spare {
    inner: Arc<Inner>,
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.inner.lock().stopped = true;
        self.inner.wake.notify_all();
    }
}

impl Spare {
    /// Starts the preparer. A whole spare left by an earlier run is kept.
    pub fn start(log_dir: &Path, segment_bytes: u64) -> io::Result<(Spare, JoinHandle<()>)> {
        let _ = fs::remove_file(log_dir.join(SPARE_TMP_NAME));
        let spare = log_dir.join(SPARE_NAME);
        let ready = match fs::metadata(&spare) {
            Ok(meta) if meta.len() == segment_bytes => true,
            Ok(_) => {
                fs::remove_file(&spare)?;
                false
            }
            Err(_) => false,
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State { ready, wanted: false, stopped: false }),
            wake: Condvar::new(),
            log_dir: log_dir.to_path_buf(),
            segment_bytes,
        });
        let thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new().name("paystream-store-spare".into()).spawn(move || prepare_loop(&inner))?
        };
        Ok((Spare { inner }, thread))
    }

    /// Asks for the next segment to be prepared (the appender calls it once the current
    /// one is half full, so a short-lived store never writes a spare).
    pub fn want(&self) {
        let mut state = self.inner.lock();
        if !state.wanted {
            state.wanted = true;
            drop(state);
            self.inner.wake.notify_all();
        }
    }

    /// The segment file whose first record will be `first_position`: the spare renamed,
    /// or a new one created here if none is ready. Durable (data and directory entry).
    pub fn take(&self, first_position: Position, segment_bytes: u64) -> io::Result<File> {
        let log_dir = &self.inner.log_dir;
        let target = segment_path(log_dir, first_position);
        let ready = {
            let mut state = self.inner.lock();
            state.wanted = false;
            std::mem::take(&mut state.ready)
        };
        let file = if ready && segment_bytes == self.inner.segment_bytes {
            fs::rename(log_dir.join(SPARE_NAME), &target)?;
            sync_dir(log_dir)?;
            open_segment(&target)?
        } else {
            tracing::debug!("no spare segment ready; creating one on the write path");
            create_segment_at(log_dir, &target, segment_bytes)?
        };
        self.inner.wake.notify_all();
        Ok(file)
    }
}

fn prepare_loop(inner: &Inner) {
    loop {
        {
            let mut state = inner.lock();
            while (state.ready || !state.wanted) && !state.stopped {
                state = inner.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stopped {
                return;
            }
        }
        match prepare(inner) {
            Ok(()) => inner.lock().ready = true,
            Err(err) => {
                tracing::warn!(error = %err, "could not prepare the next segment; the next roll creates it");
                // Try again later rather than spinning on a full disk.
                let state = inner.lock();
                let _ = inner.wake.wait_timeout(state, std::time::Duration::from_secs(10));
            }
        }
    }
}

fn prepare(inner: &Inner) -> io::Result<()> {
    let tmp = inner.log_dir.join(SPARE_TMP_NAME);
    let _ = fs::remove_file(&tmp);
    drop(create_segment_at(&inner.log_dir, &tmp, inner.segment_bytes)?);
    fs::rename(&tmp, inner.log_dir.join(SPARE_NAME))?;
    Ok(())
}
