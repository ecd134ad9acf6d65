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
pub trait WorkingSet: Send {
    /// Applies `events` (in log order, each after every event applied before).
    fn apply(&mut self, tree: &sled::Tree, events: &[Decoded]) -> Result<(), ProjectionError>;

    /// Adds every record changed since the last flush to `batch`; they count as
    /// unchanged afterwards.
    fn flush(&mut self, batch: &mut sled::Batch);

    /// Records held in memory.
    fn len(&self) -> usize;

    /// Whether no record is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the records not changed since the last flush (they are in the tree).
    fn evict(&mut self);

    /// Declares that the tree holds nothing yet (a rebuild's new tree): until the next
    /// [`evict`](WorkingSet::evict), a record the set does not hold is absent, and is
    /// not looked up in the tree.
    fn assume_empty_tree(&mut self);
}

/// A value stored in a projection tree.
pub(crate) trait Record: Sized {
    fn decode(bytes: &[u8]) -> Option<Self>;
    fn encode(&self) -> Vec<u8>;
}

struct Entry<V> {
    value: Option<V>,
    dirty: bool,
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
}

impl<V: Record> Stage<V> {
    pub(crate) fn new(projection: ProjectionName) -> Self {
        Stage { projection, entries: HashMap::new(), dirty: Vec::new(), complete: false }
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
            self.entries.insert(key.to_vec(), Entry { value, dirty: false });
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
    pub(crate) fn get_mut(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<&mut Option<V>, ProjectionError> {
        self.load(tree, key)?;
        let projection = self.projection;
        let entry = self.entries.get_mut(key).ok_or_else(|| Self::vanished(projection))?;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(key.to_vec());
        }
        Ok(&mut entry.value)
    }

    /// Replaces the record without reading the tree.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: V) {
        let previous = self.entries.insert(key.clone(), Entry { value: Some(value), dirty: true });
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

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// See [`WorkingSet::assume_empty_tree`].
    pub(crate) fn assume_empty_tree(&mut self) {
        self.complete = true;
    }

    /// Forgets the records not changed since the last flush.
    pub(crate) fn evict(&mut self) {
        self.complete = false;
        if self.dirty.is_empty() {
            self.entries.clear();
        } else {
            self.entries.retain(|_, e| e.dirty);
        }
    }
}

/// Values stored as JSON (summaries, journal entries): readable with any sled tool.
macro_rules! json_record {
    ($t:ty) => {
        impl $crate::model::Record for $t {
            fn decode(bytes: &[u8]) -> Option<Self> {
                serde_json::from_slice(bytes).ok()
            }
            fn encode(&self) -> Vec<u8> {
                // Serializing plain structs of strings and integers cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }
        }
    };
}
pub(crate) use json_record;
