//! The read side of Paystream: the projector runtime and the read models.
//!
//! ```text
//! EventStore ──read_all / subscribe──► reader (decode once) ──► per projection, in parallel:
//!                                                                 apply batch ─► sled Batch
//!                                                                 (changes + checkpoint, atomic)
//! queries ◄── active tree of each projection ◄───────────────────┘
//! ```
//!
//! * [`runtime`]: [`Projections`] (open, start, status, wait_for, rebuild, replay,
//!   queries, CSV export); storage layout, atomicity and rebuild protocol in its docs.
//! * Read models, each a [`ReadModel`] with its query functions and tree layout:
//!   [`dashboard`] (merchant dashboard, balances), [`search`] (payment search),
//!   [`overview`] (platform overview with `group_by`), [`ledger`] (double-entry
//!   journal, posting rules, trial balance).
//! * `bench`: `run_rebuild_bench`; `sim`: realistic histories built with the
//!   domain's `decide` (benchmark and tests); both behind the `testkit` feature.
//!
//! Architecture invariants: projections never append to the log; each read-model
//! change is stored atomically with its checkpoint; a read model is a deterministic
//! function of the log (a rebuild gives byte-identical trees); money is integer minor
//! units with a currency, rates are basis points. This crate depends on `domain` and
//! `store`, never on `commands` or `api`.

/// The rebuild benchmark (feature `testkit`).
#[cfg(feature = "testkit")]
pub mod bench;
mod buckets;
mod codec;
mod counters;
pub mod csv;
pub mod dashboard;
mod decode;
mod error;
mod keys;
pub mod lag;
pub mod ledger;
mod model;
pub mod overview;
pub mod runtime;
pub mod search;
/// Seeded histories (feature `testkit`; this crate's unit tests).
#[cfg(any(test, feature = "testkit"))]
pub mod sim;

pub use counters::{rate_bps, Counters, Derived, METHOD_TYPES};
pub use decode::{decode, Decoded, DomainRecord};
pub use error::{Lagging, ProjectionError};
pub use model::{ProjectionName, ReadModel, UnknownProjection, WorkingSet};
pub use runtime::{
    all_models, open_db, ProjectionState, ProjectionStatus, Projections, ProjectorConfig, RebuildProgress,
    RebuildReport, Running, DEFAULT_BATCH_EVENTS, DEFAULT_CACHE_MIB, DEFAULT_WAIT_TIMEOUT, MIB,
};
