//! The contract every [`EventStore`] backend must meet, written once and run against each
//! backend (the embedded one in `store/tests/contract_embedded.rs`; PostgreSQL and
//! EventStoreDB call the same functions with their own [`StoreFactory`]).
//!
//! Each function takes a factory for one fresh, empty log, opens it (and reopens it where
//! the contract is about durability), and panics with a description on any violation.
//! Run them on a multi-threaded tokio runtime so concurrency is real.

// Test code: a violated contract is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::chain::GENESIS_HASH;
use crate::{
    AppendResult, EventStore, ExpectedVersion, InvalidAppend, Metadata, NewEvent, Position, RecordedEvent, StoreError,
    MAX_EVENTS_PER_APPEND, MAX_RECORD_BYTES,
};

/// Opens the backend under test. Every call opens the *same* log (the contract closes
/// the previous handle first); a new factory is made for each contract function.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    async fn open(&self) -> Result<Arc<dyn EventStore>, StoreError>;
}

/// Longest a contract waits for a subscription to deliver the next event.
const SUBSCRIPTION_WAIT: Duration = Duration::from_secs(30);

/// A test event with a small JSON payload.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        metadata: Metadata::default(),
        payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
    }
}

/// A test event whose append carries an idempotency key.
pub fn keyed_event(key: &str) -> NewEvent {
    let mut e = event("Keyed", 0);
    e.metadata.idempotency_key = Some(key.to_owned());
    e.metadata.request_fingerprint = Some("f00d".to_owned());
    e
}

async fn open(f: &dyn StoreFactory) -> Arc<dyn EventStore> {
    f.open().await.expect("the store opens")
}

async fn reopen(f: &dyn StoreFactory, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
    store.close().await.expect("the store closes");
    drop(store);
    open(f).await
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

/// Positions 1..=n in order, versions gap-free per stream, hash chain linked.
fn assert_log_shape(events: &[RecordedEvent]) {
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut prev_hash = GENESIS_HASH;
    let mut prev_time = None;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "positions are gap-free and ordered");
        let v = versions.entry(&e.stream_id).or_default();
        *v += 1;
        assert_eq!(e.stream_version, *v, "stream {} versions are gap-free", e.stream_id);
        assert_eq!(e.prev_hash, prev_hash, "position {} links to its predecessor", e.position);
        prev_hash = e.hash;
        if let Some(t) = prev_time {
            assert!(e.recorded_at >= t, "recorded_at never decreases");
        }
        prev_time = Some(e.recorded_at);
    }
}

