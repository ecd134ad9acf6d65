//! What a projection is to the runtime: a name, a layout version and a pure-ish apply
//! function from (stored model, events) to one atomic sled batch.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decode::Decoded;
use crate::error::ProjectionError;

/// The projections this crate maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProjectionName {
    MerchantDashboard,
    PaymentSearch,
    PlatformOverview,
    Ledger,
}

impl ProjectionName {
    pub const ALL: [ProjectionName; 4] = [
        ProjectionName::MerchantDashboard,
        ProjectionName::PaymentSearch,
        ProjectionName::PlatformOverview,
        ProjectionName::Ledger,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ProjectionName::MerchantDashboard => "merchant_dashboard",
            ProjectionName::PaymentSearch => "payment_search",
            ProjectionName::PlatformOverview => "platform_overview",
            ProjectionName::Ledger => "ledger",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ProjectionName::MerchantDashboard => 0,
            ProjectionName::PaymentSearch => 1,
            ProjectionName::PlatformOverview => 2,
            ProjectionName::Ledger => 3,
        }
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown projection name (for `--projection NAME`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown projection {0:?}: expected merchant_dashboard, payment_search, platform_overview or ledger")]
pub struct UnknownProjection(pub String);

impl FromStr for ProjectionName {
    type Err = UnknownProjection;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProjectionName::ALL
            .into_iter()
            .find(|name| name.as_str() == s || name.as_str().replace('_', "-") == s)
            .ok_or_else(|| UnknownProjection(s.to_string()))
    }
}

/// A read model. The runtime owns the storage (one sled tree per projection version)
/// and the checkpoint; the model only turns events into changes of its tree.
pub trait ReadModel: Send + Sync + 'static {
    fn name(&self) -> ProjectionName;

    /// Layout version of what the model stores. Raising it makes the runtime rebuild
    /// the model from position 0 on the next start.
    fn schema(&self) -> u32;

    /// An empty [`WorkingSet`] of this model.
    fn working_set(&self) -> Box<dyn WorkingSet>;

    /// Adds to `batch` every change `events` make to the model stored in `tree`.
    /// `events` are in log order and all after the tree's checkpoint; `tree` still
    /// holds the state before them (the runtime applies the batch, with the new
    /// checkpoint, in one atomic write). Deterministic: the same tree and events give
    /// the same batch, so a rebuild gives byte-identical trees.
    fn apply(&self, tree: &sled::Tree, events: &[Decoded], batch: &mut sled::Batch) -> Result<(), ProjectionError> {
        let mut set = self.working_set();
        set.apply(tree, events)?;
        set.flush(batch);
        Ok(())
    }

    /// Writes the whole model as CSV (header line first).
    fn export_csv(&self, tree: &sled::Tree, out: &mut dyn Write) -> Result<(), ProjectionError>;
}

/// The records of a model that `apply` has read or changed, held in memory: a
/// write-back cache in front of the model's tree. Records it does not hold are read
/// from the tree; changed records reach the tree only through [`WorkingSet::flush`],
/// which the runtime applies in one atomic write with the checkpoint of the last event
/// applied. So a set may live across several batches of events (a rebuild keeps one
/// for its whole run and flushes every `rebuild_batch_events`): the tree then lags the
/// set, never the other way round, and a crash loses only unflushed work, which the
/// projection re-derives from its checkpoint. Nobody else may write the tree while a
/// set is alive.
///
/// A set reports an estimate of the memory it holds ([`WorkingSet::bytes`]); the
/// runtime keeps it within the projection's share of the read side's budget by
/// flushing and then forgetting clean records ([`WorkingSet::evict`]). Whatever it
/// holds or forgets, the records it stores are the same: they depend on the events
/// only, never on what happened to be in memory.
pub trait WorkingSet: Send {
    /// Applies `events` (in log order, each after every event applied before).
    fn apply(&mut self, tree: &sled::Tree, events: &[Decoded]) -> Result<(), ProjectionError>;

