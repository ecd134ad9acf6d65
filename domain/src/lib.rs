//! The pure payment model of Paystream: money, ids, payment methods, risk
//! rules and the Merchant and Payment aggregates.
//!
//! Architecture invariant: this crate does no I/O, has no async code and
//! never reads a clock. Time and every outside fact (the acquirer's answer,
//! velocity counts, the merchant's standing) arrive inside commands, so
//! `decide` and `evolve` are pure functions that tests call directly.

pub mod aggregate;
pub mod api_key;
pub mod country;
pub mod error;
pub mod id;
pub mod merchant;
pub mod method;
pub mod money;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod payment;
pub mod risk;
pub mod testing;
pub mod time;

pub use aggregate::{Aggregate, Context, DomainEvent};
pub use error::{DomainError, ErrorKind};
pub use money::{Currency, Money, MoneyError};
