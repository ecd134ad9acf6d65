//! `paystream`: the platform's one binary. The command line is declared here
//! with clap (`paystream --help`, `paystream <command> --help`) and described in
//! docs/operations.md, "Command line":
//!
//! ```text
//! paystream serve    run the HTTP API (default ./data, 127.0.0.1:8080)
//! paystream verify   check the log read-only (beside a live server too)
//! paystream replay   rebuild read models offline from position 0
//! paystream export   a read model as CSV on stdout
//! paystream bench store | bench http   the benchmarks of docs/performance.md
//! ```
//!
//! Every option can also be given by an environment variable, by one rule:
//! `PAYSTREAM_` and the option's name in capitals with dashes as underscores
//! (`--store-cache-mib`: `PAYSTREAM_STORE_CACHE_MIB`); the bench commands' options
//! take `PAYSTREAM_BENCH_` (`--clients`: `PAYSTREAM_BENCH_CLIENTS`), so that a
//! server's settings in the environment (its `PAYSTREAM_DATA`) never point a
//! benchmark at its data.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use paystream_api::server::{
    serve, BoxError, ServeOptions, Tuning, DEFAULT_FACTS_CACHE_MIB, DEFAULT_PROJECTIONS_CACHE_MIB,
    DEFAULT_STORE_CACHE_MIB,
};
use paystream_projections::{ProjectionName, Projections};
use paystream_store::{EmbeddedStore, EventStore, StoreError};

/// After every command's options: the rule that names the variables.
const ENVIRONMENT: &str = "\
Environment:
  Every option can also be set by an environment variable: PAYSTREAM_ and the
  option's name in capitals, dashes as underscores (--data: PAYSTREAM_DATA,
  --store-cache-mib: PAYSTREAM_STORE_CACHE_MIB). The bench commands' options take
  PAYSTREAM_BENCH_ (--clients: PAYSTREAM_BENCH_CLIENTS). An option on the command
  line wins over its variable. Each option's variable is shown beside it.
  PAYSTREAM_LOG       what is logged on stderr, a tracing filter: error, warn,
                      info, debug, trace, or per module (info,paystream_store=debug)
                      [default: info]
  PAYSTREAM_LOG_FORMAT  how log lines are written on stderr: text (for people) or
                      json (one JSON object per line) [default: text]
  `paystream serve --help` also describes PAYSTREAM_ADMIN_KEY and
  PAYSTREAM_FINGERPRINT_KEY.";

