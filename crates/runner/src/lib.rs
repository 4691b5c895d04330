//! The `offsession` command-line runner: reads configuration, wires the engine, and
//! runs its subcommands. Holds no domain logic.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod batch;
pub mod bench;
pub mod config;
pub mod error;
pub mod exporter;
pub mod serve;
pub mod simulate;
pub mod wiring;
pub mod worker;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::RunnerError;

/// Self-hosted engine for off-session payments.
#[derive(Debug, Parser)]
#[command(name = "offsession", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a batch of create requests (JSON Lines) and drive them to completion on
    /// a simulated clock against the configured processor; print a summary.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// JSON Lines of create requests (default: `run.input` of the config).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a simulated population through the engine once per retry strategy (none,
    /// the best equal-bound schedule, heuristic, smart, best_available, and a
    /// reckless strategy with and without the network guard) and compare recovery
    /// with an omniscient single retry (the oracle).
    Simulate {
        /// Scenario file (`config/scenarios/*.toml`).
        #[arg(long)]
        scenario: PathBuf,
        /// Configuration file (strategy settings).
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the scenario's number of customers.
        #[arg(long)]
        customers: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write an SVG chart of cumulative recovery to this file.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Every strategy's retry window (e.g. `28d`).
        #[arg(long, default_value = "28d")]
        window: String,
        /// Every strategy's attempts per payment at most, the first included.
        #[arg(long, default_value_t = 8)]
        max_attempts: u32,
        /// Run only these strategies (comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        strategies: Vec<String>,
    },
    /// Drive payments through the engine against the mock processor on the real
    /// clock; report throughput, engine overhead, Little's-law efficiency, memory.
    Bench {
        /// Configuration file (engine settings and policies).
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// How many payments to create and settle.
        #[arg(long, default_value_t = 100_000)]
        payments: u64,
        /// Attempts in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Fixed mock latency in milliseconds (0: none).
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Log-normal mock latency with this median (ms) instead of a fixed one.
        #[arg(long)]
        latency_median_ms: Option<f64>,
        /// Shape of the log-normal latency.
        #[arg(long, default_value_t = 0.5)]
        latency_sigma: f64,
        /// The mock accepts this many requests per second (429 above) and the engine
        /// paces to it.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Store: `memory:`, `sqlite://NEW_FILE` or `postgres://…` (the bench makes a
        /// schema of its own and drops it). Durable stores also time a plain-SQL
        /// baseline doing the same writes.
        #[arg(long, default_value = "memory:")]
        store: String,
        /// Engine instances sharing the store (Postgres).
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// Settle while the intake still creates (another task, so another core), as a
        /// service does; end to end is then the time from the first create to the last
        /// outcome. The plain-SQL baseline is not run in this mode.
        #[arg(long)]
        overlap: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attempt stored payments as they fall due, on the real clock, against the
    /// configured durable store, until SIGTERM or SIGINT (then finish the attempts in
    /// flight, give back leases and exit 0). Several workers may share one Postgres.
    Worker {
        /// Configuration file.
        #[arg(long, default_value = "config/worker.toml")]
        config: PathBuf,
        /// Print what the worker did as JSON when it stops.
        #[arg(long)]
        json: bool,
    },
    /// Serve the Off-Session Payments API over HTTP (Stripe's v2 paths and bodies),
    /// deliver signed webhooks from the outbox, and attempt payments as they fall due,
    /// until SIGTERM or SIGINT. Needs an API key: `OFFSESSION_API_KEY=sk_test_…`.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "config/worker.toml")]
        config: PathBuf,
    },
    /// Print the `sha256:` hash of a secret key read from stdin, for
    /// `[server] api_key_hashes` (the key itself is never stored).
    HashKey,
    /// Validate and store a batch of create requests (JSON Lines) for workers to
    /// attempt, and exit. Submitting the same file again creates nothing twice.
    Submit {
        /// Configuration file.
        #[arg(long, default_value = "config/worker.toml")]
        config: PathBuf,
        /// JSON Lines of create requests.
        #[arg(long)]
        input: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report what the configured store holds: payments by status and failure reason,
    /// due work, stuck payments, instances alive.
    Status {
        /// Configuration file.
        #[arg(long, default_value = "config/worker.toml")]
        config: PathBuf,
        /// An unknown outcome (or a due time) older than this counts as stuck.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        stuck_after: std::time::Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open the configured store and bring its schema to this binary's version
    /// (every command that opens a store does this too); refuses a newer schema.
    Migrate {
        /// Configuration file.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Load and check a configuration file, build the engine, and report.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    offsession_core::duration::parse(text).map_err(|e| e.to_string())
}

/// Largest `bench --payments`: the memory store keeps every payment (about 3 KB each).
const MAX_BENCH_PAYMENTS: u64 = 10_000_000;
/// Largest `bench --concurrency`.
const MAX_BENCH_CONCURRENCY: usize = 100_000;

/// Logs go to stderr, filtered by `RUST_LOG` (default `warn`), as text or, with
/// `OFFSESSION_LOG_FORMAT=json`, one JSON object per line.
fn install_logging() -> Result<(), RunnerError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match std::env::var("OFFSESSION_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().try_init(),
        Ok("human") | Err(_) => builder.try_init(),
        Ok(other) => {
            return Err(RunnerError::Setup {
                action: "reading `OFFSESSION_LOG_FORMAT`",
                message: format!("`{other}` is not `human` or `json`"),
            })
        }
    };
    installed.map_err(RunnerError::setup("installing the log subscriber"))
}

/// Entry point of the `offsession` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = install_logging() {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a report as JSON or as its rendered text.
fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    text: String,
) -> Result<(), RunnerError> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report)
                .map_err(RunnerError::setup("writing the report as JSON"))?
        );
    } else {
        print!("{text}");
    }
    Ok(())
}

