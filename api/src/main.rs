//! `paystream`: the platform's one binary.
//!
//! ```text
//! paystream serve [--data DIR] [--listen ADDR]    run the HTTP API (default ./data, 127.0.0.1:8080)
//! paystream verify [--data DIR]                   check the log read-only (beside a live server too)
//! paystream replay [--projection NAME] [--data DIR] rebuild read models offline from position 0
//! paystream export --projection NAME [--format csv] a read model as CSV on stdout
//! paystream bench store [--events N] [--dir DIR]  event log benchmark (docs/performance.md)
//! paystream bench http [--clients 64] [--seconds 10] [--interval-seconds 60] payment API load and soak test
//!                      (server as a child process: RSS, p50/p99 per interval, restart time; docs/performance.md)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use paystream_api::server::{serve, BoxError, ServeOptions, Tuning};
use std::sync::Arc;

use paystream_projections::{ProjectionName, Projections};
use paystream_store::{EmbeddedStore, EventStore};

const USAGE: &str = "usage:
  paystream serve [--data DIR] [--listen ADDR] [--store-cache-mib N] [--facts-cache-mib N]
                  [--projections-cache-mib N] [--idempotency-window-seconds N] [--pending-after-seconds N]
  paystream verify [--data DIR]
  paystream replay [--projection NAME] [--data DIR]
  paystream export --projection NAME [--format csv] [--data DIR]
  paystream bench store [--events N] [--dir DIR]
  paystream bench http [--clients 64] [--seconds 10] [--interval-seconds 60] [--data DIR]
                       [--store-cache-mib N] [--facts-cache-mib N] [--projections-cache-mib N]
  paystream bench http --url HOST:PORT --admin-key KEY [--clients 64] [--seconds 10] [--interval-seconds 60]";

struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if let Some(name) = arg.strip_prefix("--") {
            let value = args.next().ok_or_else(|| format!("--{name} needs a value"))?;
            options.push((name.to_string(), value));
        } else {
            positional.push(arg);
        }
    }
    Ok(Args { positional, options })
}

impl Args {
    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        match self.options.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            Some((name, _)) => Err(format!("unknown option --{name}")),
            None => Ok(()),
        }
    }

    /// A positive whole number option, or its default.
    fn positive(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.option(name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("--{name}: expected a whole number above 0, got {text:?}")),
            },
        }
    }

    /// The memory budget and windows of `serve` (see `Tuning`).
    fn tuning(&self) -> Result<Tuning, String> {
        let d = Tuning::default();
        Ok(Tuning {
            store_cache_mib: self.positive("store-cache-mib", d.store_cache_mib)?,
            facts_cache_mib: self.positive("facts-cache-mib", d.facts_cache_mib)?,
            projections_cache_mib: self.positive("projections-cache-mib", d.projections_cache_mib)?,
            idempotency_window: std::time::Duration::from_secs(
                self.positive("idempotency-window-seconds", d.idempotency_window.as_secs())?,
            ),
            pending_after: std::time::Duration::from_secs(
                self.positive("pending-after-seconds", d.pending_after.as_secs())?,
            ),
        })
    }

    fn data(&self) -> PathBuf {
        PathBuf::from(self.option("data").unwrap_or("./data"))
    }

    /// The data directory of an existing installation: the offline commands
    /// (`verify`, `replay`, `export`) refuse a directory without an event log
    /// rather than create an empty one (a mistyped `--data`).
    fn existing_data(&self) -> Result<PathBuf, BoxError> {
        let dir = self.data();
        if !dir.join("log").is_dir() {
            return Err(format!(
                "{} holds no event log ({}/log is missing); give --data DIR",
                dir.display(),
                dir.display()
            )
            .into());
        }
        Ok(dir)
    }
}

