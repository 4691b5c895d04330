//! Retry decisions for offsession: the decline classification table, and the retry
//! strategies (`none`, `scheduled`) behind the core `RetryPolicy` trait.
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

pub mod declines;
pub mod duration;
pub mod scheduled;

pub use declines::DeclineTable;
pub use duration::parse_duration;
pub use scheduled::{NoRetry, ScheduledPolicy, ScheduledPolicyConfig};

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
    /// A duration string did not parse.
    #[error("`{0}` is not a duration; use a number and a unit, e.g. `90s`, `30m`, `12h`, `3d`")]
    Duration(String),
}
