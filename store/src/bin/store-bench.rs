//! `store-bench [--events N] [--dir D] [--phase-secs S] [--writers 1,8,64,256]`: durable append and read
//! throughput of the embedded event log, printed as a markdown table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use paystream_store::bench::{run_store_bench, BenchOptions};

const USAGE: &str = "usage: store-bench [--events N] [--dir D] [--phase-secs S] [--writers 1,8,64,256]";

fn parse() -> Result<(BenchOptions, Option<PathBuf>), String> {
    let mut opts = BenchOptions::default();
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--events" => opts.events = value()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--phase-secs" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--phase-secs: {e}"))?;
                opts.phase_duration = Duration::from_secs_f64(secs);
            }
            "--writers" => {
                opts.writer_counts = value()?
                    .split(',')
                    .map(|w| w.trim().parse().map_err(|e| format!("--writers: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok((opts, dir))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (opts, dir) = match parse() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let (dir, temporary) = match dir {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("paystream-store-bench-{}", std::process::id())), true),
    };
    if dir.join("log").exists() {
        eprintln!("{} already holds an event log; give an empty directory", dir.display());
        return ExitCode::from(2);
    }
    eprintln!("benchmarking the embedded event log in {} ({} events) ...", dir.display(), opts.events);
    let result = run_store_bench(&dir, opts).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("benchmark failed: {err}");
            ExitCode::FAILURE
        }
    }
}
