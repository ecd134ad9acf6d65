//! Embedded-backend recovery: torn tails, damage in the middle, lost or stale sled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{open_embedded, open_embedded_with, rewind_synced};
use paystream_store::contract::{event, keyed_event};
use paystream_store::{EmbeddedStore, EventStore, ExpectedVersion, RecordedEvent, StoreError};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    out.sort();
    out
}

/// (offset, total length) of each record of a segment, by hopping over headers.
fn records(segment: &Path) -> Vec<(usize, usize)> {
    let buf = fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= buf.len() && &buf[at..at + 4] == b"PSR1" {
        let len = 12 + u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, len));
        at += len;
    }
    out
}

async fn read_everything(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    loop {
        let batch = store.read_all(out.len() as u64 + 1, 10_000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Appends `n` single-event appends (about 450 bytes each) round-robin over 7 streams,
/// every 5th with a key.
async fn fill(store: &EmbeddedStore, n: u64) {
    let head = store.head().await.unwrap();
    for i in head..head + n {
        let mut e = if i % 5 == 0 { keyed_event(&format!("key-{i}")) } else { event("Filled", i) };
        e.payload = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(250)).into_bytes();
        store.append(&format!("stream-{}", i % 7), ExpectedVersion::Any, vec![e]).await.unwrap();
    }
}

/// Everything a reader can ask, to compare stores before and after recovery.
async fn snapshot(
    store: &dyn EventStore,
) -> (u64, Vec<RecordedEvent>, Vec<Vec<RecordedEvent>>, Vec<Option<paystream_store::AppendResult>>) {
    let head = store.head().await.unwrap();
    let all = read_everything(store).await;
    let mut streams = Vec::new();
    for s in 0..8 {
        let id = format!("stream-{s}");
        let events = store.read_stream(&id, 1, 1_000_000).await.unwrap();
        assert_eq!(store.stream_version(&id).await.unwrap(), events.len() as u64);
        streams.push(events);
    }
    let mut keys = Vec::new();
    for i in (0..head + 10).step_by(5) {
        keys.push(store.find_idempotent(&format!("key-{i}")).await.unwrap());
    }
    (head, all, streams, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_in_the_middle_of_a_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 300).await;
    let before = read_everything(&store).await;
    store.close().await.unwrap();
    drop(store);

    let last = segments(dir.path()).pop().unwrap();
    let (offset, len) = *records(&last).last().unwrap();
    let file = fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len((offset + len / 2) as u64).unwrap();
    drop(file);
    // The crash came while the last group commit was being synced.
    rewind_synced(dir.path(), &before[298]);

    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(store.head().await.unwrap(), 299);
    assert_eq!(read_everything(&store).await, before[..299]);
    assert!(store.verify(0, None).await.unwrap().is_ok());
    // The log continues where the whole records end, chain included.
    let r = store.append("stream-0", ExpectedVersion::Any, vec![event("After", 0)]).await.unwrap();
    assert_eq!(r.first_position, 299 + 1);
    let report = store.verify(0, None).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.checked, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_record_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 50).await;
    let before = read_everything(&store).await;
    store.close().await.unwrap();
    drop(store);

    // Half of a record that was being written when the power went: the copy of a real
    // record header and some of its body, after the last whole record.
    let last = segments(dir.path()).pop().unwrap();
    let recs = records(&last);
    let (offset, len) = *recs.last().unwrap();
    let mut buf = fs::read(&last).unwrap();
    let partial = buf[offset..offset + len / 2].to_vec();
    buf[offset + len..offset + len + partial.len()].copy_from_slice(&partial);
    fs::write(&last, &buf).unwrap();

    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(read_everything(&store).await, before);
    store.close().await.unwrap();
    drop(store);
    // The garbage was zeroed, not just skipped.
    let after = fs::read(&last).unwrap();
    assert!(after[offset + len..].iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_group_commit_is_cut_even_with_whole_records_after_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 40).await;
    // One append of 10 events is one group commit; pages of an unsynced write can reach
    // the disk in any order, so its 5th record may be torn while the 6th..10th are whole.
    let events = (0..10).map(|i| event("Batch", i)).collect();
    store.append("stream-batch", ExpectedVersion::NoStream, events).await.unwrap();
    let before = read_everything(&store).await;
    store.close().await.unwrap();
    drop(store);

    let last = segments(dir.path()).pop().unwrap();
    let recs = records(&last);
    let (offset, len) = recs[recs.len() - 6];
    let mut buf = fs::read(&last).unwrap();
    buf[offset + len / 2] ^= 0x40;
    fs::write(&last, &buf).unwrap();
    // The crash came before the indexer saw the batch (it only indexes synced records),
    // and before the synced watermark covered it.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    rewind_synced(dir.path(), &before[39]);

    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(store.head().await.unwrap(), 44);
    assert_eq!(read_everything(&store).await, before[..44]);
    assert_eq!(store.stream_version("stream-batch").await.unwrap(), 4);
    assert!(store.verify(0, None).await.unwrap().is_ok());
}

/// Positions sled has indexed (whole chunks of 1,024) are not re-read on open; damage
/// there is found by reads (CRC) and `verify`. 2,100 events: positions 1..=2048 indexed.
const INDEXED: u64 = 2_048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_middle_is_reported_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 2_100).await;
    let before = read_everything(&store).await;
    store.close().await.unwrap();
    drop(store);

    let seg = segments(dir.path()).pop().unwrap();
    let recs = records(&seg);
    assert_eq!(recs.len(), 2_100, "one segment");
    let (offset, len) = recs[99]; // position 100
    let mut buf = fs::read(&seg).unwrap();
    buf[offset + len - 100] ^= 0x01;
    fs::write(&seg, &buf).unwrap();

    let store = open_embedded(dir.path()).await.unwrap();
    let report = store.verify(0, None).await.unwrap();
    assert_eq!(report.first_bad.as_ref().map(|(p, _)| *p), Some(100), "{report}");
    assert_eq!(report.checked, 99);
    assert_eq!(report.head_hash, before[98].hash);
    match store.read_all(1, 10_000).await {
        Err(StoreError::Corrupt { position: Some(100), .. }) => {}
        other => panic!("expected Corrupt at 100, got {other:?}"),
    }
    match store.read_all(100, 1).await {
        Err(StoreError::Corrupt { position: Some(100), .. }) => {}
        other => panic!("expected Corrupt at 100, got {other:?}"),
    }
    assert_eq!(store.read_all(101, 10_000).await.unwrap(), before[100..]);
    assert_eq!(store.read_all(1, 99).await.unwrap(), before[..99]);
    let stream = &before[99].stream_id;
    assert!(matches!(store.read_stream(stream, 1, 10_000).await, Err(StoreError::Corrupt { position: Some(100), .. })));
    let tail = store.verify(102, None).await.unwrap();
    assert!(tail.is_ok(), "{tail}");
    assert_eq!(tail.checked, 2_100 - 101);
    let linked = store.verify(101, None).await.unwrap();
    assert_eq!(linked.first_bad.map(|(p, _)| p), Some(100), "the link into 101 needs 100");
    store.close().await.unwrap();
    drop(store);

    // Without sled, open has to read the whole log: it refuses, and truncates nothing.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    match open_embedded(dir.path()).await {
        Err(StoreError::Corrupt { position: Some(100), detail }) => {
            assert!(detail.contains("refusing"), "{detail}")
        }
        other => panic!("expected Corrupt at 100, got {other:?}"),
    }
    assert_eq!(fs::read(&seg).unwrap(), buf, "nothing was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_unindexed_part_fails_open_and_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 2_100).await;
    store.close().await.unwrap();
    drop(store);

    let seg = segments(dir.path()).pop().unwrap();
    let (offset, len) = records(&seg)[INDEXED as usize + 9]; // position 2058, after sled's part
    let mut buf = fs::read(&seg).unwrap();
    buf[offset + len / 2] ^= 0x80;
    fs::write(&seg, &buf).unwrap();
    match open_embedded(dir.path()).await {
        Err(StoreError::Corrupt { position: Some(2_058), .. }) => {}
        other => panic!("expected Corrupt at 2058, got {other:?}"),
    }
    assert_eq!(fs::read(&seg).unwrap(), buf, "nothing was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_record_with_a_valid_crc_is_found_by_the_hash_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 1_100).await;
    store.close().await.unwrap();
    drop(store);

    // A deliberate edit: change the payload of position 17 and fix up the CRC.
    let seg = segments(dir.path()).pop().unwrap();
    let (offset, len) = records(&seg)[16];
    let mut buf = fs::read(&seg).unwrap();
    let body = offset + 12..offset + len;
    let pos = buf[body.clone()].windows(7).position(|w| w == b"{\"n\":16").unwrap();
    buf[body.start + pos + 5] = b'9';
    let crc = crc32c::crc32c(&buf[body.clone()]);
    buf[offset + 8..offset + 12].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, &buf).unwrap();

    let store = open_embedded(dir.path()).await.unwrap();
    let report = store.verify(0, None).await.unwrap();
    let (position, reason) = report.first_bad.clone().unwrap();
    assert_eq!(position, 17, "{report}");
    assert!(reason.contains("altered"), "{reason}");
    store.close().await.unwrap();
    drop(store);

    // Rebuilding the index re-checks every hash: open refuses.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    assert!(matches!(open_embedded(dir.path()).await, Err(StoreError::Corrupt { position: Some(17), .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_sled_is_rebuilt_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 5_000).await; // several segments, position chunks in more than one
    let before = snapshot(&store).await;
    let verified = store.verify(0, None).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    assert!(segments(dir.path()).len() > 1);

    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(snapshot(&store).await, before);
    assert_eq!(store.verify(0, None).await.unwrap(), verified);
    assert!(matches!(
        store.append("x", ExpectedVersion::Any, vec![keyed_event("key-5")]).await,
        Err(StoreError::DuplicateIdempotencyKey { .. })
    ));
    store.close().await.unwrap();
    drop(store);

    // And the rebuilt sled is used on the next open.
    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(store.open_report().sled_dropped, None);
    assert_eq!(store.open_report().indexed_in_sled, 4_096);
    assert_eq!(snapshot(&store).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_foreign_sled_is_caught_up_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 1_500).await;
    store.close().await.unwrap();
    drop(store);
    let stale = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("index"), stale.path());

    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 1_000).await;
    let before = snapshot(&store).await;
    store.close().await.unwrap();
    drop(store);

    // sled behind the log: the tail is indexed from the log.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    copy_dir(stale.path(), &dir.path().join("index"));
    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(snapshot(&store).await, before);
    store.close().await.unwrap();
    drop(store);

    // sled of another log: detected by the hash at its indexed position, and rebuilt.
    let other = tempfile::tempdir().unwrap();
    let foreign = open_embedded(other.path()).await.unwrap();
    fill(&foreign, 2_000).await;
    foreign.close().await.unwrap();
    drop(foreign);
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    copy_dir(&other.path().join("index"), &dir.path().join("index"));
    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(snapshot(&store).await, before);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_appends_across_index_chunks_reopen_from_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    // Appends of 7 events with a key: some start in one chunk of 1,024 and end in the next.
    for n in 0..300u64 {
        let mut events: Vec<_> = (0..7).map(|k| event("Multi", n * 7 + k)).collect();
        events[0] = keyed_event(&format!("multi-{n}"));
        store.append(&format!("multi-{}", n % 13), ExpectedVersion::Any, events).await.unwrap();
    }
    let head = store.head().await.unwrap();
    let results: Vec<_> = {
        let mut r = Vec::new();
        for n in 0..300u64 {
            r.push(store.find_idempotent(&format!("multi-{n}")).await.unwrap().unwrap());
        }
        r
    };
    store.close().await.unwrap();
    drop(store);

    let store = open_embedded(dir.path()).await.unwrap();
    assert_eq!(store.open_report().sled_dropped, None, "sled is trusted");
    assert_eq!(store.open_report().indexed_in_sled, 2_048);
    assert_eq!(store.head().await.unwrap(), head);
    for (n, want) in results.iter().enumerate() {
        assert_eq!(store.find_idempotent(&format!("multi-{n}")).await.unwrap().as_ref(), Some(want));
    }
}

