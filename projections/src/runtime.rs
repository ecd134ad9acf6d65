//! The projector runtime: follows the log in order and keeps every read model current,
//! each stored with its checkpoint in one atomic sled write per batch.
//!
//! # Storage
//!
//! One sled database (by convention `<data>/projections`, see [`open_db`]) holds every
//! projection. Projection `<name>` at version `N` lives in the tree
//! `projection/<name>/v<N>`; its checkpoint (the last log position applied, u64 BE)
//! is the key `\0checkpoint` of that same tree, so a batch of changes and its
//! checkpoint are one `sled::Batch`, applied atomically: after a crash a projection
//! resumes exactly after the last batch that reached disk, never applying an event
//! twice or skipping one. The tree `projection/_meta` records which version of each
//! projection is active (and its layout `schema`); on open, trees of other versions
//! (left by an interrupted rebuild) are dropped. Everything here is derived from the
//! log: a damaged or deleted database is rebuilt, never trusted over the log.
//!
//! # Following the log
//!
//! One reader task reads the log from the lowest checkpoint (`read_all`, up to
//! [`DEFAULT_BATCH_EVENTS`] per batch; at the head it waits on `subscribe`) and decodes
//! each batch once; the batch is then applied to every projection in parallel (one
//! blocking task each), each projection skipping what its checkpoint already covers.
//! Reading and decoding the next batch overlaps with applying the current one
//! ([`PIPELINE_DEPTH`] batches in flight). Each projection keeps its [`WorkingSet`]
//! from batch to batch while its active version stays the same; it flushes after
//! every batch near the head, and only every `rebuild_batch_events` while more than
//! that many events remain (catching up after downtime or a layout change), or
//! earlier once the set passes its share of the memory budget (below).
//!
//! # Rebuilds
//!
//! [`Projections::rebuild`] builds version N+1 of the named projections from position 1
//! into new trees while queries keep answering from version N (which the follower
//! keeps current). Each projection keeps its [`WorkingSet`] in memory for the whole
//! rebuild and flushes it, with the checkpoint, in one atomic write every
//! `rebuild_batch_events` events, or once past its share of the memory budget (and
//! before the switch). Once the new version reaches the head it takes the projection's
//! write lock, applies what arrived meanwhile, records N+1 as active in
//! `projection/_meta`, swaps the tree queries read, and drops version N. Run without a
//! follower, the same function is the offline replay (`paystream replay`).
//!
//! # Memory
//!
//! The read side holds, besides the decoded batches in flight (at most
//! [`PIPELINE_DEPTH`] + 1 batches of `batch_events` while following, and
//! `2 × REBUILD_PIPELINE_DEPTH + 2` batches of [`REBUILD_READ_EVENTS`] during a
//! rebuild), what one budget allows, [`ProjectorConfig::cache_bytes`] (default
//! [`DEFAULT_CACHE_MIB`]): [`SLED_CACHE_PERCENT`] of it is sled's page cache, the rest
//! is shared equally by the working sets alive (the follower's one per projection, and
//! a rebuild's while one runs). Each set keeps an estimate of its bytes
//! ([`WorkingSet::bytes`]); at the end of a batch a set past its share is flushed with
//! its checkpoint, then forgets its clean records ([`WorkingSet::evict`]), so it holds
//! at most its share plus what one batch adds. A set forgets only what is stored, and
//! reads it back when needed: the stored models do not depend on the budget.
//!
//! # Read-your-writes
//!
//! Each projection publishes its checkpoint on a watch channel after each atomic
//! write; [`Projections::wait_for`] waits until it reaches a position (a command's
//! response carries the position of its last event) or answers [`Lagging`].
//!
//! Near the head the follower stores a projection's changes at most
//! [`LIVE_FLUSH_INTERVAL`] after it applied them (or once `batch_events` are
//! unflushed), not after every batch: under load one atomic write carries many small
//! batches. A reader that waits for a position asks for a flush (`Slot::wanted`), so
//! it is answered as soon as the position is applied, not at the next interval.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use paystream_store::{EventStore, Position, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::dashboard::{self, DashboardQuery, DashboardReport, MerchantDashboard};
use crate::decode::{decode_batch, Decoded};
use crate::error::{Lagging, ProjectionError};
use crate::keys::{self, CHECKPOINT_KEY};
use crate::lag;
use crate::ledger::{self, AccountBalance, JournalPage, Ledger, TrialBalance};
use crate::model::{ProjectionName, ReadModel, WorkingSet};
use crate::overview::{self, OverviewQuery, OverviewReport, PlatformOverview};
use crate::search::{self, PaymentSearch, PaymentSummary, SearchPage, SearchQuery};

/// Most events applied in one atomic write (per projection).
pub const DEFAULT_BATCH_EVENTS: usize = 1_000;
/// Most events applied in one atomic write during a rebuild (the working set of each
/// projection stays in memory across them, see [`crate::model::WorkingSet`]).
pub const DEFAULT_REBUILD_BATCH_EVENTS: usize = 50_000;
/// Largest `rebuild_batch_events`.
pub const MAX_REBUILD_BATCH_EVENTS: usize = 1_000_000;
/// Most events a rebuild reads from the log (and decodes, on two threads) at a time.
/// With [`REBUILD_PIPELINE_DEPTH`] it bounds the decoded events in flight (see there).
pub const REBUILD_READ_EVENTS: usize = 2_000;
/// Memory budget of the whole read side by default, in MiB: sled's page cache plus
/// every working set (`paystream serve --projections-cache-mib`).
pub const DEFAULT_CACHE_MIB: u64 = 64;
/// One MiB, in bytes.
pub const MIB: u64 = 1 << 20;
/// Share of the budget that is sled's page cache (`cache_capacity`), in percent; the
/// rest is shared by the working sets.
pub const SLED_CACHE_PERCENT: u64 = 25;
/// Smallest sled page cache, in bytes, whatever the budget.
pub const MIN_SLED_CACHE_BYTES: u64 = MIB;
/// How long `wait_for_default` waits before answering `Lagging`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the lag of every projection is checked; it is logged only when behind or
/// changed state ([`crate::lag`]).
pub const DEFAULT_LAG_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Decoded batches in flight between the reader and the appliers.
pub const PIPELINE_DEPTH: usize = 4;
/// The same during a rebuild, in the reader's queue and in each projection's. At most
/// `2 × depth + 2` batches of [`REBUILD_READ_EVENTS`] are alive at once (the reader's
/// queue, the slowest projection's, the one being sent, the one being applied):
/// 20,000 decoded events, about 15 MiB, outside [`ProjectorConfig::cache_bytes`].
pub const REBUILD_PIPELINE_DEPTH: usize = 4;
/// Batches of at least this many events are decoded on two threads.
const PARALLEL_DECODE_EVENTS: usize = 2_000;
/// Near the head, the longest a projection keeps applied changes unstored when no
/// reader waits for them (see the module's "Read-your-writes").
pub const LIVE_FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Pause before the follower retries after a store error.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