async fn execute(command: Command) -> Result<(), RunnerError> {
    match command {
        Command::Serve { config: path } => {
            let config = config::load(&path)?;
            let report = serve::run(&path, &config, worker::termination()).await?;
            if report.abandoned {
                return Err(RunnerError::Unsettled(
                    "attempts were still in flight at `worker.shutdown_deadline`; their leases lapse and another instance replays them".into(),
                ));
            }
            Ok(())
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .map_err(RunnerError::setup("reading the key from stdin"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(RunnerError::Flag {
                    flag: "stdin",
                    message: "give the secret key on stdin".into(),
                });
            }
            println!("sha256:{}", offsession_server::hash_key(key));
            Ok(())
        }
        Command::Worker { config: path, json } => {
            let config = config::load(&path)?;
            let report = worker::run(&path, &config, worker::termination()).await?;
            if json {
                print_report(&report, true, String::new())?;
            }
            if report.abandoned {
                return Err(RunnerError::Unsettled(
                    "attempts were still in flight at `worker.shutdown_deadline`; their leases lapse and another worker replays them".into(),
                ));
            }
            Ok(())
        }
        Command::Submit {
            config: path,
            input,
            json,
        } => {
            let config = config::load(&path)?;
            let report = worker::submit(&path, &config, &input).await?;
            print_report(&report, json, report.render())
        }
        Command::Status {
            config: path,
            stuck_after,
            json,
        } => {
            let config = config::load(&path)?;
            let report = worker::status(&path, &config, stuck_after).await?;
            print_report(&report, json, report.render())
        }
        Command::Migrate { config: path } => {
            let config = config::load(&path)?;
            let url = config.store.parsed_url()?;
            wiring::open_store(&path, &config).await?;
            let at = match url {
                config::StoreUrl::Memory => {
                    println!("memory: the memory store keeps nothing; nothing to migrate");
                    return Ok(());
                }
                config::StoreUrl::Sqlite(_) => wiring::store_label(&path, &config),
                config::StoreUrl::Postgres(_) => format!(
                    "{} (schema `{}`)",
                    config::redact(&config.store.url),
                    config.store.schema
                ),
            };
            println!("{at}: schema version {}", offsession_store::SCHEMA_VERSION);
            Ok(())
        }
        Command::CheckConfig { config: path } => {
            let config = config::load(&path)?;
            let wired = wiring::build_to_check(&path, &config).await?;
            drop(wired);
            let processors: Vec<_> = config.all_processors().map(|p| p.id()).collect();
            let policies: Vec<_> = config.retry_policies.keys().map(String::as_str).collect();
            println!("{}: ok", path.display());
            println!("  instance    {}", config.engine.instance_id);
            println!("  processors  {}", processors.join(", "));
            println!("  policies    {}", policies.join(", "));
            println!("  store       {}", wiring::store_label(&path, &config));
            Ok(())
        }
        Command::Bench {
            config: path,
            payments,
            concurrency,
            latency_ms,
            latency_median_ms,
            latency_sigma,
            rate_limit,
            store,
            instances,
            overlap,
            json,
        } => {
            if payments == 0 || concurrency == 0 {
                return Err(RunnerError::Flag {
                    flag: if payments == 0 {
                        "--payments"
                    } else {
                        "--concurrency"
                    },
                    message: "must be at least 1".into(),
                });
            }
            if payments > MAX_BENCH_PAYMENTS {
                return Err(RunnerError::Flag {
                    flag: "--payments",
                    message: format!(
                        "must be at most {MAX_BENCH_PAYMENTS} (got {payments}): every payment is kept in memory"
                    ),
                });
            }
            if concurrency > MAX_BENCH_CONCURRENCY {
                return Err(RunnerError::Flag {
                    flag: "--concurrency",
                    message: format!("must be at most {MAX_BENCH_CONCURRENCY} (got {concurrency})"),
                });
            }
            let latency = match latency_median_ms {
                Some(median_millis) => offsession_mock::LatencyModel::LogNormal {
                    median_millis,
                    sigma: latency_sigma,
                },
                None => offsession_mock::LatencyModel::Fixed { millis: latency_ms },
            };
            let config = config::load(&path)?;
            let report = bench::run(&bench::BenchOptions {
                config_path: path,
                config,
                payments,
                concurrency,
                latency,
                rate_limit,
                store,
                instances,
                overlap,
            })
            .await?;
            print_report(&report, json, report.render())
        }
        Command::Simulate {
            scenario,
            config: path,
            seed,
            customers,
            json,
            chart,
            window,
            max_attempts,
            strategies,
        } => {
            let config = config::load(&path)?;
            let window = offsession_core::duration::parse(&window).map_err(|e| {
                RunnerError::Config(config::ConfigError::Invalid {
                    key: "--window".into(),
                    message: e.to_string(),
                })
            })?;
            let options = simulate::Options {
                window,
                max_attempts,
                strategies,
            };
            let scenario_path = scenario;
            let text = std::fs::read_to_string(&scenario_path)
                .map_err(|e| RunnerError::file("reading the scenario", &scenario_path, e))?;
            let mut scenario =
                offsession_mock::issuer::Scenario::from_toml(&text).map_err(|message| {
                    RunnerError::Content {
                        path: scenario_path.clone(),
                        message,
                    }
                })?;
            if let Some(seed) = seed {
                scenario.seed = seed;
            }
            if let Some(customers) = customers {
                scenario.customers = customers;
            }
            scenario.check().map_err(|message| RunnerError::Content {
                path: scenario_path.clone(),
                message,
            })?;
            let report = simulate::run(&scenario, &path, &config, &options).await?;
            if let Some(chart) = chart {
                report.chart(&chart)?;
            }
            print_report(&report, json, report.render())
        }
        Command::Run {
            config: path,
            input,
            json,
        } => {
            let config = config::load(&path)?;
            let progress = !json && std::io::stderr().is_terminal();
            let summary = batch::run(&path, &config, input.as_deref(), progress).await?;
            print_report(&summary, json, summary.render())?;
            match summary.unsettled() {
                0 => Ok(()),
                n => Err(RunnerError::Unsettled(format!(
                    "{n} payments were not settled: {} stuck, {} ended by processor faults ({} with an unknown outcome to reconcile)",
                    summary.stuck, summary.ended_by_faults, summary.outcome_unknown
                ))),
            }
        }
    }
}