/// The watermark is what makes damage in the last group commit of a cleanly closed log
/// corruption: open refuses, nothing is cut, and the offline `verify` names the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_last_record_of_a_closed_log_is_corruption_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 120).await;
    let head = store.head().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let last = segments(dir.path()).pop().unwrap();
    let (offset, len) = *records(&last).last().unwrap();
    let mut buf = fs::read(&last).unwrap();
    buf[offset + len / 2] ^= 0x01;
    fs::write(&last, &buf).unwrap();
    let log_before = log_bytes(dir.path());

    let report = paystream_store::embedded::verify::verify_dir(dir.path()).unwrap();
    assert_eq!(report.report.first_bad.as_ref().map(|(p, _)| *p), Some(head), "{report}");
    assert!(!report.is_ok());
    match open_embedded(dir.path()).await {
        Err(StoreError::Corrupt { position: Some(p), .. }) => assert_eq!(p, head),
        Err(other) => panic!("expected Corrupt at {head}, got {other}"),
        Ok(_) => panic!("expected Corrupt at {head}, the store opened"),
    }
    assert_eq!(log_bytes(dir.path()), log_before, "verify and the refused open changed no byte of the log");
}

/// Every file of `<dir>/log` with its bytes.
fn log_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    out.sort();
    out
}

