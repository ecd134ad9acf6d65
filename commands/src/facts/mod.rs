//! Facts about the past that commands need and a single stream cannot give:
//! velocity counts for the risk rules, each merchant's daily volume, the API
//! keys, the payments awaiting the acquirer's answer and which authorizations
//! will expire when.
//!
//! Fed by one in-order consumer of the log, so every node that shares a log
//! derives the same facts. A command may see facts a few milliseconds behind
//! the log; limits checked against them are a risk control, not an accounting
//! invariant (the ledger is exact).
//!
//! # Storage and memory
//!
//! The facts live in a sled database (`<data>/facts`, layout in [`storage`])
//! behind a write-back cache; together they stay within the budget given to
//! [`Facts::open`] (`--facts-cache-mib`, [`DEFAULT_FACTS_CACHE_MIB`]): a fifth
//! of it is sled's `cache_capacity` (sled's RSS runs about 2.5 times that, so
//! about half the budget), a quarter the write-back cache, the rest slack. Only what is proportional to live work or to
//! keys issued stays in memory as well: API keys, payments awaiting the
//! acquirer, authorizations not yet captured, voided or expired.
//!
//! # Checkpoint
//!
//! Every change is written together with the checkpoint (the log position and
//! the hash of the event the facts reflect, the latest event time and the
//! prune counter) in one atomic `sled::Batch`: every [`CHECKPOINT_EVERY_EVENTS`]
//! events, after [`CHECKPOINT_INTERVAL`] with changes, when the write-back cache
//! is full, and when the follower stops. On open, a checkpoint beyond the log's
//! head, one whose event has another hash, another [`storage::FACTS_FORMAT`], or
//! anything that does not parse drops the database: the facts are derived data,
//! never trusted over the log, and are rebuilt from position 1. Otherwise only
//! the tail after the checkpoint is read.
//!
//! # Forgetting
//!
//! Every [`CHECKPOINT_EVERY_EVENTS`] events, right after that checkpoint, one
//! prune step walks at most [`PRUNE_MAX_KEYS_PER_STEP`] velocity windows in key
//! order from a cursor kept in the checkpoint (starting over at the end) and
//! forgets those no rule can read any more (their last entry older than the
//! window's span plus [`PRUNE_SLACK_SECONDS`], by the latest event time), then
//! as many daily volumes of days before yesterday. The step depends only on the
//! events and on what the checkpoint stored, so every node (and every restart)
//! prunes alike. A step walks twice as many windows as 10,000 events can create
//! (two per payment at most), so the walk keeps up with any load.

mod storage;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use paystream_domain::api_key::{ApiKeyEvent, Role};
use paystream_domain::id::{ApiKeyId, MerchantId, PaymentId};
use paystream_domain::payment::PaymentEvent;
use paystream_domain::risk::RiskSignals;
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, Money};
use paystream_store::{EventStore, Position, RecordedEvent, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::bus::decode;
use crate::error::CommandError;
use storage::{
    Checkpoint, ReadError, Value, WriteBack, ATTEMPTS, CHECKPOINT_KEY, CUSTOMER_ATTEMPTS, DECLINES, EXPIRY, KEY,
    PENDING, VOLUME, WINDOW,
};

/// Seconds in a day: daily volumes before yesterday are pruned.
const DAY_SECONDS: i64 = 86_400;
use paystream_domain::risk::{
    volume_day, CUSTOMER_VELOCITY_WINDOW_SECONDS, INSTRUMENT_VELOCITY_WINDOW_SECONDS, REPEATED_DECLINES_WINDOW_SECONDS,
};
const MIB: u64 = 1 << 20;
/// Bytes of a window's hashed identity in its key.
const WINDOW_ID_BYTES: usize = 16;

/// Default of `--facts-cache-mib`: the facts' whole memory budget, in MiB.
pub const DEFAULT_FACTS_CACHE_MIB: u64 = 32;
/// Share of the budget given to sled's page cache (`cache_capacity`), in percent.
/// sled's RSS runs about 2.5 times its cache capacity once full, so this is
/// about half of the budget in memory.
pub const SLED_CACHE_PERCENT: u64 = 20;
/// Share of the budget the write-back cache may fill before it is flushed, in percent.
pub const WRITE_BACK_PERCENT: u64 = 25;
/// Events per read while catching up with the log.
pub const CATCH_UP_BATCH: usize = 10_000;
/// Batches of events between the log reader and the facts' applier.
pub const FOLLOW_CHANNEL_BATCHES: usize = 4;
/// Most batches taken from the channel at once (live events come one per batch).
pub const FOLLOW_RECEIVE_BATCHES: usize = 1_024;
/// Most events applied per hold of the facts' lock, so a request reading the
/// facts never waits long behind the follower.
pub const APPLY_EVENTS_PER_LOCK: usize = 64;
/// Events between two checkpoints that are also prune steps.
pub const CHECKPOINT_EVERY_EVENTS: u64 = 10_000;
/// Longest time changes wait in the write-back cache before a checkpoint.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1_000);
/// Most windows and most daily volumes looked at per prune step.
pub const PRUNE_MAX_KEYS_PER_STEP: usize = 20_000;
/// Slack for clocks: a window is forgotten only this long after it stopped counting.
pub const PRUNE_SLACK_SECONDS: i64 = 300;

/// An API key as the authenticator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: ApiKeyId,
    pub role: Role,
    pub merchant_id: Option<MerchantId>,
    pub revoked: bool,
}

