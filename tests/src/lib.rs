//! Shared helpers for the black-box tests in tests/tests/: they run the
//! `paystream` binary (built once per test process, see [`server::binary`])
//! on a free port with a temporary data directory and talk HTTP to it.
//!
//! This crate is test support only: a panic is how a check fails, so
//! `unwrap`/`expect` are allowed throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fixtures;
pub mod help;
pub mod http;
pub mod json;
pub mod routes;
pub mod scan;
pub mod scenarios;
pub mod schema;
pub mod server;

pub use http::{Client, Request, Response};
pub use json::{assert_error, assert_json, merge, merged};
pub use server::{Server, ADMIN_KEY};
