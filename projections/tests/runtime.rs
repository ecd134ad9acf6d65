//! The projector runtime: live following equals a full replay, a rebuild (online,
//! while events keep arriving) gives byte-identical trees, a projector killed with
//! SIGKILL mid-stream resumes to exactly the replayed model, read-your-writes waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use paystream_projections::sim::{SimOptions, Simulator};
use paystream_projections::{ProjectionError, ProjectionName, ProjectionState};
use paystream_store::EventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_follow_equals_replay_and_online_rebuild_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut sim = start_log(&store, SimOptions { seed: 11, ..SimOptions::default() }).await;
    // Live: the runtime follows while events arrive, in many small batches.
    let live = open_projections(dir.path(), "live", &store);
    let running = live.start();
    append_payments(&store, &mut sim, 300).await;
    let head = store.head().await.unwrap();
    wait_all(&live, head).await;
    let before = snapshot(&live);

    // Online rebuild while more events arrive; queries answer throughout.
    let rebuild = tokio::spawn({
        let live = live.clone();
        async move { live.rebuild(&ProjectionName::ALL).await }
    });
    let writer = async {
        for _ in 0..10 {
            append_payments(&store, &mut sim, 20).await;
            let page = live.search_payments(&Default::default()).unwrap();
            assert!(!page.data.is_empty(), "queries keep answering during the rebuild");
        }
    };
    writer.await;
    let report = rebuild.await.unwrap().unwrap();
    assert_eq!(report.versions, vec![2, 2, 2, 2]);
    let head = store.head().await.unwrap();
    wait_all(&live, head).await;
    let status = live.status().await.unwrap();
    for s in &status {
        assert_eq!((s.version, s.state, s.checkpoint, s.lag), (2, ProjectionState::Running, head, 0), "{s:?}");
    }
    let after_rebuild = snapshot(&live);

    // A full offline replay into another database gives the same bytes.
    let replayed = open_projections(dir.path(), "replayed", &store);
    let report = replayed.replay(&[]).await.unwrap();
    assert_eq!(report.checkpoint, head);
    assert_same(&after_rebuild, &snapshot(&replayed));

    // And a rebuild of the state before the extra events equals what live had then.
    assert!(before.iter().zip(&after_rebuild).all(|((_, a), (_, b))| a.len() <= b.len()));
    running.stop().await;
    assert_eq!(live.status().await.unwrap()[0].state, ProjectionState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_returns_once_applied_and_times_out_while_lagging() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let head = fill(&store, SimOptions { merchants: 3, ..SimOptions::default() }, 20).await;
    let projections = open_projections(dir.path(), "projections", &store);

    // Not started: nothing is applied, the wait gives up after its bound.
    let lagging =
        projections.wait_for(ProjectionName::PaymentSearch, head, Duration::from_millis(100)).await.unwrap_err();
    assert_eq!((lagging.projection, lagging.position, lagging.checkpoint), (ProjectionName::PaymentSearch, head, 0));

    let running = projections.start();
    for name in ProjectionName::ALL {
        projections.wait_for(name, head, Duration::from_secs(10)).await.unwrap();
        assert_eq!(projections.checkpoint(name), head);
    }
    // A position the log has not reached yet: Lagging after the bound, at the head.
    let future = head + 5;
    let lagging = projections.wait_for(ProjectionName::Ledger, future, Duration::from_millis(200)).await.unwrap_err();
    assert_eq!((lagging.position, lagging.checkpoint), (future, head));
    // ... and Ok as soon as it is applied.
    let waiter = tokio::spawn({
        let projections = projections.clone();
        async move { projections.wait_for(ProjectionName::Ledger, future, Duration::from_secs(10)).await }
    });
    let mut sim = Simulator::new(SimOptions { merchants: 3, seed: 99, ..SimOptions::default() }).unwrap().0;
    let mut last = head;
    while last < future {
        last = append_payments(&store, &mut sim, 1).await;
    }
    waiter.await.unwrap().unwrap();
    running.stop().await;
}

