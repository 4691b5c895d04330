//! `Store` implementations for offsession, and [`conformance`]: the test suite every
//! implementation runs, so that the in-memory, SQLite and Postgres stores keep one
//! contract.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod conformance;
pub mod memory;

pub use memory::MemoryStore;