/// read_stream / read_all / head / stream_version basics and input validation.
pub async fn basics(f: &dyn StoreFactory) {
    let store = open(f).await;
    assert_eq!(store.head().await.unwrap(), 0);
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    assert_eq!(store.stream_version("s-a").await.unwrap(), 0);
    assert!(store.read_stream("s-a", 1, 10).await.unwrap().is_empty());
    assert_eq!(store.find_idempotent("nope").await.unwrap(), None);

    let mut first = event("Opened", 1);
    first.metadata = Metadata {
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        idempotency_key: None,
        request_fingerprint: Some("abc".into()),
        actor: Some(crate::Actor { key_id: "key_1".into(), role: "merchant".into() }),
    };
    let sent = vec![first, event("Changed", 2)];
    let r = store.append("s-a", ExpectedVersion::NoStream, sent.clone()).await.unwrap();
    assert_eq!(
        r,
        AppendResult {
            stream_id: "s-a".into(),
            first_version: 1,
            last_version: 2,
            first_position: 1,
            last_position: 2
        }
    );
    let r = store.append("s-a", ExpectedVersion::Exact(2), vec![event("Changed", 3)]).await.unwrap();
    assert_eq!((r.first_version, r.last_version, r.first_position, r.last_position), (3, 3, 3, 3));
    let r = store.append("s-b", ExpectedVersion::Any, vec![event("Opened", 4)]).await.unwrap();
    assert_eq!((r.first_version, r.first_position), (1, 4));

    assert_eq!(store.head().await.unwrap(), 4);
    assert_eq!(store.stream_version("s-a").await.unwrap(), 3);
    assert_eq!(store.stream_version("s-b").await.unwrap(), 1);

    let stream = store.read_stream("s-a", 1, 100).await.unwrap();
    assert_eq!(stream.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(stream.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2, 3]);
    for (got, want) in stream.iter().zip(&sent) {
        assert_eq!(got.event_id, want.event_id);
        assert_eq!(got.event_type, want.event_type);
        assert_eq!(got.schema_version, want.schema_version);
        assert_eq!(got.metadata, want.metadata);
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.stream_id, "s-a");
    }
    let page = store.read_stream("s-a", 2, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0], stream[1]);
    assert_eq!(store.read_stream("s-a", 0, 100).await.unwrap(), stream, "version 0 reads from the start");
    assert!(store.read_stream("s-a", 4, 100).await.unwrap().is_empty());

    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all, store.read_all(1, 100).await.unwrap(), "position 0 reads from the start");
    assert_eq!(all.len(), 4);
    assert_log_shape(&all);
    assert_eq!(all[..3], stream[..]);
    assert_eq!(store.read_all(3, 1).await.unwrap(), vec![all[2].clone()]);
    assert_eq!(store.read_all(2, 2).await.unwrap(), all[1..3].to_vec());
    assert!(store.read_all(5, 10).await.unwrap().is_empty());

    // Validation happens before anything is written.
    let invalid = |r: Result<AppendResult, StoreError>| match r {
        Err(StoreError::Invalid(reason)) => reason,
        other => panic!("expected an invalid-append error, got {other:?}"),
    };
    assert_eq!(invalid(store.append("s-c", ExpectedVersion::Any, vec![]).await), InvalidAppend::NoEvents);
    assert_eq!(
        invalid(store.append("", ExpectedVersion::Any, vec![event("X", 0)]).await),
        InvalidAppend::EmptyStreamId
    );
    let too_many = (0..=MAX_EVENTS_PER_APPEND as u64).map(|n| event("X", n)).collect();
    assert!(matches!(
        invalid(store.append("s-c", ExpectedVersion::Any, too_many).await),
        InvalidAppend::TooManyEvents { .. }
    ));
    let mut huge = event("X", 0);
    huge.payload = vec![b' '; MAX_RECORD_BYTES];
    assert!(matches!(
        invalid(store.append("s-c", ExpectedVersion::Any, vec![huge]).await),
        InvalidAppend::RecordTooLarge { .. }
    ));
    let mut untyped = event("X", 0);
    untyped.event_type.clear();
    assert!(matches!(
        invalid(store.append("s-c", ExpectedVersion::Any, vec![untyped]).await),
        InvalidAppend::EmptyEventType { index: 0 }
    ));
    let max = (0..MAX_EVENTS_PER_APPEND as u64).map(|n| event("X", n)).collect();
    let r = store.append("s-c", ExpectedVersion::Any, max).await.unwrap();
    assert_eq!((r.first_position, r.last_position, r.last_version), (5, 1_004, 1_000), "a maximal append is accepted");
    assert_log_shape(&read_everything(store.as_ref()).await);
    store.close().await.unwrap();
}

