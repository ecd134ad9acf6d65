//! The rebuild benchmark: fill a log with realistic payment histories (through the
//! store directly, many concurrent appends), then time a full rebuild of every
//! projection (`cargo run --release -p paystream-projections --bin projections-bench
//! -- --events 1000000`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_store::{EmbeddedStore, EventStore, ExpectedVersion, NewEvent};
use tokio::sync::mpsc;

use crate::error::ProjectionError;
use crate::model::ProjectionName;
use crate::runtime::{open_db, Projections, ProjectorConfig};
use crate::sim::{encode, SimOptions, Simulator};

/// Concurrent appenders while filling (the store group-commits them).
const FILL_WRITERS: usize = 64;

/// Merchants in the benchmark's log.
pub const BENCH_MERCHANTS: usize = 100;

/// One timed phase: wall time, CPU time, and the process's peak resident memory
/// during it.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub elapsed: Duration,
    /// CPU time (user + system, all threads) the process spent in the phase: less
    /// sensitive than wall time to other work on the machine.
    pub cpu: Option<Duration>,
    /// Highest resident set size of the whole process during the phase (it includes
    /// the log's own memory), in bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct RebuildBenchReport {
    pub events: u64,
    pub payments: u64,
    pub fill_elapsed: Duration,
    /// Resident set size of the process once the log is filled (the log's memory, before
    /// any projection runs), in bytes.
    pub filled_rss_bytes: Option<u64>,
    /// The read side's memory budget (`ProjectorConfig::cache_bytes`).
    pub cache_bytes: u64,
    /// Rebuild of all projections together (one read and decode, four models).
    pub rebuild_all: Phase,
    /// Each projection rebuilt alone, when asked for.
    pub per_projection: Vec<(ProjectionName, Phase)>,
    /// When asked for: all four caught up from position 0 by the live follower into a
    /// fresh database, as after a layout change.
    pub follow_all: Option<Phase>,
}

/// A field of `/proc/self/status` (Linux), in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident set size of this process now, in bytes (Linux), or `None`.
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// Starts timing a phase: resets the kernel's peak-RSS mark (Linux: writing 5 to
/// `/proc/self/clear_refs`), so the phase's peak does not include the ones before.
fn phase_start() -> (Instant, Option<Duration>) {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    (Instant::now(), process_cpu_time())
}

fn phase_end((started, cpu): (Instant, Option<Duration>)) -> Phase {
    Phase { elapsed: started.elapsed(), cpu: cpu_since(cpu), peak_rss_bytes: proc_status_bytes("VmHWM:") }
}

/// CPU time this process has used so far (Linux: `/proc/self/stat`, in clock ticks of
/// 1/100 s), or `None` where that is not available.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn cpu_cell(cpu: Option<Duration>) -> String {
    cpu.map_or_else(|| "n/a".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
}

fn mib_cell(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".to_string(), |b| format!("{:.0}", b as f64 / (1024.0 * 1024.0)))
}

fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(process_cpu_time()?.saturating_sub(before?))
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl RebuildBenchReport {
    pub fn rebuild_all_events_per_sec(&self) -> f64 {
        per_sec(self.events, self.rebuild_all.elapsed)
    }

    fn phase_row(&self, f: &mut fmt::Formatter<'_>, workload: &str, phase: &Phase) -> fmt::Result {
        write!(
            f,
            "\n| {workload} | {} | {:.2} | {:.0} | {} | {} |",
            self.events,
            phase.elapsed.as_secs_f64(),
            per_sec(self.events, phase.elapsed),
            cpu_cell(phase.cpu),
            mib_cell(phase.peak_rss_bytes)
        )
    }
}

impl fmt::Display for RebuildBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "read side's memory budget: {} MiB", self.cache_bytes / crate::runtime::MIB)?;
        writeln!(f, "| workload | events | seconds | events/s | CPU seconds | peak RSS MiB |")?;
        write!(f, "|---|---:|---:|---:|---:|---:|")?;
        write!(
            f,
            "\n| fill: {} payments through `append` ({FILL_WRITERS} concurrent writers) | {} | {:.2} | {:.0} | | {} at the end |",
            self.payments,
            self.events,
            self.fill_elapsed.as_secs_f64(),
            per_sec(self.events, self.fill_elapsed),
            mib_cell(self.filled_rss_bytes)
        )?;
        self.phase_row(f, "full rebuild, all 4 projections together", &self.rebuild_all)?;
        if let Some(phase) = &self.follow_all {
            self.phase_row(f, "catch-up from position 0 by the live follower, all 4", phase)?;
        }
        for (name, phase) in &self.per_projection {
            self.phase_row(f, &format!("full rebuild, `{name}` alone"), phase)?;
        }
        Ok(())
    }
}