/// The log and the read side, opened offline (the server must not be
/// running on the same data directory: both lock it).
async fn open_read_side(args: &Args) -> Result<(Arc<dyn EventStore>, Projections), BoxError> {
    let dir = args.existing_data()?;
    let store_dir = dir.clone();
    let store: Arc<dyn EventStore> =
        Arc::new(tokio::task::spawn_blocking(move || EmbeddedStore::open(&store_dir)).await??);
    let projections = paystream_api::server::open_projections(&dir, Arc::clone(&store)).await?;
    Ok((store, projections))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn run(args: Args) -> Result<(), BoxError> {
    match args.positional.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve"] => {
            args.check_known(&[
                "data",
                "listen",
                "store-cache-mib",
                "facts-cache-mib",
                "projections-cache-mib",
                "idempotency-window-seconds",
                "pending-after-seconds",
            ])?;
            let listen: SocketAddr =
                args.option("listen").unwrap_or("127.0.0.1:8080").parse().map_err(|e| format!("--listen: {e}"))?;
            let tuning = args.tuning()?;
            serve(ServeOptions { data: args.data(), listen, tuning }).await
        }
        ["verify"] => {
            args.check_known(&["data"])?;
            let dir = args.existing_data()?;
            // Read-only: no recovery, no lock, no byte written; runs beside a live server.
            let report =
                tokio::task::spawn_blocking(move || paystream_store::embedded::verify::verify_dir(&dir)).await??;
            println!("{report}");
            match &report.report.first_bad {
                None => Ok(()),
                Some((position, _)) => Err(format!("the log is damaged: first bad position {position}").into()),
            }
        }
        ["replay"] => {
            args.check_known(&["data", "projection"])?;
            let names = match args.option("projection") {
                Some(name) => vec![name.parse::<ProjectionName>()?],
                None => Vec::new(),
            };
            let (store, projections) = open_read_side(&args).await?;
            let report = projections.replay(&names).await?;
            projections.flush().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            store.close().await?;
            Ok(())
        }
        ["export"] => {
            args.check_known(&["data", "projection", "format"])?;
            let name: ProjectionName = args.option("projection").ok_or("--projection NAME is required")?.parse()?;
            if args.option("format").unwrap_or("csv") != "csv" {
                return Err("--format: only csv is supported".into());
            }
            let (store, projections) = open_read_side(&args).await?;
            let head = store.head().await?;
            // Export what the log holds now: catch the projection up first.
            if projections.checkpoint(name) < head {
                let running = projections.start();
                projections.wait_for(name, head, std::time::Duration::from_secs(3_600)).await?;
                running.stop().await;
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            projections.export_csv(name, &mut out)?;
            std::io::Write::flush(&mut out)?;
            drop(out);
            store.close().await?;
            Ok(())
        }
        ["bench", "store"] => {
            args.check_known(&["events", "dir"])?;
            let events: u64 =
                args.option("events").unwrap_or("1000000").parse().map_err(|e| format!("--events: {e}"))?;
            let dir = match args.option("dir") {
                Some(dir) => PathBuf::from(dir),
                None => std::env::temp_dir().join(format!("paystream-bench-{}", std::process::id())),
            };
            let options = paystream_store::bench::BenchOptions { events, ..Default::default() };
            let report = paystream_store::bench::run_store_bench(&dir, options).await?;
            println!("{report}");
            if args.option("dir").is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        ["bench", "http"] => {
            args.check_known(&[
                "clients",
                "seconds",
                "interval-seconds",
                "url",
                "admin-key",
                "data",
                "store-cache-mib",
                "facts-cache-mib",
                "projections-cache-mib",
            ])?;
            use paystream_api::bench_http::{ChildServer, HttpBenchOptions, Target, DEFAULT_CLIENTS, DEFAULT_INTERVAL};
            let clients = usize::try_from(args.positive("clients", DEFAULT_CLIENTS as u64)?)
                .map_err(|e| format!("--clients: {e}"))?;
            let seconds = args.positive("seconds", 10)?;
            let interval = args.positive("interval-seconds", DEFAULT_INTERVAL.as_secs())?;
            // Checked as `serve` checks them, then forwarded to the child as given.
            args.tuning()?;
            let serve_args: Vec<String> = ["store-cache-mib", "facts-cache-mib", "projections-cache-mib"]
                .into_iter()
                .filter_map(|name| args.option(name).map(|value| [format!("--{name}"), value.to_string()]))
                .flatten()
                .collect();
            let temporary = args.option("data").is_none();
            let data = match args.option("data") {
                Some(dir) => PathBuf::from(dir),
                None => std::env::temp_dir().join(format!("paystream-bench-http-{}", std::process::id())),
            };
            let target = match (args.option("url"), args.option("admin-key")) {
                (Some(url), Some(key)) => {
                    if !serve_args.is_empty() || !temporary {
                        return Err("--url measures a running server: --data and the serve options do not apply".into());
                    }
                    let addr = url
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .parse()
                        .map_err(|e| format!("--url: {e}"))?;
                    Target::Running { addr, admin_key: key.to_string() }
                }
                (None, None) => {
                    let exe = std::env::current_exe().map_err(|e| format!("cannot find the paystream binary: {e}"))?;
                    Target::Child(ChildServer { exe, data: data.clone(), serve_args })
                }
                _ => return Err("--url and --admin-key go together".into()),
            };
            let child = matches!(target, Target::Child(_));
            let options = HttpBenchOptions {
                clients,
                duration: std::time::Duration::from_secs(seconds),
                interval: std::time::Duration::from_secs(interval),
                target,
            };
            let result = paystream_api::bench_http::run(options).await;
            if child && temporary {
                let _ = std::fs::remove_dir_all(&data);
            }
            println!("{}", result?);
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

/// jemalloc returns freed memory to the system (pages decay after ~10 s) and does not
/// multiply it by thread the way glibc's arenas do: under load the server's RSS
/// followed the heap at 2-3x with glibc (docs/performance.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("paystream: {error}");
            ExitCode::FAILURE
        }
    }
}
