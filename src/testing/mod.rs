//! Helpers for tests: real servers started from the machine's own binaries, for this
//! crate's unit tests and for integration tests. Not part of the product's interface.

pub mod object_stores;
pub mod postgres;
