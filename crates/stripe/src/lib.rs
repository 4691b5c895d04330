//! The Stripe processor adapter: charges a customer's saved payment method
//! off-session with a confirmed PaymentIntent.
//!
//! Safety: every attempt is sent with `Idempotency-Key` = the engine's attempt key,
//! on the first send and on every transport retry, so Stripe executes an attempt at
//! most once whatever fails in between. Transport retries follow stripe-go (sleep
//! `retry_base × (1 + n²)` capped at `retry_cap`, jittered, `Stripe-Should-Retry`
//! obeyed). A request that may have reached Stripe and got no answer is reported as
//! `Unknown`; the engine then replays it with the same key, and a PaymentIntent still
//! `processing` is looked up by id.
//!
//! The adapter decides no retries of the customer's payment: it reports declines with
//! Stripe's codes, and the engine's decline table and policy decide.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod transformers;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest,
    ErrorCode, OffSessionPayment, PaymentMethodDetails, Processor, ProcessorError,
};
use reqwest::{Method, StatusCode};

use crate::transformers::{
    capture_params, payment_intent_params, ErrorBody, Form, List, PaymentIntent, PaymentMethod,
    SetupIntent,
};

/// A Stripe secret key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> SecretKey {
        SecretKey(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take_while(|c| *c != '_').collect();
        write!(f, "SecretKey({prefix}_…redacted)")
    }
}

impl<'de> serde::Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretKey)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Adapter settings.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// Processor id in the engine.
    pub id: String,
    /// Secret key (`sk_test_…`, `sk_live_…`, or a restricted key).
    pub secret_key: SecretKey,
    /// API base URL.
    pub api_base: String,
    /// Pinned `Stripe-Version`.
    pub stripe_version: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Transport retries of one request (same idempotency key).
    pub max_network_retries: u32,
    /// First transport retry wait.
    pub retry_base: Duration,
    /// Longest transport retry wait.
    pub retry_cap: Duration,
    /// How long preflight results are cached per payment method.
    pub preflight_cache_ttl: Duration,
    /// How long the adapter refuses to call Stripe after a 401/403.
    pub misconfigured_cooldown: Duration,
    /// Payment method types this account charges.
    pub payment_method_types: Vec<String>,
}

impl StripeConfig {
    /// Defaults (Stripe's API, stripe-go's retry policy) for `id` and `secret_key`.
    pub fn new(id: &str, secret_key: SecretKey) -> StripeConfig {
        StripeConfig {
            id: id.into(),
            secret_key,
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
                "card".into(),
                "us_bank_account".into(),
                "sepa_debit".into(),
            ],
        }
    }
}

/// Adapter construction failures.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// What came back from one logical request (after transport retries).
#[derive(Debug)]
enum Reply {
    /// An HTTP response.
    Response { status: StatusCode, body: String },
    /// The request never left (connection refused, DNS): nothing executed.
    NotSent(String),
    /// The request may have been executed; no answer.
    Lost(String),
}

#[derive(Debug, Clone)]
struct PreflightFacts {
    method: PaymentMethod,
    setups: Vec<SetupIntent>,
    fetched: Instant,
}

/// The Stripe processor.
#[derive(Debug)]
pub struct StripeProcessor {
    config: StripeConfig,
    capabilities: Capabilities,
    http: reqwest::Client,
    preflight_cache: Mutex<HashMap<String, PreflightFacts>>,
    misconfigured_until: Mutex<Option<Instant>>,
}

use offsession_core::hash::fnv1a as fnv;

impl StripeProcessor {
    /// An adapter with one pooled HTTP client.
    pub fn new(config: StripeConfig) -> Result<StripeProcessor, StripeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("offsession/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Client(e.to_string()))?;
        let capabilities = Capabilities {
            payment_method_types: config.payment_method_types.clone(),
            currencies: Vec::new(),
            connect: true,
            manual_capture: true,
        };
        Ok(StripeProcessor {
            config,
            capabilities,
            http,
            preflight_cache: Mutex::new(HashMap::new()),
            misconfigured_until: Mutex::new(None),
        })
    }