/// After `serve`'s options: the variables it reads besides its options'.
const SERVE_ENVIRONMENT: &str = "\
Environment:
  Each option above can also be set by the variable shown beside it (PAYSTREAM_ and
  the option's name in capitals, dashes as underscores); the command line wins.
  PAYSTREAM_ADMIN_KEY        an admin API key to register at start, if the log does
                             not know it yet. Without it, the first start on an empty
                             data directory creates an admin key and prints it once
                             on stdout, after the port is bound.
  PAYSTREAM_FINGERPRINT_KEY  the key of card fingerprints, in hex, at least 32 bytes
                             (64 hex digits) [default: the key in
                             <data>/secrets/fingerprint.key, created on first start,
                             readable by its owner only]
  PAYSTREAM_LOG              what is logged on stderr, a tracing filter: error, warn,
                             info, debug, trace, or per module
                             (info,paystream_store=debug) [default: info]
  PAYSTREAM_LOG_FORMAT       how log lines are written on stderr: text (for people) or
                             json (one JSON object per line, for log shippers)
                             [default: text]. Colour only when stderr is a terminal.
Metrics:
  GET /metrics on the listening address: Prometheus text format, no API key
  (docs/operations.md, \"Metrics\").";

/// An event-sourced payment platform: the HTTP API server and its offline tools.
#[derive(Parser)]
#[command(name = "paystream", version, propagate_version = true, after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API on a data directory (until SIGINT or SIGTERM).
    ///
    /// Binds the address first (a busy port fails before anything is opened), opens the event
    /// log and the facts and read models, creates the first admin key if there is none, then
    /// prints `listening on http://ADDRESS` and serves. One process per data directory.
    #[command(after_help = SERVE_ENVIRONMENT)]
    Serve(ServeArgs),
    /// Check the event log's hash chain, read-only.
    ///
    /// Takes no lock and writes nothing: it runs beside a live server too. Exits non-zero
    /// and names the first bad position if the log is damaged.
    #[command(after_help = ENVIRONMENT)]
    Verify(VerifyArgs),
    /// Rebuild read models from position 0 of the log, offline.
    ///
    /// The server must be stopped: replay needs the data directory to itself. Prints a JSON
    /// report.
    #[command(after_help = ENVIRONMENT)]
    Replay(ReplayArgs),
    /// Write a read model as CSV on stdout, offline (caught up to the log first).
    ///
    /// The server must be stopped: export needs the data directory to itself.
    #[command(after_help = ENVIRONMENT)]
    Export(ExportArgs),
    /// Benchmarks (docs/performance.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The event log's benchmark: appends and reads on a fresh log.
    #[command(after_help = ENVIRONMENT)]
    Store(BenchStoreArgs),
    /// The payment API's load and soak test.
    ///
    /// Starts `paystream serve` as a child process on its own data (unless given --url), runs
    /// keep-alive clients creating card payments, and reports throughput, p50/p99 latency and
    /// RSS per interval and the restart time.
    #[command(after_help = ENVIRONMENT)]
    Http(BenchHttpArgs),
}

/// The data directory of an installation.
#[derive(Args)]
struct DataArg {
    /// The data directory: the event log, the facts, the read models and the secrets.
    #[arg(long, value_name = "DIR", env = "PAYSTREAM_DATA", default_value = "./data")]
    data: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    data: DataArg,
    /// Address to listen on: HOST:PORT, an IP address or a host name (localhost:8080);
    /// port 0 picks a free port.
    #[arg(long, value_name = "ADDR", env = "PAYSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Memory budget of the event log's index (its caches and sled's), in MiB.
    #[arg(long, value_name = "MIB", env = "PAYSTREAM_STORE_CACHE_MIB", value_parser = positive,
          default_value_t = DEFAULT_STORE_CACHE_MIB)]
    store_cache_mib: u64,
    /// Memory budget of the write side's facts (velocity, volumes, pending), in MiB.
    #[arg(long, value_name = "MIB", env = "PAYSTREAM_FACTS_CACHE_MIB", value_parser = positive,
          default_value_t = DEFAULT_FACTS_CACHE_MIB)]
    facts_cache_mib: u64,
    /// Memory budget of the read models (their working sets and sled's cache), in MiB.
    #[arg(long, value_name = "MIB", env = "PAYSTREAM_PROJECTIONS_CACHE_MIB", value_parser = positive,
          default_value_t = DEFAULT_PROJECTIONS_CACHE_MIB)]
    projections_cache_mib: u64,
    /// How long an Idempotency-Key is remembered, in seconds (24 hours).
    #[arg(long, value_name = "SECONDS", env = "PAYSTREAM_IDEMPOTENCY_WINDOW_SECONDS", value_parser = positive,
          default_value_t = paystream_api::server::DEFAULT_IDEMPOTENCY_WINDOW.as_secs())]
    idempotency_window_seconds: u64,
    /// How long a payment may wait for the acquirer's answer before the recovery sweep
    /// asks the acquirer for it, in seconds.
    #[arg(long, value_name = "SECONDS", env = "PAYSTREAM_PENDING_AFTER_SECONDS", value_parser = positive,
          default_value_t = paystream_api::server::DEFAULT_PENDING_AFTER.as_secs())]
    pending_after_seconds: u64,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    data: DataArg,
}

#[derive(Args)]
struct ReplayArgs {
    /// The read model to rebuild: merchant_dashboard, payment_search, platform_overview or
    /// ledger [default: all four].
    #[arg(long, value_name = "NAME", env = "PAYSTREAM_PROJECTION", value_parser = projection)]
    projection: Option<ProjectionName>,
    #[command(flatten)]
    data: DataArg,
}

#[derive(Args)]
struct ExportArgs {
    /// The read model to export: merchant_dashboard, payment_search, platform_overview or
    /// ledger.
    #[arg(long, value_name = "NAME", env = "PAYSTREAM_PROJECTION", value_parser = projection)]
    projection: ProjectionName,
    /// The output format.
    #[arg(long, value_name = "FORMAT", env = "PAYSTREAM_FORMAT", value_enum, default_value_t = Format::Csv)]
    format: Format,
    #[command(flatten)]
    data: DataArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
}

