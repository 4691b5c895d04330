//! Runner configuration: a TOML file plus `OFFSESSION_<SECTION>__<KEY>` environment
//! overrides (figment). Unknown keys and bad values are refused at start, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use offsession_mock::LatencyModel;
use offsession_retry::{HeuristicConfig, ScheduledPolicyConfig, SmartConfig};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[engine]`.
    #[serde(default)]
    pub engine: EngineSection,
    /// `[declines]`.
    #[serde(default)]
    pub declines: DeclinesSection,
    /// `[retry_policies.<name>]`.
    #[serde(default)]
    pub retry_policies: BTreeMap<String, ScheduledPolicyConfig>,
    /// `[heuristic]`: the heuristic strategy (debits; `best_available` on a debit).
    #[serde(default)]
    pub heuristic: HeuristicConfig,
    /// `[smart]`: the smart strategy (cards; `best_available` on a card).
    #[serde(default)]
    pub smart: SmartConfig,
    /// `[processor]`: a single processor (or use `[[processors]]`).
    #[serde(default)]
    pub processor: Option<ProcessorConfig>,
    /// `[[processors]]`: several processors, the first is the default primary.
    #[serde(default)]
    pub processors: Vec<ProcessorConfig>,
    /// `[routing]`: rules choosing processors.
    #[serde(default)]
    pub routing: offsession_orchestrator::RoutingConfig,
    /// `[circuit_breaker]`.
    #[serde(default)]
    pub circuit_breaker: BreakerSection,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[run]`.
    #[serde(default)]
    pub run: RunSection,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Live mode (refuses test clocks).
    pub livemode: bool,
    /// Name on leases.
    pub instance_id: String,
    /// Reproducible ids (mock processors only); unset: unique time-ordered ids.
    pub id_seed: Option<u64>,
    /// ACH retries switch.
    pub ach_retries_enabled: bool,
    /// SEPA Debit retries switch.
    pub sepa_debit_retries_enabled: bool,
    /// Policy for `scheduled` and for `best_available` on cards.
    pub default_retry_policy: String,
    /// Claim lease, e.g. `5m`.
    pub lease: String,
    /// Manual-capture hold, e.g. `7d`.
    pub authorization_validity: String,
    /// Waits between replays of a faulted attempt.
    pub replay_backoff: Vec<String>,
    /// Replays of an unsettled attempt before the payment ends.
    pub max_replays: u32,
    /// Replays of one attempt end this long after its first unsettled answer, e.g. `3d`.
    pub replay_deadline: String,
    /// `compartment_id` shown on payments.
    pub compartment_id: String,
    /// Attempts at once.
    pub concurrency: usize,
    /// Claims per store round trip.
    pub claim_batch: usize,
    /// Decline categories after which an orchestrated payment cascades at once.
    pub cascade_categories: Vec<offsession_core::DeclineCategory>,
}

/// `90s` → `"90s"`, `300s` → `"5m"`, `7 days` → `"7d"`: the largest whole unit.
fn duration_text(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

impl Default for EngineSection {
    /// The engine's own defaults (`EngineConfig::default`), written as config values.
    fn default() -> EngineSection {
        let d = offsession_orchestrator::EngineConfig::default();
        EngineSection {
            livemode: d.livemode,
            instance_id: d.instance_id,
            id_seed: d.id_seed,
            ach_retries_enabled: d.ach_retries_enabled,
            sepa_debit_retries_enabled: d.sepa_debit_retries_enabled,
            default_retry_policy: d.default_retry_policy,
            lease: duration_text(d.lease),
            authorization_validity: duration_text(d.authorization_validity),
            replay_backoff: d.replay_backoff.into_iter().map(duration_text).collect(),
            max_replays: d.max_replays,
            replay_deadline: duration_text(d.replay_deadline),
            compartment_id: d.compartment_id,
            concurrency: d.concurrency,
            claim_batch: d.claim_batch,
            cascade_categories: d.cascade_categories,
        }
    }
}

/// `[circuit_breaker]`: one breaker per processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    /// Outcomes looked at, e.g. `60s`.
    pub window: String,
    /// Fewest outcomes before it may open.
    pub min_calls: u32,
    /// Share of faults that opens it.
    pub failure_rate: f64,
    /// How long it stays open, e.g. `30s`.
    pub open_for: String,
}

