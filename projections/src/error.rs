//! The read side's one error enum, and the read-your-writes timeout.

use paystream_store::{Position, StoreError};

use crate::model::ProjectionName;

/// Everything a projection operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("read model storage (sled): {0}")]
    Sled(#[from] sled::Error),
    /// An event of a known stream category that does not decode: the log holds an
    /// event this version does not understand. The projection stops before it.
    #[error("cannot decode the event at position {position}: {detail}")]
    Decode { position: Position, detail: String },
    /// A stored read-model value that does not parse (damaged or from another layout).
    #[error("read model {projection} holds an unreadable value under {key}: {detail}")]
    Corrupt { projection: &'static str, key: String, detail: String },
    /// A read-model invariant was broken (an unbalanced journal entry, an overflow):
    /// a bug, reported instead of stored.
    #[error("read model {projection} invariant broken at position {position}: {detail}")]
    Invariant { projection: &'static str, position: Position, detail: String },
    #[error("invalid query: {param}: {reason}")]
    InvalidQuery { param: &'static str, reason: String },
    #[error("projection {0} is already rebuilding")]
    AlreadyRebuilding(&'static str),
    #[error("the projector runtime stopped")]
    Stopped,
    /// The projection is being built from position 0 (a new projections database, or
    /// a layout change): until it reaches the log's head as it was at start it holds
    /// only part of the history, so it answers no query. The API answers
    /// `503 projection_lagging`.
    #[error("projection {projection} is being built from the log (at position {checkpoint})")]
    Building { projection: &'static str, checkpoint: Position },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ProjectionError {
    pub(crate) fn invalid(param: &'static str, reason: impl Into<String>) -> ProjectionError {
        ProjectionError::InvalidQuery { param, reason: reason.into() }
    }
}

/// `wait_for` gave up: the projection had not applied `position` within the bound.
/// The API answers `503 projection_lagging`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("projection {projection} is at position {checkpoint}, waited for {position}")]
pub struct Lagging {
    pub projection: ProjectionName,
    pub position: Position,
    pub checkpoint: Position,
}