#[derive(Args)]
struct BenchStoreArgs {
    /// Events of the bulk fill (after the timed write phases).
    #[arg(long, value_name = "N", env = "PAYSTREAM_BENCH_EVENTS", default_value_t = 1_000_000)]
    events: u64,
    /// Directory of the benchmark's log, kept afterwards [default: a temporary directory,
    /// removed afterwards].
    #[arg(long, value_name = "DIR", env = "PAYSTREAM_BENCH_DIR")]
    dir: Option<PathBuf>,
}

#[derive(Args)]
struct BenchHttpArgs {
    /// Concurrent keep-alive clients, each with its own merchant.
    #[arg(long, value_name = "N", env = "PAYSTREAM_BENCH_CLIENTS", value_parser = positive,
          default_value_t = paystream_api::bench_http::DEFAULT_CLIENTS as u64)]
    clients: u64,
    /// Length of the load, in seconds.
    #[arg(long, value_name = "SECONDS", env = "PAYSTREAM_BENCH_SECONDS", value_parser = positive,
          default_value_t = 10)]
    seconds: u64,
    /// Length of a reporting interval, in seconds.
    #[arg(long, value_name = "SECONDS", env = "PAYSTREAM_BENCH_INTERVAL_SECONDS", value_parser = positive,
          default_value_t = paystream_api::bench_http::DEFAULT_INTERVAL.as_secs())]
    interval_seconds: u64,
    /// Data directory of the child server, kept afterwards [default: a temporary directory,
    /// removed afterwards].
    #[arg(long, value_name = "DIR", env = "PAYSTREAM_BENCH_DATA", conflicts_with = "url")]
    data: Option<PathBuf>,
    /// The child server's --store-cache-mib.
    #[arg(long, value_name = "MIB", env = "PAYSTREAM_BENCH_STORE_CACHE_MIB", value_parser = positive,
          default_value_t = DEFAULT_STORE_CACHE_MIB, conflicts_with = "url")]
    store_cache_mib: u64,
    /// The child server's --facts-cache-mib.
    #[arg(long, value_name = "MIB", env = "PAYSTREAM_BENCH_FACTS_CACHE_MIB", value_parser = positive,
          default_value_t = DEFAULT_FACTS_CACHE_MIB, conflicts_with = "url")]
    facts_cache_mib: u64,
    /// The child server's --projections-cache-mib.
    #[arg(long, value_name = "MIB", env = "PAYSTREAM_BENCH_PROJECTIONS_CACHE_MIB", value_parser = positive,
          default_value_t = DEFAULT_PROJECTIONS_CACHE_MIB, conflicts_with = "url")]
    projections_cache_mib: u64,
    /// Measure a running server instead of a child: its HOST:PORT (or http://HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", env = "PAYSTREAM_BENCH_URL", requires = "admin_key")]
    url: Option<String>,
    /// The running server's admin API key (with --url).
    #[arg(long, value_name = "KEY", env = "PAYSTREAM_BENCH_ADMIN_KEY", hide_env_values = true, requires = "url")]
    admin_key: Option<String>,
}

/// The environment variable of option `--{long}`: `PAYSTREAM_` (`PAYSTREAM_BENCH_` for
/// the bench commands) and the name in capitals, dashes as underscores. The
/// `env = ...` of each option above spells it out; tests/tests/cli.rs checks they agree.
fn variable_of(bench: bool, long: &str) -> String {
    let prefix = if bench { "PAYSTREAM_BENCH_" } else { "PAYSTREAM_" };
    format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// Every command's `--version` says `paystream <version>`.
fn named(command: clap::Command) -> clap::Command {
    command.display_name("paystream").mut_subcommands(named)
}

/// The command line, or its help, version or usage error printed and the process
/// ended (0 for help and version, 2 for a usage error). A bad value that came from an
/// environment variable, not the command line, is said to come from there.
fn parse_command_line() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let error = match named(Cli::command()).try_get_matches_from(&args) {
        Ok(matches) => match Cli::from_arg_matches(&matches) {
            Ok(cli) => return cli,
            Err(error) => error,
        },
        Err(error) => error,
    };
    if let Some(clap::error::ContextValue::String(arg)) = error.get(clap::error::ContextKind::InvalidArg) {
        let long = arg.split_whitespace().next().unwrap_or_default();
        let typed = args.iter().any(|a| a.to_str().is_some_and(|a| a == long || a.starts_with(&format!("{long}="))));
        if let Some(name) = long.strip_prefix("--").filter(|_| !typed) {
            let bench = args.get(1).is_some_and(|a| a == "bench");
            let variable = variable_of(bench, name);
            if std::env::var_os(&variable).is_some() {
                let text = error.render().to_string();
                let (first, rest) = text.split_once('\n').unwrap_or((text.as_str(), ""));
                eprint!("{first} (set by the environment variable {variable})\n{rest}");
                std::process::exit(error.exit_code());
            }
        }
    }
    error.exit()
}

