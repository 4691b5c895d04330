//! Delivering to the destinations made through the API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use offsession_core::{Store, StoreError};
use serde_json::Value;

use super::{endpoint_of, PREFIX};
use crate::webhooks::{deliver, DeliverySettings, Owners};

/// The enabled destinations the store holds, as stored.
pub(crate) async fn enabled(store: &dyn Store) -> Result<Vec<Value>, StoreError> {
    Ok(store
        .list_state(PREFIX)
        .await?
        .into_iter()
        .filter_map(|(_, text)| serde_json::from_str::<Value>(&text).ok())
        .filter(|d| d["status"] == "enabled")
        .collect())
}

/// Delivers to the destinations created through the API: every second it reads them
/// from the store, starts a deliverer for each enabled one it has not started, and
/// stops the deliverer of one disabled or deleted (on any instance).
pub async fn supervise(
    store: Arc<dyn Store>,
    settings: DeliverySettings,
    owners: Owners,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    // Each deliverer with the destination as it was started: one that changed (URL,
    // event types) is restarted; its cursor is in the store, so nothing is skipped.
    let mut running: HashMap<String, (Value, tokio::task::AbortHandle)> = HashMap::new();
    loop {
        if let Ok(found) = enabled(store.as_ref()).await {
            let enabled: HashMap<String, Value> = found
                .into_iter()
                .map(|d| (d["id"].as_str().unwrap_or_default().to_owned(), d))
                .collect();
            running.retain(|id, (started, handle)| {
                let keep = enabled.get(id).is_some_and(|d| {
                    d["webhook_endpoint"] == started["webhook_endpoint"]
                        && d["enabled_events"] == started["enabled_events"]
                });
                if !keep {
                    handle.abort();
                }
                keep
            });
            for (id, d) in enabled {
                if running.contains_key(&id) {
                    continue;
                }
                let endpoint = endpoint_of(&d);
                tracing::info!(destination = %id, url = %endpoint.url, "delivering to an event destination");
                let task = tokio::spawn(deliver(
                    store.clone(),
                    endpoint,
                    settings,
                    owners.clone(),
                    std::future::pending(),
                ));
                running.insert(id, (d, task.abort_handle()));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = &mut stop => break,
        }
    }
    for (_, handle) in running.values() {
        handle.abort();
    }
}
