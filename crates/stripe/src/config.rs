//! The adapter's settings, their defaults and their checks, written once: tests build
//! them with [`StripeConfig::new`], the runner deserializes its `[processor]` section
//! into them, and both get the same defaults and the same [`StripeConfig::check`].

use std::time::Duration;

use offsession_core::PaymentMethodType;
use serde::Deserialize;

use crate::secret::{looks_like_secret, SecretKey};

/// The most transport retries of one request: each reuses the idempotency key, but a
/// long chain of them holds a scheduler slot for minutes against a failing Stripe.
pub const MAX_NETWORK_RETRIES: u32 = 10;

/// Settings of one Stripe account.
///
/// Deserializing fills every missing key from [`StripeConfig::default`] and refuses
/// unknown keys (a misspelt setting must not silently keep its default). Durations are
/// written `5s`, `10m`, `12h` (see [`offsession_core::duration`]). Serializing is not
/// offered: the secret key must never be written back, and the sub-second transport
/// retry waits have no spelling in that duration format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// The processor's name in the engine: routing rules, metrics and stored
    /// attempts refer to it, so it must be unique among the configured processors.
    pub id: String,
    /// The secret key itself. Discouraged: a key in a config file ends up in backups
    /// and repositories; prefer `secret_key_env`. When set, it wins over
    /// `secret_key_env`.
    pub secret_key: Option<SecretKey>,
    /// Name of the environment variable holding the secret key, read by
    /// [`StripeConfig::resolve_secret_key`] when `secret_key` is not set.
    pub secret_key_env: String,
    /// Where requests go. Anything but Stripe's own API is for test fakes and must be
    /// https unless it is a loopback address (see [`check_api_base`]).
    pub api_base: String,
    /// Sent as `Stripe-Version` so the answers' shape does not change when the
    /// account's default API version is upgraded.
    pub stripe_version: String,
    /// Bounds the wait for a connection, which carries no charge yet: a refused or
    /// slow connection is a fault the engine may replay at once.
    #[serde(with = "offsession_core::duration::text")]
    pub connect_timeout: Duration,
    /// Bounds a whole request; past it the charge may or may not have been made, and
    /// the attempt is reported `Unknown` and replayed with the same idempotency key.
    #[serde(with = "offsession_core::duration::text")]
    pub request_timeout: Duration,
    /// Transport retries of one request under the same idempotency key before the
    /// failure is reported to the engine (at most [`MAX_NETWORK_RETRIES`]).
    pub max_network_retries: u32,
    /// The first transport retry waits about `retry_base × 2`, the n-th about
    /// `retry_base × (1 + n²)` (stripe-go's schedule), jittered.
    #[serde(with = "offsession_core::duration::text")]
    pub retry_base: Duration,
    /// No transport retry waits longer than this, whatever the schedule says.
    #[serde(with = "offsession_core::duration::text")]
    pub retry_cap: Duration,
    /// How long a payment method's preflight facts (type, card, SetupIntents) are
    /// reused without asking Stripe again; `0s` asks every time.
    #[serde(with = "offsession_core::duration::text")]
    pub preflight_cache_ttl: Duration,
    /// After a 401/403 (a revoked or wrong key), authorizations are refused without
    /// calling Stripe for this long, so a bad key does not burn the rate limit.
    #[serde(with = "offsession_core::duration::text")]
    pub misconfigured_cooldown: Duration,
    /// The payment method types the engine routes to this account; preflight refuses
    /// any other type before a charge is tried.
    pub payment_method_types: Vec<PaymentMethodType>,
}

impl Default for StripeConfig {
    /// Stripe's API with stripe-go's retry schedule and no secret key (read from
    /// `STRIPE_SECRET_KEY` by [`StripeConfig::resolve_secret_key`]).
    fn default() -> StripeConfig {
        StripeConfig {
            id: "stripe".into(),
            secret_key: None,
            secret_key_env: "STRIPE_SECRET_KEY".into(),
            api_base: "https://api.stripe.com".into(),
            stripe_version: "2022-11-15".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_network_retries: 2,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(5),
            preflight_cache_ttl: Duration::from_secs(600),
            misconfigured_cooldown: Duration::from_secs(300),
            payment_method_types: vec![
                PaymentMethodType::Card,
                PaymentMethodType::UsBankAccount,
                PaymentMethodType::SepaDebit,
            ],
        }
    }
}

/// A setting [`StripeConfig::check`] or [`StripeConfig::resolve_secret_key`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct StripeConfigRefused {
    /// The setting's name as written in the configuration (`api_base`,
    /// `secret_key_env`, …); a caller reading it from a section prefixes the section.
    pub key: &'static str,
    /// What is wrong with it. Never contains a secret key.
    pub message: String,
}

fn refuse<T>(key: &'static str, message: impl Into<String>) -> Result<T, StripeConfigRefused> {
    Err(StripeConfigRefused {
        key,
        message: message.into(),
    })
}

impl StripeConfig {
    /// The defaults with an explicit `id` and `secret_key`: for tests and embedding.
    pub fn new(id: &str, secret_key: SecretKey) -> StripeConfig {
        StripeConfig {
            id: id.into(),
            secret_key: Some(secret_key),
            ..StripeConfig::default()
        }
    }

    /// Refuses values with which the adapter would hang, send the key somewhere
    /// unsafe, or retry without end; the error names the setting. It does not read
    /// the secret key (see [`StripeConfig::resolve_secret_key`]).
    pub fn check(&self) -> Result<(), StripeConfigRefused> {
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return refuse(key, "must be longer than 0s");
            }
        }
        check_api_base(&self.api_base).or_else(|message| refuse("api_base", message))?;
        if self.max_network_retries > MAX_NETWORK_RETRIES {
            return refuse(
                "max_network_retries",
                format!(
                    "must be at most {MAX_NETWORK_RETRIES} (got {})",
                    self.max_network_retries
                ),
            );
        }
        for method_type in &self.payment_method_types {
            method_type
                .check_known()
                .or_else(|message| refuse("payment_method_types", message))?;
        }
        Ok(())
    }

    /// The secret key: `secret_key` when set, else the value of the environment
    /// variable named by `secret_key_env`. The error never shows a key, not even one
    /// pasted into `secret_key_env` by mistake.
    pub fn resolve_secret_key(&self) -> Result<SecretKey, StripeConfigRefused> {
        if let Some(key) = &self.secret_key {
            if key.expose().trim().is_empty() {
                return refuse("secret_key", "is empty");
            }
            return Ok(key.clone());
        }
        let name = &self.secret_key_env;
        match std::env::var(name) {
            Ok(value) if value.trim().is_empty() => refuse(
                "secret_key_env",
                format!("environment variable `{name}` is empty"),
            ),
            Ok(value) => Ok(SecretKey::new(value)),
            Err(_) if looks_like_secret(name) => refuse(
                "secret_key_env",
                "must name an environment variable, and the value given looks like a secret key (not shown)",
            ),
            Err(std::env::VarError::NotUnicode(_)) => refuse(
                "secret_key_env",
                format!("environment variable `{name}` is not valid Unicode"),
            ),
            Err(std::env::VarError::NotPresent) => refuse(
                "secret_key_env",
                format!("environment variable `{name}` is not set (or set `secret_key`)"),
            ),
        }
    }
}

/// The Stripe API base must be an https URL with a host and nothing after the path
/// (no query, no fragment, no credentials); plain http is allowed for loopback
/// addresses only (test fakes), because every request carries the secret key.
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