/// The offline verify reads a live store's directory: it takes no lock, writes no byte,
/// and finds nothing wrong while appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_runs_beside_a_live_store_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open_embedded(dir.path()).await.unwrap());
    fill(&store, 2_500).await;
    let writer = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move { fill(&store, 3_000).await })
    };
    for _ in 0..5 {
        let path = dir.path().to_path_buf();
        let report = tokio::task::spawn_blocking(move || paystream_store::embedded::verify::verify_dir(&path))
            .await
            .unwrap()
            .unwrap();
        assert!(report.is_ok(), "{report}");
        assert!(report.report.checked >= 2_500, "{report}");
    }
    writer.await.unwrap();
    // Idle now: a verify leaves every byte as it was, and agrees with the store's own.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = log_bytes(dir.path());
    let report = paystream_store::embedded::verify::verify_dir(dir.path()).unwrap();
    assert_eq!(log_bytes(dir.path()), before);
    let online = store.verify(0, None).await.unwrap();
    assert_eq!(report.report, online);
    assert_eq!(report.unacknowledged_tail, None);
    // An idle log is covered by the watermark within WATERMARK_INTERVAL.
    let head = store.head().await.unwrap();
    assert_eq!(report.synced.map(|s| s.position), Some(head), "{report}");
}

/// An idempotency key is remembered for the window, then may be used again, also after
/// a restart (the window is applied to what sled and the log hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire_after_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let options = paystream_store::EmbeddedOptions {
        idempotency_window: std::time::Duration::from_millis(1_500),
        ..common::options()
    };
    let store = open_embedded_with(dir.path(), options.clone()).await.unwrap();
    let first = store.append("k-stream", ExpectedVersion::Any, vec![keyed_event("window-key")]).await.unwrap();
    assert!(matches!(
        store.append("k-stream", ExpectedVersion::Any, vec![keyed_event("window-key")]).await,
        Err(StoreError::DuplicateIdempotencyKey { existing, .. }) if existing == first
    ));
    assert_eq!(store.find_idempotent("window-key").await.unwrap(), Some(first.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    assert_eq!(store.find_idempotent("window-key").await.unwrap(), None, "expired");
    let second = store.append("k-stream", ExpectedVersion::Any, vec![keyed_event("window-key")]).await.unwrap();
    assert_eq!(second.first_version, 2, "the key was used again");
    assert_eq!(store.find_idempotent("window-key").await.unwrap(), Some(second.clone()));
    store.close().await.unwrap();
    drop(store);

    let store = open_embedded_with(dir.path(), options).await.unwrap();
    assert_eq!(store.find_idempotent("window-key").await.unwrap(), Some(second));
    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    let third = store.append("k-stream", ExpectedVersion::Any, vec![keyed_event("window-key")]).await.unwrap();
    assert_eq!(third.first_version, 3);
}

/// The in-memory tail of the index stays small however long the log grows: complete
/// chunks move to sled and leave memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_index_holds_only_the_unindexed_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    fill(&store, 6_000).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let tail = store.index_tail();
    assert!(tail.positions < 1_024, "{tail:?}");
    assert!(tail.streams <= 7 && tail.keys < 1_024 / 5 + 1, "{tail:?}");
    // And everything still answers, from sled.
    let want = (0..6_000u64).filter(|i| i % 7 == 3).count() as u64;
    assert_eq!(store.stream_version("stream-3").await.unwrap(), want);
    assert!(store.find_idempotent("key-5").await.unwrap().is_some());
    assert_eq!(read_everything(&store).await.len(), 6_000);
}

