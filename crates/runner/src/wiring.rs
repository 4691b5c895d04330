//! Builds an `Engine` from a `Config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offsession_core::RetryStrategy;
use offsession_core::Store;
use offsession_core::{Clock, EventSink};
use offsession_mock::{MockProcessor, Vault};
use offsession_orchestrator::{Engine, EngineBuilder};
use offsession_retry::{DeclineTable, HeuristicPolicy, ScheduledPolicy, SmartPolicy, SmartState};
use offsession_store::{MemoryStore, PostgresStore, SqliteStore, Synchronous};

use crate::config::{Config, ConfigError, ProcessorConfig, StoreConfig, StoreUrl, SynchronousMode};
use crate::error::RunnerError;

/// A relative path in the config file is relative to the file's folder.
pub fn resolve(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(path)
    }
}

/// The store as messages name it: a SQLite file by the path it is opened at (a
/// relative path is relative to the config file's folder), any other URL without its
/// password.
pub fn store_label(config_path: &Path, config: &Config) -> String {
    match config.store.parsed_url() {
        Ok(StoreUrl::Sqlite(path)) => format!("sqlite://{}", resolve(config_path, &path).display()),
        _ => crate::config::redact(&config.store.url),
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
    /// The store the engine writes to.
    pub store: Arc<dyn Store>,
}

impl Wired {
    /// Saves the smart strategy's state: to `smart.state_path` when configured, and
    /// to the store (key `smart`), where the next run on that store finds it.
    pub async fn save_smart_state(
        &self,
        config_path: &Path,
        config: &Config,
    ) -> Result<(), RunnerError> {
        if let Some(path) = &config.smart.state_path {
            save_smart_state(&self.smart, &resolve(config_path, path))?;
        }
        let text = serde_json::to_string(&self.smart.state())
            .map_err(RunnerError::setup("encoding the smart state"))?;
        self.store
            .save_state(SMART_STATE_KEY, &text)
            .await
            .map_err(RunnerError::setup("saving the smart state to the store"))
    }
}

/// The store key of the smart strategy's learned state.
pub const SMART_STATE_KEY: &str = "smart";

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

    let declines = decline_table(config_path, config)?;
    let rules = declines.network_rules().clone();
    builder = builder.decline_table(declines);

    for (name, policy) in &config.retry_policies {
        let policy = ScheduledPolicy::new(name, policy)
            .map_err(|e| invalid(&format!("retry_policies.{name}"), e.to_string()))?;
        builder = builder.retry_policy(name, Arc::new(policy));
    }

    let heuristic =
        HeuristicPolicy::new(&config.heuristic).map_err(|e| invalid("heuristic", e.to_string()))?;
    // The smart strategy's rule-based plan is `[heuristic]` within smart's own
    // window and attempt budget.
    let smart_rules = HeuristicPolicy::new(&offsession_retry::HeuristicConfig {
        window: config.smart.window,
        max_attempts: config.smart.max_attempts,
        ..config.heuristic.clone()
    })
    .map_err(|e| invalid("heuristic", e.to_string()))?;
    let smart = Arc::new(
        SmartPolicy::new(&config.smart)
            .map_err(|e| invalid("smart", e.to_string()))?
            .with_rules(smart_rules),
    );
    builder = builder
        .strategy(RetryStrategy::Heuristic, Arc::new(heuristic))
        .strategy(RetryStrategy::Smart, smart.clone());
    Ok(Decisions {
        builder,
        smart,
        rules,
    })
}

