//! Given / when / then for aggregates:
//!
//! ```ignore
//! given::<PaymentAggregate>([initiated(), authorized()])
//!     .when(capture(500))
//!     .then([captured(500)]);
//! ```

use crate::aggregate::{Aggregate, Context};
use crate::error::DomainError;

/// The fingerprint key tests use; never a production key.
pub const TEST_FINGERPRINT_KEY: &[u8] = b"paystream-test-fingerprint-key";

pub fn test_context() -> Context {
    Context::new(TEST_FINGERPRINT_KEY.to_vec())
}

/// Events already in the stream.
pub struct Given<A: Aggregate> {
    state: A::State,
    context: Context,
}

pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    Given { state: A::fold(&events), context: test_context() }
}

impl<A: Aggregate> Given<A> {
    pub fn with_context(self, context: Context) -> Given<A> {
        Given { context, ..self }
    }

    pub fn when(self, command: A::Command) -> Then<A> {
        let result = A::decide(&self.state, command, &self.context);
        Then { state: self.state, result }
    }
}

/// What `decide` answered.
pub struct Then<A: Aggregate> {
    state: A::State,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the exact events and returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A::State {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "decide produced other events than expected");
                events.iter().fold(self.state, |state, event| A::evolve(state, event))
            }
            Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
        }
    }

    /// Asserts a rejection with this code and returns the error.
    #[track_caller]
    pub fn then_error(self, code: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected error {code}, got events {events:?}"),
            Err(error) => {
                assert_eq!(error.code(), code, "wrong error: {error:?}");
                error
            }
        }
    }

    /// The events, for assertions that need to look inside them.
    #[track_caller]
    pub fn events(self) -> Vec<A::Event> {
        match self.result {
            Ok(events) => events,
            Err(error) => panic!("expected events, got error {error:?}"),
        }
    }
}