/// A stream read while its versions move from the tail to sled (and into and out of the
/// stream cache) always reads whole, and its version is always exact: the appender's
/// expected-version checks rest on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_stream_reads_whole_while_the_index_moves_it_to_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path()).await.unwrap();
    let mut version = 0;
    for round in 0..6u64 {
        for k in 0..3 {
            store.append("hot", ExpectedVersion::Exact(version), vec![event("Hot", round * 10 + k)]).await.unwrap();
            version += 1;
        }
        // Enough other events to complete a chunk, then let the indexer move it.
        fill(&store, 700).await;
        for _ in 0..4 {
            let events = store.read_stream("hot", 1, 1_000).await.unwrap();
            assert_eq!(events.len() as u64, version, "round {round}");
            assert!(events.iter().enumerate().all(|(i, e)| e.stream_version == i as u64 + 1));
            assert_eq!(store.stream_version("hot").await.unwrap(), version);
            let tail = store.read_stream("hot", version - 1, 1_000).await.unwrap();
            assert_eq!(tail.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![version - 1, version]);
            tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        }
        assert!(matches!(
            store.append("hot", ExpectedVersion::Exact(version - 1), vec![event("Late", 0)]).await,
            Err(StoreError::WrongExpectedVersion { actual, .. }) if actual == version
        ));
    }
    assert!(store.index_tail().indexed_through >= 3_072, "{:?}", store.index_tail());
}
