//! `projections-bench [--events N] [--dir DIR] [--per-projection] [--catch-up]
//! [--batch EVENTS] [--cache-mib MIB]`: fills a fresh log with realistic payment events
//! and times a full rebuild of every projection, within the read side's memory budget.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: projections-bench [--events N] [--dir DIR] [--per-projection] [--catch-up] [--batch EVENTS] [--cache-mib MIB]"
    );
    ExitCode::from(2)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let mut events: u64 = 1_000_000;
    let mut dir: Option<PathBuf> = None;
    let mut per_projection = false;
    let mut catch_up = false;
    let mut batch = paystream_projections::runtime::DEFAULT_REBUILD_BATCH_EVENTS;
    let mut cache_mib = paystream_projections::DEFAULT_CACHE_MIB;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => match args.next().and_then(|v| v.replace('_', "").parse().ok()) {
                Some(n) => events = n,
                None => return usage(),
            },
            "--dir" => match args.next() {
                Some(d) => dir = Some(PathBuf::from(d)),
                None => return usage(),
            },
            "--per-projection" => per_projection = true,
            "--catch-up" => catch_up = true,
            "--batch" => match args.next().and_then(|v| v.replace('_', "").parse().ok()) {
                Some(n) => batch = n,
                None => return usage(),
            },
            "--cache-mib" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => cache_mib = n,
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let (dir, temporary) = match dir {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("projections-bench-{}", std::process::id())), true),
    };
    if dir.join("log").exists() {
        eprintln!("{} already holds a log; give an empty directory", dir.display());
        return ExitCode::from(2);
    }
    println!("filling {} with ~{events} events ...", dir.display());
    let result = paystream_projections::bench::run_rebuild_bench(
        &dir,
        events,
        per_projection,
        batch,
        catch_up,
        cache_mib.saturating_mul(paystream_projections::MIB),
    )
    .await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            ExitCode::FAILURE
        }
    }
}
