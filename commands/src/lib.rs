//! The write side of Paystream: load a stream, decide, append with the
//! expected version, retry on conflict; idempotency; the acquirer connectors;
//! the facts (velocity, daily volume, API keys) commands need from the past.
//!
//! Architecture invariant: this crate holds no business rule. Rules live in
//! `paystream_domain`'s `decide`; here we only gather facts, call the
//! acquirer, and write what `decide` returned.

pub mod acquirer;
pub mod bus;
pub mod error;
pub mod facts;
pub mod services;

pub use acquirer::{Acquirer, AuthorizationRequest, SandboxAcquirer};
pub use bus::{stream_id, CommandBus, Executed, RequestMeta};
pub use error::CommandError;
pub use facts::Facts;
