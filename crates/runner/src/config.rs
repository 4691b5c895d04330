//! Runner configuration: a TOML file plus `OFFSESSION_<SECTION>__<KEY>` environment
//! overrides (figment). Unknown keys and bad values are refused at start, by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use offsession_mock::MockConfig;
use offsession_orchestrator::{BreakerConfig, EngineConfig};
use offsession_retry::{HeuristicConfig, ScheduledPolicyConfig, SmartConfig};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[engine]`: the engine's own settings type, defaults and checks.
    #[serde(default)]
    pub engine: EngineConfig,
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
    /// `[circuit_breaker]`: one breaker per processor.
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[run]`.
    #[serde(default)]
    pub run: RunSection,
    /// `[worker]`: `worker`, `submit` and `status` on the real clock.
    #[serde(default)]
    pub worker: WorkerSection,
    /// `[server]`: `serve`, the HTTP API.
    #[serde(default)]
    pub server: ServerSection,
    /// `[[webhooks]]`: endpoints `serve` delivers events to.
    #[serde(default)]
    pub webhooks: Vec<WebhookSection>,
}

/// `[server]`: the HTTP API of `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on (`OFFSESSION_SERVER__LISTEN`).
    pub listen: String,
    /// Accepted secret keys as `sha256:<64 hex digits>` (`offsession hash-key` prints
    /// one); `OFFSESSION_API_KEY` adds one key from the environment.
    pub api_key_hashes: Vec<String>,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Requests per second per key (429 with `Retry-After` above); 0: no limit.
    pub requests_per_second: u32,
    /// Webhook events in flight to one endpoint at most (1: in commit order).
    pub webhook_concurrency: usize,
    /// How long an event's delivery log is kept (from the event's `created`).
    #[serde(with = "offsession_core::duration::text")]
    pub webhook_log_retention: std::time::Duration,
    /// How long an event stays in the outbox (from when it was stored): `GET
    /// /v2/core/events/{id}` finds it, and a webhook endpoint can still be sent it.
    #[serde(with = "offsession_core::duration::text")]
    pub event_retention: std::time::Duration,
}

impl Default for ServerSection {
    fn default() -> ServerSection {
        ServerSection {
            listen: "127.0.0.1:4242".into(),
            api_key_hashes: Vec::new(),
            max_body_bytes: 64 * 1024,
            requests_per_second: 1_000,
            webhook_concurrency: 1,
            webhook_log_retention: std::time::Duration::from_secs(30 * 86_400),
            event_retention: std::time::Duration::from_secs(30 * 86_400),
        }
    }
}

/// `[[webhooks]]`: one endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Where events are POSTed (http only for loopback).
    pub url: String,
    /// `whsec_…`.
    pub secret: String,
    /// Event types (`v2.payments.off_session_payment.succeeded`, …) or `*`.
    #[serde(default = "all_events")]
    pub enabled_events: Vec<String>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

/// `[worker]`: the long-running worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Longest sleep between looks at the store when nothing is due sooner: new work
    /// from `submit` or another instance is picked up within this.
    #[serde(with = "offsession_core::duration::text")]
    pub poll_interval: std::time::Duration,
    /// On SIGTERM or SIGINT, how long attempts in flight may take to finish before
    /// the worker exits anyway (their leases then lapse and the payments are replayed
    /// with the same idempotency keys).
    #[serde(with = "offsession_core::duration::text")]
    pub shutdown_deadline: std::time::Duration,
    /// How often the worker writes its heartbeat, re-splits rate limits among the
    /// instances alive, reloads circuit breakers and reconciles the smart model with
    /// the store.
    #[serde(with = "offsession_core::duration::text")]
    pub heartbeat_interval: std::time::Duration,
    /// An instance whose heartbeat is older than this no longer counts for rate-limit
    /// shares.
    #[serde(with = "offsession_core::duration::text")]
    pub instance_timeout: std::time::Duration,
    /// Concurrent creates while `submit` stores a batch.
    pub submit_concurrency: usize,
}

impl Default for WorkerSection {
    fn default() -> WorkerSection {
        WorkerSection {
            poll_interval: std::time::Duration::from_millis(250),
            shutdown_deadline: std::time::Duration::from_secs(30),
            heartbeat_interval: std::time::Duration::from_secs(1),
            instance_timeout: std::time::Duration::from_secs(5),
            submit_concurrency: 32,
        }
    }
}

