//! `serve`: the HTTP API, webhook delivery and the worker in one process, on one
//! engine and one store.

use std::future::Future;
use std::path::Path;

use offsession_server::webhooks::{deliver, DeliverySettings, Owners};
use offsession_server::{hash_key, router, ApiKeys, AppState, ServerSettings, WebhookEndpoint};

use crate::config::{Config, ConfigError, StoreUrl};
use crate::error::RunnerError;
use crate::wiring;
use crate::worker::{self, WorkerReport};

fn invalid(key: &str, message: String) -> RunnerError {
    RunnerError::Config(ConfigError::Invalid {
        key: key.into(),
        message,
    })
}

/// The accepted keys: `[server] api_key_hashes` and `OFFSESSION_API_KEY`.
pub fn api_keys(config: &Config) -> Result<ApiKeys, RunnerError> {
    let mut keys = ApiKeys::from_hashes(config.server.api_key_hashes.iter().map(String::as_str))
        .map_err(|e| invalid("server.api_key_hashes", e))?;
    if let Ok(key) = std::env::var("OFFSESSION_API_KEY") {
        if !(key.starts_with("sk_test_") || key.starts_with("sk_live_")) || key.len() < 16 {
            return Err(invalid(
                "OFFSESSION_API_KEY",
                "must be `sk_test_…` or `sk_live_…` with at least 8 more characters".into(),
            ));
        }
        keys.add_plain(&key);
    }
    if keys.is_empty() {
        return Err(invalid(
            "server.api_key_hashes",
            "no API key: set OFFSESSION_API_KEY=sk_test_… or list `sha256:` hashes (`offsession hash-key`)".into(),
        ));
    }
    Ok(keys)
}

/// The webhook endpoints: `[[webhooks]]` and `OFFSESSION_WEBHOOK_URL` with
/// `OFFSESSION_WEBHOOK_SECRET`.
pub fn webhook_endpoints(config: &Config) -> Result<Vec<WebhookEndpoint>, RunnerError> {
    let mut endpoints: Vec<WebhookEndpoint> = config
        .webhooks
        .iter()
        .map(|w| WebhookEndpoint {
            id: endpoint_id(&w.url),
            url: w.url.clone(),
            secret: w.secret.clone(),
            enabled_events: w.enabled_events.clone(),
        })
        .collect();
    match (
        std::env::var("OFFSESSION_WEBHOOK_URL"),
        std::env::var("OFFSESSION_WEBHOOK_SECRET"),
    ) {
        (Ok(url), Ok(secret)) => {
            if let Some(i) = config.webhooks.iter().position(|w| w.url == url) {
                return Err(invalid(
                    "OFFSESSION_WEBHOOK_URL",
                    format!("`{url}` is webhooks[{i}].url of the config too: one endpoint per URL"),
                ));
            }
            if !secret.starts_with("whsec_") || secret.len() < 14 {
                return Err(invalid(
                    "OFFSESSION_WEBHOOK_SECRET",
                    "must be `whsec_` and at least 8 more characters".into(),
                ));
            }
            endpoints.push(WebhookEndpoint {
                id: endpoint_id(&url),
                url,
                secret,
                enabled_events: vec!["*".into()],
            });
        }
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
            return Err(invalid(
                "OFFSESSION_WEBHOOK_URL",
                "set both OFFSESSION_WEBHOOK_URL and OFFSESSION_WEBHOOK_SECRET, or neither".into(),
            ))
        }
        _ => {}
    }
    Ok(endpoints)
}

/// An endpoint's stable id: `we_` and 16 hex digits of its URL's SHA-256.
fn endpoint_id(url: &str) -> String {
    format!("we_{}", &hash_key(url)[..16])
}

/// Runs the API, the deliverers and the worker until `shutdown`; see the module docs.
pub async fn run(
    config_path: &Path,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkerReport, RunnerError> {
    // On `memory:` nothing outlives the process, and the mock is the only processor
    // that takes seeded ids; a durable store would meet the same ids again after a
    // restart or from a second instance.
    if !matches!(config.store.parsed_url()?, StoreUrl::Memory) {
        worker::no_seeded_ids(config, "serve")?;
    }
    let keys = api_keys(config)?;
    let endpoints = webhook_endpoints(config)?;
    let addr: std::net::SocketAddr = config
        .server
        .listen
        .parse()
        .map_err(|e: std::net::AddrParseError| invalid("server.listen", e.to_string()))?;
    let _worker_lock = wiring::hold_sqlite_worker_lock(config_path, config)?;
    worker::serve_metrics(config).await?;
    let wired = wiring::build_live(config_path, config).await?;
    let state = AppState::new(
        wired.engine.clone(),
        wired.store.clone(),
        ServerSettings {
            keys,
            max_body_bytes: config.server.max_body_bytes,
            requests_per_second: config.server.requests_per_second,
            idempotency_ttl: config.engine.idempotency_ttl,
        },
    )
    .with_endpoints(endpoints.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| invalid("server.listen", format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(RunnerError::setup("reading the listener's address"))?;
    println!("listening on http://{bound}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let http = {
        let stop = worker::stopped(stop_rx.clone());
        tokio::spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(stop)
                .await
        })
    };
    // Instances sharing a store split the endpoints between them (the worker below
    // keeps this instance's heartbeat).
    let delivery = DeliverySettings {
        concurrency: config.server.webhook_concurrency,
        keep_logs: config.server.webhook_log_retention,
        ..DeliverySettings::default()
    };
    let owners = Owners::track(
        wired.engine.clone(),
        config.worker.instance_timeout,
        config.worker.heartbeat_interval,
    )
    .await;
    let configured_ids: Vec<String> = endpoints.iter().map(|e| e.id.clone()).collect();
    for endpoint in endpoints {
        tracing::info!(endpoint = %endpoint.id, url = %endpoint.url, "delivering webhooks");
        tokio::spawn(deliver(
            wired.store.clone(),
            endpoint,
            delivery,
            owners.clone(),
            worker::stopped(stop_rx.clone()),
        ));
    }
    // Saved answers of the POSTs other than creates expire with their keys (a
    // create's key lives with its payment and expires in the store).
    // and outbox events after `server.event_retention`.
    tokio::spawn(offsession_server::sweep_forever(
        wired.store.clone(),
        wired.engine.clone(),
        offsession_server::Retention {
            answers: config.engine.idempotency_ttl,
            events: config.server.event_retention,
            every: std::time::Duration::from_secs(3_600),
            endpoints: configured_ids,
        },
        worker::stopped(stop_rx.clone()),
    ));
    tokio::spawn(offsession_server::destinations::supervise(
        wired.store.clone(),
        delivery,
        owners,
        worker::stopped(stop_rx.clone()),
    ));
    let report = worker::run_wired(config_path, config, wired, worker::stopped(stop_rx)).await?;
    match http.await {
        Ok(Ok(())) => Ok(report),
        Ok(Err(err)) => Err(RunnerError::Setup {
            action: "serving HTTP",
            message: err.to_string(),
        }),
        Err(err) => Err(RunnerError::Setup {
            action: "serving HTTP",
            message: err.to_string(),
        }),
    }
}