/// The child side of the SIGKILL test: follows the log until killed, in batches of 100
/// events; with `PAYSTREAM_PROJECTIONS_CHILD_CATCH_UP=N`, in catch-up mode while more
/// than N events behind (working sets kept across batches, flushed every N events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_projector() {
    let Ok(dir) = std::env::var("PAYSTREAM_PROJECTIONS_CHILD_DIR") else { return };
    let dir = std::path::PathBuf::from(dir);
    let store = open_store(&dir);
    let config = paystream_projections::ProjectorConfig {
        batch_events: 100,
        rebuild_batch_events: std::env::var("PAYSTREAM_PROJECTIONS_CHILD_CATCH_UP")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(paystream_projections::runtime::DEFAULT_REBUILD_BATCH_EVENTS),
        ..paystream_projections::ProjectorConfig::default()
    };
    let projections = open_projections_with(&dir, "projections", &store, config);
    let _running = projections.start();
    for _ in 0..12_000 {
        let lowest = ProjectionName::ALL.map(|n| projections.checkpoint(n)).into_iter().min().unwrap_or(0);
        println!("CHECKPOINT {lowest}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_mid_stream_resumes_to_the_replayed_model() {
    let dir = tempfile::tempdir().unwrap();
    let head = {
        let store = open_store(dir.path());
        let head = fill(&store, SimOptions { seed: 5, ..SimOptions::default() }, 2_500).await;
        store.close().await.unwrap();
        head
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut checkpoints = Vec::new();
    for round in 0..2u32 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_projector", "--nocapture", "--test-threads=1"])
            .env("PAYSTREAM_PROJECTIONS_CHILD_DIR", dir.path())
            // The first child catches up in 1,000-event flushes, the second flushes every batch.
            .env("PAYSTREAM_PROJECTIONS_CHILD_CATCH_UP", if round == 0 { "1000" } else { "50000" })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill (SIGKILL) once the child reports a checkpoint past a random point of the log.
        let threshold = head * (20 + u64::from((seed >> (round * 8)) % 60)) / 100;
        let stdout = child.stdout.take().unwrap();
        let reached = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| line.strip_prefix("CHECKPOINT ").and_then(|n| n.parse::<u64>().ok()))
                .find(|checkpoint| *checkpoint >= threshold)
        });
        let reached = tokio::time::timeout(Duration::from_secs(60), reached).await.unwrap().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("round {round}: killed at checkpoint {reached:?} (threshold {threshold}, head {head})");
        let store = open_store(dir.path());
        let projections = open_projections(dir.path(), "projections", &store);
        checkpoints.push(ProjectionName::ALL.map(|n| projections.checkpoint(n)));
        drop(projections);
        store.close().await.unwrap();
    }
    eprintln!("checkpoints after each SIGKILL: {checkpoints:?} (head {head})");
    assert!(checkpoints.iter().flatten().any(|c| *c < head), "a kill landed mid-stream");

    let store = open_store(dir.path());
    let resumed = open_projections(dir.path(), "projections", &store);
    let running = resumed.start();
    wait_all(&resumed, head).await;
    running.stop().await;
    let replayed = open_projections(dir.path(), "replayed", &store);
    replayed.replay(&[]).await.unwrap();
    assert_same(&snapshot(&resumed), &snapshot(&replayed));
}

/// A rebuild that flushes its working sets every few events (reading back through the
/// tree what it flushed) stores the same bytes as one that flushes once at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_gives_the_same_bytes_whatever_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    fill(&store, SimOptions { seed: 23, ..SimOptions::default() }, 400).await;
    let once = open_projections(dir.path(), "once", &store);
    once.replay(&[]).await.unwrap();
    for (name, every) in [("every7", 7), ("every1", 1)] {
        let config = paystream_projections::ProjectorConfig { rebuild_batch_events: every, ..Default::default() };
        let often = open_projections_with(dir.path(), name, &store, config);
        often.replay(&[]).await.unwrap();
        assert_same(&snapshot(&once), &snapshot(&often));
    }
}

