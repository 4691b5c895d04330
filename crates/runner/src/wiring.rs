//! Builds an `Engine` from a `Config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offsession_core::RetryStrategy;
use offsession_core::{Clock, EventSink};
use offsession_mock::{MockProcessor, Vault};
use offsession_orchestrator::{Engine, EngineBuilder};
use offsession_retry::{DeclineTable, HeuristicPolicy, ScheduledPolicy, SmartPolicy, SmartState};
use offsession_store::MemoryStore;

use crate::config::{Config, ConfigError, ProcessorConfig, StoreConfig};
use crate::error::RunnerError;

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
    pub fn save_smart_state(&self, config_path: &Path, config: &Config) -> Result<(), RunnerError> {
        match &config.smart.state_path {
            Some(path) => save_smart_state(&self.smart, &resolve(config_path, path)),
            None => Ok(()),
        }
    }
}

/// Writes the smart strategy's learned state to `path` (JSON), atomically.
pub fn save_smart_state(smart: &SmartPolicy, path: &Path) -> Result<(), RunnerError> {
    let text = serde_json::to_string(&smart.state())
        .map_err(RunnerError::setup("encoding the smart state"))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| RunnerError::file("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RunnerError::file("renaming to", path, e))
}

/// Loads a state written by [`save_smart_state`].
pub fn load_smart_state(smart: &SmartPolicy, path: &Path) -> Result<(), RunnerError> {
    let content = |message: String| RunnerError::Content {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| RunnerError::file("reading", path, e))?;
    let state: SmartState = serde_json::from_str(&text).map_err(|e| content(e.to_string()))?;
    smart.restore(state).map_err(|e| content(e.to_string()))
}

/// The engine settings and retry decisions of a config — `[engine]`, `[declines]`,
/// `[retry_policies]`, `[heuristic]`, `[smart]`, `[circuit_breaker]` — on a new
/// builder. `run`, `simulate` and `bench` all start from it, so each honours every
/// one of these keys; they differ only in processors, store and clock.
pub fn policies(config_path: &Path, config: &Config) -> Result<Decisions, ConfigError> {
    let mut builder = Engine::builder()
        .config(config.engine.clone())
        .circuit_breaker(config.circuit_breaker);

    let declines = match &config.declines.path {
        Some(path) => DeclineTable::from_toml(&read(config_path, "declines.path", path)?)
            .map_err(|e| invalid("declines.path", e.to_string()))?,
        None => DeclineTable::standard(),
    };
    let rules = declines.network_rules().clone();
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
    builder = builder
        .strategy(RetryStrategy::Heuristic, Arc::new(heuristic))
        .strategy(RetryStrategy::Smart, smart.clone());
    Ok(Decisions {
        builder,
        smart,
        rules,
    })
}

/// What [`policies`] builds.
#[derive(Debug)]
pub struct Decisions {
    /// A builder with the engine settings and every policy installed.
    pub builder: EngineBuilder,
    /// The smart strategy (to load and save its learned state).
    pub smart: Arc<SmartPolicy>,
    /// The network rules of the configured decline table.
    pub rules: offsession_retry::NetworkRules,
}

/// Loads the smart strategy's learned state from `smart.state_path` when the file
/// exists (`run` only: a simulation starts every strategy from the prior).
fn load_configured_state(
    config_path: &Path,
    config: &Config,
    smart: &SmartPolicy,
) -> Result<(), ConfigError> {
    if let Some(path) = &config.smart.state_path {
        let full = resolve(config_path, path);
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
            load_smart_state(smart, &full)
                .map_err(|e| invalid("smart.state_path", e.to_string()))?;
        }
    }
    Ok(())
}

/// Builds the engine of `run` and `check-config` with `clock` and `events`: the
/// decisions of [`policies`], the configured processors, routing and store.
pub fn build(
    config_path: &Path,
    config: &Config,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
) -> Result<Wired, ConfigError> {
    let Decisions { builder, smart, .. } = policies(config_path, config)?;
    load_configured_state(config_path, config, &smart)?;
    let mut builder = builder.clock(clock).events(events);

    let mut mocks = Vec::new();
    for processor_config in config.all_processors() {
        let id = processor_config.id().to_owned();
        match processor_config {
            ProcessorConfig::Mock(section) => {
                let mut mock = section.adapter.clone();
                if let Some(path) = &section.vault {
                    mock.vault = Vault::from_toml(&read(config_path, "processor.vault", path)?)
                        .map_err(|e| invalid("processor.vault", e))?;
                }
                let processor = Arc::new(MockProcessor::new(&id, mock));
                builder = builder.processor(processor.clone());
                mocks.push(processor);
            }
            ProcessorConfig::Stripe(section) => {
                let mut stripe = section.adapter.clone();
                stripe.id = id.clone();
                let processor =
                    offsession_stripe::StripeProcessor::new(stripe).map_err(|e| match e {
                        offsession_stripe::StripeClientError::Config(refused) => {
                            invalid(&format!("processor.{}", refused.key), refused.message)
                        }
                        other => invalid("processor", other.to_string()),
                    })?;
                builder = builder.processor(Arc::new(processor));
            }
        }
        if let Some(limit) = processor_config.rate_limit() {
            builder = builder.rate_limit(&id, *limit);
        }
    }
    builder = builder.routing(config.routing.clone());

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