/// ExpectedVersion Any / NoStream / Exact semantics; a rejected append writes nothing.
pub async fn expected_version_semantics(f: &dyn StoreFactory) {
    let store = open(f).await;
    let wrong = |r: Result<AppendResult, StoreError>, want_actual: u64| match r {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, want_actual),
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    };
    wrong(store.append("s", ExpectedVersion::Exact(1), vec![event("A", 0)]).await, 0);
    store.append("s", ExpectedVersion::Exact(0), vec![event("A", 0)]).await.unwrap();
    wrong(store.append("s", ExpectedVersion::NoStream, vec![event("A", 0)]).await, 1);
    wrong(store.append("s", ExpectedVersion::Exact(0), vec![event("A", 0)]).await, 1);
    wrong(store.append("s", ExpectedVersion::Exact(2), vec![event("A", 0)]).await, 1);
    store.append("s", ExpectedVersion::Exact(1), vec![event("A", 0), event("A", 1)]).await.unwrap();
    store.append("s", ExpectedVersion::Any, vec![event("A", 0)]).await.unwrap();
    store.append("t", ExpectedVersion::NoStream, vec![event("A", 0)]).await.unwrap();
    store.append("u", ExpectedVersion::Any, vec![event("A", 0)]).await.unwrap();
    match store.append("s", ExpectedVersion::Exact(3), vec![event("A", 0)]).await {
        Err(StoreError::WrongExpectedVersion { stream_id, expected, actual }) => {
            assert_eq!((stream_id.as_str(), expected, actual), ("s", ExpectedVersion::Exact(3), 4));
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 6, "rejected appends wrote nothing");
    assert_eq!(store.stream_version("s").await.unwrap(), 4);
    assert_log_shape(&read_everything(store.as_ref()).await);
    store.close().await.unwrap();
}

/// 32 concurrent appends at the same expected version: exactly one wins.
pub async fn concurrent_appends_one_winner(f: &dyn StoreFactory) {
    let store = open(f).await;
    store.append("race", ExpectedVersion::NoStream, vec![event("Opened", 0)]).await.unwrap();
    let tasks: Vec<_> = (0..32u64)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append("race", ExpectedVersion::Exact(1), vec![event("Raced", n)]).await })
        })
        .collect();
    let mut won = 0;
    let mut lost = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                assert_eq!((r.first_version, r.first_position), (2, 2));
                won += 1;
            }
            Err(StoreError::WrongExpectedVersion { actual: 2, .. }) => lost += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!((won, lost), (1, 31));
    assert_eq!(store.stream_version("race").await.unwrap(), 2);
    assert_eq!(store.head().await.unwrap(), 2);
    store.close().await.unwrap();
}

/// 8 writers x 1,000 appends: positions 1..=8000, no gap, no repeat, versions gap-free.
pub async fn concurrent_writers_gap_free(f: &dyn StoreFactory) {
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 1_000;
    let store = open(f).await;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..APPENDS {
                    // Two streams per writer, written alternately, plus a shared one with Any.
                    let (stream, expected) = match n % 3 {
                        0 => ("shared".to_owned(), ExpectedVersion::Any),
                        k => (format!("w{w}-{k}"), ExpectedVersion::Exact(n / 3)),
                    };
                    let e = event("Written", n);
                    ids.push(e.event_id);
                    let r = store.append(&stream, expected, vec![e]).await.unwrap();
                    assert_eq!(r.first_position, r.last_position);
                }
                ids
            })
        })
        .collect();
    let mut sent = HashSet::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    let all = read_everything(store.as_ref()).await;
    assert_eq!(all.len() as u64, WRITERS * APPENDS);
    assert_eq!(store.head().await.unwrap(), WRITERS * APPENDS);
    assert_log_shape(&all);
    let stored: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(stored.len(), all.len(), "no event stored twice");
    assert_eq!(stored, sent, "every acknowledged event is stored");
    let shared = store.read_stream("shared", 1, 100_000).await.unwrap();
    assert_eq!(shared.len() as u64, WRITERS * APPENDS.div_ceil(3));
    assert!(shared.iter().enumerate().all(|(i, e)| e.stream_version == i as u64 + 1));
    let report = store.verify(0, None).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.checked, WRITERS * APPENDS);
    store.close().await.unwrap();
}

async fn collect(mut sub: crate::Subscription, from: Position, n: u64) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    while (out.len() as u64) < n {
        let e = tokio::time::timeout(SUBSCRIPTION_WAIT, sub.next())
            .await
            .expect("the subscription delivers within the timeout")
            .unwrap();
        assert_eq!(e.position, from.max(1) + out.len() as u64, "in order, no gap, no repeat");
        out.push(e);
    }
    out
}

