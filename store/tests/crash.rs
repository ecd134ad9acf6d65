//! kill -9 under load, ten times: every acknowledged event survives exactly once.
//!
//! The test binary re-executes itself as the child (`crash_child`, active only when
//! `PAYSTREAM_STORE_CRASH_DIR` is set). The child appends with several concurrent writers
//! and prints `ACK <position> <event id>` for each acknowledged event; the parent kills it
//! with SIGKILL at a random moment, reopens the log and checks it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paystream_store::contract::{event, keyed_event};
use paystream_store::{EmbeddedStore, EventStore, ExpectedVersion};
use uuid::Uuid;

const DIR_ENV: &str = "PAYSTREAM_STORE_CRASH_DIR";
const ROUND_ENV: &str = "PAYSTREAM_STORE_CRASH_ROUND";
const ROUNDS: u32 = 10;
const WRITERS: u64 = 8;

/// The child: appends until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return; // not the child
    };
    let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store =
            std::sync::Arc::new(EmbeddedStore::open_with(std::path::Path::new(&dir), common::options()).unwrap());
        println!("READY");
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = std::sync::Arc::clone(&store);
                tokio::spawn(async move {
                    let stream = format!("crash-{round}-{w}");
                    let mut version = 0u64;
                    for n in 0u64.. {
                        let count = 1 + n % 3;
                        let mut events: Vec<_> = (0..count).map(|k| event("Crashed", n * 10 + k)).collect();
                        if n % 4 == 0 {
                            events[0] = keyed_event(&format!("crash-{round}-{w}-{n}"));
                        }
                        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                        let r = store.append(&stream, ExpectedVersion::Exact(version), events).await.unwrap();
                        version = r.last_version;
                        let mut out = std::io::stdout().lock();
                        for (i, id) in ids.iter().enumerate() {
                            writeln!(out, "ACK {} {id}", r.first_position + i as u64).unwrap();
                        }
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
}

/// A small xorshift generator: random kill moments without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_event() {
    if std::env::var(DIR_ENV).is_ok() {
        return; // we are the child
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let mut acked: HashMap<u64, Uuid> = HashMap::new();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<Option<(u64, Uuid)>>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("READY") {
                    // libtest may have printed "test crash_child ... " on the same line.
                    let _ = tx.send(None);
                } else if let Some(rest) = line.strip_prefix("ACK ") {
                    // A line cut by the kill is not an acknowledgement we can rely on.
                    let mut parts = rest.split(' ');
                    let (Some(p), Some(id)) = (parts.next(), parts.next()) else { continue };
                    if let (Ok(p), Ok(id)) = (p.parse(), Uuid::parse_str(id)) {
                        let _ = tx.send(Some((p, id)));
                    }
                }
            }
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), None, "child ready");
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_round = 0;
        for (position, id) in rx.try_iter().flatten() {
            if let Some(previous) = acked.insert(position, id) {
                assert_eq!(previous, id, "position {position} acknowledged for two events");
            }
            this_round += 1;
        }

        // Before recovery: the offline verify sees no damage (a torn tail beyond the
        // synced watermark is not damage) and everything it checked was whole.
        let offline = paystream_store::embedded::verify::verify_dir(dir.path()).unwrap();
        assert!(offline.is_ok(), "round {round}: {offline}");
        let synced = offline.synced.map_or(0, |s| s.position);
        assert!(offline.report.checked >= synced, "round {round}: {offline}");

        let (head, verified) = rt.block_on(async {
            let store = EmbeddedStore::open_with(dir.path(), common::options()).unwrap();
            let mut all = Vec::new();
            loop {
                let batch = store.read_all(all.len() as u64 + 1, 10_000).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                all.extend(batch);
            }
            let head = store.head().await.unwrap();
            assert_eq!(store.open_report().sled_dropped, None, "sled survives kill -9 (round {round})");
            assert_eq!(all.len() as u64, head);
            assert!(all.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1), "gap-free");
            let ids: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
            assert_eq!(ids.len(), all.len(), "no event stored twice");
            assert!(head >= synced, "nothing at or below the watermark was cut (round {round})");
            for (&position, id) in &acked {
                let stored = all.get(position as usize - 1).map(|e| e.event_id);
                assert_eq!(stored, Some(*id), "acknowledged position {position} (round {round}, seed {seed})");
            }
            let report = store.verify(0, None).await.unwrap();
            store.close().await.unwrap();
            (head, report)
        });
        assert!(verified.is_ok(), "round {round}: {verified}");
        eprintln!("round {round}: {this_round} acknowledged, head {head}");
    }
    assert!(acked.len() > 500, "the children got some work done ({} acks)", acked.len());
    assert!(started.elapsed() < Duration::from_secs(60), "crash test took {:?}", started.elapsed());
}
