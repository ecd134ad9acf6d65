//! Load a stream, decide, append with the expected version; retry on
//! conflict by deciding again on fresh state.
//!
//! # The state cache
//!
//! A payment is written several times within seconds (initiated, authorized,
//! captured, refunded), so the bus keeps the state it folded after each of its
//! own appends ([`STATE_CACHE_STREAMS`] streams in each of two generations; a
//! stream not written for two generations is read from the log again). Only
//! [`CommandBus::execute`] uses it, and a cached state is only ever a true state
//! at some version: the append's expected version checks it, and a conflict
//! drops the entry and decides again on the log's state. Plain reads
//! ([`CommandBus::load`]) always read the log. [`CommandBus::create`] writes a
//! stream whose id was just minted without reading it first (the store still
//! checks that it does not exist).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paystream_domain::{Aggregate, Context, DomainEvent};
use paystream_store::{
    Actor, AppendResult, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreError, StreamVersion,
};
use uuid::Uuid;

use crate::error::CommandError;

/// Attempts per command when another writer changed the stream meanwhile.
pub const MAX_CONFLICT_ATTEMPTS: u32 = 5;
/// Counter (label `category`, the stream category): appends refused because another
/// writer changed the stream meanwhile. [`CommandBus::execute`] decides again on fresh
/// state, at most [`MAX_CONFLICT_ATTEMPTS`] times in all, then fails with
/// [`CommandError::Conflict`]; [`CommandBus::create`] fails at once.
pub const CONFLICT_RETRIES_TOTAL: &str = "paystream_command_conflict_retries_total";
/// Events read per call while loading a stream.
pub const STREAM_READ_BATCH: usize = 1_000;
/// Streams in each of the state cache's two generations (see the module docs):
/// at most twice this many states in memory, a few hundred bytes to a few KiB each.
pub const STATE_CACHE_STREAMS: usize = 2_048;

pub use paystream_domain::aggregate::stream_id;

/// Who asked, under which request, with which idempotency key.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub correlation_id: Uuid,
    pub actor: Option<Actor>,
    /// Scoped by the key's owner (`mer_...:<key>`); only the request's first
    /// append carries it.
    pub idempotency_key: Option<String>,
    /// Hex SHA-256 of method, path and body.
    pub request_fingerprint: Option<String>,
}

impl RequestMeta {
    pub fn new(correlation_id: Uuid, actor: Option<Actor>) -> RequestMeta {
        RequestMeta { correlation_id, actor, idempotency_key: None, request_fingerprint: None }
    }

    /// The metadata for a later append of the same request.
    pub fn followup(&self) -> RequestMeta {
        RequestMeta { idempotency_key: None, ..self.clone() }
    }

    fn metadata(&self, first_of_append: bool) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id),
            causation_id: None,
            idempotency_key: if first_of_append { self.idempotency_key.clone() } else { None },
            request_fingerprint: self.request_fingerprint.clone(),
            actor: self.actor.clone(),
        }
    }
}

/// A stream's state and the version it was folded from.
#[derive(Debug, Clone)]
pub struct Loaded<A: Aggregate> {
    pub state: A::State,
    pub version: StreamVersion,
    /// Global position of the stream's last event (0 if empty).
    pub position: u64,
}

/// What a command did: the new state and the events with their positions.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    pub state: A::State,
    pub events: Vec<(A::Event, u64)>,
    /// Position of the last event written (or, for a replay, of the last
    /// event the original request wrote).
    pub position: u64,
}

/// What the earlier request with the same idempotency key wrote.
#[derive(Debug, Clone)]
pub struct Replay {
    pub stream_id: String,
    pub correlation_id: Uuid,
}

pub fn encode<E: DomainEvent>(event: &E, metadata: Metadata) -> Result<NewEvent, CommandError> {
    let payload = serde_json::to_vec(event)
        .map_err(|e| CommandError::Decode { position: 0, detail: format!("encode {}: {e}", event.event_type()) })?;
    Ok(NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_string(),
        schema_version: event.schema_version(),
        metadata,
        payload,
    })
}

pub fn decode<E: DomainEvent>(recorded: &RecordedEvent) -> Result<E, CommandError> {
    serde_json::from_slice(&recorded.payload)
        .map_err(|e| CommandError::Decode { position: recorded.position, detail: e.to_string() })
}