    fn backoff(&self, key: &str, retry: u32) -> Duration {
        let n = f64::from(retry);
        let base = self.config.retry_base.as_secs_f64() * (1.0 + n * n);
        let capped = base.min(self.config.retry_cap.as_secs_f64());
        // Jitter in [0.5, 1.0), derived from the key so that it needs no RNG.
        let jitter = 0.5 + (fnv(&format!("{key}:{retry}")) >> 11) as f64 / (1u64 << 54) as f64;
        Duration::from_secs_f64(capped * jitter)
    }

    /// Sends one logical request, with transport retries that reuse `idempotency_key`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        form: Option<&Form>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let url = format!("{}{}", self.config.api_base.trim_end_matches('/'), path);
        let mut retry = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.config.secret_key.expose())
                .header("Stripe-Version", &self.config.stripe_version);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(form) = form {
                request = request.form(form);
            }
            let (reply, should_retry) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let header = response
                        .headers()
                        .get("Stripe-Should-Retry")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v == "true");
                    match response.text().await {
                        Ok(body) => {
                            let code = serde_json::from_str::<ErrorBody>(&body)
                                .ok()
                                .and_then(|b| b.error.code);
                            let guess = status.is_server_error()
                                || status == StatusCode::CONFLICT
                                || (status == StatusCode::TOO_MANY_REQUESTS
                                    && code.as_deref() == Some("lock_timeout"));
                            (Reply::Response { status, body }, header.unwrap_or(guess))
                        }
                        Err(err) => (Reply::Lost(format!("reading the response: {err}")), true),
                    }
                }
                Err(err) if err.is_connect() => (Reply::NotSent(err.to_string()), true),
                Err(err) => (Reply::Lost(err.to_string()), true),
            };
            if !should_retry || retry >= self.config.max_network_retries {
                return reply;
            }
            tracing::debug!(
                path,
                retry,
                "retrying a Stripe request with the same idempotency key"
            );
            tokio::time::sleep(self.backoff(idempotency_key.unwrap_or(path), retry + 1)).await;
            retry += 1;
        }
    }

    fn is_misconfigured(&self) -> bool {
        let until = *self
            .misconfigured_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    fn mark_misconfigured(&self, status: StatusCode) {
        tracing::error!(processor = %self.config.id, %status, "Stripe refused the API key; check the secret key and its permissions");
        *self
            .misconfigured_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + self.config.misconfigured_cooldown);
    }

    /// Maps a non-success HTTP reply to an attempt outcome.
    fn error_outcome(&self, status: StatusCode, body: &str) -> AttemptOutcome {
        let error = serde_json::from_str::<ErrorBody>(body)
            .unwrap_or_default()
            .error;
        let code = error.code.clone().unwrap_or_default();
        let describe = |what: &str| {
            format!(
                "stripe {status} {what}: {}",
                error.message.clone().unwrap_or_else(|| code.clone())
            )
        };
        match status.as_u16() {
            402 => AttemptOutcome::Declined {
                codes: error.decline_codes(),
                reference: error.reference(),
            },
            401 | 403 => {
                self.mark_misconfigured(status);
                AttemptOutcome::ProcessorFault {
                    retryable: false,
                    rate_limited: false,
                    message: describe("processor misconfigured"),
                }
            }
            409 | 429 => AttemptOutcome::ProcessorFault {
                retryable: true,
                rate_limited: status == StatusCode::TOO_MANY_REQUESTS
                    && code.as_str() != "lock_timeout",
                message: describe(&code),
            },
            400..=499 => AttemptOutcome::ProcessorFault {
                retryable: false,
                rate_limited: false,
                message: describe(
                    error
                        .error_type
                        .as_deref()
                        .unwrap_or("invalid_request_error"),
                ),
            },
            _ => AttemptOutcome::Unknown {
                message: describe("server error"),
            },
        }
    }

    async fn reconcile_processing(&self, intent: &PaymentIntent) -> AttemptOutcome {
        match self
            .send(
                Method::GET,
                &format!("/v1/payment_intents/{}", intent.id),
                None,
                None,
            )
            .await
        {
            Reply::Response { status, body } if status.is_success() => {
                match serde_json::from_str::<PaymentIntent>(&body)
                    .ok()
                    .and_then(|pi| pi.outcome())
                {
                    Some(outcome) => outcome,
                    None => AttemptOutcome::Unknown {
                        message: format!("payment intent {} is processing", intent.id),
                    },
                }
            }
            _ => AttemptOutcome::Unknown {
                message: format!("payment intent {} is processing; lookup failed", intent.id),
            },
        }
    }

    async fn facts(&self, payment: &OffSessionPayment) -> Result<PreflightFacts, ApiError> {
        let id = &payment.payment_method;
        if let Some(facts) = self
            .preflight_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|f| f.fetched.elapsed() < self.config.preflight_cache_ttl)
        {
            return Ok(facts.clone());
        }
        let unavailable =
            |what: String| ApiError::new(ErrorCode::ApiError, format!("stripe: {what}"));
        let method = match self
            .send(
                Method::GET,
                &format!("/v1/payment_methods/{id}"),
                None,
                None,
            )
            .await
        {
            Reply::Response { status, body } if status.is_success() => {
                serde_json::from_str::<PaymentMethod>(&body)
                    .map_err(|e| unavailable(format!("unreadable payment method: {e}")))?
            }
            Reply::Response { status, .. } if status == StatusCode::NOT_FOUND => {
                return Err(ApiError::invalid(
                    "payment_method",
                    format!("no such payment method `{id}`"),
                ))
            }
            Reply::Response { status, body } => {
                if matches!(status.as_u16(), 401 | 403) {
                    self.mark_misconfigured(status);
                }
                return Err(unavailable(format!(
                    "payment method lookup answered {status}: {body}"
                )));
            }
            Reply::NotSent(e) | Reply::Lost(e) => return Err(unavailable(e)),
        };
        let query = format!(
            "/v1/setup_intents?payment_method={}&customer={}&limit=100",
            id, payment.customer
        );
        let setups = match self.send(Method::GET, &query, None, None).await {
            Reply::Response { status, body } if status.is_success() => {
                serde_json::from_str::<List<SetupIntent>>(&body)
                    .map_err(|e| unavailable(format!("unreadable setup intents: {e}")))?
                    .data
            }
            Reply::Response { status, body } => {
                return Err(unavailable(format!(
                    "setup intent lookup answered {status}: {body}"
                )))
            }
            Reply::NotSent(e) | Reply::Lost(e) => return Err(unavailable(e)),
        };
        let facts = PreflightFacts {
            method,
            setups,
            fetched: Instant::now(),
        };
        self.preflight_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), facts.clone());
        Ok(facts)
    }
}