const META_TREE: &str = "projection/_meta";

/// A stored key and value, as [`Projections::snapshot`] returns them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Decoded batches from the reader, and the reader's task.
type Reader = (mpsc::Receiver<Arc<Vec<Decoded>>>, JoinHandle<Result<(), ProjectionError>>);

/// Tuning of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectorConfig {
    /// Most events per atomic write while following the log, 1..=10,000.
    pub batch_events: usize,
    /// Most events per atomic write during a rebuild or replay, 1..=1,000,000 (each
    /// projection keeps its working set in memory between them). Larger batches rewrite
    /// shared records (daily counters, balances, payments still moving) less often; a
    /// rebuild interrupted by a crash restarts from position 1 anyway.
    pub rebuild_batch_events: usize,
    pub wait_timeout: Duration,
    pub lag_log_interval: Duration,
    /// Memory budget of the read side, in bytes: [`SLED_CACHE_PERCENT`] of it is sled's
    /// page cache ([`open_db`]), the rest is shared equally by the working sets alive
    /// (the follower's four; during a rebuild, the rebuild's too). A working set past
    /// its share is flushed and forgets its clean records; the stored models do not
    /// depend on it.
    pub cache_bytes: u64,
}

impl ProjectorConfig {
    /// sled's page cache (`cache_capacity`), in bytes.
    pub fn sled_cache_bytes(&self) -> u64 {
        (self.cache_bytes / 100 * SLED_CACHE_PERCENT).max(MIN_SLED_CACHE_BYTES)
    }

    /// The part of the budget shared by the working sets, in bytes.
    pub fn working_sets_bytes(&self) -> usize {
        let sets = self.cache_bytes - self.cache_bytes / 100 * SLED_CACHE_PERCENT;
        usize::try_from(sets).unwrap_or(usize::MAX)
    }
}

/// The working sets' part of the budget, shared equally by the working sets alive.
struct SetsBudget {
    bytes: usize,
    alive: AtomicUsize,
}

/// A working set's claim on the [`SetsBudget`]: counted as alive while it lives.
struct Share(Arc<SetsBudget>);

impl Share {
    fn new(budget: &Arc<SetsBudget>) -> Share {
        budget.alive.fetch_add(1, Ordering::AcqRel);
        Share(Arc::clone(budget))
    }

    /// This set's share now, in bytes (it shrinks while a rebuild's sets are alive too).
    fn bytes(&self) -> usize {
        self.0.bytes / self.0.alive.load(Ordering::Acquire).max(1)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_events: DEFAULT_BATCH_EVENTS,
            rebuild_batch_events: DEFAULT_REBUILD_BATCH_EVENTS,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            lag_log_interval: DEFAULT_LAG_LOG_INTERVAL,
            cache_bytes: DEFAULT_CACHE_MIB * MIB,
        }
    }
}

/// Opens (creating) the projections database, with the page cache of `config`'s budget
/// ([`ProjectorConfig::sled_cache_bytes`]). A database sled reports as corrupt is
/// moved aside and started afresh: it only holds what the log can rebuild.
pub fn open_db(path: &Path, config: &ProjectorConfig) -> Result<sled::Db, ProjectionError> {
    let sled_config = sled::Config::new().path(path).cache_capacity(config.sled_cache_bytes());
    Ok(paystream_store::open_derived_db(path, &sled_config, "projections database")?)
}

/// Every read model this crate maintains, in [`ProjectionName::ALL`] order.
pub fn all_models() -> Vec<Arc<dyn ReadModel>> {
    vec![Arc::new(MerchantDashboard), Arc::new(PaymentSearch), Arc::new(PlatformOverview), Arc::new(Ledger)]
}

fn tree_name(name: ProjectionName, version: u64) -> String {
    format!("projection/{}/v{version}", name.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    version: u64,
    schema: u32,
}

/// What a projection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProjectionState {
    /// Kept current by the follower.
    Running,
    /// Being built by the follower from position 0 (a new database, or a layout
    /// change): it answers no query until it reaches the head as it was at start.
    Building,
    /// A new version is being built; queries still answer from the current one.
    Rebuilding,
    /// Stopped at its checkpoint after an error (see `error`); restart or rebuild.
    Failed,
    /// The follower is not running (only offline replay applies events).
    Stopped,
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebuildProgress {
    pub version: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub checkpoint: Position,
    pub lag: u64,
}

/// One projection's status (a line of [`Projections::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionStatus {
    pub name: ProjectionName,
    /// The version queries read (raised by each rebuild).
    pub version: u64,
    /// Layout version of the model's code.
    pub schema: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub checkpoint: Position,
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub head: Position,
    /// head − checkpoint.
    pub lag: u64,
    pub state: ProjectionState,
    pub rebuild: Option<RebuildProgress>,
    pub error: Option<String>,
}

/// What a rebuild (or offline replay) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildReport {
    pub projections: Vec<ProjectionName>,
    /// Versions now active, in the order of `projections`.
    pub versions: Vec<u64>,
    /// Events read from the log (each applied to every projection rebuilt).
    pub events: u64,
    pub checkpoint: Position,
    pub elapsed_ms: u64,
    pub events_per_sec: u64,
}

#[derive(Clone)]
struct Active {
    version: u64,
    tree: sled::Tree,
}

#[derive(Debug, Clone)]
enum SlotState {
    Idle,
    Rebuilding { version: u64, checkpoint: Position },
    Failed(String),
}

struct Slot {
    model: Arc<dyn ReadModel>,
    active: RwLock<Active>,
    /// Held by whoever writes the active tree: the follower's applier, a rebuild's switch.
    write: tokio::sync::Mutex<()>,
    checkpoint: watch::Sender<Position>,
    state: Mutex<SlotState>,
    /// While the active version is being built from position 0 (a new tree at open):
    /// the head it must reach before it answers queries ([`UNTIL_UNKNOWN`] until the
    /// follower has read the head); 0 once it has.
    building_until: AtomicU64,
    /// The highest position a reader waits for ([`Projections::wait_for`]): while the
    /// checkpoint is below it, the follower stores what it applies at once.
    wanted: AtomicU64,
}