fn sim_error(e: paystream_domain::DomainError) -> ProjectionError {
    ProjectionError::Invariant { projection: "bench", position: 0, detail: format!("simulation: {e}") }
}

/// Fills `store` with merchants and payment histories until it holds at least `events`.
/// Returns (events, payments).
pub async fn fill(store: Arc<EmbeddedStore>, events: u64, options: SimOptions) -> Result<(u64, u64), ProjectionError> {
    let (mut simulator, merchants) = Simulator::new(options).map_err(sim_error)?;
    let mut written = 0u64;
    for (stream, merchant_events) in merchants {
        let encoded: Vec<NewEvent> = merchant_events.iter().map(encode).collect();
        written += encoded.len() as u64;
        store.append(&stream, ExpectedVersion::NoStream, encoded).await?;
    }
    let (tx, rx) = mpsc::channel::<(String, Vec<NewEvent>)>(FILL_WRITERS * 4);
    let target = events.saturating_sub(written);
    let generator = tokio::task::spawn_blocking(move || -> Result<(u64, u64), ProjectionError> {
        let (mut produced, mut payments) = (0u64, 0u64);
        while produced < target {
            let flow = simulator.next_payment().map_err(sim_error)?;
            produced += flow.events.len() as u64;
            payments += 1;
            if tx.blocking_send((flow.stream(), flow.encoded())).is_err() {
                break;
            }
        }
        Ok((produced, payments))
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let writers: Vec<_> = (0..FILL_WRITERS)
        .map(|_| {
            let (store, rx) = (Arc::clone(&store), Arc::clone(&rx));
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((stream, events)) = next else { return Ok::<(), ProjectionError>(()) };
                    store.append(&stream, ExpectedVersion::NoStream, events).await?;
                }
            })
        })
        .collect();
    let join = |e: tokio::task::JoinError| ProjectionError::Invariant {
        projection: "bench",
        position: 0,
        detail: e.to_string(),
    };
    let (produced, payments) = generator.await.map_err(join)??;
    for writer in writers {
        writer.await.map_err(join)??;
    }
    Ok((written + produced, payments))
}

/// Fills a log in `dir` with about `events` realistic payment events and times a full
/// rebuild of all projections (and, with `per_projection`, of each alone), applying
/// at most `rebuild_batch_events` events per atomic write, within a read side's budget
/// of `cache_bytes`.
pub async fn run_rebuild_bench(
    dir: &Path,
    events: u64,
    per_projection: bool,
    rebuild_batch_events: usize,
    catch_up: bool,
    cache_bytes: u64,
) -> Result<RebuildBenchReport, ProjectionError> {
    let store = Arc::new(tokio::task::block_in_place(|| EmbeddedStore::open(&dir.join("log")))?);
    let started = Instant::now();
    let (events, payments) =
        fill(Arc::clone(&store), events, SimOptions { merchants: BENCH_MERCHANTS, ..SimOptions::default() }).await?;
    let fill_elapsed = started.elapsed();
    let filled_rss_bytes = rss_bytes();
    let config = ProjectorConfig { rebuild_batch_events, cache_bytes, ..ProjectorConfig::default() };
    let db = tokio::task::block_in_place(|| open_db(&dir.join("projections"), &config))?;
    let projections = Projections::open(db, store.clone(), config)?;
    let phase = phase_start();
    let report = projections.replay(&ProjectionName::ALL).await?;
    let rebuild_all = phase_end(phase);
    debug_assert_eq!(report.events, events);
    let mut per = Vec::new();
    if per_projection {
        for name in ProjectionName::ALL {
            let phase = phase_start();
            projections.rebuild(&[name]).await?;
            per.push((name, phase_end(phase)));
        }
    }
    let mut follow_all = None;
    if catch_up {
        let config = ProjectorConfig { cache_bytes, ..ProjectorConfig::default() };
        let db = tokio::task::block_in_place(|| open_db(&dir.join("projections-follow"), &config))?;
        let follower = Projections::open(db, store.clone(), config)?;
        let phase = phase_start();
        let running = follower.start();
        for name in ProjectionName::ALL {
            follower.wait_for(name, events, Duration::from_secs(3_600)).await.map_err(|lagging| {
                ProjectionError::Invariant { projection: "bench", position: 0, detail: lagging.to_string() }
            })?;
        }
        follow_all = Some(phase_end(phase));
        running.stop().await;
    }
    store.close().await?;
    Ok(RebuildBenchReport {
        events,
        payments,
        fill_elapsed,
        filled_rss_bytes,
        cache_bytes,
        rebuild_all,
        per_projection: per,
        follow_all,
    })
}
