//! Retry decisions for offsession: the decline classification table, the retry
//! strategies behind the core `RetryPolicy` trait, and the card-network rules guard
//! that wraps every strategy.
//!
//! Why a table and not code: networks and processors revise which codes are final;
//! operators edit `config/declines.toml` without a release.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod calendar;
pub mod declines;
pub mod guard;
pub mod heuristic;
pub mod scheduled;
pub mod smart;

pub use declines::{DeclineTable, NetworkRules};
pub use guard::{GuardCounters, NetworkGuard};
pub use heuristic::{HeuristicConfig, HeuristicPolicy};
pub use scheduled::{NoRetry, ScheduledPolicy, ScheduledPolicyConfig};
pub use smart::{SmartConfig, SmartPolicy, SmartState, StateRefused};

/// Errors building retry components from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryConfigError {
    /// The decline table did not parse.
    #[error("decline table: {0}")]
    DeclineTable(String),
    /// A retry policy is inconsistent.
    #[error("retry policy `{policy}`: {message}")]
    Policy {
        /// Policy name.
        policy: String,
        /// What is wrong.
        message: String,
    },
}
