//! Builds an `Engine` from a `Config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offsession_core::RetryStrategy;
use offsession_core::{Clock, EventSink};
use offsession_mock::{MockConfig, MockProcessor, Vault};
use offsession_orchestrator::{Engine, EngineConfig};
use offsession_retry::{
    parse_duration, DeclineTable, HeuristicPolicy, ScheduledPolicy, SmartPolicy,
};
use offsession_store::MemoryStore;

use crate::config::{Config, ConfigError, ProcessorConfig, StoreConfig};

/// A relative path in the config file is relative to the file's folder.
pub fn resolve(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(path)
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message,
    }
}

fn read(config_path: &Path, key: &str, path: &Path) -> Result<String, ConfigError> {
    let full = resolve(config_path, path);
    std::fs::read_to_string(&full)
        .map_err(|e| invalid(key, format!("cannot read `{}`: {e}", full.display())))
}

/// The engine settings of `[engine]` (durations were checked by `config::load`).
pub fn engine_config(config: &Config) -> Result<EngineConfig, ConfigError> {
    let e = &config.engine;
    let duration =
        |key: &str, v: &str| parse_duration(v).map_err(|err| invalid(key, err.to_string()));
    Ok(EngineConfig {
        livemode: e.livemode,
        instance_id: e.instance_id.clone(),
        id_seed: e.id_seed,
        ach_retries_enabled: e.ach_retries_enabled,
        sepa_debit_retries_enabled: e.sepa_debit_retries_enabled,
        default_retry_policy: e.default_retry_policy.clone(),
        lease: duration("engine.lease", &e.lease)?,
        authorization_validity: duration(
            "engine.authorization_validity",
            &e.authorization_validity,
        )?,
        replay_backoff: e
            .replay_backoff
            .iter()
            .map(|v| duration("engine.replay_backoff", v))
            .collect::<Result<_, _>>()?,
        max_replays: e.max_replays,
        replay_deadline: duration("engine.replay_deadline", &e.replay_deadline)?,
        compartment_id: e.compartment_id.clone(),
        concurrency: e.concurrency,
        claim_batch: e.claim_batch,
        cascade_categories: e.cascade_categories.clone(),
    })
}

/// The circuit-breaker settings of `[circuit_breaker]`.
pub fn breaker_config(
    config: &Config,
) -> Result<offsession_orchestrator::BreakerConfig, ConfigError> {
    let breaker = &config.circuit_breaker;
    Ok(offsession_orchestrator::BreakerConfig {
        window: parse_duration(&breaker.window)
            .map_err(|e| invalid("circuit_breaker.window", e.to_string()))?,
        min_calls: breaker.min_calls,
        failure_rate: breaker.failure_rate,
        open_for: parse_duration(&breaker.open_for)
            .map_err(|e| invalid("circuit_breaker.open_for", e.to_string()))?,
    })
}

/// Everything built from a config.
#[derive(Debug)]
pub struct Wired {
    /// The engine.
    pub engine: Engine,
    /// The mock processors the config selects (for ledgers and checks).
    pub mocks: Vec<Arc<MockProcessor>>,
    /// The smart strategy (to save its learned state).
    pub smart: Arc<SmartPolicy>,
}

impl Wired {
    /// Saves the smart strategy's state to `smart.state_path`, if configured.
    pub fn save_smart_state(&self, config_path: &Path, config: &Config) -> Result<(), String> {
        match &config.smart.state_path {
            Some(path) => self.smart.save(&resolve(config_path, Path::new(path))),
            None => Ok(()),
        }
    }
}