    /// Adds every record changed since the last flush to `batch`; they count as
    /// unchanged afterwards.
    fn flush(&mut self, batch: &mut sled::Batch);

    /// Estimated bytes of memory the records held take (values, keys and the
    /// collections' own overhead), kept up to date as records are read, changed and
    /// forgotten.
    fn bytes(&self) -> usize;

    /// Forgets the records not changed since the last flush (they are in the tree).
    /// A set that knows the whole tree ([`assume_empty_tree`](WorkingSet::assume_empty_tree))
    /// may keep the keys of what it forgot, so that it still knows which records exist
    /// without looking in the tree; [`bytes`](WorkingSet::bytes) counts them.
    fn evict(&mut self);

    /// Forgets which records the tree holds, too: from now on every record the set does
    /// not hold is looked up in the tree. For a set whose kept keys alone are past its
    /// budget.
    fn forget_tree(&mut self);

    /// Declares that the tree holds nothing yet (a rebuild's new tree): a record the set
    /// does not hold (or did not forget, see [`evict`](WorkingSet::evict)) is absent,
    /// and is not looked up in the tree, until [`forget_tree`](WorkingSet::forget_tree).
    fn assume_empty_tree(&mut self);
}

/// Bytes the allocator adds to each heap block it hands out (its header and rounding),
/// in the estimates of [`WorkingSet::bytes`].
pub(crate) const ALLOCATION_OVERHEAD_BYTES: usize = 16;

/// Estimated bytes of a heap block of `len` bytes (none when `len` is 0).
pub(crate) const fn heap_block(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + ALLOCATION_OVERHEAD_BYTES
    }
}

/// Estimated heap bytes of a string (its buffer).
pub(crate) fn string_heap(s: &str) -> usize {
    heap_block(s.len())
}

/// A value stored in a projection tree.
pub(crate) trait Record: Sized {
    fn decode(bytes: &[u8]) -> Option<Self>;
    fn encode(&self) -> Vec<u8>;

    /// Estimated bytes the value owns on the heap (beyond `size_of::<Self>()`), for
    /// [`WorkingSet::bytes`]. Fixed-size records own none.
    fn heap_bytes(&self) -> usize {
        0
    }
}

struct Entry<V> {
    value: Option<V>,
    dirty: bool,
    /// Estimated bytes of this entry (see [`Stage::entry_bytes`]).
    bytes: usize,
}

/// Records of one key space, read through from the tree once and written back on
/// [`Stage::flush`] (so a record touched by 50 events is parsed and encoded once per
/// flush, and not read again while it is held).
pub(crate) struct Stage<V: Record> {
    projection: ProjectionName,
    entries: HashMap<Vec<u8>, Entry<V>>,
    /// Keys changed since the last flush.
    dirty: Vec<Vec<u8>>,
    /// Every record of the tree is held (see [`WorkingSet::assume_empty_tree`]).
    complete: bool,
    /// Estimated bytes of every entry held (sum of their `bytes`).
    bytes: usize,
}

/// A record of a [`Stage`] being changed: dereferences to it (`None` if absent), and
/// brings the stage's estimate of its bytes up to date when dropped.
pub(crate) struct StagedMut<'a, V: Record> {
    entry: &'a mut Entry<V>,
    total: &'a mut usize,
    key_len: usize,
}

impl<V: Record> std::ops::Deref for StagedMut<'_, V> {
    type Target = Option<V>;
    fn deref(&self) -> &Option<V> {
        &self.entry.value
    }
}

impl<V: Record> std::ops::DerefMut for StagedMut<'_, V> {
    fn deref_mut(&mut self) -> &mut Option<V> {
        &mut self.entry.value
    }
}

impl<V: Record> Drop for StagedMut<'_, V> {
    fn drop(&mut self) {
        let after = Stage::entry_bytes(self.key_len, &self.entry.value);
        *self.total = (*self.total - self.entry.bytes) + after;
        self.entry.bytes = after;
    }
}

