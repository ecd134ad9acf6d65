//! The store benchmark: durable appends/s and latency at 1..256 concurrent writers, and
//! full-log read throughput (`cargo run --release -p paystream-store --bin store-bench`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::{EmbeddedOptions, EmbeddedStore, EventStore, ExpectedVersion, Metadata, NewEvent, StoreError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events in the log for the full-read measurement (filled up after the write phases).
    pub events: u64,
    /// Approximate payload size of each event.
    pub payload_bytes: usize,
    /// Concurrent writers of each write phase; each append carries one event.
    pub writer_counts: Vec<usize>,
    /// Length of each write phase.
    pub phase_duration: Duration,
    pub store: EmbeddedOptions,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            events: 1_000_000,
            payload_bytes: 300,
            writer_counts: vec![1, 8, 64, 256],
            phase_duration: Duration::from_secs(3),
            store: EmbeddedOptions::default(),
        }
    }
}

/// One write phase.
#[derive(Debug, Clone)]
pub struct WritePhase {
    pub writers: usize,
    pub appends: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl WritePhase {
    pub fn appends_per_sec(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub payload_bytes: usize,
    pub writes: Vec<WritePhase>,
    /// Bulk fill up to `events` (appends of 100 events from 8 writers).
    pub fill_events: u64,
    pub fill_elapsed: Duration,
    /// Reopening the filled log (index from sled plus the log tail).
    pub reopen: Duration,
    pub read_events: u64,
    pub read_bytes: u64,
    pub read_elapsed: Duration,
    pub verify_elapsed: Duration,
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(f, "| workload | writers | events | events/s | p50 ms | p99 ms | max ms |")?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|")?;
        for w in &self.writes {
            writeln!(
                f,
                "| durable append, 1 event of ~{} B | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
                self.payload_bytes,
                w.writers,
                w.appends,
                w.appends_per_sec(),
                ms(w.p50),
                ms(w.p99),
                ms(w.max)
            )?;
        }
        writeln!(
            f,
            "| bulk fill, appends of 100 events | 8 | {} | {:.0} | | | |",
            self.fill_events,
            per_sec(self.fill_events, self.fill_elapsed)
        )?;
        writeln!(
            f,
            "| full-log read (`read_all`, 10,000 per call) | 1 | {} | {:.0} ({:.0} MB/s) | | | |",
            self.read_events,
            per_sec(self.read_events, self.read_elapsed),
            self.read_bytes as f64 / 1e6 / self.read_elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "| `verify` (full hash chain) | 1 | {} | {:.0} | | | |",
            self.read_events,
            per_sec(self.read_events, self.verify_elapsed)
        )?;
        write!(f, "| reopen of the {}-event log | | | {:.0} ms | | | |", self.read_events, ms(self.reopen))
    }
}

fn payload(n: u64, bytes: usize) -> Vec<u8> {
    let head =
        format!(r#"{{"amount_minor":{},"currency":"EUR","merchant_id":"mer_bench","n":{n},"pad":""#, 1000 + n % 997);
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut out = head.into_bytes();
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
    out
}

fn new_event(n: u64, bytes: usize) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "PaymentAuthorized".to_owned(),
        schema_version: 1,
        metadata: Metadata { correlation_id: Some(Uuid::now_v7()), ..Metadata::default() },
        payload: payload(n, bytes),
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least
/// `p` percent (0 to 100) of them at or below it; the default (zero) when
/// there are none. The one percentile of the benchmarks (store, HTTP).
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    // The float only picks an index, never money.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn write_phase(
    store: &Arc<EmbeddedStore>,
    writers: usize,
    duration: Duration,
    payload_bytes: usize,
) -> Result<WritePhase, StoreError> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut version = 0u64;
                let mut n = 0u64;
                // A payment-like pattern: a few events per stream, then a new stream.
                let mut stream = format!("payment-{}", Uuid::now_v7());
                while Instant::now() < deadline {
                    if version == 5 {
                        stream = format!("payment-{}", Uuid::now_v7());
                        version = 0;
                    }
                    let event = new_event(n, payload_bytes);
                    let t = Instant::now();
                    let r = store.append(&stream, ExpectedVersion::Exact(version), vec![event]).await?;
                    latencies.push(t.elapsed());
                    version = r.last_version;
                    n += 1;
                }
                Ok::<_, StoreError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        let mut l = task.await.map_err(|e| StoreError::Unavailable(format!("bench writer failed: {e}")))??;
        latencies.append(&mut l);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(WritePhase {
        writers,
        appends: latencies.len() as u64,
        elapsed,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    })
}