/// Builds the engine with `clock` and `events`.
pub fn build(
    config_path: &Path,
    config: &Config,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
) -> Result<Wired, ConfigError> {
    let mut builder = Engine::builder()
        .config(engine_config(config)?)
        .clock(clock)
        .events(events);

    let declines = match &config.declines.path {
        Some(path) => DeclineTable::from_toml(&read(config_path, "declines.path", path)?)
            .map_err(|e| invalid("declines.path", e.to_string()))?,
        None => DeclineTable::standard(),
    };
    builder = builder.decline_table(declines);

    for (name, policy) in &config.retry_policies {
        let policy = ScheduledPolicy::new(name, policy)
            .map_err(|e| invalid(&format!("retry_policies.{name}"), e.to_string()))?;
        builder = builder.retry_policy(name, Arc::new(policy));
    }

    let heuristic =
        HeuristicPolicy::new(&config.heuristic).map_err(|e| invalid("heuristic", e.to_string()))?;
    let smart =
        Arc::new(SmartPolicy::new(&config.smart).map_err(|e| invalid("smart", e.to_string()))?);
    if let Some(path) = &config.smart.state_path {
        let full = resolve(config_path, Path::new(path));
        // Checked now, not when the state is saved at the end of a run.
        let folder = match full.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        if !folder.is_dir() {
            return Err(invalid(
                "smart.state_path",
                format!("folder `{}` does not exist", folder.display()),
            ));
        }
        if full.exists() {
            smart
                .load(&full)
                .map_err(|e| invalid("smart.state_path", e))?;
        }
    }
    builder = builder
        .strategy(RetryStrategy::Heuristic, Arc::new(heuristic))
        .strategy(RetryStrategy::Smart, smart.clone());

    let mut mocks = Vec::new();
    for processor_config in config.all_processors() {
        match processor_config {
            ProcessorConfig::Mock {
                id,
                seed,
                latency,
                fault_rate,
                unknown_rate,
                payment_method_types,
                connect,
                vault,
                enforce_rate_limit,
                rate_limit,
            } => {
                let vault = match vault {
                    Some(path) => Vault::from_toml(&read(config_path, "processor.vault", path)?)
                        .map_err(|e| invalid("processor.vault", e))?,
                    None => Vault::default(),
                };
                let defaults = MockConfig::default();
                let processor = Arc::new(MockProcessor::new(
                    id,
                    MockConfig {
                        seed: *seed,
                        latency: latency.clone(),
                        fault_rate: *fault_rate,
                        unknown_rate: *unknown_rate,
                        payment_method_types: payment_method_types
                            .clone()
                            .unwrap_or(defaults.payment_method_types),
                        connect: *connect,
                        vault,
                        enforce_rate_limit: *enforce_rate_limit,
                    },
                ));
                builder = builder.processor(processor.clone());
                if let Some(limit) = rate_limit {
                    builder = builder.rate_limit(id, *limit);
                }
                mocks.push(processor);
            }
            ProcessorConfig::Stripe(section) => {
                let secret_key = match &section.secret_key {
                Some(key) => key.clone(),
                None => offsession_stripe::SecretKey::new(std::env::var(&section.secret_key_env).map_err(|_| {
                    invalid(
                        "processor.secret_key_env",
                        if offsession_stripe::looks_like_secret(&section.secret_key_env) {
                            "`processor.secret_key_env` must name an environment variable, and the value given looks like a secret key (not shown)".to_owned()
                        } else {
                            format!("environment variable `{}` is not set (or set `processor.secret_key`)", section.secret_key_env)
                        },
                    )
                })?),
            };
                let duration =
                    |key: &str, v: &str| parse_duration(v).map_err(|e| invalid(key, e.to_string()));
                let mut stripe = offsession_stripe::StripeConfig::new(&section.id, secret_key);
                stripe.api_base = section.api_base.clone();
                stripe.stripe_version = section.stripe_version.clone();
                stripe.connect_timeout =
                    duration("processor.connect_timeout", &section.connect_timeout)?;
                stripe.request_timeout =
                    duration("processor.request_timeout", &section.request_timeout)?;
                stripe.max_network_retries = section.max_network_retries;
                stripe.preflight_cache_ttl = duration(
                    "processor.preflight_cache_ttl",
                    &section.preflight_cache_ttl,
                )?;
                if let Some(types) = &section.payment_method_types {
                    stripe.payment_method_types = types.clone();
                }
                let processor = offsession_stripe::StripeProcessor::new(stripe)
                    .map_err(|e| invalid("processor", e.to_string()))?;
                builder = builder.processor(Arc::new(processor));
                if let Some(limit) = &section.rate_limit {
                    builder = builder.rate_limit(&section.id, *limit);
                }
            }
        }
    }
    builder = builder
        .routing(config.routing.clone())
        .circuit_breaker(breaker_config(config)?);

    match config.store {
        StoreConfig::Memory => builder = builder.store(Arc::new(MemoryStore::new())),
    }

    let engine = builder
        .build()
        .map_err(|e| invalid("engine", e.to_string()))?;
    Ok(Wired {
        engine,
        mocks,
        smart,
    })
}