impl<V: Record> Stage<V> {
    pub(crate) fn new(projection: ProjectionName) -> Self {
        Stage { projection, entries: HashMap::new(), dirty: Vec::new(), complete: false, bytes: 0 }
    }

    /// Estimated bytes of one entry: its slot in the hash table (counted twice: the
    /// table is between half and seven eighths full), the key's buffer, the value's heap
    /// and the key's copy in the list of changed keys (counted always, for simplicity).
    fn entry_bytes(key_len: usize, value: &Option<V>) -> usize {
        2 * (std::mem::size_of::<(Vec<u8>, Entry<V>)>() + 1)
            + 2 * heap_block(key_len)
            + std::mem::size_of::<Vec<u8>>()
            + value.as_ref().map_or(0, Record::heap_bytes)
    }

    /// Reads the record of `key` from the tree unless it is held.
    fn load(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<(), ProjectionError> {
        if !self.entries.contains_key(key) {
            let stored = if self.complete { None } else { tree.get(key)? };
            let value = match stored {
                None => None,
                Some(bytes) => Some(V::decode(&bytes).ok_or_else(|| ProjectionError::Corrupt {
                    projection: self.projection.as_str(),
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail: "value does not parse".into(),
                })?),
            };
            let bytes = Self::entry_bytes(key.len(), &value);
            self.bytes += bytes;
            self.entries.insert(key.to_vec(), Entry { value, dirty: false, bytes });
        }
        Ok(())
    }

    fn vanished(projection: ProjectionName) -> ProjectionError {
        ProjectionError::Invariant {
            projection: projection.as_str(),
            position: 0,
            detail: "staged entry vanished".into(),
        }
    }

    pub(crate) fn get(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<Option<&V>, ProjectionError> {
        self.load(tree, key)?;
        let projection = self.projection;
        Ok(self.entries.get(key).ok_or_else(|| Self::vanished(projection))?.value.as_ref())
    }

    /// The record for writing (marked changed); `None` inside if absent.
    pub(crate) fn get_mut(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<StagedMut<'_, V>, ProjectionError> {
        self.load(tree, key)?;
        let projection = self.projection;
        let Stage { entries, dirty, bytes, .. } = self;
        let entry = entries.get_mut(key).ok_or_else(|| Self::vanished(projection))?;
        if !entry.dirty {
            entry.dirty = true;
            dirty.push(key.to_vec());
        }
        Ok(StagedMut { entry, total: bytes, key_len: key.len() })
    }

    /// Replaces the record without reading the tree.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: V) {
        let value = Some(value);
        let bytes = Self::entry_bytes(key.len(), &value);
        self.bytes += bytes;
        let previous = self.entries.insert(key.clone(), Entry { value, dirty: true, bytes });
        if let Some(previous) = &previous {
            self.bytes -= previous.bytes;
        }
        if !previous.is_some_and(|e| e.dirty) {
            self.dirty.push(key);
        }
    }

    /// Adds the records changed since the last flush to `batch`.
    pub(crate) fn flush(&mut self, batch: &mut sled::Batch) {
        for key in self.dirty.drain(..) {
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            entry.dirty = false;
            match &entry.value {
                Some(value) => batch.insert(key, value.encode()),
                None => batch.remove(key),
            }
        }
    }

    /// See [`WorkingSet::bytes`].
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// See [`WorkingSet::assume_empty_tree`].
    pub(crate) fn assume_empty_tree(&mut self) {
        self.complete = true;
    }

    /// See [`WorkingSet::forget_tree`] (done by `evict` already: a stage keeps no keys).
    pub(crate) fn forget_tree(&mut self) {
        self.complete = false;
    }

    /// Forgets the records not changed since the last flush, and that it knew the whole
    /// tree (the keys of a stage's records are few and rarely new: daily rows,
    /// balances, journal chunks).
    pub(crate) fn evict(&mut self) {
        self.complete = false;
        if self.dirty.is_empty() {
            self.entries = HashMap::new();
            self.bytes = 0;
        } else {
            let mut kept = 0;
            self.entries.retain(|_, e| {
                kept += if e.dirty { e.bytes } else { 0 };
                e.dirty
            });
            self.entries.shrink_to_fit();
            self.bytes = kept;
        }
        self.dirty.shrink_to_fit();
    }
}

/// Values stored as JSON (summaries, journal entries): readable with any sled tool.
/// The optional closure estimates the value's heap bytes ([`Record::heap_bytes`]).
macro_rules! json_record {
    ($t:ty) => {
        $crate::model::json_record!($t, |_value| 0);
    };
    ($t:ty, |$value:ident| $heap:expr) => {
        impl $crate::model::Record for $t {
            fn decode(bytes: &[u8]) -> Option<Self> {
                serde_json::from_slice(bytes).ok()
            }
            fn encode(&self) -> Vec<u8> {
                // Serializing plain structs of strings and integers cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }
            fn heap_bytes(&self) -> usize {
                let $value = self;
                $heap
            }
        }
    };
}
pub(crate) use json_record;

#[cfg(test)]
mod tests {
    use super::*;

    /// A record that owns a heap buffer, so changes move the estimate.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Text(String);

    impl Record for Text {
        fn decode(bytes: &[u8]) -> Option<Self> {
            String::from_utf8(bytes.to_vec()).ok().map(Text)
        }
        fn encode(&self) -> Vec<u8> {
            self.0.as_bytes().to_vec()
        }
        fn heap_bytes(&self) -> usize {
            string_heap(&self.0)
        }
    }

    /// The estimate computed afresh from every entry held.
    fn recount(stage: &Stage<Text>) -> usize {
        stage.entries.iter().map(|(key, entry)| Stage::<Text>::entry_bytes(key.len(), &entry.value)).sum()
    }

    #[test]
    fn the_running_estimate_follows_reads_changes_and_evictions() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        tree.insert(b"stored", b"from the tree").unwrap();
        let mut stage = Stage::<Text>::new(ProjectionName::Ledger);
        assert_eq!(stage.bytes(), 0);

        assert_eq!(stage.get(&tree, b"stored").unwrap(), Some(&Text("from the tree".into())));
        assert_eq!(stage.get(&tree, b"absent").unwrap(), None);
        assert_eq!(stage.bytes(), recount(&stage));
        let read = stage.bytes();
        stage
            .get_mut(&tree, b"new")
            .unwrap()
            .get_or_insert_with(|| Text(String::new()))
            .0
            .push_str("grown by a change");
        assert_eq!(stage.bytes(), recount(&stage));
        assert!(stage.bytes() > read + "grown by a change".len());
        stage.put(b"stored".to_vec(), Text("replaced".into()));
        assert_eq!(stage.bytes(), recount(&stage));

        let mut batch = sled::Batch::default();
        stage.flush(&mut batch);
        tree.apply_batch(batch).unwrap();
        assert_eq!(stage.bytes(), recount(&stage), "a flush changes nothing held");
        stage.evict();
        assert_eq!((stage.bytes(), stage.entries.len()), (0, 0), "everything was clean");

        // Forgotten records are read back from the tree, as they were changed.
        assert_eq!(stage.get(&tree, b"new").unwrap(), Some(&Text("grown by a change".into())));
        assert_eq!(stage.get(&tree, b"stored").unwrap(), Some(&Text("replaced".into())));
        assert_eq!(stage.bytes(), recount(&stage));

        // A changed record survives an eviction (it is not in the tree yet).
        stage.get_mut(&tree, b"new").unwrap().get_or_insert_with(|| Text(String::new())).0.push('!');
        stage.evict();
        assert_eq!(stage.entries.len(), 1);
        assert_eq!(stage.bytes(), recount(&stage));
    }
}
