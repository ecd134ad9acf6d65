//! The facts' checkpoint: a restart reads only the tail and ends with the same
//! facts as a full replay; a deleted, mismatched or unreadable checkpoint is
//! dropped and the facts are rebuilt from the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{card, meta};
use paystream_commands::bus::CommandBus;
use paystream_commands::facts::{Facts, FactsBudget, CHECKPOINT_EVERY_EVENTS, DEFAULT_FACTS_CACHE_MIB};
use paystream_commands::services::{hash_key, NewPayment, OnboardMerchant, Services};
use paystream_commands::SandboxAcquirer;
use paystream_domain::id::MerchantId;
use paystream_domain::merchant::{FeeSchedule, Tier};
use paystream_domain::payment::{CaptureMethod, Customer};
use paystream_domain::testing::test_context;
use paystream_domain::{Currency, Money};
use paystream_store::{EmbeddedStore, EventStore};

const CARDS: [&str; 4] = ["4242424242424242", "5555555555554444", "4000000000000002", "4000000000009995"];

fn budget() -> FactsBudget {
    FactsBudget::from_mib(DEFAULT_FACTS_CACHE_MIB)
}

/// A temporary directory on tmpfs where there is one (every append waits for fdatasync).
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Services writing to `store`, with facts of their own (in a temporary database).
async fn writer(store: Arc<dyn EventStore>) -> Arc<Services> {
    let facts = Arc::new(Facts::temporary(budget()).unwrap());
    let _ = facts.start(Arc::clone(&store));
    let bus = Arc::new(CommandBus::new(store, test_context()));
    Arc::new(Services::new(bus, facts, Arc::new(SandboxAcquirer::default())))
}

async fn onboard(services: &Services) -> MerchantId {
    let onboard = OnboardMerchant {
        name: "Harbour Noodles".into(),
        country: "SG".parse().unwrap(),
        default_currency: Currency::SGD,
        settlement_currency: Some(Currency::SGD),
        tier: Tier::A,
        fees: FeeSchedule { percent_bps: 250, fixed_minor: 20 },
    };
    services.onboard_merchant(&meta(), onboard).await.unwrap().state.unwrap().id
}

