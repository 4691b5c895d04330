//! The one error type of the command-line edge: every subcommand returns it, and its
//! message says what was being done and why it failed.

use std::path::{Path, PathBuf};

use offsession_core::ApiError;
use offsession_orchestrator::EngineError;

use crate::config::ConfigError;

/// Why a subcommand stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The configuration could not be loaded, or a value in it is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line flag is out of range.
    #[error("`{flag}`: {message}")]
    Flag {
        /// The flag, e.g. `--payments`.
        flag: &'static str,
        /// The rule it breaks.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    File {
        /// What was being done: `reading`, `writing`, …
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is wrong.
    #[error("`{}`: {message}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the position where known.
        message: String,
    },
    /// The engine (its store or its parts) failed.
    #[error("{action}: {source}")]
    Engine {
        /// What was being done.
        action: &'static str,
        /// The engine's error.
        #[source]
        source: EngineError,
    },
    /// The engine refused a request it made itself (not a line of user input).
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The API error.
        #[source]
        source: ApiError,
    },
    /// Logging, the metrics exporter, a chart or a task failed.
    #[error("{action}: {message}")]
    Setup {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        message: String,
    },
    /// The run ended, but not every payment settled.
    #[error("{0}")]
    Unsettled(String),
}

impl RunnerError {
    /// A file error.
    pub fn file(action: &'static str, path: &Path, source: std::io::Error) -> RunnerError {
        RunnerError::File {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// Wraps an engine error with what was being done.
    pub fn engine(action: &'static str) -> impl FnOnce(EngineError) -> RunnerError {
        move |source| RunnerError::Engine { action, source }
    }

    /// Wraps an API error with what was being done.
    pub fn api(action: &'static str) -> impl FnOnce(ApiError) -> RunnerError {
        move |source| RunnerError::Api { action, source }
    }

    /// Wraps any displayable error with what was being done.
    pub fn setup<E: std::fmt::Display>(action: &'static str) -> impl FnOnce(E) -> RunnerError {
        move |e| RunnerError::Setup {
            action,
            message: e.to_string(),
        }
    }
}

/// An error's message followed by each of its causes (`a: b: c`), so that a store's
/// "taking a connection" says whether the connection was refused, the database is
/// missing or the role unknown.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}