/// `building_until` of a new tree before the follower has read the head.
const UNTIL_UNKNOWN: u64 = u64::MAX;

impl Slot {
    fn active(&self) -> Active {
        self.active.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn state(&self) -> SlotState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_state(&self, state: SlotState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    fn failed(&self) -> bool {
        matches!(self.state(), SlotState::Failed(_))
    }
}

/// Projections marked as rebuilding, each with its new version and tree name.
struct Claim {
    names: Vec<ProjectionName>,
    claimed: Vec<(ProjectionName, u64, String)>,
}

/// A model, the tree it writes, the last position stored in that tree, and the model's
/// [`WorkingSet`]: events are applied to the set, and every `flush_every` events (and
/// on [`Target::flush`]) its changes go to the tree in one atomic write together with
/// the checkpoint of the last event applied. After an error the target is discarded
/// (its set may hold part of a batch); the tree still holds the last flush.
///
/// Memory: once the set's estimate passes its `share` at the end of a batch, the
/// target flushes (whatever `flush_every` says) and the set forgets its clean records
/// (and, if what it keeps of a whole tree is still past the budget, that too). So a
/// set holds at most its budget plus what one batch adds.
struct Target {
    model: Arc<dyn ReadModel>,
    tree: sled::Tree,
    /// Last position stored in the tree.
    checkpoint: Position,
    set: Box<dyn WorkingSet>,
    /// Last position applied to `set` (beyond `checkpoint` while changes are unflushed).
    applied: Position,
    flush_every: usize,
    unflushed: usize,
    /// When the tree was last written (or the target made).
    last_flush: Instant,
    /// The set's share of the read side's budget ([`ProjectorConfig::working_sets_bytes`]).
    share: Share,
}

impl Target {
    fn new(
        model: Arc<dyn ReadModel>,
        tree: sled::Tree,
        checkpoint: Position,
        flush_every: usize,
        share: Share,
    ) -> Target {
        let set = model.working_set();
        Target {
            model,
            tree,
            checkpoint,
            set,
            applied: checkpoint,
            flush_every,
            unflushed: 0,
            last_flush: Instant::now(),
            share,
        }
    }

    /// Whether the set holds applied changes the tree does not.
    fn dirty(&self) -> bool {
        self.applied != self.checkpoint
    }

    /// Applies the events after the last one applied, and flushes once `flush_every`
    /// events are unflushed or the set is past its budget. Returns whether the stored
    /// checkpoint moved.
    fn apply(&mut self, events: &[Decoded]) -> Result<bool, ProjectionError> {
        let start = events.partition_point(|e| e.position <= self.applied);
        let fresh = &events[start..];
        let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else { return Ok(false) };
        if first.position != self.applied + 1 {
            return Err(ProjectionError::Invariant {
                projection: self.model.name().as_str(),
                position: first.position,
                detail: format!("gap: checkpoint is {}", self.applied),
            });
        }
        self.set.apply(&self.tree, fresh)?;
        self.applied = last.position;
        self.unflushed += fresh.len();
        if self.unflushed >= self.flush_every || self.set.bytes() > self.share.bytes() {
            return self.flush();
        }
        Ok(false)
    }

    /// Stores every change applied so far with its checkpoint, in one atomic write,
    /// then, if the set is past its budget, forgets its records (all clean now).
    /// Returns whether the stored checkpoint moved.
    fn flush(&mut self) -> Result<bool, ProjectionError> {
        // Invariant 2 (ARCHITECTURE.md, the read side): the stored checkpoint only moves forward.
        debug_assert!(
            self.applied >= self.checkpoint,
            "checkpoint {} moving back to {}",
            self.checkpoint,
            self.applied
        );
        let moved = self.applied != self.checkpoint;
        if moved {
            let mut batch = sled::Batch::default();
            self.set.flush(&mut batch);
            batch.insert(CHECKPOINT_KEY, &keys::checkpoint_value(self.applied));
            self.tree.apply_batch(batch)?;
            self.checkpoint = self.applied;
            self.unflushed = 0;
            self.last_flush = Instant::now();
        }
        if self.set.bytes() > self.share.bytes() {
            self.set.evict();
            if self.set.bytes() > self.share.bytes() {
                self.set.forget_tree();
            }
        }
        Ok(moved)
    }
}

struct Inner {
    db: sled::Db,
    meta: sled::Tree,
    store: Arc<dyn EventStore>,
    config: ProjectorConfig,
    budget: Arc<SetsBudget>,
    slots: Vec<Slot>,
    following: std::sync::atomic::AtomicBool,
    shutdown: watch::Sender<bool>,
    /// Wakes the follower when a reader starts waiting (see `Slot::wanted`).
    flush_wanted: tokio::sync::Notify,
}

/// The read side: every projection, its storage, checkpoint and queries. Cheap to clone.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projections").finish_non_exhaustive()
    }
}

/// The background tasks started by [`Projections::start`]. Dropping it leaves them
/// running (until the store closes); call [`Running::stop`] for a clean shutdown.
#[derive(Debug)]
pub struct Running {
    follower: JoinHandle<()>,
    lag_logger: JoinHandle<()>,
    projections: Projections,
}

impl Running {
    /// Stops the follower after its current batch and waits for it.
    pub async fn stop(self) {
        self.projections.inner.shutdown.send_replace(true);
        self.lag_logger.abort();
        if let Err(error) = self.follower.await {
            tracing::error!(%error, "projection follower ended abnormally");
        }
    }
}

