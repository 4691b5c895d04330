//! offsession: a self-hosted engine for off-session (merchant-initiated) payments.
//!
//! This facade re-exports the workspace crates so that an embedding application
//! depends on one crate:
//! - [`core`]: payments, money, statuses, validation, and the traits;
//! - [`orchestrator`]: the [`Engine`];
//! - [`retry`]: retry strategies and the decline table;
//! - [`store`]: store implementations;
//! - [`mock`]: the mock processor.
#![forbid(unsafe_code)]

pub use offsession_core as core;
pub use offsession_mock as mock;
pub use offsession_orchestrator as orchestrator;
pub use offsession_orchestrator::{Engine, EngineConfig};
pub use offsession_retry as retry;
pub use offsession_store as store;