async fn fill(store: &Arc<EmbeddedStore>, target: u64, payload_bytes: usize) -> Result<u64, StoreError> {
    const WRITERS: u64 = 8;
    const PER_APPEND: u64 = 100;
    let head = store.head().await?;
    let missing = target.saturating_sub(head);
    let appends = missing / PER_APPEND;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mut written = 0u64;
                for a in (w..appends).step_by(WRITERS as usize) {
                    let events = (0..PER_APPEND).map(|k| new_event(a * PER_APPEND + k, payload_bytes)).collect();
                    store.append(&format!("fill-{w}-{}", a / 10), ExpectedVersion::Any, events).await?;
                    written += PER_APPEND;
                }
                Ok::<_, StoreError>(written)
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        written += task.await.map_err(|e| StoreError::Unavailable(format!("bench filler failed: {e}")))??;
    }
    let rest = missing - written;
    if rest > 0 {
        let events = (0..rest).map(|k| new_event(k, payload_bytes)).collect();
        store.append("fill-rest", ExpectedVersion::Any, events).await?;
        written += rest;
    }
    Ok(written)
}

async fn open(dir: &Path, options: &EmbeddedOptions) -> Result<Arc<EmbeddedStore>, StoreError> {
    let dir = dir.to_path_buf();
    let options = options.clone();
    tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options))
        .await
        .map_err(|e| StoreError::Unavailable(format!("open failed: {e}")))?
        .map(Arc::new)
}

/// Runs the benchmark in `dir` (which should be empty; the log is left there).
pub async fn run_store_bench(dir: &Path, opts: BenchOptions) -> Result<BenchReport, StoreError> {
    let store = open(dir, &opts.store).await?;
    let mut writes = Vec::new();
    for &writers in &opts.writer_counts {
        writes.push(write_phase(&store, writers, opts.phase_duration, opts.payload_bytes).await?);
    }
    let fill_started = Instant::now();
    let fill_events = fill(&store, opts.events, opts.payload_bytes).await?;
    let fill_elapsed = fill_started.elapsed();
    store.close().await?;
    drop(store);

    let reopen_started = Instant::now();
    let store = open(dir, &opts.store).await?;
    let reopen = reopen_started.elapsed();
    let head = store.head().await?;

    let read_started = Instant::now();
    let mut next = 1u64;
    let mut read_bytes = 0u64;
    loop {
        let events = store.read_all(next, 10_000).await?;
        let Some(last) = events.last() else { break };
        if last.position != next + events.len() as u64 - 1 {
            return Err(StoreError::Corrupt { position: Some(next), detail: "bench read a gap".to_owned() });
        }
        read_bytes += events.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        next = last.position + 1;
    }
    let read_elapsed = read_started.elapsed();
    let read_events = next - 1;
    if read_events != head {
        return Err(StoreError::Corrupt {
            position: Some(next),
            detail: format!("read {read_events} of {head} events"),
        });
    }

    let verify_started = Instant::now();
    let report = store.verify(0, None).await?;
    let verify_elapsed = verify_started.elapsed();
    if let Some((position, reason)) = report.first_bad {
        return Err(StoreError::Corrupt { position: Some(position), detail: reason });
    }
    store.close().await?;
    Ok(BenchReport {
        payload_bytes: opts.payload_bytes,
        writes,
        fill_events,
        fill_elapsed,
        reopen,
        read_events,
        read_bytes,
        read_elapsed,
        verify_elapsed,
    })
}
