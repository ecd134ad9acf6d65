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

/// What was measured.
#[derive(Debug, Clone)]
pub struct RebuildBenchReport {
    pub events: u64,
    pub payments: u64,
    pub fill_elapsed: Duration,
    /// Rebuild of all projections together (one read and decode, four models).
    pub rebuild_all_elapsed: Duration,
    /// CPU time (user + system, all threads) the process spent in that rebuild: less
    /// sensitive than wall time to other work on the machine.
    pub rebuild_all_cpu: Option<Duration>,
    /// Each projection rebuilt alone, when asked for (wall time, CPU time).
    pub per_projection: Vec<(ProjectionName, Duration, Option<Duration>)>,
    /// When asked for: all four caught up from position 0 by the live follower into a
    /// fresh database, as after a layout change (wall time, CPU time).
    pub follow_all: Option<(Duration, Option<Duration>)>,
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

fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(process_cpu_time()?.saturating_sub(before?))
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl RebuildBenchReport {
    pub fn rebuild_all_events_per_sec(&self) -> f64 {
        per_sec(self.events, self.rebuild_all_elapsed)
    }
}

impl fmt::Display for RebuildBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| workload | events | seconds | events/s | CPU seconds |")?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        writeln!(
            f,
            "| fill: {} payments through `append` ({FILL_WRITERS} concurrent writers) | {} | {:.2} | {:.0} | |",
            self.payments,
            self.events,
            self.fill_elapsed.as_secs_f64(),
            per_sec(self.events, self.fill_elapsed)
        )?;
        write!(
            f,
            "| full rebuild, all 4 projections together | {} | {:.2} | {:.0} | {} |",
            self.events,
            self.rebuild_all_elapsed.as_secs_f64(),
            self.rebuild_all_events_per_sec(),
            cpu_cell(self.rebuild_all_cpu)
        )?;
        if let Some((elapsed, cpu)) = self.follow_all {
            write!(
                f,
                "\n| catch-up from position 0 by the live follower, all 4 | {} | {:.2} | {:.0} | {} |",
                self.events,
                elapsed.as_secs_f64(),
                per_sec(self.events, elapsed),
                cpu_cell(cpu)
            )?;
        }
        for (name, elapsed, cpu) in &self.per_projection {
            write!(
                f,
                "\n| full rebuild, `{name}` alone | {} | {:.2} | {:.0} | {} |",
                self.events,
                elapsed.as_secs_f64(),
                per_sec(self.events, *elapsed),
                cpu_cell(*cpu)
            )?;
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
/// `rebuild_batch_events` events per atomic write.
pub async fn run_rebuild_bench(
    dir: &Path,
    events: u64,
    per_projection: bool,
    rebuild_batch_events: usize,
    catch_up: bool,
) -> Result<RebuildBenchReport, ProjectionError> {
    let store = Arc::new(tokio::task::block_in_place(|| EmbeddedStore::open(&dir.join("log")))?);
    let started = Instant::now();
    let (events, payments) =
        fill(Arc::clone(&store), events, SimOptions { merchants: BENCH_MERCHANTS, ..SimOptions::default() }).await?;
    let fill_elapsed = started.elapsed();
    let db = tokio::task::block_in_place(|| open_db(&dir.join("projections")))?;
    let config = ProjectorConfig { rebuild_batch_events, ..ProjectorConfig::default() };
    let projections = Projections::open(db, store.clone(), config)?;
    let (started, cpu) = (Instant::now(), process_cpu_time());
    let report = projections.replay(&ProjectionName::ALL).await?;
    let rebuild_all_elapsed = started.elapsed();
    let rebuild_all_cpu = cpu_since(cpu);
    debug_assert_eq!(report.events, events);
    let mut per = Vec::new();
    if per_projection {
        for name in ProjectionName::ALL {
            let (started, cpu) = (Instant::now(), process_cpu_time());
            projections.rebuild(&[name]).await?;
            per.push((name, started.elapsed(), cpu_since(cpu)));
        }
    }
    let mut follow_all = None;
    if catch_up {
        let db = tokio::task::block_in_place(|| open_db(&dir.join("projections-follow")))?;
        let follower = Projections::open(db, store.clone(), ProjectorConfig::default())?;
        let (started, cpu) = (Instant::now(), process_cpu_time());
        let running = follower.start();
        for name in ProjectionName::ALL {
            follower.wait_for(name, events, Duration::from_secs(3_600)).await.map_err(|lagging| {
                ProjectionError::Invariant { projection: "bench", position: 0, detail: lagging.to_string() }
            })?;
        }
        follow_all = Some((started.elapsed(), cpu_since(cpu)));
        running.stop().await;
    }
    store.close().await?;
    Ok(RebuildBenchReport {
        events,
        payments,
        fill_elapsed,
        rebuild_all_elapsed,
        rebuild_all_cpu,
        per_projection: per,
        follow_all,
    })
}
