//! The `paystream` binary's library: the axum HTTP API (`app`), the server
//! (`server`) and the CLI commands.
//!
//! Architecture invariant: handlers are thin. They extract, authorize by
//! role and tenant, call `paystream_commands`, and render; errors become
//! HTTP in one place (`error.rs`).

pub mod app;
pub mod bench_http;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod list;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod read;
pub mod roles;
pub mod server;
pub mod state;
pub mod views;
