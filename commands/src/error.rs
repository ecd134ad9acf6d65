//! The one error enum of the write side: a rule rejected the command, a
//! concurrency conflict outlived the retries, an idempotency key was reused,
//! or the store (or the facts database derived from it) failed.

use paystream_domain::DomainError;
use paystream_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `decide` refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Other writers kept changing the stream; every retry lost the race.
    #[error("the {stream_id} stream kept changing; gave up after {attempts} attempts")]
    Conflict { stream_id: String, attempts: u32 },
    /// The idempotency key was first used with another request.
    #[error("this idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    /// A stored event could not be decoded: a bug or a damaged log.
    #[error("cannot decode event at position {position}: {detail}")]
    Decode { position: u64, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The facts database failed or holds what does not parse (derived data:
    /// the next start rebuilds it from the log).
    #[error("facts: {0}")]
    Facts(String),
}