#[async_trait]
impl Processor for StripeProcessor {
    fn id(&self) -> &str {
        &self.config.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        let facts = self.facts(payment).await?;
        let method = &facts.method;
        if method.customer_id() != Some(payment.customer.as_str()) {
            return Err(ApiError::new(
                ErrorCode::OspPaymentMethodNotAttached,
                format!(
                    "Payment method `{}` is not attached to customer `{}`; attach it with a SetupIntent first.",
                    method.id, payment.customer
                ),
            )
            .with_param("payment_method"));
        }
        if !self.capabilities.supports_type(&method.method_type) {
            return Err(ApiError::new(
                ErrorCode::OspInvalidPaymentMethodType,
                format!(
                    "payment method type `{}` is not supported",
                    method.method_type
                ),
            )
            .with_param("payment_method"));
        }
        let setups: Vec<&SetupIntent> = facts
            .setups
            .iter()
            .filter(|s| s.is_off_session_setup())
            .collect();
        if setups.is_empty() {
            return Err(ApiError::new(
                ErrorCode::OspPmNotSetupForOffSession,
                format!(
                    "Payment method `{}` has no succeeded SetupIntent with `usage=off_session`; set it up on-session first.",
                    method.id
                ),
            )
            .with_param("payment_method"));
        }
        let on_platform = setups.iter().any(|s| s.account().is_none());
        match &payment.on_behalf_of {
            Some(account) if !setups.iter().any(|s| s.account() == Some(account.as_str())) => {
                return Err(if on_platform {
                    ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnPlatform,
                        format!(
                            "Payment method `{}` was set up on the platform, not for `{account}`.",
                            method.id
                        ),
                    )
                } else {
                    ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                        format!(
                            "Payment method `{}` was set up for another connected account.",
                            method.id
                        ),
                    )
                }
                .with_param("on_behalf_of"));
            }
            None if !on_platform => {
                return Err(ApiError::new(
                    ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                    format!(
                        "Payment method `{}` was set up only on a connected account; pass the same `on_behalf_of`.",
                        method.id
                    ),
                )
                .with_param("on_behalf_of"));
            }
            _ => {}
        }
        Ok(method.details())
    }

    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        if self.is_misconfigured() {
            return AttemptOutcome::ProcessorFault {
                retryable: false,
                rate_limited: false,
                message: "stripe: processor misconfigured (401/403); not called".into(),
            };
        }
        let form = payment_intent_params(request.payment, request.attempt_number);
        match self
            .send(
                Method::POST,
                "/v1/payment_intents",
                Some(&form),
                Some(request.idempotency_key),
            )
            .await
        {
            Reply::Response { status, body } if status.is_success() => {
                match serde_json::from_str::<PaymentIntent>(&body) {
                    Ok(intent) => match intent.outcome() {
                        Some(outcome) => outcome,
                        None => self.reconcile_processing(&intent).await,
                    },
                    Err(err) => AttemptOutcome::Unknown {
                        message: format!("stripe: unreadable payment intent: {err}"),
                    },
                }
            }
            Reply::Response { status, body } => self.error_outcome(status, &body),
            Reply::NotSent(message) => AttemptOutcome::ProcessorFault {
                retryable: true,
                rate_limited: false,
                message: format!("stripe: not sent: {message}"),
            },
            Reply::Lost(message) => AttemptOutcome::Unknown {
                message: format!("stripe: no answer: {message}"),
            },
        }
    }

    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        let error = |message: String| ProcessorError {
            processor: self.config.id.clone(),
            operation: "capture",
            message,
        };
        let pi = request
            .reference
            .payment
            .as_deref()
            .ok_or_else(|| error("no payment intent to capture".into()))?;
        let form = capture_params(request.amount.value);
        match self
            .send(
                Method::POST,
                &format!("/v1/payment_intents/{pi}/capture"),
                Some(&form),
                Some(request.idempotency_key),
            )
            .await
        {
            Reply::Response { status, .. } if status.is_success() => Ok(()),
            Reply::Response { status, body } => Err(error(format!("{status}: {body}"))),
            Reply::NotSent(e) | Reply::Lost(e) => Err(error(e)),
        }
    }

    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        let error = |message: String| ProcessorError {
            processor: self.config.id.clone(),
            operation: "cancel",
            message,
        };
        let Some(pi) = request.reference.payment.as_deref() else {
            return Ok(());
        };
        match self
            .send(
                Method::POST,
                &format!("/v1/payment_intents/{pi}/cancel"),
                Some(&Vec::new()),
                Some(request.idempotency_key),
            )
            .await
        {
            Reply::Response { status, .. } if status.is_success() => Ok(()),
            Reply::Response { status, body } => Err(error(format!("{status}: {body}"))),
            Reply::NotSent(e) | Reply::Lost(e) => Err(error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_key_never_prints() {
        let key = SecretKey::new("sk_test_51Habcdefghijklmnop");
        assert_eq!(format!("{key:?}"), "SecretKey(sk_…redacted)");
        assert!(!format!("{key}").contains("51Habc"));
        let config = StripeConfig::new("stripe", key);
        assert!(!format!("{config:?}").contains("51Habc"));
    }

    #[test]
    fn backoff_grows_quadratically_with_jitter_and_a_cap() {
        let processor =
            StripeProcessor::new(StripeConfig::new("s", SecretKey::new("sk_test_x"))).unwrap();
        let first = processor.backoff("k", 1);
        assert!(
            first >= Duration::from_millis(500) && first < Duration::from_millis(1000),
            "{first:?}"
        );
        let third = processor.backoff("k", 3);
        assert!(
            third >= Duration::from_millis(2500) && third <= Duration::from_secs(5),
            "{third:?}"
        );
        assert_eq!(processor.backoff("k", 2), processor.backoff("k", 2));
    }
}
