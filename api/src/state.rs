//! The one application state every handler shares.

use std::sync::Arc;

use paystream_commands::services::Services;
use paystream_projections::Projections;

#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    pub projections: Projections,
}
