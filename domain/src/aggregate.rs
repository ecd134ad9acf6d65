//! The shape every aggregate has: two pure functions.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::error::DomainError;

/// Configuration the rules need that is not part of any command: the key of
/// the card fingerprint and the authorization lifetime. Immutable.
#[derive(Clone)]
pub struct Context {
    /// HMAC-SHA256 key for card and device fingerprints. Secret; never logged.
    pub fingerprint_key: Vec<u8>,
    /// How long an authorization holds funds before it expires.
    pub authorization_ttl: time::Duration,
}

impl Context {
    /// The default lifetime of an authorization hold.
    pub const DEFAULT_AUTHORIZATION_TTL: time::Duration = time::Duration::days(7);

    pub fn new(fingerprint_key: Vec<u8>) -> Context {
        Context { fingerprint_key, authorization_ttl: Context::DEFAULT_AUTHORIZATION_TTL }
    }
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("fingerprint_key", &"[redacted]")
            .field("authorization_ttl", &self.authorization_ttl)
            .finish()
    }
}

/// The stream id of aggregate `A`'s instance `id`: `<STREAM_CATEGORY>-<uuid>`,
/// e.g. `payment-0190a1b2-...`. The one place stream ids are built.
pub fn stream_id<A: Aggregate>(id: &Uuid) -> String {
    format!("{}-{}", A::STREAM_CATEGORY, id.hyphenated())
}

/// The instance id of `stream_id` if it is a stream of aggregate `A`. The one
/// place stream ids are parsed.
pub fn stream_uuid<A: Aggregate>(stream_id: &str) -> Option<Uuid> {
    let rest = stream_id.strip_prefix(A::STREAM_CATEGORY)?.strip_prefix('-')?;
    Uuid::try_parse(rest).ok()
}

/// An event stored in the log: it names its type and schema version.
pub trait DomainEvent: Clone + Debug + PartialEq + Serialize + DeserializeOwned {
    /// The stable event type name (`PaymentCaptured`); never renamed.
    fn event_type(&self) -> &'static str;
    /// The payload's schema version; bumped only with an upcaster.
    fn schema_version(&self) -> u32 {
        1
    }
}

/// An aggregate: `decide` holds every rule, `evolve` only applies facts.
pub trait Aggregate {
    /// Stream ids are `<STREAM_CATEGORY>-<uuid>`.
    const STREAM_CATEGORY: &'static str;
    type State: Default + Clone + Debug + PartialEq;
    type Command: Debug;
    type Event: DomainEvent;

    fn decide(state: &Self::State, command: Self::Command, context: &Context) -> Result<Vec<Self::Event>, DomainError>;

    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The state of a stream: the fold of its events.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::State::default(), |state, event| Self::evolve(state, event))
    }
}