/// The decline table `[declines] path` names (the shipped one without it).
pub fn decline_table(config_path: &Path, config: &Config) -> Result<DeclineTable, ConfigError> {
    Ok(match &config.declines.path {
        Some(path) => DeclineTable::from_toml(&read(config_path, "declines.path", path)?)
            .map_err(|e| invalid("declines.path", e.to_string()))?,
        None => DeclineTable::standard(),
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

/// Opens the store `[store] url` names, applying its migrations.
pub async fn open_store(
    config_path: &Path,
    config: &Config,
) -> Result<Arc<dyn Store>, ConfigError> {
    open_store_section(config_path, &config.store, false).await
}

/// Where a store records the mode (test or live) of the payments it holds.
const STORE_MODE_KEY: &str = "store/mode";

/// Ties a store to one mode, so a test-mode server pointed at a live database does
/// not read or change live payments (its keys are test keys). The mode is the one
/// recorded in the store; a store that has none yet (new, or upgraded from before the
/// record) takes the mode of the payments it holds, or, empty, this command's. With
/// `record` the mode found is written down; a command of the other mode is refused.
pub async fn check_store_mode(
    store: &dyn Store,
    livemode: bool,
    record: bool,
) -> Result<(), ConfigError> {
    let mode = if livemode { "live" } else { "test" };
    let failed = |e: offsession_core::StoreError| {
        invalid(
            "store.url",
            format!(
                "reading the store's mode: {}",
                crate::error::with_causes(&e)
            ),
        )
    };
    let held = match store.load_state(STORE_MODE_KEY).await.map_err(failed)? {
        Some(held) => held,
        None => {
            let found = match store.list(1, None).await.map_err(failed)?.first() {
                Some(newest) if newest.payment.livemode => "live",
                Some(_) => "test",
                None => mode,
            };
            if !record
                || store
                    .swap_state(STORE_MODE_KEY, None, found)
                    .await
                    .map_err(failed)?
            {
                found.to_owned()
            } else {
                // Another instance recorded it first: read what it wrote.
                store
                    .load_state(STORE_MODE_KEY)
                    .await
                    .map_err(failed)?
                    .unwrap_or_default()
            }
        }
    };
    if held == mode {
        return Ok(());
    }
    Err(invalid(
        "engine.livemode",
        format!(
            "this store holds {held}-mode payments and this configuration runs in {mode} mode: use one store per mode"
        ),
    ))
}

/// On a SQLite store, takes the file's worker lock ([`offsession_store::WorkerLock`],
/// held until dropped): one process attempts payments on a SQLite file, since its
/// card locks, which keep two attempts on one card within the network caps, are the
/// process's own. A second worker (or `serve`, or `run`) on the same file is refused
/// with a message naming the file; `submit` and readers are not. `None` on the other
/// stores, whose card locks hold across processes.
pub fn hold_sqlite_worker_lock(
    config_path: &Path,
    config: &Config,
) -> Result<Option<offsession_store::WorkerLock>, RunnerError> {
    let Ok(StoreUrl::Sqlite(path)) = config.store.parsed_url() else {
        return Ok(None);
    };
    offsession_store::WorkerLock::take(&resolve(config_path, &path))
        .map(Some)
        .map_err(|message| RunnerError::Setup {
            action: "taking the SQLite file's worker lock",
            message,
        })
}

/// Opens the store a `[store]` section names; a relative SQLite path is relative to
/// `config_path`'s folder. With `outbox`, a `memory:` store keeps every committed
/// event, as the durable stores do (for the commands that read them back).
pub async fn open_store_section(
    config_path: &Path,
    store: &StoreConfig,
    outbox: bool,
) -> Result<Arc<dyn Store>, ConfigError> {
    let refused =
        |e: offsession_core::StoreError| invalid("store.url", crate::error::with_causes(&e));
    Ok(match store.parsed_url()? {
        StoreUrl::Memory => {
            let memory = match store.memory_keep_settled {
                Some(keep) => MemoryStore::with_retention(keep),
                None => MemoryStore::new(),
            };
            Arc::new(if outbox {
                memory.keeping_events()
            } else {
                memory
            })
        }
        StoreUrl::Sqlite(path) => {
            let synchronous = match store.synchronous {
                SynchronousMode::Normal => Synchronous::Normal,
                SynchronousMode::Full => Synchronous::Full,
            };
            Arc::new(SqliteStore::open(&resolve(config_path, &path), synchronous).map_err(refused)?)
        }
        StoreUrl::Postgres(url) => Arc::new(
            PostgresStore::connect(&url, &store.schema, store.max_connections)
                .await
                .map_err(refused)?,
        ),
    })
}

/// [`build`] on the real clock, with events kept only in the store's outbox: the
/// engine of `worker`, `submit`, `serve` and `status`.
pub async fn build_live(config_path: &Path, config: &Config) -> Result<Wired, ConfigError> {
    // The live commands read events from the store's outbox (the API's events, the
    // webhooks), so a `memory:` store keeps them too.
    build_with(
        config_path,
        config,
        Arc::new(offsession_core::SystemClock),
        Arc::new(offsession_core::DiscardEvents),
        Some(true),
    )
    .await
}

/// [`build_live`] for `check-config`: the store's mode is compared, never recorded.
pub async fn build_to_check(config_path: &Path, config: &Config) -> Result<Wired, ConfigError> {
    build_with(
        config_path,
        config,
        Arc::new(offsession_core::SystemClock),
        Arc::new(offsession_core::DiscardEvents),
        Some(false),
    )
    .await
}

/// Builds the engine of `run` and `check-config` with `clock` and `events`: the
/// decisions of [`policies`], the configured processors, routing and store.
pub async fn build(
    config_path: &Path,
    config: &Config,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
) -> Result<Wired, ConfigError> {
    build_with(config_path, config, clock, events, None).await
}

/// [`build`]; for a live command (`live` set), a `memory:` store keeps every
/// committed event, and the store's mode is checked (and recorded when `live` is
/// `Some(true)`).
async fn build_with(
    config_path: &Path,
    config: &Config,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventSink>,
    live: Option<bool>,
) -> Result<Wired, ConfigError> {
    let outbox = live.is_some();
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

    let store = open_store_section(config_path, &config.store, outbox).await?;
    if let Some(record) = live {
        check_store_mode(store.as_ref(), config.engine.livemode, record).await?;
    }
    if config.smart.state_path.is_none() {
        // A state file, when configured, was loaded above; otherwise the store's.
        let saved = store
            .load_state(SMART_STATE_KEY)
            .await
            .map_err(|e| invalid("store.url", e.to_string()))?;
        if let Some(text) = saved {
            let state: SmartState = serde_json::from_str(&text)
                .map_err(|e| invalid("store.url", format!("the stored smart state: {e}")))?;
            smart
                .restore(state)
                .map_err(|e| invalid("store.url", format!("the stored smart state: {e}")))?;
        }
    }
    builder = builder.store(store.clone());

    let engine = builder
        .build()
        .map_err(|e| invalid("engine", e.to_string()))?;
    engine
        .restore_breakers()
        .await
        .map_err(|e| invalid("store.url", crate::error::with_causes(&e)))?;
    Ok(Wired {
        engine,
        mocks,
        smart,
        store,
    })
}