/// Subscribers started before, during and after a burst see every event exactly once, in order.
pub async fn subscriptions_catch_up_then_live(f: &dyn StoreFactory) {
    const BEFORE: u64 = 100;
    const WRITERS: u64 = 4;
    const APPENDS: u64 = 250;
    const TOTAL: u64 = BEFORE + WRITERS * APPENDS;
    let store = open(f).await;
    for n in 0..BEFORE {
        store.append("pre", ExpectedVersion::Any, vec![event("Pre", n)]).await.unwrap();
    }
    let before = tokio::spawn(collect(store.subscribe(0).await.unwrap(), 0, TOTAL));
    let at_head = tokio::spawn(collect(store.subscribe(BEFORE + 1).await.unwrap(), BEFORE + 1, TOTAL - BEFORE));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for n in 0..APPENDS {
                    // Some appends carry two events: subscriptions must not split or skip them.
                    let events =
                        if n % 10 == 0 { vec![event("Burst", n), event("Burst", n)] } else { vec![event("Burst", n)] };
                    let count = events.len() as u64;
                    store.append(&format!("burst-{w}-{n}"), ExpectedVersion::NoStream, events).await.unwrap();
                    let _ = count;
                }
            })
        })
        .collect();
    // One subscriber joins in the middle of the burst.
    while store.head().await.unwrap() < BEFORE + 200 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let during_total = TOTAL + WRITERS * APPENDS / 10;
    let during = tokio::spawn(collect(store.subscribe(0).await.unwrap(), 0, during_total));
    for w in writers {
        w.await.unwrap();
    }
    let head = store.head().await.unwrap();
    assert_eq!(head, during_total);
    let after = collect(store.subscribe(0).await.unwrap(), 0, head).await;
    let from_middle = collect(store.subscribe(head / 2).await.unwrap(), head / 2, head - head / 2 + 1).await;
    let everything = read_everything(store.as_ref()).await;
    assert_eq!(after, everything);
    assert_eq!(from_middle[..], everything[(head / 2 - 1) as usize..]);
    let during = during.await.unwrap();
    assert_eq!(during, everything);
    let before = before.await.unwrap();
    assert_eq!(before[..], everything[..TOTAL as usize]);
    let at_head = at_head.await.unwrap();
    assert_eq!(at_head[..], everything[BEFORE as usize..TOTAL as usize]);

    // A live subscriber at the head gets the next append.
    let mut live = store.subscribe(head + 1).await.unwrap();
    let r = store.append("late", ExpectedVersion::NoStream, vec![event("Late", 0)]).await.unwrap();
    let e = tokio::time::timeout(SUBSCRIPTION_WAIT, live.next()).await.unwrap().unwrap();
    assert_eq!(e.position, r.first_position);
    store.close().await.unwrap();
}

/// Close and reopen keeps everything; verify passes; appends continue the chain.
pub async fn reopen_keeps_everything(f: &dyn StoreFactory) {
    let store = open(f).await;
    for n in 0..200u64 {
        let events = (0..(n % 3 + 1)).map(|k| event("Kept", n * 10 + k)).collect();
        let expected = if n < 10 { ExpectedVersion::NoStream } else { ExpectedVersion::Any };
        store.append(&format!("keep-{}", n % 10), expected, events).await.unwrap();
    }
    store.append("keyed", ExpectedVersion::NoStream, vec![keyed_event("k-reopen")]).await.unwrap();
    let before = read_everything(store.as_ref()).await;
    let head = store.head().await.unwrap();
    let report = store.verify(0, None).await.unwrap();
    assert!(report.is_ok(), "{report}");

    let store = reopen(f, store).await;
    assert_eq!(store.head().await.unwrap(), head);
    assert_eq!(read_everything(store.as_ref()).await, before);
    for s in 0..10 {
        let id = format!("keep-{s}");
        let stream = store.read_stream(&id, 1, 10_000).await.unwrap();
        let want: Vec<_> = before.iter().filter(|e| e.stream_id == id).cloned().collect();
        assert_eq!(stream, want);
        assert_eq!(store.stream_version(&id).await.unwrap(), want.len() as u64);
    }
    let again = store.verify(0, None).await.unwrap();
    assert_eq!(again, report, "the same chain after reopen");
    assert_eq!(again.checked, head);
    let partial = store.verify(head / 2, Some(head - 1)).await.unwrap();
    assert!(partial.is_ok(), "{partial}");
    assert_eq!(partial.checked, head - head / 2);

    let r = store.append("keep-0", ExpectedVersion::Any, vec![event("After", 0)]).await.unwrap();
    assert_eq!(r.first_position, head + 1);
    let next = store.read_all(head + 1, 1).await.unwrap();
    assert_eq!(next[0].prev_hash, before.last().unwrap().hash, "the chain continues across reopen");

    store.close().await.unwrap();
    assert!(matches!(
        store.append("keep-0", ExpectedVersion::Any, vec![event("Closed", 0)]).await,
        Err(StoreError::Closed)
    ));
    let store = reopen(f, store).await;
    assert_eq!(store.head().await.unwrap(), head + 1);
    store.close().await.unwrap();
}