impl Projections {
    /// Opens every projection in `db` (blocking: reads the meta tree and checkpoints).
    /// A projection whose stored layout is older than its code starts over at a new
    /// version from position 0.
    pub fn open(db: sled::Db, store: Arc<dyn EventStore>, config: ProjectorConfig) -> Result<Self, ProjectionError> {
        if !(1..=10_000).contains(&config.batch_events) {
            return Err(ProjectionError::invalid("batch_events", "must be 1 to 10000"));
        }
        if !(1..=MAX_REBUILD_BATCH_EVENTS).contains(&config.rebuild_batch_events) {
            return Err(ProjectionError::invalid("rebuild_batch_events", "must be 1 to 1000000"));
        }
        let meta = db.open_tree(META_TREE)?;
        let mut slots = Vec::new();
        for model in all_models() {
            let name = model.name();
            let stored: Option<Meta> = meta.get(name.as_str())?.and_then(|v| serde_json::from_slice(&v).ok());
            let version = match stored {
                Some(m) if m.schema == model.schema() => m.version,
                Some(m) => {
                    tracing::warn!(projection = %name, stored = m.schema, code = model.schema(), "read model layout changed; rebuilding it from position 0");
                    m.version + 1
                }
                None => 1,
            };
            if stored.is_none_or(|m| m.version != version) {
                // A new version starts empty: drop what an interrupted rebuild may have
                // left under its name (older layout, a checkpoint of its own) before
                // recording it as active.
                db.drop_tree(tree_name(name, version).as_bytes())?;
            }
            let record = Meta { version, schema: model.schema() };
            if stored != Some(record) {
                meta.insert(name.as_str(), serde_json::to_vec(&record).unwrap_or_default())?;
            }
            let active_name = tree_name(name, version);
            let prefix = format!("projection/{}/v", name.as_str());
            for existing in db.tree_names() {
                if existing.starts_with(prefix.as_bytes()) && existing != active_name.as_bytes() {
                    tracing::info!(tree = %String::from_utf8_lossy(&existing), "dropping a stale projection tree");
                    db.drop_tree(&existing)?;
                }
            }
            let tree = db.open_tree(&active_name)?;
            let checkpoint = keys::parse_checkpoint(tree.get(CHECKPOINT_KEY)?.as_deref())?;
            slots.push(Slot {
                model,
                active: RwLock::new(Active { version, tree }),
                write: tokio::sync::Mutex::new(()),
                checkpoint: watch::channel(checkpoint).0,
                state: Mutex::new(SlotState::Idle),
                building_until: AtomicU64::new(if checkpoint == 0 { UNTIL_UNKNOWN } else { 0 }),
                wanted: AtomicU64::new(0),
            });
        }
        Ok(Projections {
            inner: Arc::new(Inner {
                db,
                meta,
                store,
                budget: Arc::new(SetsBudget { bytes: config.working_sets_bytes(), alive: AtomicUsize::new(0) }),
                config,
                slots,
                following: std::sync::atomic::AtomicBool::new(false),
                shutdown: watch::channel(false).0,
                flush_wanted: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Starts following the log in the background (call inside a tokio runtime).
    pub fn start(&self) -> Running {
        self.inner.shutdown.send_replace(false);
        let follower = tokio::spawn(follow(Arc::clone(&self.inner)));
        let lag_logger = tokio::spawn(log_lag(Arc::clone(&self.inner)));
        Running { follower, lag_logger, projections: self.clone() }
    }

    fn slot(&self, name: ProjectionName) -> &Slot {
        &self.inner.slots[name.index()]
    }

    /// The tree queries of `name` read now (its active version).
    pub fn tree(&self, name: ProjectionName) -> sled::Tree {
        self.slot(name).active().tree
    }

    /// Last position applied to the active version of `name`.
    pub fn checkpoint(&self, name: ProjectionName) -> Position {
        *self.slot(name).checkpoint.borrow()
    }

    /// Waits until `name` has applied `position`, at most `timeout`.
    pub async fn wait_for(&self, name: ProjectionName, position: Position, timeout: Duration) -> Result<(), Lagging> {
        let slot = self.slot(name);
        let mut receiver = slot.checkpoint.subscribe();
        let lagging = |checkpoint| Lagging { projection: name, position, checkpoint };
        if *receiver.borrow() >= position {
            return Ok(());
        }
        if slot.failed() {
            return Err(lagging(*receiver.borrow()));
        }
        slot.wanted.fetch_max(position, Ordering::AcqRel);
        self.inner.flush_wanted.notify_one();
        let reached =
            tokio::time::timeout(timeout, receiver.wait_for(|c| *c >= position)).await.is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(lagging(*slot.checkpoint.borrow()))
        }
    }

    /// [`wait_for`](Self::wait_for) with the configured bound (5 s by default).
    pub async fn wait_for_default(&self, name: ProjectionName, position: Position) -> Result<(), Lagging> {
        self.wait_for(name, position, self.inner.config.wait_timeout).await
    }

    /// Name, version, checkpoint, head, lag and state of every projection.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let head = self.inner.store.head().await?;
        let following = self.inner.following.load(std::sync::atomic::Ordering::Acquire);
        Ok(self
            .inner
            .slots
            .iter()
            .map(|slot| {
                let active = slot.active();
                let checkpoint = *slot.checkpoint.borrow();
                let building = slot.building_until.load(Ordering::Acquire);
                let (state, rebuild, error) = match slot.state() {
                    SlotState::Idle if following && building != 0 && checkpoint < building => {
                        (ProjectionState::Building, None, None)
                    }
                    SlotState::Idle if following => (ProjectionState::Running, None, None),
                    SlotState::Idle => (ProjectionState::Stopped, None, None),
                    SlotState::Rebuilding { version, checkpoint } => (
                        ProjectionState::Rebuilding,
                        Some(RebuildProgress { version, checkpoint, lag: head.saturating_sub(checkpoint) }),
                        None,
                    ),
                    SlotState::Failed(reason) => (ProjectionState::Failed, None, Some(reason)),
                };
                ProjectionStatus {
                    name: slot.model.name(),
                    version: active.version,
                    schema: slot.model.schema(),
                    checkpoint,
                    head,
                    lag: head.saturating_sub(checkpoint),
                    state,
                    rebuild,
                    error,
                }
            })
            .collect())
    }

    /// Builds a new version of each named projection from position 1 and switches
    /// queries to it once it has caught up with the log (module docs). Queries answer
    /// from the current version meanwhile. Without a running follower this is the
    /// offline replay. Runs until done: spawn it to run it in the background.
    pub async fn rebuild(&self, names: &[ProjectionName]) -> Result<RebuildReport, ProjectionError> {
        let claim = self.claim(names)?;
        self.run_claim(claim).await
    }

    /// Starts a rebuild in the background (see [`Projections::rebuild`]). Refuses at
    /// once, with [`ProjectionError::AlreadyRebuilding`], when one of `names` is already
    /// rebuilding; otherwise the rebuild is under way when this returns.
    pub fn start_rebuild(
        &self,
        names: &[ProjectionName],
    ) -> Result<JoinHandle<Result<RebuildReport, ProjectionError>>, ProjectionError> {
        let claim = self.claim(names)?;
        let this = self.clone();
        Ok(tokio::spawn(async move { this.run_claim(claim).await }))
    }

    /// Marks `names` as rebuilding into their next version.
    fn claim(&self, names: &[ProjectionName]) -> Result<Claim, ProjectionError> {
        let mut names: Vec<ProjectionName> = names.to_vec();
        names.sort();
        names.dedup();
        let mut claimed: Vec<(ProjectionName, u64, String)> = Vec::new();
        for &name in &names {
            let slot = self.slot(name);
            let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*state, SlotState::Rebuilding { .. }) {
                drop(state);
                self.release(&claimed);
                return Err(ProjectionError::AlreadyRebuilding(name.as_str()));
            }
            let version = slot.active().version + 1;
            *state = SlotState::Rebuilding { version, checkpoint: 0 };
            claimed.push((name, version, tree_name(name, version)));
        }
        Ok(Claim { names, claimed })
    }

    async fn run_claim(&self, claim: Claim) -> Result<RebuildReport, ProjectionError> {
        let Claim { names, claimed } = claim;
        let started = Instant::now();
        let result = self.rebuild_claimed(&claimed).await;
        match result {
            Ok((events, checkpoint)) => {
                let elapsed = started.elapsed();
                Ok(RebuildReport {
                    projections: names,
                    versions: claimed.iter().map(|(_, v, _)| *v).collect(),
                    events,
                    checkpoint,
                    elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    events_per_sec: per_sec(events, elapsed),
                })
            }
            Err(error) => {
                tracing::error!(%error, "rebuild failed; the current versions stay active");
                self.release(&claimed);
                Err(error)
            }
        }
    }

    /// Gives up claimed rebuilds: drops their trees, the current versions stay.
    fn release(&self, claimed: &[(ProjectionName, u64, String)]) {
        for (name, _, tree) in claimed {
            if let Err(error) = self.inner.db.drop_tree(tree.as_bytes()) {
                tracing::warn!(%error, tree, "could not drop an abandoned rebuild tree");
            }
            let slot = self.slot(*name);
            let mut state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*state, SlotState::Rebuilding { .. }) {
                *state = SlotState::Idle;
            }
        }
    }

    async fn rebuild_claimed(
        &self,
        claimed: &[(ProjectionName, u64, String)],
    ) -> Result<(u64, Position), ProjectionError> {
        let inner = &self.inner;
        let mut targets: Vec<Target> = Vec::with_capacity(claimed.len());
        for (name, _, tree) in claimed {
            inner.db.drop_tree(tree.as_bytes())?;
            let tree = inner.db.open_tree(tree.as_bytes())?;
            let model = Arc::clone(&self.slot(*name).model);
            let mut target = Target::new(model, tree, 0, inner.config.rebuild_batch_events, Share::new(&inner.budget));
            target.set.assume_empty_tree();
            targets.push(target);
        }
        // Phase 1: from position 1 to the head, while the follower keeps the current
        // versions. Each projection applies on its own thread at its own pace (a long
        // flush of one does not hold the others back); the reader's decoded batches are
        // shared by all of them.
        let mut events = 0u64;
        let (mut batches, reader) =
            spawn_reader(inner, 1, false, inner.config.rebuild_batch_events.min(REBUILD_READ_EVENTS));
        let mut feeds = Vec::with_capacity(claimed.len());
        let mut workers = Vec::with_capacity(claimed.len());
        for ((name, version, _), target) in claimed.iter().zip(targets) {
            let (feed, fed) = mpsc::channel(REBUILD_PIPELINE_DEPTH);
            feeds.push(feed);
            let (inner, name, version) = (Arc::clone(inner), *name, *version);
            workers.push(tokio::task::spawn_blocking(move || rebuild_worker(&inner, name, version, target, fed)));
        }
        'feed: while let Some(batch) = batches.recv().await {
            events += batch.len() as u64;
            for feed in &feeds {
                if feed.send(Arc::clone(&batch)).await.is_err() {
                    break 'feed; // that worker failed: its error is collected below
                }
            }
        }
        drop((feeds, batches));
        let mut targets = Vec::with_capacity(workers.len());
        let mut failure = None;
        for worker in workers {
            match worker.await.map_err(|e| ProjectionError::Invariant {
                projection: "runtime",
                position: 0,
                detail: e.to_string(),
            }) {
                Ok(Ok(target)) => targets.push(target),
                Ok(Err(error)) | Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        let read = join_reader(reader).await;
        if let Some(error) = failure {
            return Err(error);
        }
        read?;
        // Phase 2: per projection, under its write lock, apply what arrived meanwhile and switch.
        let mut last = 0;
        for ((name, version, tree_name_new), target) in claimed.iter().zip(targets) {
            let (caught_up, checkpoint) = self.switch_rebuilt(*name, *version, tree_name_new, target).await?;
            events += caught_up;
            last = last.max(checkpoint);
        }
        Ok((events, last))
    }

    /// Phase 2 of a rebuild for one projection: under its write lock, applies what
    /// arrived since phase 1 and switches the projection to the rebuilt tree.
    /// Returns the events applied and the new checkpoint.
    async fn switch_rebuilt(
        &self,
        name: ProjectionName,
        version: u64,
        tree_name_new: &str,
        mut target: Target,
    ) -> Result<(u64, Position), ProjectionError> {
        let inner = &self.inner;
        let mut events = 0u64;
        let slot = self.slot(name);
        let _write = slot.write.lock().await;
        loop {
            let from = target.applied + 1;
            let read = inner.store.read_all(from, inner.config.batch_events).await?;
            if read.is_empty() {
                break;
            }
            events += read.len() as u64;
            let decoded = Arc::new(decode_blocking(read, from).await?);
            let mut applied = apply_parallel(vec![target], decoded).await?;
            target = applied.pop().ok_or(ProjectionError::Stopped)?;
        }
        let mut flushed = each_parallel(vec![target], Target::flush).await?;
        let target = flushed.pop().ok_or(ProjectionError::Stopped)?;
        let old = slot.active();
        let live_checkpoint = *slot.checkpoint.borrow();
        if target.checkpoint < live_checkpoint {
            return Err(ProjectionError::Invariant {
                projection: name.as_str(),
                position: target.checkpoint,
                detail: format!("rebuild ended behind the live checkpoint {live_checkpoint}"),
            });
        }
        let record = Meta { version, schema: slot.model.schema() };
        inner.meta.insert(name.as_str(), serde_json::to_vec(&record).unwrap_or_default())?;
        inner.db.flush_async().await?;
        *slot.active.write().unwrap_or_else(PoisonError::into_inner) = Active { version, tree: target.tree.clone() };
        slot.checkpoint.send_replace(target.checkpoint);
        slot.building_until.store(0, Ordering::Release);
        slot.set_state(SlotState::Idle);
        inner.db.drop_tree(tree_name(name, old.version).as_bytes())?;
        tracing::info!(projection = %name, version, tree = %tree_name_new, checkpoint = target.checkpoint, "rebuild complete; switched");
        Ok((events, target.checkpoint))
    }

    /// Offline replay from position 0 of the named projections (all when empty): the
    /// library side of `paystream replay [--projection NAME]`.
    pub async fn replay(&self, names: &[ProjectionName]) -> Result<RebuildReport, ProjectionError> {
        let names = if names.is_empty() { ProjectionName::ALL.to_vec() } else { names.to_vec() };
        self.rebuild(&names).await
    }

    /// Every key and value of the active version of `name`, checkpoint included, in key
    /// order: what "byte-identical read models" compares.
    pub fn snapshot(&self, name: ProjectionName) -> Result<Vec<KeyValue>, ProjectionError> {
        self.tree(name).iter().map(|item| Ok(item.map(|(k, v)| (k.to_vec(), v.to_vec()))?)).collect()
    }

    /// Flushes sled (projections are rebuilt from the log anyway; this only shortens
    /// the catch-up after a crash).
    pub async fn flush(&self) -> Result<(), ProjectionError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }

    // ---- queries ----

    /// Runs `query` on the active version of `name`. Switching to a rebuilt version
    /// drops the old tree: a query that was reading it then fails with sled's
    /// `CollectionNotFound`, and runs again on the new version (which has applied at
    /// least as much).
    fn read<T>(
        &self,
        name: ProjectionName,
        query: impl Fn(&sled::Tree) -> Result<T, ProjectionError>,
    ) -> Result<T, ProjectionError> {
        let slot = self.slot(name);
        let until = slot.building_until.load(Ordering::Acquire);
        if until != 0 {
            let checkpoint = *slot.checkpoint.borrow();
            if checkpoint < until {
                return Err(ProjectionError::Building { projection: name.as_str(), checkpoint });
            }
            slot.building_until.store(0, Ordering::Release);
        }
        loop {
            let active = slot.active();
            match query(&active.tree) {
                Err(ProjectionError::Sled(sled::Error::CollectionNotFound(_)))
                    if slot.active().version != active.version =>
                {
                    continue;
                }
                answer => return answer,
            }
        }
    }

    pub fn dashboard(&self, query: &DashboardQuery) -> Result<DashboardReport, ProjectionError> {
        self.read(ProjectionName::MerchantDashboard, |tree| dashboard::query(tree, query))
    }

    pub fn search_payments(&self, query: &SearchQuery) -> Result<SearchPage, ProjectionError> {
        self.read(ProjectionName::PaymentSearch, |tree| search::search(tree, query))
    }

    pub fn payment_summary(
        &self,
        payment_id: paystream_domain::id::PaymentId,
    ) -> Result<Option<PaymentSummary>, ProjectionError> {
        self.read(ProjectionName::PaymentSearch, |tree| search::get(tree, payment_id))
    }

    pub fn overview(&self, query: &OverviewQuery) -> Result<OverviewReport, ProjectionError> {
        self.read(ProjectionName::PlatformOverview, |tree| overview::query(tree, query))
    }

    /// The ids of onboarded merchants, newest first, before `before`: at most
    /// `limit`, and whether more follow (from the platform overview's merchant records).
    pub fn merchant_ids(
        &self,
        before: Option<paystream_domain::id::MerchantId>,
        limit: usize,
    ) -> Result<(Vec<paystream_domain::id::MerchantId>, bool), ProjectionError> {
        self.read(ProjectionName::PlatformOverview, |tree| overview::merchant_ids(tree, before, limit))
    }

    pub fn ledger_accounts(
        &self,
        currency: Option<paystream_domain::Currency>,
    ) -> Result<Vec<AccountBalance>, ProjectionError> {
        self.read(ProjectionName::Ledger, |tree| ledger::accounts(tree, currency))
    }

    pub fn trial_balance(&self) -> Result<TrialBalance, ProjectionError> {
        self.read(ProjectionName::Ledger, ledger::trial_balance)
    }

    pub fn journal(&self, after_position: Position, limit: usize) -> Result<JournalPage, ProjectionError> {
        self.read(ProjectionName::Ledger, |tree| ledger::journal(tree, after_position, limit))
    }

    /// Writes the whole read model `name` as CSV (`paystream export --projection NAME`).
    pub fn export_csv(&self, name: ProjectionName, out: &mut dyn std::io::Write) -> Result<(), ProjectionError> {
        let slot = self.slot(name);
        slot.model.export_csv(&slot.active().tree, out)
    }
}

/// One projection's share of a rebuild's first phase: applies every batch fed to it,
/// then flushes what is left. Runs on a blocking thread.
fn rebuild_worker(
    inner: &Inner,
    name: ProjectionName,
    version: u64,
    mut target: Target,
    mut fed: mpsc::Receiver<Arc<Vec<Decoded>>>,
) -> Result<Target, ProjectionError> {
    while let Some(batch) = fed.blocking_recv() {
        if target.apply(&batch)? {
            inner.slots[name.index()].set_state(SlotState::Rebuilding { version, checkpoint: target.checkpoint });
        }
    }
    target.flush()?;
    inner.slots[name.index()].set_state(SlotState::Rebuilding { version, checkpoint: target.checkpoint });
    Ok(target)
}

fn per_sec(n: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    (n as f64 / secs) as u64
}

async fn decode_blocking(
    mut events: Vec<paystream_store::RecordedEvent>,
    first: Position,
) -> Result<Vec<Decoded>, ProjectionError> {
    let join = |e: tokio::task::JoinError| ProjectionError::Invariant {
        projection: "runtime",
        position: first,
        detail: e.to_string(),
    };
    // A large batch is decoded in two halves on two threads (decoding is most of a
    // rebuild's reading).
    if events.len() < PARALLEL_DECODE_EVENTS {
        return tokio::task::spawn_blocking(move || decode_batch(&events, first)).await.map_err(join)?;
    }
    let tail = events.split_off(events.len() / 2);
    let tail_first = first + events.len() as u64;
    let tail = tokio::task::spawn_blocking(move || decode_batch(&tail, tail_first));
    let mut head = tokio::task::spawn_blocking(move || decode_batch(&events, first)).await.map_err(join)??;
    head.extend(tail.await.map_err(join)??);
    Ok(head)
}

/// Reads the log from `from` and sends decoded batches. With `follow` it waits at the
/// head for new events; without, it ends there.
fn spawn_reader(inner: &Arc<Inner>, from: Position, follow: bool, batch_events: usize) -> Reader {
    let (tx, rx) = mpsc::channel(if follow { PIPELINE_DEPTH } else { REBUILD_PIPELINE_DEPTH });
    let store = Arc::clone(&inner.store);
    let mut shutdown = inner.shutdown.subscribe();
    let handle = tokio::spawn(async move {
        let mut next = from.max(1);
        loop {
            if *shutdown.borrow() {
                return if follow { Ok(()) } else { Err(ProjectionError::Stopped) };
            }
            let mut events = store.read_all(next, batch_events).await?;
            if events.is_empty() {
                if !follow {
                    return Ok(());
                }
                let mut subscription = store.subscribe(next).await?;
                tokio::select! {
                    event = subscription.next() => events.push(event?),
                    _ = shutdown.changed() => continue,
                }
            }
            let first = next;
            next += events.len() as u64;
            let decoded = decode_blocking(events, first).await?;
            if tx.send(Arc::new(decoded)).await.is_err() {
                return Ok(());
            }
        }
    });
    (rx, handle)
}

async fn join_reader(reader: JoinHandle<Result<(), ProjectionError>>) -> Result<(), ProjectionError> {
    reader.await.map_err(|e| ProjectionError::Invariant {
        projection: "runtime",
        position: 0,
        detail: e.to_string(),
    })?
}

/// Applies one batch to each target, in parallel, and gives the targets back.
async fn apply_parallel(targets: Vec<Target>, batch: Arc<Vec<Decoded>>) -> Result<Vec<Target>, ProjectionError> {
    each_parallel(targets, move |target| target.apply(&batch)).await
}

/// Runs `f` on each target, in parallel (one blocking task each), and gives the targets back.
async fn each_parallel<F>(targets: Vec<Target>, f: F) -> Result<Vec<Target>, ProjectionError>
where
    F: Fn(&mut Target) -> Result<bool, ProjectionError> + Clone + Send + 'static,
{
    let handles: Vec<_> = targets
        .into_iter()
        .map(|mut target| {
            let f = f.clone();
            tokio::task::spawn_blocking(move || f(&mut target).map(|_| target))
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let target = handle.await.map_err(|e| ProjectionError::Invariant {
            projection: "runtime",
            position: 0,
            detail: e.to_string(),
        })??;
        out.push(target);
    }
    Ok(out)
}

impl Inner {
    /// Applies a batch to one live projection under its write lock (blocking), with
    /// the target the follower kept from the last batch while it still writes the
    /// active version (a rebuild's switch replaces the tree: the kept one is then
    /// dropped, unflushed changes and all, and the new version is at least as far).
    /// Far behind the head (`catching_up`) the working set is flushed every
    /// `rebuild_batch_events`, as in a rebuild; near it, every `batch_events`, once
    /// [`LIVE_FLUSH_INTERVAL`] has passed since the last write, or at once while a
    /// reader waits for a position (`Slot::wanted`). Returns the target to keep.
    fn apply_live(
        &self,
        index: usize,
        kept: Option<Target>,
        batch: &[Decoded],
        catching_up: bool,
    ) -> Result<Target, ProjectionError> {
        let slot = &self.slots[index];
        let _write = slot.write.blocking_lock();
        let active = slot.active();
        let mut target = match kept {
            Some(target) if target.tree.name() == active.tree.name() => target,
            _ => {
                let checkpoint = *slot.checkpoint.borrow();
                let mut target =
                    Target::new(Arc::clone(&slot.model), active.tree, checkpoint, 1, Share::new(&self.budget));
                // Built from position 0 (a new database, a layout change): as in a
                // rebuild, what the set does not hold is not in the tree either.
                if checkpoint == 0 && target.tree.is_empty() {
                    target.set.assume_empty_tree();
                }
                target
            }
        };
        target.flush_every = if catching_up { self.config.rebuild_batch_events } else { self.config.batch_events };
        let mut moved = target.apply(batch)?;
        // A new tree answers no query until its checkpoint reaches `building_until`:
        // until then it is stored at once, as for a waiting reader.
        let building = slot.building_until.load(Ordering::Acquire);
        let asked = slot.wanted.load(Ordering::Acquire) > target.checkpoint || building != 0;
        if !moved && !catching_up && target.dirty() && (asked || target.last_flush.elapsed() >= LIVE_FLUSH_INTERVAL) {
            moved = target.flush()?;
        }
        if building != UNTIL_UNKNOWN && building != 0 && target.checkpoint >= building {
            slot.building_until.store(0, Ordering::Release);
        }
        if moved {
            debug_assert!(target.checkpoint >= *slot.checkpoint.borrow(), "the published checkpoint moved back");
            slot.checkpoint.send_replace(target.checkpoint);
        }
        Ok(target)
    }

    /// Stores what the follower's kept targets applied but did not store yet, and
    /// gives them back (less any whose projection failed or switched trees).
    fn flush_dirty(&self, mut kept: Vec<Option<Target>>) -> Vec<Option<Target>> {
        for (index, entry) in kept.iter_mut().enumerate() {
            let Some(target) = entry.as_mut().filter(|t| t.dirty()) else { continue };
            let slot = &self.slots[index];
            let _write = slot.write.blocking_lock();
            if target.tree.name() != slot.active().tree.name() {
                *entry = None;
                continue;
            }
            match target.flush() {
                Ok(true) => {
                    slot.checkpoint.send_replace(target.checkpoint);
                }
                Ok(false) => {}
                Err(error) => {
                    self.fail(index, &error);
                    *entry = None;
                }
            }
        }
        kept
    }

    fn lowest_live_checkpoint(&self) -> Option<Position> {
        self.slots.iter().filter(|s| !s.failed()).map(|s| *s.checkpoint.borrow()).min()
    }

    fn fail(&self, index: usize, error: &ProjectionError) {
        let slot = &self.slots[index];
        tracing::error!(projection = %slot.model.name(), checkpoint = *slot.checkpoint.borrow(), %error, "projection stopped");
        slot.set_state(SlotState::Failed(error.to_string()));
    }
}

async fn follow(inner: Arc<Inner>) {
    inner.following.store(true, std::sync::atomic::Ordering::Release);
    let mut shutdown = inner.shutdown.subscribe();
    // New trees answer queries once they reach the head as it is now.
    match inner.store.head().await {
        Ok(head) => {
            for slot in &inner.slots {
                let _ = slot.building_until.compare_exchange(UNTIL_UNKNOWN, head, Ordering::AcqRel, Ordering::Acquire);
            }
        }
        Err(error) => tracing::warn!(%error, "projection follower: could not read the log's head"),
    }
    // Per projection, the target (and working set) kept from one batch to the next.
    let mut kept: Vec<Option<Target>> = (0..inner.slots.len()).map(|_| None).collect();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let Some(lowest) = inner.lowest_live_checkpoint() else {
            // Every projection failed: nothing to follow until a rebuild brings one
            // back (it then joins at the head), or shutdown.
            tokio::select! {
                _ = tokio::time::sleep(RETRY_DELAY) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        };
        let (mut batches, reader) = spawn_reader(&inner, lowest + 1, true, inner.config.batch_events);
        loop {
            // Applied changes not stored yet are stored by this deadline, or sooner
            // when a reader waits for them.
            let due = kept.iter().flatten().filter(|t| t.dirty()).map(|t| t.last_flush + LIVE_FLUSH_INTERVAL).min();
            let batch = tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => batch,
                    None => break,
                },
                () = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)), if due.is_some() => {
                    kept = flush_dirty(&inner, kept).await;
                    continue;
                }
                () = inner.flush_wanted.notified(), if due.is_some() => {
                    kept = flush_dirty(&inner, kept).await;
                    continue;
                }
            };
            apply_live_batch(&inner, &mut kept, batch).await;
        }
        // The reader stopped (shutdown, or an error to retry from the checkpoints):
        // store what the kept sets hold and start the next round with fresh ones.
        let held = std::mem::replace(&mut kept, (0..inner.slots.len()).map(|_| None).collect());
        let flushing = Arc::clone(&inner);
        if let Err(error) = tokio::task::spawn_blocking(move || drop(flushing.flush_dirty(held))).await {
            tracing::error!(%error, "projection follower: flushing its working sets failed");
        }
        match join_reader(reader).await {
            Ok(()) => {}
            Err(ProjectionError::Store(StoreError::Closed)) => {
                tracing::info!("event store closed; projections stop following");
                break;
            }
            Err(error @ ProjectionError::Decode { .. }) => {
                // No projection can pass an event it cannot read.
                for i in 0..inner.slots.len() {
                    if !inner.slots[i].failed() {
                        inner.fail(i, &error);
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "projection follower: reading the log failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    inner.following.store(false, std::sync::atomic::Ordering::Release);
}

/// Applies one batch the follower read to every projection that has not
/// failed, each on a blocking thread; a projection that fails stops.
async fn apply_live_batch(inner: &Arc<Inner>, kept: &mut [Option<Target>], batch: Arc<Vec<Decoded>>) {
    let last = batch.last().map_or(0, |e| e.position);
    let head = inner.store.head().await.unwrap_or(last);
    let catching_up = head.saturating_sub(last) > inner.config.rebuild_batch_events as u64;
    let handles: Vec<_> = (0..inner.slots.len())
        .filter(|&i| !inner.slots[i].failed())
        .map(|i| {
            let (inner, batch, target) = (Arc::clone(inner), Arc::clone(&batch), kept[i].take());
            (i, tokio::task::spawn_blocking(move || inner.apply_live(i, target, &batch, catching_up)))
        })
        .collect();
    for (i, handle) in handles {
        match handle.await {
            Ok(Ok(target)) => kept[i] = Some(target),
            Ok(Err(error)) => inner.fail(i, &error),
            Err(join) => inner
                .fail(i, &ProjectionError::Invariant { projection: "runtime", position: 0, detail: join.to_string() }),
        }
    }
}

/// [`Inner::flush_dirty`] on the blocking pool.
async fn flush_dirty(inner: &Arc<Inner>, kept: Vec<Option<Target>>) -> Vec<Option<Target>> {
    let flushing = Arc::clone(inner);
    let count = kept.len();
    match tokio::task::spawn_blocking(move || flushing.flush_dirty(kept)).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::error!(%error, "projection follower: storing its working sets failed");
            (0..count).map(|_| None).collect()
        }
    }
}

/// Checks every projection's lag each `lag_log_interval` and logs the ones behind or
/// whose state changed ([`crate::lag`]): nothing while all keep up.
async fn log_lag(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut seen: Vec<Option<lag::Seen>> = vec![None; inner.slots.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.lag_log_interval) => {}
            _ = shutdown.changed() => return,
        }
        let head = match inner.store.head().await {
            Ok(head) => head,
            Err(_) => continue,
        };
        for (slot, seen) in inner.slots.iter().zip(seen.iter_mut()) {
            let checkpoint = *slot.checkpoint.borrow();
            let state = slot.state();
            let phase = match state {
                SlotState::Idle => lag::Phase::Following,
                SlotState::Rebuilding { .. } => lag::Phase::Rebuilding,
                SlotState::Failed(_) => lag::Phase::Failed,
            };
            let (now, line) = lag::judge(*seen, checkpoint, head, phase);
            *seen = Some(now);
            let Some(line) = line else { continue };
            let lag = head.saturating_sub(checkpoint);
            let name = slot.model.name();
            let version = slot.active().version;
            match (line, state) {
                (lag::LagLine::Failed, SlotState::Failed(reason)) => {
                    tracing::error!(projection = %name, version, checkpoint, head, lag, %reason, "projection failed")
                }
                (lag::LagLine::Rebuilding, SlotState::Rebuilding { version: new, checkpoint: at }) => {
                    tracing::info!(projection = %name, version, checkpoint, head, lag, rebuilding = new, rebuild_checkpoint = at, "projection rebuilding")
                }
                (lag::LagLine::Behind, _) => {
                    tracing::warn!(projection = %name, version, checkpoint, head, lag, "projection behind")
                }
                (lag::LagLine::CaughtUp, _) => {
                    tracing::info!(projection = %name, version, checkpoint, head, lag, "projection caught up")
                }
                _ => {}
            }
        }
    }
}