/// With a memory budget so small that every working set is past its share after every
/// batch (so it flushes and forgets everything it holds, and reads it back from the
/// tree), a rebuild, a follower catching up and a follower near the head all store the
/// same bytes as with the default budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_memory_budget_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut sim = start_log(&store, SimOptions { seed: 29, ..SimOptions::default() }).await;
    let head = append_payments(&store, &mut sim, 400).await;
    let roomy = open_projections(dir.path(), "roomy", &store);
    roomy.replay(&[]).await.unwrap();
    let tiny = |rebuild_batch_events| paystream_projections::ProjectorConfig {
        batch_events: 50,
        rebuild_batch_events,
        cache_bytes: 0,
        ..Default::default()
    };
    assert_eq!(tiny(1).working_sets_bytes(), 0, "every set is past its share as soon as it holds anything");

    // A rebuild, flushing every 1,000 events by its interval but every batch by its budget.
    let rebuilt = open_projections_with(dir.path(), "rebuilt", &store, tiny(1_000));
    rebuilt.replay(&[]).await.unwrap();
    assert_same(&snapshot(&roomy), &snapshot(&rebuilt));

    // The follower, first catching up (flush interval 300 events), then near the head
    // while payments keep arriving.
    let live = open_projections_with(dir.path(), "live", &store, tiny(300));
    let running = live.start();
    wait_all(&live, head).await;
    let head = append_payments(&store, &mut sim, 100).await;
    wait_all(&live, head).await;
    running.stop().await;
    let roomy = open_projections(dir.path(), "roomy-again", &store);
    roomy.replay(&[]).await.unwrap();
    assert_same(&snapshot(&roomy), &snapshot(&live));
}

/// A rebuild request for a projection already rebuilding is refused at once (the
/// HTTP API answers 409), claims nothing, and the running rebuild completes.
#[tokio::test(flavor = "current_thread")]
async fn a_second_rebuild_of_a_rebuilding_projection_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut sim = start_log(&store, SimOptions { seed: 5, ..SimOptions::default() }).await;
    append_payments(&store, &mut sim, 50).await;
    let projections = open_projections(dir.path(), "p", &store);
    // On a current-thread runtime the spawned rebuild cannot start before we await.
    let first = projections.start_rebuild(&[ProjectionName::Ledger]).unwrap();
    let second = projections.start_rebuild(&[ProjectionName::PaymentSearch, ProjectionName::Ledger]);
    assert!(matches!(second, Err(ProjectionError::AlreadyRebuilding("ledger"))), "{second:?}");
    // The refused request left payment_search free to rebuild alongside.
    let search = projections.start_rebuild(&[ProjectionName::PaymentSearch]).unwrap();
    assert_eq!(search.await.unwrap().unwrap().versions, vec![2]);
    assert_eq!(first.await.unwrap().unwrap().versions, vec![2]);
    let again = projections.start_rebuild(&[ProjectionName::Ledger]).unwrap();
    assert_eq!(again.await.unwrap().unwrap().versions, vec![3]);
}

/// When a model's layout changes, its next version starts from an empty tree, even if
/// an interrupted rebuild left a tree of that version behind (older layout, its own
/// checkpoint): nothing of it survives the open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_change_never_reuses_a_tree_left_by_an_interrupted_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut sim = start_log(&store, SimOptions { seed: 9, ..SimOptions::default() }).await;
    let head = append_payments(&store, &mut sim, 40).await;
    {
        let projections = open_projections(dir.path(), "p", &store);
        projections.replay(&[ProjectionName::PaymentSearch]).await.unwrap();
        projections.flush().await.unwrap();
    }
    // Pretend the stored layout is older and a crashed rebuild left version 3 behind.
    let db = paystream_projections::open_db(&dir.path().join("p"), &Default::default()).unwrap();
    let meta = db.open_tree("projection/_meta").unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&meta.get("payment_search").unwrap().unwrap()).unwrap();
    assert_eq!(stored["version"], 2);
    let old_schema = stored["schema"].as_u64().unwrap() - 1;
    meta.insert(
        "payment_search",
        serde_json::to_vec(&serde_json::json!({"version": 2, "schema": old_schema})).unwrap(),
    )
    .unwrap();
    let leftover = db.open_tree("projection/payment_search/v3").unwrap();
    leftover.insert("\0checkpoint", &head.to_be_bytes()).unwrap();
    leftover.insert("junk of an older layout", b"x").unwrap();
    db.flush().unwrap();
    drop((leftover, meta, db));

    let projections = open_projections(dir.path(), "p", &store);
    assert_eq!(projections.checkpoint(ProjectionName::PaymentSearch), 0);
    assert!(projections.snapshot(ProjectionName::PaymentSearch).unwrap().is_empty());
    let status = projections.status().await.unwrap();
    let search = status.iter().find(|s| s.name == ProjectionName::PaymentSearch).unwrap();
    assert_eq!((search.version, search.checkpoint, search.lag), (3, 0, head));
}

