//! The engine's settings, their defaults and their checks, written once: the
//! builder takes them as they are and the runner deserializes `[engine]` into them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Engine settings: the runner reads them from `[engine]` as they are, so the
/// defaults below and [`EngineConfig::check`] are the only ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Live mode refuses test clocks; ids carry no `test_` marker.
    pub livemode: bool,
    /// Name of this engine instance, written on leases. The default is unique per
    /// engine (`offsession-` and random digits); a configured name must be unique
    /// among the instances sharing a store.
    pub instance_id: String,
    /// `None` (the default): ids are time-ordered random UUIDv7s, unique across
    /// processes and restarts. `Some(seed)`: reproducible ids for simulations against
    /// the mock; two runs with the same seed reuse ids and attempt idempotency keys,
    /// so a seeded engine must never face a real processor.
    pub id_seed: Option<u64>,
    /// ACH (us_bank_account) retries switched on.
    pub ach_retries_enabled: bool,
    /// SEPA Debit retries switched on.
    pub sepa_debit_retries_enabled: bool,
    /// Policy for `scheduled` without a name, and for `best_available` on cards when
    /// no smart policy is installed.
    pub default_retry_policy: String,
    /// How long a claim on a payment lasts before another scheduler may take it.
    #[serde(with = "offsession_core::duration::text")]
    pub lease: Duration,
    /// How long a manual-capture authorization is held before it expires.
    #[serde(with = "offsession_core::duration::text")]
    pub authorization_validity: Duration,
    /// How long a create request's idempotency key is kept; a key older than this
    /// counts as new (30 days by default, as Stripe's v2 API).
    #[serde(with = "offsession_core::duration::text")]
    pub idempotency_ttl: Duration,
    /// Waits before replaying an attempt after a processor fault or unknown outcome,
    /// with the same idempotency key. After the last one a fault counts as a
    /// transient decline; an unknown outcome keeps being reconciled at the last wait.
    #[serde(with = "offsession_core::duration::text_list")]
    pub replay_backoff: Vec<Duration>,
    /// An attempt that settles nothing (fault, refusal, unknown outcome) is replayed
    /// with the same key at most this many times; then the payment ends `failed`
    /// (an unknown outcome flagged for reconciliation). A 429 answer never ends the
    /// replays by count, only by `replay_deadline`.
    pub max_replays: u32,
    /// Replays of one attempt end this long after its first unsettled answer,
    /// whatever the count.
    #[serde(with = "offsession_core::duration::text")]
    pub replay_deadline: Duration,
    /// `compartment_id` shown on every payment (the owning workspace).
    pub compartment_id: String,
    /// Attempts run at once.
    pub concurrency: usize,
    /// Payments claimed per store round trip.
    pub claim_batch: usize,
    /// Decline categories after which an orchestrated payment cascades to the next
    /// processor at once (never hard declines).
    pub cascade_categories: Vec<offsession_core::DeclineCategory>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            livemode: false,
            instance_id: format!("offsession-{:016x}", uuid::Uuid::now_v7().as_u128() as u64),
            id_seed: None,
            ach_retries_enabled: false,
            sepa_debit_retries_enabled: false,
            default_retry_policy: "stripe_recommended".into(),
            lease: Duration::from_secs(300),
            authorization_validity: Duration::from_secs(7 * 86_400),
            idempotency_ttl: Duration::from_secs(30 * 86_400),
            replay_backoff: [60, 300, 1_800, 7_200]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_replays: 10,
            replay_deadline: Duration::from_secs(3 * 86_400),
            compartment_id: "wksp_test_offsession".into(),
            concurrency: 64,
            claim_batch: 1_024,
            cascade_categories: vec![
                offsession_core::DeclineCategory::SoftTransient,
                offsession_core::DeclineCategory::SoftIssuer,
            ],
        }
    }
}

impl EngineConfig {
    /// Refuses values that would make the engine spin, stall or never settle a
    /// payment; the message names the setting.
    pub fn check(&self) -> Result<(), ConfigRefused> {
        let refuse = |key: &'static str, message: String| Err(ConfigRefused { key, message });
        if self.concurrency == 0 {
            return refuse("concurrency", "must be at least 1".into());
        }
        if self.claim_batch == 0 {
            return refuse("claim_batch", "must be at least 1".into());
        }
        if self.idempotency_ttl < Duration::from_secs(86_400) {
            return refuse(
                "idempotency_ttl",
                format!(
                    "must be at least 1d (got {}): a client retrying a create after a longer outage would charge twice",
                    offsession_core::duration::format(self.idempotency_ttl)
                ),
            );
        }
        if self.lease < Duration::from_secs(1) {
            return refuse(
                "lease",
                format!(
                    "must be at least 1s (got {:?}): a shorter lease lapses before an attempt is written, and schedulers take the payment from each other",
                    self.lease
                ),
            );
        }
        if self.authorization_validity.is_zero() {
            return refuse("authorization_validity", "must be longer than 0s".into());
        }
        if self.replay_backoff.is_empty() {
            return refuse("replay_backoff", "needs at least one wait".into());
        }
        if let Some(short) = self
            .replay_backoff
            .iter()
            .find(|w| **w < Duration::from_secs(1))
        {
            return refuse(
                "replay_backoff",
                format!("every wait must be at least 1s (got {short:?})"),
            );
        }
        if self.max_replays == 0 {
            return refuse("max_replays", "must be at least 1".into());
        }
        if self.replay_deadline.is_zero() {
            return refuse("replay_deadline", "must be longer than 0s".into());
        }
        if self.instance_id.trim().is_empty() {
            return refuse("instance_id", "must not be empty".into());
        }
        // A hard decline, missing card data or a customer who must authenticate is
        // the card's answer, not the processor's: sending it elsewhere breaks the
        // network rules (no retry after a hard decline, on any processor).
        if let Some(category) = self.cascade_categories.iter().find(|c| !c.is_soft()) {
            return refuse(
                "cascade_categories",
                format!(
                    "`{}` cannot cascade: only soft declines (`soft_funds`, `soft_issuer`, `soft_transient`) may go to another processor",
                    category.as_str()
                ),
            );
        }
        Ok(())
    }
}

impl EngineConfig {
    /// Refuses a `default_retry_policy` that is not among `names`, the named
    /// policies configured. With no names, Stripe's recommended schedule is
    /// installed under its own name, which the default must then be.
    pub fn check_default_policy<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<(), ConfigRefused> {
        let mut names: Vec<&str> = names.collect();
        if names.is_empty() {
            names.push("stripe_recommended");
        }
        if names.contains(&self.default_retry_policy.as_str()) {
            return Ok(());
        }
        names.sort();
        Err(ConfigRefused {
            key: "default_retry_policy",
            message: format!(
                "`{}` is not one of the configured retry policies ({})",
                self.default_retry_policy,
                names.join(", ")
            ),
        })
    }
}

/// A setting [`EngineConfig::check`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigRefused {
    /// The setting's name (`lease`, `concurrency`, …).
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}