/// `count` payments, 32 at a time: a few cards and customers used again and
/// again (velocity), declines, manual and automatic capture. Outcomes do not
/// matter (velocity rules may refuse some), only that they reach the log.
async fn payments(services: &Arc<Services>, merchant_id: MerchantId, from: usize, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..from + count {
        let services = Arc::clone(services);
        tasks.spawn(async move {
            let input = NewPayment {
                merchant_id,
                amount: Money::new(1_000 + i as i64, Currency::SGD),
                capture_method: if i % 3 == 0 { CaptureMethod::Manual } else { CaptureMethod::Automatic },
                method: card(CARDS[i % CARDS.len()]),
                customer: Customer { id: Some(format!("cus_{}", i % 7)), ..Default::default() },
                description: None,
                metadata: BTreeMap::new(),
            };
            let _ = services.create_payment(&meta(), input).await;
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Opens the facts at `path`, follows the log to its head, stops (writing the
/// checkpoint) and returns the checkpoint position found at open and the stored facts.
async fn follow_to_head(path: &Path, store: &Arc<dyn EventStore>) -> (u64, Vec<(Vec<u8>, Vec<u8>)>) {
    let facts = Arc::new(Facts::open(path, budget(), store.as_ref()).await.unwrap());
    let resumed_at = facts.applied();
    let mut follower = facts.start(Arc::clone(store));
    follower.wait_for(&facts, store.head().await.unwrap()).await.unwrap();
    follower.stop().await.unwrap();
    let snapshot = facts.snapshot().await.unwrap();
    (resumed_at, snapshot)
}

/// Rewrites the stored checkpoint with `change` (the facts must be closed).
fn tamper(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let db = paystream_store::open_derived_db(path, &sled::Config::new().path(path), "facts").unwrap();
    let mut checkpoint = db.get(b"\0checkpoint").unwrap().unwrap().to_vec();
    change(&mut checkpoint);
    db.insert(b"\0checkpoint", checkpoint).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_checkpoint_ends_with_the_facts_of_a_full_replay() {
    let dir = temp_dir();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&dir.path().join("log")).unwrap());
    let services = writer(Arc::clone(&store)).await;
    let merchant_id = onboard(&services).await;
    let role = paystream_domain::api_key::Role::Merchant;
    let (key, secret) = services.issue_key(&meta(), role, Some(merchant_id)).await.unwrap();
    // More than one checkpoint-and-prune interval, then a tail after the checkpoint.
    let mut first = 0;
    while store.head().await.unwrap() <= CHECKPOINT_EVERY_EVENTS + 100 {
        assert!(first < 20_000, "the payments do not reach the log");
        payments(&services, merchant_id, first, 500).await;
        first += 500;
    }
    let restarted = dir.path().join("facts");
    let (resumed_at, _) = follow_to_head(&restarted, &store).await;
    assert_eq!(resumed_at, 0, "a new database starts from position 1");
    let checkpoint = store.head().await.unwrap();
    assert!(checkpoint > CHECKPOINT_EVERY_EVENTS);
    payments(&services, merchant_id, first, 200).await;
    services.revoke_key(&meta(), key.state.unwrap().id).await.unwrap();

    let (resumed_at, from_checkpoint) = follow_to_head(&restarted, &store).await;
    assert_eq!(resumed_at, checkpoint, "the restart resumed from the checkpoint");
    let (replayed_from, replayed) = follow_to_head(&dir.path().join("replayed"), &store).await;
    assert_eq!(replayed_from, 0);
    assert_eq!(from_checkpoint, replayed, "the same stored facts, byte for byte");

    // And the same answers as the facts that followed the log live all along.
    let facts = Arc::new(Facts::open(&restarted, budget(), store.as_ref()).await.unwrap());
    let now = paystream_commands::services::now();
    for (i, number) in CARDS.iter().enumerate() {
        let instrument = card(number).summarize(now, &test_context().fingerprint_key).unwrap().instrument_key();
        let customer = format!("cus_{i}");
        assert_eq!(
            facts.risk_signals(merchant_id, &instrument, Some(&customer), now).unwrap(),
            services.facts.risk_signals(merchant_id, &instrument, Some(&customer), now).unwrap(),
        );
    }
    assert_eq!(
        facts.daily_volume(merchant_id, Currency::SGD, now).unwrap(),
        services.facts.daily_volume(merchant_id, Currency::SGD, now).unwrap()
    );
    assert!(facts.daily_volume(merchant_id, Currency::SGD, now).unwrap().amount_minor > 0);
    assert_eq!(facts.key_count(), 1);
    let record = facts.key_by_hash(&hash_key(&secret)).unwrap();
    assert_eq!(Some(record.clone()), services.facts.key_by_hash(&hash_key(&secret)));
    assert!(record.revoked);
    let month = now.plus(time::Duration::days(30));
    let expiries = facts.due_expiries(month, 100_000);
    assert!(!expiries.is_empty());
    assert_eq!(expiries, services.facts.due_expiries(month, 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_mismatched_checkpoint_is_rebuilt_from_the_log() {
    let dir = temp_dir();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&dir.path().join("log")).unwrap());
    let services = writer(Arc::clone(&store)).await;
    let merchant_id = onboard(&services).await;
    payments(&services, merchant_id, 0, 60).await;
    let head = store.head().await.unwrap();
    let path = dir.path().join("facts");
    let (_, expected) = follow_to_head(&path, &store).await;
    assert_eq!(follow_to_head(&path, &store).await, (head, expected.clone()), "a checkpoint at the head is kept");

    // Another hash at the checkpoint's position (the log was replaced).
    tamper(&path, |checkpoint| checkpoint[20] ^= 0xff);
    assert_eq!(follow_to_head(&path, &store).await, (0, expected.clone()));
    // A checkpoint beyond the log's head.
    tamper(&path, |checkpoint| checkpoint[1..9].copy_from_slice(&(head + 100).to_be_bytes()));
    assert_eq!(follow_to_head(&path, &store).await, (0, expected.clone()));
    // A checkpoint that does not parse (another format).
    tamper(&path, |checkpoint| checkpoint[0] = 0xee);
    assert_eq!(follow_to_head(&path, &store).await, (0, expected.clone()));
    // A value that does not parse.
    {
        let db = paystream_store::open_derived_db(&path, &sled::Config::new().path(&path), "facts").unwrap();
        let expiry = db.scan_prefix(b"e").keys().next().unwrap().unwrap();
        db.insert(expiry, b"not a value".to_vec()).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(follow_to_head(&path, &store).await, (0, expected.clone()));
    // The whole database deleted.
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(follow_to_head(&path, &store).await, (0, expected));
}