/// A reused idempotency key is rejected with the original result, also concurrently and
/// after reopen.
pub async fn idempotency_keys(f: &dyn StoreFactory) {
    let store = open(f).await;
    let original = store
        .append("pay-1", ExpectedVersion::NoStream, vec![keyed_event("mer_x:k1"), event("Second", 0)])
        .await
        .unwrap();
    assert_eq!(store.find_idempotent("mer_x:k1").await.unwrap(), Some(original.clone()));
    let duplicate = |r: Result<AppendResult, StoreError>| match r {
        Err(StoreError::DuplicateIdempotencyKey { key, existing }) => (key, existing),
        other => panic!("expected DuplicateIdempotencyKey, got {other:?}"),
    };
    // Checked before the expected version: a retry gets the original result.
    let (key, existing) =
        duplicate(store.append("pay-1", ExpectedVersion::NoStream, vec![keyed_event("mer_x:k1")]).await);
    assert_eq!((key.as_str(), &existing), ("mer_x:k1", &original));
    let (_, existing) = duplicate(store.append("pay-2", ExpectedVersion::Any, vec![keyed_event("mer_x:k1")]).await);
    assert_eq!(existing, original);
    assert_eq!(store.head().await.unwrap(), 2);

    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.append(&format!("conc-{n}"), ExpectedVersion::NoStream, vec![keyed_event("mer_x:k2")]).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut existing = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => winners.push(r),
            Err(StoreError::DuplicateIdempotencyKey { existing: e, .. }) => existing.push(e),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "two concurrent identical requests never both append");
    assert_eq!(existing.len(), 15);
    assert!(existing.iter().all(|e| *e == winners[0]));
    assert_eq!(store.head().await.unwrap(), 3);
    // Keys on later events of an append are not indexed; only the first event's key counts.
    store.append("pay-3", ExpectedVersion::NoStream, vec![event("First", 0), keyed_event("mer_x:k3")]).await.unwrap();
    assert_eq!(store.find_idempotent("mer_x:k3").await.unwrap(), None);

    let store = reopen(f, store).await;
    let (_, existing) = duplicate(store.append("pay-9", ExpectedVersion::Any, vec![keyed_event("mer_x:k1")]).await);
    assert_eq!(existing, original);
    assert_eq!(store.find_idempotent("mer_x:k2").await.unwrap(), Some(winners[0].clone()));
    assert_eq!(store.find_idempotent("mer_x:k1").await.unwrap(), Some(original));
    store.close().await.unwrap();
}

/// Every contract function, each on a fresh log from `make`.
pub async fn run_all<F: StoreFactory>(make: impl Fn() -> F) {
    basics(&make()).await;
    expected_version_semantics(&make()).await;
    concurrent_appends_one_winner(&make()).await;
    concurrent_writers_gap_free(&make()).await;
    subscriptions_catch_up_then_live(&make()).await;
    reopen_keeps_everything(&make()).await;
    idempotency_keys(&make()).await;
}