impl Default for BreakerSection {
    fn default() -> BreakerSection {
        BreakerSection {
            window: "60s".into(),
            min_calls: 20,
            failure_rate: 0.5,
            open_for: "30s".into(),
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address to serve Prometheus `/metrics` on while the runner runs, e.g.
    /// `127.0.0.1:9464`; none: metrics are not exported.
    pub listen: Option<String>,
}

/// `[declines]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclinesSection {
    /// A decline table file; the shipped table when absent.
    pub path: Option<PathBuf>,
}

/// `[processor]`, chosen by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessorConfig {
    /// The mock processor.
    Mock {
        /// Processor id.
        #[serde(default = "default_mock_id")]
        id: String,
        /// Seed of faults and latency.
        #[serde(default = "default_seed")]
        seed: u64,
        /// Answer latency.
        #[serde(default)]
        latency: LatencyModel,
        /// Fraction of sends that fail before charging.
        #[serde(default)]
        fault_rate: f64,
        /// Fraction of charges whose answer is lost.
        #[serde(default)]
        unknown_rate: f64,
        /// Accepted payment method types.
        #[serde(default)]
        payment_method_types: Option<Vec<String>>,
        /// Connect support.
        #[serde(default = "default_true")]
        connect: bool,
        /// Vault file (customers and payment methods).
        #[serde(default)]
        vault: Option<PathBuf>,
        /// Requests per second this mock answers before it returns 429 (none: no limit).
        #[serde(default)]
        enforce_rate_limit: Option<u32>,
        /// The engine's pace for this processor.
        #[serde(default)]
        rate_limit: Option<offsession_orchestrator::RateLimit>,
    },
    /// Stripe (`crates/stripe`).
    Stripe(StripeSection),
}

/// `[processor]` with `type = "stripe"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSection {
    /// Processor id.
    #[serde(default = "default_stripe_id")]
    pub id: String,
    /// The secret key itself (prefer `secret_key_env`).
    #[serde(default)]
    pub secret_key: Option<offsession_stripe::SecretKey>,
    /// Environment variable holding the secret key.
    #[serde(default = "default_secret_key_env")]
    pub secret_key_env: String,
    /// API base URL.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Pinned `Stripe-Version`.
    #[serde(default = "default_stripe_version")]
    pub stripe_version: String,
    /// Connect timeout, e.g. `5s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Request timeout, e.g. `30s`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    /// Transport retries per request (same idempotency key).
    #[serde(default = "default_network_retries")]
    pub max_network_retries: u32,
    /// Preflight cache lifetime, e.g. `10m`.
    #[serde(default = "default_preflight_ttl")]
    pub preflight_cache_ttl: String,
    /// Payment method types this account charges.
    #[serde(default)]
    pub payment_method_types: Option<Vec<String>>,
    /// The engine's pace for this account (Stripe allows 100/s live, 25/s in test mode).
    #[serde(default)]
    pub rate_limit: Option<offsession_orchestrator::RateLimit>,
}

fn default_stripe_id() -> String {
    "stripe".into()
}
fn default_secret_key_env() -> String {
    "STRIPE_SECRET_KEY".into()
}
fn default_api_base() -> String {
    "https://api.stripe.com".into()
}
fn default_stripe_version() -> String {
    "2022-11-15".into()
}
fn default_connect_timeout() -> String {
    "5s".into()
}
fn default_request_timeout() -> String {
    "30s".into()
}
fn default_network_retries() -> u32 {
    2
}
fn default_preflight_ttl() -> String {
    "10m".into()
}

