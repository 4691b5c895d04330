//! How long the mock takes to answer.

use std::time::Duration;

use serde::Deserialize;

/// How long the mock takes to answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencyModel {
    /// Always the same.
    Fixed {
        /// Milliseconds.
        millis: u64,
    },
    /// Uniform between two bounds.
    Uniform {
        /// Lower bound, milliseconds.
        min_millis: u64,
        /// Upper bound, milliseconds.
        max_millis: u64,
    },
    /// Log-normal: most answers near the median, a long tail.
    LogNormal {
        /// Median, milliseconds.
        median_millis: f64,
        /// Shape (0.5 gives p99 ≈ 3.2 × median).
        sigma: f64,
    },
}

impl LatencyModel {
    /// Refuses a model that cannot be sampled (bounds the wrong way round,
    /// negative or non-finite parameters).
    pub fn check(&self) -> Result<(), String> {
        match *self {
            LatencyModel::Fixed { .. } => Ok(()),
            LatencyModel::Uniform {
                min_millis,
                max_millis,
            } if min_millis > max_millis => Err(format!(
                "`min_millis` ({min_millis}) must not be above `max_millis` ({max_millis})"
            )),
            LatencyModel::Uniform { .. } => Ok(()),
            LatencyModel::LogNormal {
                median_millis,
                sigma,
            } => {
                if !(median_millis.is_finite() && median_millis >= 0.0) {
                    return Err(format!(
                        "`median_millis` must be a number of at least 0 (got {median_millis})"
                    ));
                }
                if !(sigma.is_finite() && sigma >= 0.0) {
                    return Err(format!(
                        "`sigma` must be a number of at least 0 (got {sigma})"
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Default for LatencyModel {
    fn default() -> LatencyModel {
        LatencyModel::Fixed { millis: 0 }
    }
}

impl LatencyModel {
    /// The latency for two uniform draws in [0, 1).
    pub fn sample(&self, u1: f64, u2: f64) -> Duration {
        match *self {
            LatencyModel::Fixed { millis } => Duration::from_millis(millis),
            LatencyModel::Uniform {
                min_millis,
                max_millis,
            } => {
                let span = max_millis.saturating_sub(min_millis) as f64;
                Duration::from_micros(((min_millis as f64 + span * u1) * 1000.0) as u64)
            }
            LatencyModel::LogNormal {
                median_millis,
                sigma,
            } => {
                // Box-Muller: a standard normal from two uniforms.
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let ms = median_millis * (sigma * z).exp();
                Duration::from_micros((ms.clamp(0.0, 600_000.0) * 1000.0) as u64)
            }
        }
    }
}