/// A state the bus folded after its own append.
struct Cached {
    version: StreamVersion,
    state: Box<dyn Any + Send + Sync>,
}

/// Two generations of [`Cached`] states by stream id: when the current one is
/// full it becomes the previous one and the oldest is dropped.
#[derive(Default)]
struct StateCache {
    current: HashMap<String, Cached>,
    previous: HashMap<String, Cached>,
}

impl StateCache {
    fn get<S: Clone + 'static>(&self, stream: &str) -> Option<(S, StreamVersion)> {
        let cached = self.current.get(stream).or_else(|| self.previous.get(stream))?;
        Some((cached.state.downcast_ref::<S>()?.clone(), cached.version))
    }

    /// Keeps `state` unless a later version of the stream is already kept.
    fn put<S: Send + Sync + 'static>(&mut self, stream: &str, version: StreamVersion, state: S) {
        let newest = self.current.get(stream).or_else(|| self.previous.get(stream)).map_or(0, |c| c.version);
        if version <= newest {
            return;
        }
        self.previous.remove(stream);
        if self.current.len() >= STATE_CACHE_STREAMS && !self.current.contains_key(stream) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(stream.to_string(), Cached { version, state: Box::new(state) });
    }

    fn forget(&mut self, stream: &str) {
        self.current.remove(stream);
        self.previous.remove(stream);
    }
}

/// The write side's entry point.
pub struct CommandBus {
    store: Arc<dyn EventStore>,
    context: Context,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    states: Mutex<StateCache>,
}

