//! The read side: projector runtime and read models.
