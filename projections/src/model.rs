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

    /// Adds to `batch` every change `events` make to the model stored in `tree`.
    /// `events` are in log order and all after the tree's checkpoint; `tree` still
    /// holds the state before them (the runtime applies the batch, with the new
    /// checkpoint, in one atomic write). Deterministic: the same tree and events give
    /// the same batch, so a rebuild gives byte-identical trees.
    fn apply(&self, tree: &sled::Tree, events: &[Decoded], batch: &mut sled::Batch) -> Result<(), ProjectionError>;

    /// Writes the whole model as CSV (header line first).
    fn export_csv(&self, tree: &sled::Tree, out: &mut dyn Write) -> Result<(), ProjectionError>;
}

/// A value stored in a projection tree.
pub(crate) trait Record: Sized {
    fn decode(bytes: &[u8]) -> Option<Self>;
    fn encode(&self) -> Vec<u8>;
}

/// Records of one key space, read through from the tree once per batch and written
/// back once at its end (so a record touched by 50 events of a batch is parsed and
/// encoded once).
pub(crate) struct Stage<V: Record> {
    projection: ProjectionName,
    entries: HashMap<Vec<u8>, (Option<V>, bool)>,
}

impl<V: Record> Stage<V> {
    pub(crate) fn new(projection: ProjectionName) -> Self {
        Stage { projection, entries: HashMap::new() }
    }

    fn load(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<&mut (Option<V>, bool), ProjectionError> {
        if !self.entries.contains_key(key) {
            let value = match tree.get(key)? {
                None => None,
                Some(bytes) => Some(V::decode(&bytes).ok_or_else(|| ProjectionError::Corrupt {
                    projection: self.projection.as_str(),
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail: "value does not parse".into(),
                })?),
            };
            self.entries.insert(key.to_vec(), (value, false));
        }
        match self.entries.get_mut(key) {
            Some(entry) => Ok(entry),
            None => Err(ProjectionError::Invariant {
                projection: self.projection.as_str(),
                position: 0,
                detail: "staged entry vanished".into(),
            }),
        }
    }

    pub(crate) fn get(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<Option<&V>, ProjectionError> {
        Ok(self.load(tree, key)?.0.as_ref())
    }

    /// The record for writing (marked dirty); `None` inside if absent.
    pub(crate) fn get_mut(&mut self, tree: &sled::Tree, key: &[u8]) -> Result<&mut Option<V>, ProjectionError> {
        let entry = self.load(tree, key)?;
        entry.1 = true;
        Ok(&mut entry.0)
    }

    /// Replaces the record without reading the tree.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: V) {
        self.entries.insert(key, (Some(value), true));
    }

    pub(crate) fn write_to(self, batch: &mut sled::Batch) {
        for (key, (value, dirty)) in self.entries {
            match (value, dirty) {
                (Some(value), true) => batch.insert(key, value.encode()),
                (None, true) => batch.remove(key),
                (_, false) => {}
            }
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