/// What we remember of a payment until the acquirer has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingPayment {
    merchant_id: MerchantId,
    instrument: String,
    /// When it was initiated (the event's time, unix seconds).
    initiated_at: i64,
}

/// How the facts' memory budget is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactsBudget {
    pub sled_cache_bytes: u64,
    pub write_back_bytes: usize,
}

impl FactsBudget {
    pub fn from_mib(mib: u64) -> FactsBudget {
        let bytes = mib.saturating_mul(MIB);
        FactsBudget {
            sled_cache_bytes: bytes / 100 * SLED_CACHE_PERCENT,
            write_back_bytes: usize::try_from(bytes / 100 * WRITE_BACK_PERCENT).unwrap_or(usize::MAX),
        }
    }
}

/// A window's key: its kind and the first 16 bytes of the SHA-256 of what it
/// counts (short fixed-size keys keep sled's nodes small; a collision needs
/// about 2^64 windows).
fn window_key(kind: u8, identity: &[&[u8]]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in identity {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    [&[WINDOW, kind], &digest[..WINDOW_ID_BYTES]].concat()
}

fn attempts_key(instrument: &str) -> Vec<u8> {
    window_key(ATTEMPTS, &[instrument.as_bytes()])
}

/// The merchant id has a fixed length, so merchant and customer cannot run together.
fn customer_key(merchant_id: MerchantId, customer_id: &str) -> Vec<u8> {
    window_key(CUSTOMER_ATTEMPTS, &[merchant_id.as_uuid().as_bytes(), customer_id.as_bytes()])
}

fn declines_key(instrument: &str) -> Vec<u8> {
    window_key(DECLINES, &[instrument.as_bytes()])
}

fn day_key(day: time::Date) -> [u8; 4] {
    ((day.to_julian_day() as u32) ^ (1 << 31)).to_be_bytes()
}

fn volume_key(merchant_id: MerchantId, day: time::Date, currency: Currency) -> Vec<u8> {
    [&[VOLUME], day_key(day).as_slice(), merchant_id.as_uuid().as_bytes(), currency.code().as_bytes()].concat()
}

fn payment_key(kind: u8, payment_id: PaymentId) -> Vec<u8> {
    [&[kind], payment_id.as_uuid().as_bytes().as_slice()].concat()
}

fn key_key(key_hash: &str) -> Vec<u8> {
    [&[KEY], key_hash.as_bytes()].concat()
}

/// The span of the window stored under `key` (the domain's window of its signal).
fn span_of(key: &[u8]) -> i64 {
    match key.get(1) {
        Some(&DECLINES) => REPEATED_DECLINES_WINDOW_SECONDS,
        Some(&CUSTOMER_ATTEMPTS) => CUSTOMER_VELOCITY_WINDOW_SECONDS,
        _ => INSTRUMENT_VELOCITY_WINDOW_SECONDS,
    }
}

fn count_since(window: Option<&Value>, since: i64) -> u32 {
    match window {
        Some(Value::Window(w)) => w.iter().filter(|&&t| t >= since).count().try_into().unwrap_or(u32::MAX),
        _ => 0,
    }
}

fn damaged(error: impl std::fmt::Display) -> CommandError {
    CommandError::Facts(error.to_string())
}

impl From<ReadError> for CommandError {
    fn from(error: ReadError) -> Self {
        damaged(error)
    }
}

impl From<sled::Error> for CommandError {
    fn from(error: sled::Error) -> Self {
        damaged(error)
    }
}

/// `payment-<uuid>` -> the payment's id.
fn payment_id_of(stream_id: &str) -> Option<PaymentId> {
    paystream_domain::aggregate::stream_uuid::<paystream_domain::payment::PaymentAggregate>(stream_id)
        .map(PaymentId::from_uuid)
}

struct Inner {
    cache: WriteBack,
    /// What has been applied (stored only at the next flush).
    at: Checkpoint,
    pending: HashMap<PaymentId, PendingPayment>,
    pending_since: BTreeSet<(i64, PaymentId)>,
    keys_by_hash: HashMap<String, KeyRecord>,
    key_hashes: HashMap<ApiKeyId, String>,
    expiring: BTreeSet<(i64, PaymentId)>,
    expires_at: HashMap<PaymentId, i64>,
}

impl Inner {
    /// The facts stored in `tree`, or why they cannot be trusted.
    fn load(tree: &sled::Tree) -> Result<Inner, CommandError> {
        let at = match tree.get(CHECKPOINT_KEY)? {
            Some(bytes) => Checkpoint::decode(&bytes)
                .ok_or_else(|| damaged("the checkpoint is of another format or does not parse"))?,
            None if tree.is_empty() => Checkpoint::EMPTY,
            None => return Err(damaged("facts without a checkpoint")),
        };
        let mut inner = Inner {
            cache: WriteBack::new(tree.clone()),
            at,
            pending: HashMap::new(),
            pending_since: BTreeSet::new(),
            keys_by_hash: HashMap::new(),
            key_hashes: HashMap::new(),
            expiring: BTreeSet::new(),
            expires_at: HashMap::new(),
        };
        for kind in [PENDING, EXPIRY, KEY] {
            for entry in tree.scan_prefix([kind]) {
                let (key, bytes) = entry?;
                let value = Value::decode(&key, &bytes).map_err(damaged)?;
                let payment_id = || {
                    let uuid = uuid::Uuid::from_slice(&key[1..]).map_err(damaged)?;
                    Ok::<_, CommandError>(PaymentId::from_uuid(uuid))
                };
                match value {
                    Value::Pending(pending) => {
                        let payment_id = payment_id()?;
                        inner.pending_since.insert((pending.initiated_at, payment_id));
                        inner.pending.insert(payment_id, pending);
                    }
                    Value::Expiry(expires_at) => {
                        let payment_id = payment_id()?;
                        inner.expiring.insert((expires_at, payment_id));
                        inner.expires_at.insert(payment_id, expires_at);
                    }
                    Value::Key(record) => {
                        let key_hash = std::str::from_utf8(&key[1..]).map_err(damaged)?.to_string();
                        inner.key_hashes.insert(record.id, key_hash.clone());
                        inner.keys_by_hash.insert(key_hash, record);
                    }
                    _ => return Err(damaged("a value of the wrong kind")),
                }
            }
        }
        Ok(inner)
    }

    /// Applies events in position order, at most [`APPLY_EVENTS_PER_LOCK`], until
    /// a prune step is due (see [`Inner::prune_due`]); returns how many it applied.
    fn apply_some(&mut self, events: &[RecordedEvent]) -> Result<usize, CommandError> {
        let events = &events[..events.len().min(APPLY_EVENTS_PER_LOCK)];
        for (n, event) in events.iter().enumerate() {
            if self.prune_due() {
                return Ok(n);
            }
            if event.position <= self.at.position {
                continue; // already reflected (a batch read again after a restart)
            }
            if event.event_type.starts_with("ApiKey") {
                let key_event = decode::<ApiKeyEvent>(event)?;
                self.apply_key(&key_event)?;
            } else if event.event_type.starts_with("Payment") {
                if let Some(payment_id) = payment_id_of(&event.stream_id) {
                    let payment_event = decode::<PaymentEvent>(event)?;
                    self.apply_payment(payment_id, &payment_event)?;
                }
            }
            self.at.position = event.position;
            self.at.hash = event.hash;
            self.at.since_prune += 1;
        }
        Ok(events.len())
    }

    fn prune_due(&self) -> bool {
        self.at.since_prune >= CHECKPOINT_EVERY_EVENTS
    }

    /// Appends `at` to the window under `key`, dropping entries older than the
    /// window's span before it.
    fn record(&mut self, key: Vec<u8>, at: i64) -> Result<(), CommandError> {
        let span = span_of(&key);
        let (value, fresh) = self.cache.take(&key)?;
        let mut window = match value {
            Some(Value::Window(window)) => window,
            None => VecDeque::new(),
            Some(_) => return Err(damaged("a window of the wrong kind")),
        };
        while window.front().is_some_and(|&t| t < at - span) {
            window.pop_front();
        }
        window.push_back(at);
        self.cache.put(key, Value::Window(window), fresh);
        Ok(())
    }

    fn take_pending(&mut self, payment_id: PaymentId) -> Option<PendingPayment> {
        let pending = self.pending.remove(&payment_id)?;
        self.pending_since.remove(&(pending.initiated_at, payment_id));
        self.cache.delete(payment_key(PENDING, payment_id));
        Some(pending)
    }

    fn apply_payment(&mut self, payment_id: PaymentId, event: &PaymentEvent) -> Result<(), CommandError> {
        use PaymentEvent as E;
        match event {
            E::PaymentInitiated { merchant_id, method, customer, initiated_at, .. } => {
                let at = initiated_at.unix_seconds();
                self.at.latest_at = self.at.latest_at.max(at);
                let instrument = method.instrument_key();
                self.record(attempts_key(&instrument), at)?;
                if let Some(customer_id) = &customer.id {
                    self.record(customer_key(*merchant_id, customer_id), at)?;
                }
                let pending = PendingPayment { merchant_id: *merchant_id, instrument, initiated_at: at };
                // A payment is initiated once (decide refuses a second time): its key is new.
                self.cache.put(payment_key(PENDING, payment_id), Value::Pending(pending.clone()), true);
                self.pending_since.insert((at, payment_id));
                self.pending.insert(payment_id, pending);
            }
            E::PaymentAuthorized { amount, authorized_at, expires_at, .. } => {
                if let Some(pending) = self.take_pending(payment_id) {
                    let key = volume_key(pending.merchant_id, volume_day(*authorized_at), amount.currency);
                    let (value, fresh) = self.cache.take(&key)?;
                    let volume = match value {
                        Some(Value::Volume(v)) => v,
                        None => 0,
                        Some(_) => return Err(damaged("a volume of the wrong kind")),
                    };
                    self.cache.put(key, Value::Volume(volume.saturating_add(amount.amount_minor)), fresh);
                }
                let at = expires_at.unix_seconds();
                self.expiring.insert((at, payment_id));
                self.expires_at.insert(payment_id, at);
                // A payment is authorized once (decide refuses a second time): its key is new.
                self.cache.put(payment_key(EXPIRY, payment_id), Value::Expiry(at), true);
            }
            E::PaymentDeclined { declined_at, .. } => {
                if let Some(pending) = self.take_pending(payment_id) {
                    self.record(declines_key(&pending.instrument), declined_at.unix_seconds())?;
                }
                self.stop_expiry(payment_id);
            }
            E::PaymentReviewRejected { .. } => {
                // Rejected before the acquirer answered: nothing awaits it any more.
                self.take_pending(payment_id);
                self.stop_expiry(payment_id);
            }
            E::PaymentCaptured { final_capture: true, .. }
            | E::PaymentVoided { .. }
            | E::PaymentAuthorizationExpired { .. } => self.stop_expiry(payment_id),
            _ => {}
        }
        Ok(())
    }

    fn stop_expiry(&mut self, payment_id: PaymentId) {
        if let Some(at) = self.expires_at.remove(&payment_id) {
            self.expiring.remove(&(at, payment_id));
            self.cache.delete(payment_key(EXPIRY, payment_id));
        }
    }

    /// The key in memory only (see [`Facts::apply_key_now`]); returns the record to store.
    fn apply_key_in_memory(&mut self, event: &ApiKeyEvent) -> Option<(String, KeyRecord)> {
        match event {
            ApiKeyEvent::ApiKeyIssued { key_id, role, merchant_id, key_hash, .. } => {
                let record = KeyRecord { id: *key_id, role: *role, merchant_id: *merchant_id, revoked: false };
                self.keys_by_hash.insert(key_hash.clone(), record.clone());
                self.key_hashes.insert(*key_id, key_hash.clone());
                Some((key_hash.clone(), record))
            }
            ApiKeyEvent::ApiKeyRevoked { key_id, .. } => {
                let key_hash = self.key_hashes.get(key_id)?.clone();
                let record = self.keys_by_hash.get_mut(&key_hash)?;
                record.revoked = true;
                Some((key_hash, record.clone()))
            }
        }
    }

    fn apply_key(&mut self, event: &ApiKeyEvent) -> Result<(), CommandError> {
        if let Some((key_hash, record)) = self.apply_key_in_memory(event) {
            let key = key_key(&key_hash);
            let (_, fresh) = self.cache.take(&key)?;
            self.cache.put(key, Value::Key(record), fresh);
        }
        Ok(())
    }

    /// One prune step, on flushed state: walks at most [`PRUNE_MAX_KEYS_PER_STEP`]
    /// windows from the cursor (starting over at the end) and forgets those no
    /// rule can read any more, then at most as many daily volumes of days before
    /// yesterday (UTC), both by the latest event time. Returns how many it deleted.
    fn prune_step(&mut self) -> Result<usize, CommandError> {
        use std::ops::Bound::{Excluded, Included};
        let now = self.at.latest_at;
        self.at.since_prune = 0;
        let from = match std::mem::take(&mut self.at.prune_cursor) {
            cursor if cursor.is_empty() => Included(vec![WINDOW]),
            cursor => Excluded(cursor),
        };
        let windows = self.cache.stored((from, Excluded(vec![WINDOW + 1])), PRUNE_MAX_KEYS_PER_STEP)?;
        if windows.len() == PRUNE_MAX_KEYS_PER_STEP {
            self.at.prune_cursor = windows.last().map(|(key, _)| key.clone()).unwrap_or_default();
        }
        let old_days = match Timestamp::from_unix_seconds(now - DAY_SECONDS) {
            Some(yesterday) => {
                let before = [&[VOLUME], day_key(volume_day(yesterday)).as_slice()].concat();
                self.cache.stored(vec![VOLUME]..before, PRUNE_MAX_KEYS_PER_STEP)?
            }
            None => Vec::new(),
        };
        let mut deleted = 0;
        for (key, bytes) in windows {
            let last = storage::last_entry(&key, &bytes).map_err(damaged)?;
            if last.is_none_or(|last| last < now - span_of(&key) - PRUNE_SLACK_SECONDS) {
                self.cache.delete(key);
                deleted += 1;
            }
        }
        for (key, _) in old_days {
            self.cache.delete(key);
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// The facts, shared by every request handler.
pub struct Facts {
    inner: Mutex<Inner>,
    applied: watch::Sender<Position>,
    db: sled::Db,
    budget: FactsBudget,
    /// One flush at a time (the follower's and the one at stop).
    flushing: tokio::sync::Mutex<()>,
}

impl Facts {
    /// Opens the facts stored at `path` and checks their checkpoint against the
    /// log: a checkpoint beyond the head, an event at its position with another
    /// hash, or stored data that does not parse drops them, to be rebuilt from
    /// position 1. [`Facts::start`] then reads the rest of the log.
    pub async fn open(path: &Path, budget: FactsBudget, store: &dyn EventStore) -> Result<Facts, CommandError> {
        let db = storage::open_db(path, budget.sled_cache_bytes)?;
        let inner = match Inner::load(&db) {
            Ok(inner) => match Facts::mismatch(&inner.at, store).await? {
                None => Ok(inner),
                Some(reason) => Err(reason),
            },
            Err(CommandError::Facts(reason)) => Err(reason),
            Err(other) => return Err(other),
        };
        let inner = match inner {
            Ok(inner) => {
                tracing::info!(position = inner.at.position, "facts resume from their checkpoint");
                inner
            }
            Err(reason) => {
                tracing::warn!(%reason, "facts dropped; rebuilding them from the log");
                db.clear()?;
                db.flush()?;
                Inner::load(&db)?
            }
        };
        Ok(Facts::with(db, inner, budget))
    }

    /// Empty facts in a temporary database (tests and tools).
    pub fn temporary(budget: FactsBudget) -> Result<Facts, CommandError> {
        let db = storage::temporary_db(budget.sled_cache_bytes)?;
        let inner = Inner::load(&db)?;
        Ok(Facts::with(db, inner, budget))
    }

    fn with(db: sled::Db, inner: Inner, budget: FactsBudget) -> Facts {
        let position = inner.at.position;
        Facts {
            inner: Mutex::new(inner),
            applied: watch::channel(position).0,
            db,
            budget,
            flushing: Default::default(),
        }
    }

    /// Why a checkpoint cannot be trusted, if it cannot.
    async fn mismatch(at: &Checkpoint, store: &dyn EventStore) -> Result<Option<String>, CommandError> {
        if at.position == 0 {
            return Ok(None);
        }
        let head = store.head().await?;
        if at.position > head {
            return Ok(Some(format!("checkpoint {} is beyond the log's head {head}", at.position)));
        }
        let event = store.read_all(at.position, 1).await?;
        match event.first() {
            Some(event) if event.position == at.position && event.hash == at.hash => Ok(None),
            _ => Ok(Some(format!("the event at checkpoint {} has another hash", at.position))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies events of the log in position order, with the flushes and prune
    /// steps due on the way (blocking: run it off the async runtime's workers, or
    /// in tests).
    pub fn apply_batch_blocking(&self, events: &[RecordedEvent]) -> Result<(), CommandError> {
        let mut start = 0;
        while start < events.len() {
            start += self.lock().apply_some(&events[start..])?;
            if self.lock().prune_due() {
                self.flush_blocking()?;
                self.lock().prune_step()?;
            }
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let position = self.lock().at.position;
        self.applied.send_replace(position);
    }

    /// Writes every change with the checkpoint in one atomic batch (blocking).
    /// The caller holds `flushing` or is the only writer.
    fn flush_blocking(&self) -> Result<(), CommandError> {
        let frozen = {
            let mut inner = self.lock();
            let at = inner.at.clone();
            inner.cache.freeze(at)
        };
        let written = frozen.write(&self.db);
        self.lock().cache.flushed();
        written?;
        Ok(())
    }

    /// Writes every change with the checkpoint in one atomic batch, and asks
    /// sled to make it durable.
    pub async fn flush(self: &Arc<Self>) -> Result<(), CommandError> {
        let _one_at_a_time = self.flushing.lock().await;
        let facts = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            facts.flush_blocking()?;
            facts.db.flush()?;
            Ok::<_, CommandError>(())
        })
        .await
        .map_err(damaged)?
    }

    /// The checkpoint write of the follower: like [`Facts::flush`], leaving
    /// durability to sled's background flush (the log is the record).
    async fn checkpoint(self: &Arc<Self>) -> Result<(), CommandError> {
        let _one_at_a_time = self.flushing.lock().await;
        let facts = Arc::clone(self);
        tokio::task::spawn_blocking(move || facts.flush_blocking()).await.map_err(damaged)?
    }

    /// Applies a batch the follower received: checkpoints and prunes where due.
    async fn apply_following(self: &Arc<Self>, events: Vec<RecordedEvent>) -> Result<(), CommandError> {
        let events = Arc::new(events);
        let mut start = 0;
        while start < events.len() {
            // Applying reads and writes sled: on a blocking thread, so that the OS
            // schedules the follower beside the request handlers instead of it being
            // one task among hundreds on the runtime's workers (it fell behind the log
            // under load). The lock is still taken per `APPLY_EVENTS_PER_LOCK`.
            let (facts, batch) = (Arc::clone(self), Arc::clone(&events));
            let (applied, prune_due) = tokio::task::spawn_blocking(move || {
                let mut applied = 0;
                while start + applied < batch.len() {
                    let mut inner = facts.lock();
                    applied += inner.apply_some(&batch[start + applied..])?;
                    if inner.prune_due() {
                        return Ok::<_, CommandError>((applied, true));
                    }
                }
                Ok((applied, false))
            })
            .await
            .map_err(damaged)??;
            start += applied;
            if prune_due {
                self.checkpoint().await?;
                self.lock().prune_step()?;
            }
        }
        self.publish();
        if self.lock().cache.dirty_bytes() >= self.budget.write_back_bytes {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Registers a key this process just issued, before the log consumer
    /// gets to it, so the key works as soon as its creation is acknowledged.
    /// (The follower stores it when it applies the event.)
    pub fn apply_key_now(&self, event: &ApiKeyEvent) {
        self.lock().apply_key_in_memory(event);
    }

    /// Last position applied.
    pub fn applied(&self) -> Position {
        *self.applied.borrow()
    }

    /// Waits until `position` is applied.
    pub async fn wait_for(&self, position: Position) {
        let mut receiver = self.applied.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = receiver.wait_for(|applied| *applied >= position).await;
    }

    pub fn key_by_hash(&self, key_hash: &str) -> Option<KeyRecord> {
        self.lock().keys_by_hash.get(key_hash).cloned()
    }

    pub fn key_count(&self) -> usize {
        self.lock().keys_by_hash.len()
    }

    /// Volume authorized today (UTC) for the merchant in this currency.
    pub fn daily_volume(
        &self,
        merchant_id: MerchantId,
        currency: Currency,
        now: Timestamp,
    ) -> Result<Money, CommandError> {
        let key = volume_key(merchant_id, volume_day(now), currency);
        let minor = self.lock().cache.read(&key, |value| match value {
            Some(Value::Volume(v)) => *v,
            _ => 0,
        })?;
        Ok(Money::new(minor, currency))
    }

    pub fn risk_signals(
        &self,
        merchant_id: MerchantId,
        instrument: &str,
        customer_id: Option<&str>,
        now: Timestamp,
    ) -> Result<RiskSignals, CommandError> {
        let mut inner = self.lock();
        let at = now.unix_seconds();
        let customer_attempts_last_hour = match customer_id {
            Some(c) => inner
                .cache
                .read(&customer_key(merchant_id, c), |w| count_since(w, at - CUSTOMER_VELOCITY_WINDOW_SECONDS))?,
            None => 0,
        };
        Ok(RiskSignals {
            instrument_attempts_last_hour: inner
                .cache
                .read(&attempts_key(instrument), |w| count_since(w, at - INSTRUMENT_VELOCITY_WINDOW_SECONDS))?,
            instrument_declines_last_day: inner
                .cache
                .read(&declines_key(instrument), |w| count_since(w, at - REPEATED_DECLINES_WINDOW_SECONDS))?,
            customer_attempts_last_hour,
        })
    }

    /// Authorizations whose hold lapsed by `now`, oldest first, at most `max`.
    pub fn due_expiries(&self, now: Timestamp, max: usize) -> Vec<PaymentId> {
        let cutoff = now.unix_seconds();
        self.lock().expiring.iter().take_while(|(at, _)| *at <= cutoff).take(max).map(|(_, id)| *id).collect()
    }

    /// Payments initiated at or before `cutoff` that still await the acquirer's
    /// answer, oldest first, at most `max`.
    pub fn pending_since(&self, cutoff: Timestamp, max: usize) -> Vec<PaymentId> {
        let cutoff = cutoff.unix_seconds();
        self.lock().pending_since.iter().take_while(|(at, _)| *at <= cutoff).take(max).map(|(_, id)| *id).collect()
    }

    /// Every stored fact, keys and values as stored, after a flush (tests compare
    /// a restart with a full replay through it).
    pub async fn snapshot(self: &Arc<Self>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, CommandError> {
        self.flush().await?;
        let _one_at_a_time = self.flushing.lock().await;
        self.db.iter().map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(damaged)).collect()
    }

    /// Follows the log from the checkpoint for as long as the store is open: reads
    /// what is there in batches of [`CATCH_UP_BATCH`], then follows a subscription.
    /// [`FactsFollower::stop`] ends it with a checkpoint.
    pub fn start(self: &Arc<Self>, store: Arc<dyn EventStore>) -> FactsFollower {
        let (batches, received) = mpsc::channel(FOLLOW_CHANNEL_BATCHES);
        let reader = tokio::spawn(read_log(store, self.applied() + 1, batches));
        let (stop, stopped) = watch::channel(false);
        let applier = tokio::spawn(Arc::clone(self).apply_log(received, stopped));
        FactsFollower { stop, reader, applier }
    }

    async fn apply_log(
        self: Arc<Self>,
        mut received: mpsc::Receiver<Result<Vec<RecordedEvent>, StoreError>>,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<(), CommandError> {
        // Restarted from a checkpoint taken right before a prune step: take the step first.
        if self.lock().prune_due() {
            self.lock().prune_step()?;
        }
        let result = self.follow_until_stopped(&mut received, &mut stopped).await;
        if let Err(CommandError::Facts(reason)) = &result {
            // Damaged stored facts: make the next start rebuild them from the log.
            tracing::error!(%reason, "facts database damaged; it will be rebuilt at the next start");
            let _ = self.db.remove(CHECKPOINT_KEY).and_then(|_| self.db.flush());
            return result;
        }
        result?;
        self.flush().await
    }

    async fn follow_until_stopped(
        self: &Arc<Self>,
        received: &mut mpsc::Receiver<Result<Vec<RecordedEvent>, StoreError>>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<(), CommandError> {
        let mut stoppable = true;
        let mut buffer = Vec::with_capacity(FOLLOW_RECEIVE_BATCHES);
        let mut checkpoint_due = tokio::time::Instant::now() + CHECKPOINT_INTERVAL;
        loop {
            let dirty = self.lock().cache.is_dirty();
            tokio::select! {
                biased;
                changed = stopped.changed(), if stoppable => match changed {
                    Ok(()) if *stopped.borrow() => return Ok(()),
                    Ok(()) => {}
                    // The handle was dropped: follow until the store closes.
                    Err(_) => stoppable = false,
                },
                () = tokio::time::sleep_until(checkpoint_due), if dirty => {
                    self.checkpoint().await?;
                    checkpoint_due = tokio::time::Instant::now() + CHECKPOINT_INTERVAL;
                }
                n = received.recv_many(&mut buffer, FOLLOW_RECEIVE_BATCHES) => {
                    if n == 0 {
                        return Ok(()); // the reader ended: the store closed
                    }
                    if !dirty {
                        checkpoint_due = tokio::time::Instant::now() + CHECKPOINT_INTERVAL;
                    }
                    let mut events = Vec::new();
                    for batch in buffer.drain(..) {
                        events.extend(batch?);
                    }
                    self.apply_following(events).await?;
                }
            }
        }
    }
}

/// Reads the log from `from` and hands it over in batches: everything there is, in
/// reads of up to [`CATCH_UP_BATCH`]; at the head it waits on a subscription for the
/// next event, then reads in batches again. Ends when the store closes or the
/// applier is gone.
async fn read_log(
    store: Arc<dyn EventStore>,
    mut from: Position,
    batches: mpsc::Sender<Result<Vec<RecordedEvent>, StoreError>>,
) {
    let handed_over = |result: Result<Vec<RecordedEvent>, StoreError>| {
        let batches = batches.clone();
        async move {
            match result {
                Err(StoreError::Closed) => false,
                Err(error) => {
                    let _ = batches.send(Err(error)).await;
                    false
                }
                Ok(batch) => batches.send(Ok(batch)).await.is_ok(),
            }
        }
    };
    loop {
        loop {
            let batch = match store.read_all(from, CATCH_UP_BATCH).await {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => batch,
                Err(error) => {
                    handed_over(Err(error)).await;
                    return;
                }
            };
            from = batch.last().map_or(from, |last| last.position + 1);
            if !handed_over(Ok(batch)).await {
                return;
            }
        }
        let next = match store.subscribe(from).await {
            Ok(mut subscription) => subscription.next().await,
            Err(error) => Err(error),
        };
        if let Ok(event) = &next {
            from = event.position + 1;
        }
        if !handed_over(next.map(|event| vec![event])).await {
            return;
        }
    }
}

/// The running facts follower.
pub struct FactsFollower {
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    applier: JoinHandle<Result<(), CommandError>>,
}

impl FactsFollower {
    /// Waits until the facts have applied `position`; fails if the follower stopped
    /// on an error first.
    pub async fn wait_for(&mut self, facts: &Facts, position: Position) -> Result<(), CommandError> {
        tokio::select! {
            () = facts.wait_for(position) => Ok(()),
            ended = &mut self.applier => {
                ended.map_err(damaged)??;
                Err(damaged("the facts follower ended before catching up"))
            }
        }
    }

    /// Stops following and writes the last checkpoint.
    pub async fn stop(self) -> Result<(), CommandError> {
        self.stop.send_replace(true);
        let ended = self.applier.await;
        self.reader.abort();
        ended.map_err(damaged)?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const HOUR_SECONDS: i64 = 3_600;

    fn facts() -> Facts {
        Facts::temporary(FactsBudget::from_mib(DEFAULT_FACTS_CACHE_MIB)).unwrap()
    }

    fn window(facts: &Facts, key: &[u8]) -> Option<Value> {
        facts.lock().cache.read(key, |v| v.cloned()).unwrap()
    }

    /// The prune step forgets windows that stopped counting (plus the slack) and
    /// daily volumes before yesterday; everything a rule can still read stays.
    #[test]
    fn what_no_rule_can_read_any_more_is_forgotten() {
        let day = |d: u8| time::Date::from_calendar_date(2027, time::Month::January, d).unwrap_or(time::Date::MIN);
        let merchant = MerchantId::from_uuid(uuid::Uuid::from_u128(7));
        let now = Timestamp::from_unix_seconds(1_799_020_800).unwrap(); // 2027-01-04T00:00:00Z
        let at = now.unix_seconds();
        let facts = facts();
        {
            let mut inner = facts.lock();
            inner.record(attempts_key("stale"), at - HOUR_SECONDS - PRUNE_SLACK_SECONDS - 1).unwrap();
            inner.record(attempts_key("fresh"), at - HOUR_SECONDS).unwrap();
            inner.record(customer_key(merchant, "stale"), at - 2 * HOUR_SECONDS).unwrap();
            inner.record(customer_key(merchant, "fresh"), at - 60).unwrap();
            inner.record(declines_key("stale"), at - 2 * DAY_SECONDS).unwrap();
            inner.record(declines_key("fresh"), at - DAY_SECONDS + 60).unwrap();
            for d in [1, 2, 3, 4] {
                inner.cache.put(volume_key(merchant, day(d), Currency::USD), Value::Volume(100), true);
            }
            inner.at.latest_at = at;
        }
        facts.flush_blocking().unwrap();
        facts.lock().prune_step().unwrap();
        facts.flush_blocking().unwrap();
        let keys: Vec<Vec<u8>> = facts.db.iter().keys().map(|k| k.unwrap().to_vec()).collect();
        let windows: Vec<&[u8]> = keys.iter().filter(|k| k[0] == WINDOW).map(|k| &k[..]).collect();
        let expected = [attempts_key("fresh"), customer_key(merchant, "fresh"), declines_key("fresh")];
        assert_eq!(windows, expected.iter().map(|k| &k[..]).collect::<Vec<_>>());
        let days: Vec<&[u8]> = keys.iter().filter(|k| k[0] == VOLUME).map(|k| &k[1..5]).collect();
        assert_eq!(days, [day_key(day(3)), day_key(day(4))], "yesterday and today stay");
        for key in &expected {
            assert!(window(&facts, key).is_some());
        }
    }

    /// A window keeps what the span allows and counts as it did when it lived in
    /// memory.
    #[test]
    fn a_window_counts_its_span() {
        let facts = facts();
        let t0 = 1_799_020_800;
        {
            let mut inner = facts.lock();
            for t in [t0, t0 + 10, t0 + HOUR_SECONDS, t0 + HOUR_SECONDS + 11] {
                inner.record(attempts_key("card"), t).unwrap();
            }
        }
        assert_eq!(
            window(&facts, &attempts_key("card")),
            Some(Value::Window(VecDeque::from([t0 + HOUR_SECONDS, t0 + HOUR_SECONDS + 11])))
        );
        let now = Timestamp::from_unix_seconds(t0 + HOUR_SECONDS + 20).unwrap();
        let merchant = MerchantId::from_uuid(uuid::Uuid::from_u128(1));
        let signals = facts.risk_signals(merchant, "card", None, now).unwrap();
        assert_eq!(signals.instrument_attempts_last_hour, 2);
    }

    /// A prune step looks at no more than its bound; the next one goes on from
    /// where it stopped (the cursor travels in the checkpoint), then starts over.
    #[test]
    fn a_prune_step_does_bounded_work_and_goes_on_from_its_cursor() {
        let facts = facts();
        let at = 1_799_020_800;
        {
            let mut inner = facts.lock();
            for n in 0..PRUNE_MAX_KEYS_PER_STEP + 5 {
                inner.record(attempts_key(&format!("card-{n:06}")), at - 2 * HOUR_SECONDS).unwrap();
            }
            inner.record(attempts_key("fresh"), at).unwrap();
            inner.at.latest_at = at;
        }
        facts.flush_blocking().unwrap();
        let mut keys: Vec<Vec<u8>> = (0..PRUNE_MAX_KEYS_PER_STEP + 5)
            .map(|n| attempts_key(&format!("card-{n:06}")))
            .chain([attempts_key("fresh")])
            .collect();
        keys.sort();
        let fresh_first = keys[..PRUNE_MAX_KEYS_PER_STEP].contains(&attempts_key("fresh"));
        let first = PRUNE_MAX_KEYS_PER_STEP - usize::from(fresh_first);
        assert_eq!(facts.lock().prune_step().unwrap(), first);
        let cursor = facts.lock().at.prune_cursor.clone();
        assert_eq!(cursor, keys[PRUNE_MAX_KEYS_PER_STEP - 1]);
        facts.flush_blocking().unwrap();
        let stored = Checkpoint::decode(&facts.db.get(CHECKPOINT_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(stored.prune_cursor, cursor, "the cursor is part of the checkpoint");
        assert_eq!(facts.lock().prune_step().unwrap(), PRUNE_MAX_KEYS_PER_STEP + 5 - first);
        assert!(facts.lock().at.prune_cursor.is_empty(), "the end reached: start over");
        facts.flush_blocking().unwrap();
        let windows: Vec<Vec<u8>> = facts.db.scan_prefix([WINDOW]).keys().map(|k| k.unwrap().to_vec()).collect();
        assert_eq!(windows, [attempts_key("fresh")]);
    }
}