/// Queries running while rebuilds switch versions (and drop the old trees) always
/// answer, never fail on the tree that vanished under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_answer_while_rebuilds_switch_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut sim = start_log(&store, SimOptions { seed: 13, ..SimOptions::default() }).await;
    let head = append_payments(&store, &mut sim, 30).await;
    let projections = open_projections(dir.path(), "p", &store);
    let running = projections.start();
    wait_all(&projections, head).await;
    let expected = (projections.trial_balance().unwrap(), projections.search_payments(&Default::default()).unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (projections, done) = (projections.clone(), done.clone());
        move || {
            let mut answered = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let balance = projections.trial_balance().expect("trial balance during a switch");
                let page = projections.search_payments(&Default::default()).expect("search during a switch");
                assert_eq!((balance, page), expected);
                answered += 1;
            }
            answered
        }
    });
    for _ in 0..20 {
        projections.rebuild(&[ProjectionName::Ledger, ProjectionName::PaymentSearch]).await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    running.stop().await;
}

/// The follower far behind the head keeps its working sets across batches (flushing
/// every `rebuild_batch_events`, as a rebuild does), then near the head flushes every
/// batch; with a rebuild switching versions in the middle and events still arriving,
/// it ends with exactly the bytes of a full replay, and read-your-writes holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catching_up_from_far_behind_ends_with_the_replayed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut sim = start_log(&store, SimOptions { seed: 17, ..SimOptions::default() }).await;
    append_payments(&store, &mut sim, 600).await;
    let config = paystream_projections::ProjectorConfig {
        batch_events: 40,
        rebuild_batch_events: 300,
        ..paystream_projections::ProjectorConfig::default()
    };
    let live = open_projections_with(dir.path(), "live", &store, config);
    let running = live.start();
    let rebuild = tokio::spawn({
        let live = live.clone();
        async move { live.rebuild(&[ProjectionName::PaymentSearch]).await }
    });
    for _ in 0..5 {
        let head = append_payments(&store, &mut sim, 20).await;
        // Read-your-writes while catching up: once the checkpoint is there, so is the data.
        live.wait_for(ProjectionName::Ledger, head, Duration::from_secs(60)).await.unwrap();
        assert!(live.trial_balance().unwrap().balanced);
    }
    rebuild.await.unwrap().unwrap();
    let head = append_payments(&store, &mut sim, 10).await;
    wait_all(&live, head).await;
    running.stop().await;
    let replayed = open_projections(dir.path(), "replayed", &store);
    replayed.replay(&[]).await.unwrap();
    assert_same(&snapshot(&live), &snapshot(&replayed));
}

/// A projection built from position 0 (a new database here; a layout change does the
/// same) answers no query until it holds the whole log as it was at start: no
/// dashboard or search ever shows part of the history as if it were all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_projection_answers_only_once_built_from_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let head = fill(&store, SimOptions { seed: 19, ..SimOptions::default() }, 200).await;
    {
        let projections = open_projections(dir.path(), "p", &store);
        for name in ProjectionName::ALL {
            assert_eq!(projections.checkpoint(name), 0);
        }
        let early = projections.trial_balance();
        assert!(matches!(early, Err(ProjectionError::Building { projection: "ledger", checkpoint: 0 })), "{early:?}");
        assert!(matches!(projections.search_payments(&Default::default()), Err(ProjectionError::Building { .. })));
        let running = projections.start();
        wait_all(&projections, head).await;
        let states: Vec<ProjectionState> = projections.status().await.unwrap().iter().map(|s| s.state).collect();
        assert_eq!(states, [ProjectionState::Running; 4], "built: running");
        assert!(projections.trial_balance().unwrap().balanced);
        assert_eq!(projections.search_payments(&Default::default()).unwrap().data.len(), 20);
        running.stop().await;
        projections.flush().await.unwrap();
    }
    // Opened again, its trees hold checkpoints: it answers at once, follower or not.
    let again = open_projections(dir.path(), "p", &store);
    assert!(again.trial_balance().unwrap().balanced);
}