fn default_mock_id() -> String {
    "mock".into()
}
fn default_seed() -> u64 {
    1
}
fn default_true() -> bool {
    true
}

/// `[store]`, chosen by `type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In memory (lost on exit).
    #[default]
    Memory,
}

/// `[run]`: the batch job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// JSON Lines of create requests.
    pub input: PathBuf,
    /// Simulated start time (RFC 3339).
    pub start: String,
    /// Stop the simulated clock after this long, e.g. `90d`.
    pub horizon: String,
}

impl Default for RunSection {
    fn default() -> RunSection {
        RunSection {
            input: PathBuf::from("config/demo-batch.jsonl"),
            start: "2026-01-01T00:00:00Z".into(),
            horizon: "90d".into(),
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Figment could not read or type the configuration; the message names the key.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value is well-typed but wrong.
    #[error("`{key}`: {message}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Loads `path` with `OFFSESSION_…__…` environment overrides.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Invalid {
            key: "--config".into(),
            message: format!("file `{}` does not exist", path.display()),
        });
    }
    let figment = Figment::new().merge(Toml::file_exact(path)).merge(
        // Only nested keys are configuration (`OFFSESSION_ENGINE__CONCURRENCY`), so that
        // variables such as OFFSESSION_TEST_POSTGRES_URL are not mistaken for it.
        Env::prefixed("OFFSESSION_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    config.check()?;
    Ok(config)
}

impl ProcessorConfig {
    /// The processor id.
    pub fn id(&self) -> &str {
        match self {
            ProcessorConfig::Mock { id, .. } => id,
            ProcessorConfig::Stripe(stripe) => &stripe.id,
        }
    }
}

impl Config {
    /// Every configured processor, in order.
    pub fn all_processors(&self) -> impl Iterator<Item = &ProcessorConfig> {
        self.processor.iter().chain(self.processors.iter())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        // Parses every `[engine]` duration, naming the key, then applies the
        // engine's own checks.
        crate::wiring::engine_config(self)?
            .check()
            .map_err(|refused| invalid(&format!("engine.{}", refused.key), refused.message))?;
        let horizon = offsession_retry::parse_duration(&self.run.horizon)
            .map_err(|e| invalid("run.horizon", e.to_string()))?;
        if horizon.is_zero() {
            return Err(invalid("run.horizon", "must be longer than 0s".into()));
        }
        if offsession_core::Timestamp::parse_rfc3339(&self.run.start).is_none() {
            return Err(invalid(
                "run.start",
                format!("`{}` is not an RFC 3339 time", self.run.start),
            ));
        }
        if self.processor.is_some() != self.processors.is_empty() {
            return Err(invalid(
                "processor",
                "configure exactly one of `[processor]` or `[[processors]]`".into(),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for processor in self.all_processors() {
            if !ids.insert(processor.id().to_owned()) {
                return Err(invalid(
                    "processors",
                    format!("processor id `{}` is used twice", processor.id()),
                ));
            }
            match processor {
                ProcessorConfig::Mock {
                    fault_rate,
                    unknown_rate,
                    latency,
                    enforce_rate_limit,
                    rate_limit,
                    ..
                } => {
                    latency
                        .check()
                        .map_err(|message| invalid("processor.latency", message))?;
                    if *enforce_rate_limit == Some(0) {
                        return Err(invalid(
                            "processor.enforce_rate_limit",
                            "must be at least 1 (leave it out for no limit)".into(),
                        ));
                    }
                    if let Some(limit) = rate_limit {
                        limit
                            .check()
                            .map_err(|message| invalid("processor.rate_limit", message))?;
                    }
                    for (key, rate) in [
                        ("processor.fault_rate", fault_rate),
                        ("processor.unknown_rate", unknown_rate),
                    ] {
                        if !(0.0..=1.0).contains(rate) {
                            return Err(invalid(
                                key,
                                format!("must be between 0 and 1 (got {rate})"),
                            ));
                        }
                    }
                }
                ProcessorConfig::Stripe(stripe) => {
                    for (key, value) in [
                        ("processor.connect_timeout", &stripe.connect_timeout),
                        ("processor.request_timeout", &stripe.request_timeout),
                        ("processor.preflight_cache_ttl", &stripe.preflight_cache_ttl),
                    ] {
                        let duration = offsession_retry::parse_duration(value)
                            .map_err(|e| invalid(key, e.to_string()))?;
                        if duration.is_zero() && key != "processor.preflight_cache_ttl" {
                            return Err(invalid(key, "must be longer than 0s".into()));
                        }
                    }
                    check_api_base(&stripe.api_base)
                        .map_err(|message| invalid("processor.api_base", message))?;
                    if stripe.max_network_retries > 10 {
                        return Err(invalid(
                            "processor.max_network_retries",
                            format!("must be at most 10 (got {})", stripe.max_network_retries),
                        ));
                    }
                    if let Some(limit) = &stripe.rate_limit {
                        limit
                            .check()
                            .map_err(|message| invalid("processor.rate_limit", message))?;
                    }
                    if self.engine.id_seed.is_some() {
                        return Err(invalid(
                            "engine.id_seed",
                            "reproducible ids repeat across runs, and so would the attempts' idempotency keys: allowed with mock processors only".into(),
                        ));
                    }
                }
            }
        }
        crate::wiring::breaker_config(self)?
            .check()
            .map_err(|message| invalid("circuit_breaker", message))?;
        if let Some(listen) = &self.metrics.listen {
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("metrics.listen", format!("`{listen}`: {e}")))?;
        }
        offsession_retry::HeuristicPolicy::new(&self.heuristic)
            .map_err(|e| invalid("heuristic", e.to_string()))?;
        offsession_retry::SmartPolicy::new(&self.smart)
            .map_err(|e| invalid("smart", e.to_string()))?;
        for (name, policy) in &self.retry_policies {
            offsession_retry::ScheduledPolicy::new(name, policy)
                .map_err(|e| invalid(&format!("retry_policies.{name}"), e.to_string()))?;
        }
        if !self.retry_policies.is_empty()
            && !self
                .retry_policies
                .contains_key(&self.engine.default_retry_policy)
        {
            return Err(invalid(
                "engine.default_retry_policy",
                format!(
                    "`{}` is not one of the configured retry_policies ({})",
                    self.engine.default_retry_policy,
                    self.retry_policies
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// The Stripe API base must be an https URL with a host and nothing after the path
/// (no query, no fragment, no credentials); plain http is allowed for loopback
/// addresses only (test fakes).
pub fn check_api_base(api_base: &str) -> Result<(), String> {
    let url = url::Url::parse(api_base).map_err(|e| format!("`{api_base}` is not a URL: {e}"))?;
    let host = url
        .host()
        .ok_or_else(|| format!("`{api_base}` has no host"))?;
    let loopback = match host {
        url::Host::Domain(domain) => domain == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "`{api_base}`: plain http is allowed for loopback addresses only; use https"
            ))
        }
        other => return Err(format!("`{api_base}`: scheme `{other}` is not https")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{api_base}` must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the API base must not carry credentials".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_defaults_round_trip_through_config_text() {
        use std::time::Duration;
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_secs(300)), "5m");
        assert_eq!(duration_text(Duration::from_secs(7 * 86_400)), "1w");
        let section = EngineSection::default();
        let engine = offsession_orchestrator::EngineConfig::default();
        assert_eq!(
            offsession_retry::parse_duration(&section.lease).unwrap(),
            engine.lease
        );
        assert_eq!(
            offsession_retry::parse_duration(&section.authorization_validity).unwrap(),
            engine.authorization_validity
        );
    }
}
