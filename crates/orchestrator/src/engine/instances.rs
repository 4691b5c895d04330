//! Instances sharing one store: heartbeats, and each processor's rate limit split
//! among the instances alive, so that together they stay within the account's quota.

use super::*;

/// The store key prefix of instances' heartbeats.
pub const INSTANCE_PREFIX: &str = "instance/";

/// How long the beat of an instance that stopped, or stopped beating, stays in the
/// store (`offsession worker status` lists it) before a live instance's heartbeat
/// removes it: instance ids are new at every start by default, so without this every
/// restart would leave a key behind for good. At least twice the `live_within` a
/// heartbeat is given.
pub const BEAT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The time (ms) of a beat `value`: `<ms>` while alive, `stopped:<ms>` once stopped;
/// `None` for anything else (an earlier release's bare `stopped`).
fn beat_time(value: &str) -> Option<i64> {
    value
        .strip_prefix("stopped:")
        .unwrap_or(value)
        .parse::<i64>()
        .ok()
}

impl Engine {
    /// Records that this instance is alive now (engine state `instance/<instance_id>`
    /// = now in milliseconds), counts the instances whose heartbeat is at most
    /// `live_within` old (this one included), and shares every processor's rate limit
    /// among them. Call it periodically, more often than `live_within`. Returns the
    /// number of instances alive.
    pub async fn heartbeat(&self, live_within: Duration) -> Result<u32, StoreError> {
        let live = self.heartbeat_as(INSTANCE_PREFIX, live_within).await?;
        let alive = live.len().max(1) as u32;
        *self.inner.alive.lock().unwrap_or_else(|p| p.into_inner()) = live;
        self.share_rate_limits(alive);
        Ok(alive)
    }

    /// The ids of the instances alive at this instance's last heartbeat, sorted; this
    /// one alone before the first.
    pub fn instances_alive(&self) -> Vec<String> {
        let alive = self.inner.alive.lock().unwrap_or_else(|p| p.into_inner());
        if alive.is_empty() {
            vec![self.inner.config.instance_id.clone()]
        } else {
            alive.clone()
        }
    }

    /// The ids of the instances whose beat under `prefix` is at most `live_within`
    /// old, this one always among them, sorted.
    async fn live_under(
        &self,
        prefix: &str,
        live_within: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.inner.clock.now();
        let me = &self.inner.config.instance_id;
        let oldest = now.as_millis() - live_within.as_millis() as i64;
        let kept_since = now.as_millis() - BEAT_RETENTION.max(live_within * 2).as_millis() as i64;
        let mut alive = Vec::new();
        for (key, value) in self.inner.store.list_state(prefix).await? {
            let Some(id) = key.strip_prefix(prefix) else {
                continue;
            };
            if id != me && beat_time(&value).is_none_or(|at| at < kept_since) {
                // Only if unchanged: an instance that beat since keeps its key.
                if let Err(err) = self.inner.store.remove_state_if(&key, &value).await {
                    tracing::warn!(%key, error = %err, "removing an old heartbeat failed");
                }
                continue;
            }
            if id == me || value.parse::<i64>().is_ok_and(|at| at >= oldest) {
                alive.push(id.to_owned());
            }
        }
        if !alive.iter().any(|id| id == me) {
            alive.push(me.clone());
        }
        alive.sort();
        Ok(alive)
    }

    /// Records that this instance plays a role now (engine state `<prefix><instance_id>`
    /// = now in milliseconds; e.g. delivering webhooks, which a plain worker does not),
    /// and returns the ids of the instances whose beat under `prefix` is at most
    /// `live_within` old, this one among them, sorted.
    pub async fn heartbeat_as(
        &self,
        prefix: &str,
        live_within: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.inner.clock.now();
        let me = &self.inner.config.instance_id;
        self.inner
            .store
            .save_state(&format!("{prefix}{me}"), &now.as_millis().to_string())
            .await?;
        self.live_under(prefix, live_within).await
    }

    /// Marks this instance stopped, so the others take its share of the rate limits at
    /// their next heartbeat.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let me = format!("{INSTANCE_PREFIX}{}", self.inner.config.instance_id);
        let now = self.inner.clock.now();
        self.inner
            .store
            .save_state(&me, &format!("stopped:{}", now.as_millis()))
            .await
    }

    /// Paces every processor at `1 / instances` of its rate limit.
    pub fn share_rate_limits(&self, instances: u32) {
        for pacer in self.inner.processors.pacers.values() {
            pacer.share_among(instances);
        }
        metrics::gauge!("offsession_instances_sharing_rate_limits").set(f64::from(instances));
    }
}