impl WorkerSection {
    /// Refuses settings that would spin or never wake.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("worker.{key}"),
            message: message.into(),
        };
        if self.poll_interval < std::time::Duration::from_millis(10)
            || self.poll_interval > std::time::Duration::from_secs(60)
        {
            return Err(invalid("poll_interval", "must be between 10ms and 60s"));
        }
        if self.heartbeat_interval < std::time::Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        if self.instance_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "instance_timeout",
                "must be longer than `heartbeat_interval`",
            ));
        }
        if self.submit_concurrency == 0 || self.submit_concurrency > 1024 {
            return Err(invalid("submit_concurrency", "must be between 1 and 1024"));
        }
        Ok(())
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
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessorConfig {
    /// The mock processor.
    Mock(ProcessorSection<MockConfig>),
    /// Stripe (`crates/stripe`).
    Stripe(ProcessorSection<offsession_stripe::StripeConfig>),
}

/// A processor's section: the adapter's own configuration type, plus the keys the
/// runner adds (`id`, `vault`, `rate_limit`). The table is flat in the file; the
/// runner takes its keys out and hands the rest to the adapter's type, which refuses
/// unknown keys.
#[derive(Debug, Clone)]
pub struct ProcessorSection<T> {
    /// Processor id (`mock` or `stripe` unless given).
    pub id: Option<String>,
    /// Mock only: vault file (customers and payment methods).
    pub vault: Option<PathBuf>,
    /// The pace the engine keeps with this processor.
    pub rate_limit: Option<offsession_orchestrator::RateLimit>,
    /// The adapter's settings.
    pub adapter: T,
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for ProcessorSection<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        fn take<T: serde::de::DeserializeOwned, E: Error>(
            table: &mut toml::Table,
            key: &str,
        ) -> Result<Option<T>, E> {
            table
                .remove(key)
                .map(|value| {
                    value
                        .try_into()
                        .map_err(|e| E::custom(format!("`{key}`: {e}")))
                })
                .transpose()
        }
        Ok(ProcessorSection {
            id: take(&mut table, "id")?,
            vault: take(&mut table, "vault")?,
            rate_limit: take(&mut table, "rate_limit")?,
            adapter: toml::Value::Table(table)
                .try_into()
                .map_err(D::Error::custom)?,
        })
    }
}

/// `[store]`: where payments live, chosen by `url` (overridable as
/// `OFFSESSION_STORE__URL`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory:` (lost on exit), `sqlite://PATH` (one file; relative to the config
    /// file's folder) or `postgres://user@host:port/database`.
    pub url: String,
    /// Postgres: the schema the tables live in.
    pub schema: String,
    /// Postgres: connections per instance.
    pub max_connections: usize,
    /// SQLite: `normal` (a process crash loses nothing; a power loss may lose the
    /// last commits) or `full` (fsync at every commit).
    pub synchronous: SynchronousMode,
    /// Memory store: keep only this many settled payments, forgetting the oldest
    /// settled ones (none: keep every payment).
    pub memory_keep_settled: Option<usize>,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            url: "sqlite://offsession.db".into(),
            schema: "offsession".into(),
            max_connections: 16,
            synchronous: SynchronousMode::Normal,
            memory_keep_settled: None,
        }
    }
}

/// `store.synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynchronousMode {
    /// WAL, `synchronous = NORMAL`.
    Normal,
    /// `synchronous = FULL`.
    Full,
}

/// What `store.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory:`.
    Memory,
    /// `sqlite://PATH`.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, as given.
    Postgres(String),
}

impl StoreConfig {
    /// The parsed `url`; the error names the key and the accepted forms.
    pub fn parsed_url(&self) -> Result<StoreUrl, ConfigError> {
        let url = self.url.trim();
        let invalid = |message: String| ConfigError::Invalid {
            key: "store.url".into(),
            message,
        };
        if url == "memory:" || url == "memory://" {
            Ok(StoreUrl::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid(
                    "`sqlite://` needs a file path, e.g. `sqlite://offsession.db`".into(),
                ));
            }
            Ok(StoreUrl::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(url.to_owned()))
        } else {
            Err(invalid(format!(
                "`{}` is not `memory:`, `sqlite://PATH` or `postgres://…`",
                redact(url)
            )))
        }
    }
}

/// A URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
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
    #[serde(with = "offsession_core::duration::text")]
    pub horizon: std::time::Duration,
}

