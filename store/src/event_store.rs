//! The `EventStore` trait every backend implements, and its subscription type.

use std::collections::VecDeque;
use std::fmt;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::types::{AppendResult, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamVersion};

/// Events a subscription reads from the log per catch-up step.
pub const SUBSCRIPTION_READ_BATCH: usize = 1_024;

/// The event log. Implemented by the embedded backend and, later, PostgreSQL and
/// EventStoreDB; the `contract` suite (feature `testkit`) holds every implementation to
/// the same behaviour.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream_id` if the stream's last version satisfies `expected`.
    /// Acknowledged only once durable. If `events[0].metadata.idempotency_key` was carried
    /// by an earlier append, fails with `DuplicateIdempotencyKey` holding that append's result.
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Up to `max` events of the stream with version `>= from_version`, in version order.
    /// An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `max` events with position `>= from_position`, in position order and without
    /// gaps. May return fewer than `max` only at the head or when a backend-specific byte
    /// bound is reached; an empty result means `from_position` is past the head.
    async fn read_all(&self, from_position: Position, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Every event with position `>= from_position`: first those already stored, then live
    /// ones as they are acknowledged; in order, without gaps or repeats.
    async fn subscribe(&self, from_position: Position) -> Result<Subscription, StoreError>;

    /// Position of the last acknowledged event (0 if the log is empty).
    async fn head(&self) -> Result<Position, StoreError>;

    /// Last version of the stream (0 if it has no events).
    async fn stream_version(&self, stream_id: &str) -> Result<StreamVersion, StoreError>;

    /// The append that carried this idempotency key, if any.
    async fn find_idempotent(&self, key: &str) -> Result<Option<AppendResult>, StoreError>;

    /// Recomputes the hash chain over positions `from..=to` (`to = None`: up to the head).
    /// Damage is reported in the result; `Err` means verification itself could not run.
    async fn verify(&self, from: Position, to: Option<Position>) -> Result<VerifyReport, StoreError>;

    /// Stops accepting appends, waits for acknowledged work to settle and releases the
    /// backend's resources (files, locks, connections). Later calls fail with `Closed`.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Result of [`EventStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events that passed.
    pub checked: u64,
    /// Hash of the last event that passed: an operator can record it and compare later,
    /// which also catches a rewrite of the whole chain.
    pub head_hash: [u8; 32],
    /// The first position that failed, and why.
    pub first_bad: Option<(Position, String)>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }

    pub fn head_hash_hex(&self) -> String {
        hex::encode(self.head_hash)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checked {} events, head hash {}", self.checked, self.head_hash_hex())?;
        match &self.first_bad {
            None => write!(f, ", chain intact"),
            Some((position, reason)) => write!(f, ", FIRST BAD POSITION {position}: {reason}"),
        }
    }
}

/// What a backend plugs into a [`Subscription`].
#[async_trait]
pub trait SubscriptionSource: Send {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError>;
}

/// A catch-up-then-live feed of the log, returned by [`EventStore::subscribe`].
pub struct Subscription {
    source: Box<dyn SubscriptionSource>,
}

impl Subscription {
    pub fn new(source: impl SubscriptionSource + 'static) -> Self {
        Subscription { source: Box::new(source) }
    }

    /// The next event in position order. Waits while the subscriber is at the head.
    /// Fails with `Closed` once the store is closed and every stored event was delivered.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        self.source.next().await
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Reads the log forward; what [`CatchUp`] needs from a backend.
#[async_trait]
pub trait LogReader: Send + Sync + 'static {
    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;
}

/// A subscription for any backend that can read the log forward and publish its head
/// position on a `watch` channel. Delivery is by position, so a subscriber can never
/// skip or repeat an event, however slow it is: it only ever asks for "the next
/// position I have not seen" and waits for the head to pass it.
pub struct CatchUp<R> {
    reader: R,
    head: watch::Receiver<Position>,
    next_position: Position,
    buffer: VecDeque<RecordedEvent>,
}

impl<R: LogReader> CatchUp<R> {
    pub fn new(reader: R, head: watch::Receiver<Position>, from_position: Position) -> Self {
        CatchUp { reader, head, next_position: from_position.max(1), buffer: VecDeque::new() }
    }
}

#[async_trait]
impl<R: LogReader> SubscriptionSource for CatchUp<R> {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            let head = *self.head.borrow_and_update();
            if head >= self.next_position {
                let events = self.reader.read_all(self.next_position, SUBSCRIPTION_READ_BATCH).await?;
                if events.is_empty() {
                    return Err(StoreError::Corrupt {
                        position: Some(self.next_position),
                        detail: format!("head is {head} but position {} reads as missing", self.next_position),
                    });
                }
                for event in events {
                    if event.position != self.next_position {
                        return Err(StoreError::Corrupt {
                            position: Some(self.next_position),
                            detail: format!(
                                "subscription expected position {}, read {}",
                                self.next_position, event.position
                            ),
                        });
                    }
                    self.next_position += 1;
                    self.buffer.push_back(event);
                }
                continue;
            }
            if self.head.changed().await.is_err() && *self.head.borrow() < self.next_position {
                return Err(StoreError::Closed);
            }
        }
    }
}