/// A whole number above 0.
fn positive(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".to_string()),
    }
}

fn projection(text: &str) -> Result<ProjectionName, String> {
    text.parse::<ProjectionName>().map_err(|e| e.to_string())
}

/// The data directory of an existing installation: the offline commands
/// (`verify`, `replay`, `export`) refuse a directory without an event log
/// rather than create an empty one (a mistyped `--data`).
fn existing_data(dir: &Path) -> Result<PathBuf, BoxError> {
    if !dir.join("log").is_dir() {
        return Err(format!(
            "{} holds no event log ({}/log is missing); give --data DIR (or PAYSTREAM_DATA)",
            dir.display(),
            dir.display()
        )
        .into());
    }
    Ok(dir.to_path_buf())
}

/// `error`, or, when it is another process holding the log's lock, that in an
/// operator's words with what to do (`advice`).
fn explain_locked(error: BoxError, dir: &Path, advice: &str) -> BoxError {
    match error.downcast_ref::<StoreError>() {
        Some(StoreError::Locked { .. }) => {
            format!("a server is using this data directory: {} ({advice})", dir.display()).into()
        }
        _ => error,
    }
}

/// What to do when `replay` or `export` finds the data directory in use.
const STOP_THE_SERVER: &str = "another paystream process holds its lock; stop it first: replay and export need \
                               the directory to themselves, while `paystream verify` checks a live server's log";

/// The log and the read side, opened offline (the server must not be
/// running on the same data directory: both lock it).
async fn open_read_side(data: &Path) -> Result<(Arc<dyn EventStore>, Projections), BoxError> {
    let dir = existing_data(data)?;
    let store_dir = dir.clone();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&store_dir))
        .await?
        .map_err(|error| explain_locked(error.into(), &dir, STOP_THE_SERVER))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let projections = paystream_api::server::open_projections(&dir, Arc::clone(&store)).await?;
    Ok((store, projections))
}

/// How log lines are written (`PAYSTREAM_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// For people: `2026-01-01T00:00:00.000000Z  INFO request{...}: handled status=201`.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields with
    /// its `message`, and `span` (the fields of the request, for a request's lines).
    Json,
}

