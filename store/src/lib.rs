//! The event log (work in progress).