impl Default for RunSection {
    fn default() -> RunSection {
        RunSection {
            input: PathBuf::from("config/demo-batch.jsonl"),
            start: "2026-01-01T00:00:00Z".into(),
            horizon: std::time::Duration::from_secs(90 * 86_400),
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
            ProcessorConfig::Mock(mock) => mock.id.as_deref().unwrap_or("mock"),
            ProcessorConfig::Stripe(stripe) => stripe.id.as_deref().unwrap_or(&stripe.adapter.id),
        }
    }

    /// The pace the engine keeps with this processor.
    pub fn rate_limit(&self) -> Option<&offsession_orchestrator::RateLimit> {
        match self {
            ProcessorConfig::Mock(section) => section.rate_limit.as_ref(),
            ProcessorConfig::Stripe(section) => section.rate_limit.as_ref(),
        }
    }
}

impl Config {
    /// Every configured processor, in order.
    pub fn all_processors(&self) -> impl Iterator<Item = &ProcessorConfig> {
        self.processor.iter().chain(self.processors.iter())
    }

    /// The checks the types cannot express, each named by its key; every section's
    /// own checks are its library type's (`EngineConfig::check`, …).
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        self.engine
            .check()
            .map_err(|refused| invalid(&format!("engine.{}", refused.key), refused.message))?;
        if self.run.horizon.is_zero() {
            return Err(invalid("run.horizon", "must be longer than 0s".into()));
        }
        self.worker.check()?;
        if self.server.webhook_log_retention < std::time::Duration::from_secs(3_600) {
            return Err(invalid(
                "server.webhook_log_retention",
                "must be at least 1h".into(),
            ));
        }
        // Webhooks retry an event for up to 3 days: it must outlive them.
        if self.server.event_retention < std::time::Duration::from_secs(4 * 86_400) {
            return Err(invalid(
                "server.event_retention",
                "must be at least 4d (webhook deliveries are retried for 3 days)".into(),
            ));
        }
        if !(1..=64).contains(&self.server.webhook_concurrency) {
            return Err(invalid(
                "server.webhook_concurrency",
                "must be between 1 and 64".into(),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid(
                "server.max_body_bytes",
                "must be at least 1024".into(),
            ));
        }
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if !webhook.secret.starts_with("whsec_") || webhook.secret.len() < 14 {
                return Err(invalid(
                    &format!("webhooks[{i}].secret"),
                    "must be `whsec_` and at least 8 more characters".into(),
                ));
            }
            let url = url::Url::parse(&webhook.url).map_err(|e| {
                invalid(
                    &format!("webhooks[{i}].url"),
                    format!("`{}`: {e}", webhook.url),
                )
            })?;
            let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                return Err(invalid(
                    &format!("webhooks[{i}].url"),
                    "must be https (plain http only for loopback)".into(),
                ));
            }
            // An endpoint's delivery position is kept under its URL: two entries of
            // one URL would move each other's.
            if let Some(first) = self.webhooks[..i].iter().position(|w| w.url == webhook.url) {
                return Err(invalid(
                    &format!("webhooks[{i}].url"),
                    format!(
                        "`{}` is webhooks[{first}].url too: one entry per URL (list every event type it takes in one `enabled_events`)",
                        webhook.url
                    ),
                ));
            }
        }
        self.store.parsed_url()?;
        if self.store.max_connections == 0 {
            return Err(invalid(
                "store.max_connections",
                "must be at least 1".into(),
            ));
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
        for processor in self.all_processors() {
            if let Some(limit) = processor.rate_limit() {
                limit
                    .check()
                    .map_err(|message| invalid("processor.rate_limit", message))?;
            }
            match processor {
                ProcessorConfig::Mock(mock) => mock
                    .adapter
                    .check()
                    .map_err(|(key, message)| invalid(&format!("processor.{key}"), message))?,
                ProcessorConfig::Stripe(stripe) => {
                    if stripe.vault.is_some() {
                        return Err(invalid(
                            "processor.vault",
                            "a vault belongs to mock processors only".into(),
                        ));
                    }
                    stripe.adapter.check().map_err(|refused| {
                        invalid(&format!("processor.{}", refused.key), refused.message)
                    })?;
                    if self.engine.id_seed.is_some() {
                        return Err(invalid(
                            "engine.id_seed",
                            "reproducible ids repeat across runs, and so would the attempts' idempotency keys: allowed with mock processors only".into(),
                        ));
                    }
                }
            }
        }
        self.circuit_breaker
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
        self.engine
            .check_default_policy(self.retry_policies.keys().map(String::as_str))
            .map_err(|refused| invalid(&format!("engine.{}", refused.key), refused.message))?;
        // Processor ids are checked where the engine is built (`EngineBuilder::build`).
        Ok(())
    }
}