impl CommandBus {
    pub fn new(store: Arc<dyn EventStore>, context: Context) -> CommandBus {
        CommandBus { store, context, in_flight: Mutex::new(HashMap::new()), states: Mutex::default() }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, StateCache> {
        self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached<A: Aggregate>(&self, stream: &str) -> Option<(A::State, StreamVersion)>
    where
        A::State: 'static,
    {
        self.states().get::<A::State>(stream)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Every event of a stream, in version order.
    pub async fn read_stream(&self, stream_id: &str) -> Result<Vec<RecordedEvent>, CommandError> {
        let mut events = Vec::new();
        loop {
            let batch = self.store.read_stream(stream_id, events.len() as u64 + 1, STREAM_READ_BATCH).await?;
            let done = batch.len() < STREAM_READ_BATCH;
            events.extend(batch);
            if done {
                return Ok(events);
            }
        }
    }

    pub async fn load<A: Aggregate>(&self, id: &Uuid) -> Result<Loaded<A>, CommandError> {
        let recorded = self.read_stream(&stream_id::<A>(id)).await?;
        let mut state = A::State::default();
        for event in &recorded {
            state = A::evolve(state, &decode::<A::Event>(event)?);
        }
        let position = recorded.last().map_or(0, |e| e.position);
        Ok(Loaded { state, version: recorded.len() as u64, position })
    }

    /// Decides `command(state)` on the stream's current state and appends
    /// the result with `Exact(version)`. On a conflict it reloads and decides
    /// again, at most [`MAX_CONFLICT_ATTEMPTS`] times. `command` gathers facts
    /// from the state (it may be called more than once).
    pub async fn execute<A: Aggregate>(
        &self,
        id: &Uuid,
        meta: &RequestMeta,
        mut command: impl FnMut(&A::State) -> Result<A::Command, CommandError>,
    ) -> Result<Executed<A>, CommandError>
    where
        A::State: Send + Sync + 'static,
    {
        let stream = stream_id::<A>(id);
        for _ in 0..MAX_CONFLICT_ATTEMPTS {
            let (state, version) = match self.cached::<A>(&stream) {
                Some(cached) => cached,
                None => {
                    let loaded = self.load::<A>(id).await?;
                    (loaded.state, loaded.version)
                }
            };
            let command = command(&state)?;
            if let Some(executed) = self.decide_and_append::<A>(&stream, state, version, command, meta).await? {
                return Ok(executed);
            }
        }
        Err(CommandError::Conflict { stream_id: stream, attempts: MAX_CONFLICT_ATTEMPTS })
    }

    /// Decides `command` on the empty state of a stream whose id was just minted,
    /// without reading the log, and appends expecting no stream: an existing one
    /// (an id minted twice) is a conflict, not retried.
    pub async fn create<A: Aggregate>(
        &self,
        id: &Uuid,
        meta: &RequestMeta,
        command: A::Command,
    ) -> Result<Executed<A>, CommandError>
    where
        A::State: Send + Sync + 'static,
    {
        let stream = stream_id::<A>(id);
        match self.decide_and_append::<A>(&stream, A::State::default(), 0, command, meta).await? {
            Some(executed) => Ok(executed),
            None => Err(CommandError::Conflict { stream_id: stream, attempts: 1 }),
        }
    }

    /// Decides `command` on `state` (the stream at `version`) and appends the events
    /// expecting that version; `None` if the stream has moved on (its cached state
    /// is dropped). Keeps the new state in the state cache.
    async fn decide_and_append<A: Aggregate>(
        &self,
        stream: &str,
        state: A::State,
        version: StreamVersion,
        command: A::Command,
        meta: &RequestMeta,
    ) -> Result<Option<Executed<A>>, CommandError>
    where
        A::State: Send + Sync + 'static,
    {
        let events = A::decide(&state, command, &self.context)?;
        debug_assert!(!events.is_empty(), "decide returned no events and no error");
        let new_events = events
            .iter()
            .enumerate()
            .map(|(i, event)| encode(event, meta.metadata(i == 0)))
            .collect::<Result<Vec<_>, _>>()?;
        let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
        match self.store.append(stream, expected, new_events).await {
            Ok(AppendResult { first_position, last_position, last_version, .. }) => {
                let state = events.iter().fold(state, |s, e| A::evolve(s, e));
                self.states().put(stream, last_version, state.clone());
                let events = events.into_iter().zip(first_position..=last_position).collect();
                Ok(Some(Executed { state, events, position: last_position }))
            }
            Err(StoreError::WrongExpectedVersion { .. }) => {
                self.states().forget(stream);
                metrics::counter!(CONFLICT_RETRIES_TOTAL, "category" => A::STREAM_CATEGORY).increment(1);
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Serialises requests that carry the same idempotency key inside this
    /// process, so a duplicate waits for the first to finish and then
    /// replays its complete response. (Across processes the store's unique
    /// key index still guarantees a single effect.)
    pub async fn idempotency_guard(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Drop locks nobody holds any more, so the map stays bounded.
            in_flight.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(in_flight.entry(key.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    /// The earlier request that used `key`: `Ok(None)` if none; an error if
    /// it came with a fingerprint other than those of `fingerprints` (the
    /// request's current fingerprint, and any older form of it).
    pub async fn find_replay(&self, key: &str, fingerprints: &[&str]) -> Result<Option<Replay>, CommandError> {
        let Some(existing) = self.store.find_idempotent(key).await? else {
            return Ok(None);
        };
        let first = self.store.read_stream(&existing.stream_id, existing.first_version, 1).await?;
        let Some(first) = first.into_iter().next() else {
            return Err(StoreError::Corrupt {
                position: Some(existing.first_position),
                detail: "idempotency index points at a missing event".into(),
            }
            .into());
        };
        if !first.metadata.request_fingerprint.as_deref().is_some_and(|stored| fingerprints.contains(&stored)) {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let correlation_id = first.metadata.correlation_id.ok_or_else(|| CommandError::Decode {
            position: first.position,
            detail: "idempotent event without correlation id".into(),
        })?;
        Ok(Some(Replay { stream_id: existing.stream_id, correlation_id }))
    }

    /// The stream as the original request left it: folded up to the last
    /// event that request wrote.
    pub async fn replay<A: Aggregate>(&self, replay: &Replay) -> Result<Executed<A>, CommandError> {
        let recorded = self.read_stream(&replay.stream_id).await?;
        let last = recorded.iter().rposition(|e| e.metadata.correlation_id == Some(replay.correlation_id));
        let mut state = A::State::default();
        let mut events = Vec::new();
        let mut position = 0;
        for event in recorded.iter().take(last.map_or(0, |i| i + 1)) {
            let decoded = decode::<A::Event>(event)?;
            state = A::evolve(state, &decoded);
            if event.metadata.correlation_id == Some(replay.correlation_id) {
                events.push((decoded, event.position));
                position = event.position;
            }
        }
        Ok(Executed { state, events, position })
    }
}