/// `PAYSTREAM_LOG_FORMAT`: `text` (or unset, or empty) or `json`.
fn log_format() -> Result<LogFormat, String> {
    match std::env::var("PAYSTREAM_LOG_FORMAT") {
        Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("PAYSTREAM_LOG_FORMAT must be text or json, not {value:?}")),
        },
        Err(std::env::VarError::NotUnicode(value)) => {
            Err(format!("PAYSTREAM_LOG_FORMAT must be text or json, not {value:?}"))
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            // Colour only on a terminal: no escape codes in files and pipes.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
        }
    }
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Serve(args) => {
            let data = args.data.data;
            let tuning = Tuning {
                store_cache_mib: args.store_cache_mib,
                facts_cache_mib: args.facts_cache_mib,
                projections_cache_mib: args.projections_cache_mib,
                idempotency_window: Duration::from_secs(args.idempotency_window_seconds),
                pending_after: Duration::from_secs(args.pending_after_seconds),
            };
            serve(ServeOptions { data: data.clone(), listen: args.listen, tuning }).await.map_err(|error| {
                explain_locked(
                    error,
                    &data,
                    "another paystream process holds its lock; stop it first, or give this server another --data",
                )
            })
        }
        Command::Verify(args) => {
            let dir = existing_data(&args.data.data)?;
            // Read-only: no recovery, no lock, no byte written; runs beside a live server.
            let report =
                tokio::task::spawn_blocking(move || paystream_store::embedded::verify::verify_dir(&dir)).await??;
            println!("{report}");
            match &report.report.first_bad {
                None => Ok(()),
                Some((position, _)) => Err(format!("the log is damaged: first bad position {position}").into()),
            }
        }
        Command::Replay(args) => {
            let names: Vec<ProjectionName> = args.projection.into_iter().collect();
            let (store, projections) = open_read_side(&args.data.data).await?;
            let report = projections.replay(&names).await?;
            projections.flush().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            store.close().await?;
            Ok(())
        }
        Command::Export(args) => {
            let Format::Csv = args.format;
            let name = args.projection;
            let (store, projections) = open_read_side(&args.data.data).await?;
            let head = store.head().await?;
            // Export what the log holds now: catch the projection up first.
            if projections.checkpoint(name) < head {
                let running = projections.start();
                projections.wait_for(name, head, Duration::from_secs(3_600)).await?;
                running.stop().await;
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            projections.export_csv(name, &mut out)?;
            std::io::Write::flush(&mut out)?;
            drop(out);
            store.close().await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Store(args)) => {
            let dir = match &args.dir {
                Some(dir) => dir.clone(),
                None => std::env::temp_dir().join(format!("paystream-bench-{}", std::process::id())),
            };
            let options = paystream_store::bench::BenchOptions { events: args.events, ..Default::default() };
            let report = paystream_store::bench::run_store_bench(&dir, options).await;
            if args.dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            println!("{}", report.map_err(|e| format!("bench store in {}: {e}", dir.display()))?);
            Ok(())
        }
        Command::Bench(BenchCommand::Http(args)) => bench_http(args).await,
    }
}

async fn bench_http(args: BenchHttpArgs) -> Result<(), BoxError> {
    use paystream_api::bench_http::{ChildServer, HttpBenchOptions, Target};
    let clients = usize::try_from(args.clients).map_err(|e| format!("--clients {}: {e}", args.clients))?;
    let temporary = args.data.is_none();
    let data = match &args.data {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("paystream-bench-http-{}", std::process::id())),
    };
    // clap makes --url and --admin-key go together, and refuses --data and the
    // serve options beside --url.
    let target = match (args.url, args.admin_key) {
        (Some(url), Some(admin_key)) => {
            let host_port = url.trim_start_matches("http://").trim_end_matches('/');
            let addr = tokio::net::lookup_host(host_port)
                .await
                .map_err(|e| format!("--url {url}: cannot resolve {host_port}: {e} (give HOST:PORT)"))?
                .next()
                .ok_or_else(|| format!("--url {url}: {host_port} resolves to no address"))?;
            Target::Running { addr, admin_key }
        }
        _ => {
            let exe = std::env::current_exe().map_err(|e| format!("cannot find the paystream binary: {e}"))?;
            // The child's budget on its command line: it wins over any PAYSTREAM_* of the
            // environment the child inherits.
            let serve_args = [
                ("--store-cache-mib", args.store_cache_mib),
                ("--facts-cache-mib", args.facts_cache_mib),
                ("--projections-cache-mib", args.projections_cache_mib),
            ]
            .into_iter()
            .flat_map(|(name, value)| [name.to_string(), value.to_string()])
            .collect();
            Target::Child(ChildServer { exe, data: data.clone(), serve_args })
        }
    };
    let child = matches!(target, Target::Child(_));
    let options = HttpBenchOptions {
        clients,
        duration: Duration::from_secs(args.seconds),
        interval: Duration::from_secs(args.interval_seconds),
        target,
    };
    let result = paystream_api::bench_http::run(options).await;
    if child && temporary {
        let _ = std::fs::remove_dir_all(&data);
    }
    println!("{}", result?);
    Ok(())
}

/// jemalloc returns freed memory to the system (pages decay after ~10 s) and does not
/// multiply it by thread the way glibc's arenas do: under load the server's RSS
/// followed the heap at 2-3x with glibc (docs/performance.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // `--help` and `--version` print and exit 0; a usage error prints and exits 2.
    let cli = parse_command_line();
    match log_format() {
        Ok(format) => init_tracing(format),
        Err(error) => {
            eprintln!("paystream: {error}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("paystream: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("paystream: {error}");
            ExitCode::FAILURE
        }
    }
}
