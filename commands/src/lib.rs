//! The write side: load a stream, decide, append with the expected version.
