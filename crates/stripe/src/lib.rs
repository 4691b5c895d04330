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
//! Answers are read defensively: redirects are never followed (a 3xx is a refusal), at
//! most [`MAX_BODY_BYTES`] of a body is read, every quoted text is capped at
//! [`MAX_QUOTED_CHARS`], ids go into URLs as single percent-encoded path segments, and
//! a 2xx that is not a readable PaymentIntent with a known status is `Unknown` (never a
//! decline).
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

/// The most bytes read from any Stripe response body; the rest is never read.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most characters of Stripe's (or a proxy's) text quoted in a message or error.
pub const MAX_QUOTED_CHARS: usize = 500;

/// `text` for quoting in a message: control characters escaped, and cut (on a
/// character boundary) after [`MAX_QUOTED_CHARS`] characters, marked `…(truncated)`.
pub fn quote(text: &str) -> String {
    quote_at_most(text, MAX_QUOTED_CHARS)
}

/// [`quote`] with another limit.
fn quote_at_most(text: &str, max_chars: usize) -> String {
    offsession_core::text::quote(text, max_chars)
}

/// Whether a value given as the *name* of an environment variable looks like a secret
/// key pasted in by mistake (`sk_…`, `rk_…`, `pk_…`, very long, or characters no
/// variable name has), so that an error message must not repeat it.
pub fn looks_like_secret(value: &str) -> bool {
    let value = value.trim();
    ["sk_", "rk_", "pk_", "whsec_"]
        .iter()
        .any(|prefix| value.starts_with(prefix))
        || value.chars().count() > 64
        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
    /// An HTTP response. A redirect (3xx) is never followed; it arrives here.
    Response {
        status: StatusCode,
        /// At most [`MAX_BODY_BYTES`] of the body (lossy UTF-8).
        body: String,
        /// The body was longer than [`MAX_BODY_BYTES`]; the rest was not read.
        truncated: bool,
        /// `Location` of a redirect, quoted.
        location: Option<String>,
    },
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

/// Appends `segment` percent-encoded so that it stays one path segment whatever it
/// holds: every byte but `A–Z a–z 0–9 - . _ ~` becomes `%XX` (so `/`, `?`, `#`, `%`,
/// spaces and control characters never reach the path as themselves).
fn encode_segment(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of a body; `true` when there was more (unread).
async fn read_capped(mut response: reqwest::Response) -> Result<(String, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((String::from_utf8_lossy(&body).into_owned(), true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), false))
}

/// The message for a redirect, which is never followed.
fn redirected(what: &str, status: StatusCode, location: Option<&str>) -> String {
    format!(
        "{what} answered {status} redirecting to `{}`; redirects are not followed (check processor.api_base and any proxy)",
        location.unwrap_or("")
    )
}

/// A body quoted for a message, noting when it was cut at [`MAX_BODY_BYTES`].
fn quote_body(body: &str, truncated: bool) -> String {
    if truncated {
        format!(
            "(body over {MAX_BODY_BYTES} bytes; only that much read) {}",
            quote(body)
        )
    } else {
        quote(body)
    }
}

impl StripeProcessor {
    /// An adapter with one pooled HTTP client.
    pub fn new(config: StripeConfig) -> Result<StripeProcessor, StripeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("offsession/", env!("CARGO_PKG_VERSION")))
            // A redirect is never followed: a 3xx is a misconfiguration (or a proxy),
            // and following it would send the charge and the key somewhere else.
            .redirect(reqwest::redirect::Policy::none())
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

    /// The URL of `segments` under the API base: every segment percent-encoded as one
    /// path segment, `query` form-encoded. `None` if the base is unusable or a segment
    /// is empty, `.` or `..` (no request is sent then).
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Option<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.config.api_base).ok()?;
        if url.cannot_be_a_base() {
            return None;
        }
        let mut path = url.path().trim_end_matches('/').to_owned();
        for segment in segments {
            if segment.is_empty() || *segment == "." || *segment == ".." {
                return None;
            }
            path.push('/');
            encode_segment(segment, &mut path);
        }
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Some(url)
    }

    /// Sends one logical request, with transport retries that reuse `idempotency_key`.
    async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        form: Option<&Form>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let Some(url) = self.url(segments, query) else {
            return Reply::NotSent(format!(
                "refused to build a request for path {}",
                quote(&format!("{segments:?}"))
            ));
        };
        let label = segments.join("/");
        let mut retry = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
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
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .map(|v| quote_at_most(&String::from_utf8_lossy(v.as_bytes()), 200));
                    match read_capped(response).await {
                        Ok((body, truncated)) => {
                            let code = serde_json::from_str::<ErrorBody>(&body)
                                .ok()
                                .and_then(|b| b.error.code);
                            let guess = status.is_server_error()
                                || status == StatusCode::CONFLICT
                                || (status == StatusCode::TOO_MANY_REQUESTS
                                    && code.as_deref() == Some("lock_timeout"));
                            // A redirect is a misconfiguration; sending again won't help.
                            let retry = !status.is_redirection() && header.unwrap_or(guess);
                            (
                                Reply::Response {
                                    status,
                                    body,
                                    truncated,
                                    location,
                                },
                                retry,
                            )
                        }
                        Err(err) => (
                            Reply::Lost(format!(
                                "reading the response: {}",
                                quote(&err.to_string())
                            )),
                            true,
                        ),
                    }
                }
                Err(err) if err.is_connect() => (Reply::NotSent(quote(&err.to_string())), true),
                Err(err) => (Reply::Lost(quote(&err.to_string())), true),
            };
            if !should_retry || retry >= self.config.max_network_retries {
                return reply;
            }
            tracing::debug!(
                path = %quote(&label),
                retry,
                "retrying a Stripe request with the same idempotency key"
            );
            tokio::time::sleep(self.backoff(idempotency_key.unwrap_or(&label), retry + 1)).await;
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

    /// Maps a non-success, non-redirect HTTP reply to an attempt outcome.
    fn error_outcome(&self, status: StatusCode, body: &str, truncated: bool) -> AttemptOutcome {
        let error = serde_json::from_str::<ErrorBody>(body)
            .unwrap_or_default()
            .error;
        let code = error.code.clone().unwrap_or_default();
        let text = error
            .message
            .clone()
            .or_else(|| error.code.clone())
            .unwrap_or_else(|| quote_body(body, truncated));
        // Everything quoted from the answer is capped, whatever its size.
        let describe = |what: &str| quote(&format!("stripe {status} {what}: {text}"));
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

    /// Looks a `processing` PaymentIntent up by id. Anything but a readable
    /// PaymentIntent with a known status is `Unknown`.
    async fn reconcile_processing(&self, intent: &PaymentIntent) -> AttemptOutcome {
        let id = quote(&intent.id);
        match self
            .send(
                Method::GET,
                &["v1", "payment_intents", &intent.id],
                &[],
                None,
                None,
            )
            .await
        {
            Reply::Response {
                status,
                body,
                truncated: false,
                ..
            } if status.is_success() => match PaymentIntent::read(&body) {
                Ok(found) if found.id != intent.id => AttemptOutcome::Unknown {
                    message: format!(
                        "stripe: looking up payment intent {id} answered another one ({})",
                        quote(&found.id)
                    ),
                },
                Ok(found) => match found.outcome() {
                    Some(outcome) => outcome,
                    None => AttemptOutcome::Unknown {
                        message: format!("stripe: payment intent {id} is processing"),
                    },
                },
                Err(why) => AttemptOutcome::Unknown {
                    message: format!("stripe: payment intent {id} is processing; lookup: {why}"),
                },
            },
            Reply::Response {
                status, truncated, ..
            } => AttemptOutcome::Unknown {
                message: format!(
                    "stripe: payment intent {id} is processing; lookup answered {status}{}",
                    if truncated {
                        format!(" with a body over {MAX_BODY_BYTES} bytes")
                    } else {
                        String::new()
                    }
                ),
            },
            Reply::NotSent(e) | Reply::Lost(e) => AttemptOutcome::Unknown {
                message: format!("stripe: payment intent {id} is processing; lookup failed: {e}"),
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
        if id.is_empty() || id == "." || id == ".." {
            return Err(ApiError::invalid(
                "payment_method",
                format!("`{}` is not a payment method id", quote(id)),
            ));
        }
        let method = match self
            .send(Method::GET, &["v1", "payment_methods", id], &[], None, None)
            .await
        {
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } if status.is_success() => {
                if truncated {
                    return Err(unavailable(format!(
                        "payment method answer over {MAX_BODY_BYTES} bytes, not read"
                    )));
                }
                serde_json::from_str::<PaymentMethod>(&body).map_err(|e| {
                    unavailable(format!(
                        "unreadable payment method: {}",
                        quote(&e.to_string())
                    ))
                })?
            }
            Reply::Response { status, .. } if status == StatusCode::NOT_FOUND => {
                return Err(ApiError::invalid(
                    "payment_method",
                    format!("no such payment method `{}`", quote(id)),
                ))
            }
            Reply::Response {
                status, location, ..
            } if status.is_redirection() => {
                return Err(unavailable(redirected(
                    "payment method lookup",
                    status,
                    location.as_deref(),
                )))
            }
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => {
                if matches!(status.as_u16(), 401 | 403) {
                    self.mark_misconfigured(status);
                }
                return Err(unavailable(quote(&format!(
                    "payment method lookup answered {status}: {}",
                    quote_body(&body, truncated)
                ))));
            }
            Reply::NotSent(e) | Reply::Lost(e) => return Err(unavailable(e)),
        };
        let query = [
            ("payment_method", id.as_str()),
            ("customer", payment.customer.as_str()),
            ("limit", "100"),
        ];
        let setups = match self
            .send(Method::GET, &["v1", "setup_intents"], &query, None, None)
            .await
        {
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } if status.is_success() => {
                if truncated {
                    return Err(unavailable(format!(
                        "setup intents answer over {MAX_BODY_BYTES} bytes, not read"
                    )));
                }
                serde_json::from_str::<List<SetupIntent>>(&body)
                    .map_err(|e| {
                        unavailable(format!(
                            "unreadable setup intents: {}",
                            quote(&e.to_string())
                        ))
                    })?
                    .data
            }
            Reply::Response {
                status, location, ..
            } if status.is_redirection() => {
                return Err(unavailable(redirected(
                    "setup intent lookup",
                    status,
                    location.as_deref(),
                )))
            }
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => {
                if matches!(status.as_u16(), 401 | 403) {
                    self.mark_misconfigured(status);
                }
                return Err(unavailable(quote(&format!(
                    "setup intent lookup answered {status}: {}",
                    quote_body(&body, truncated)
                ))));
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
        // The pinned PaymentIntents API has no parameter for these card options:
        // refuse the payment rather than charge without what the merchant asked for.
        if let Some(card) = payment
            .payment_method_options
            .as_ref()
            .and_then(|o| o.card.as_ref())
        {
            let unsupported = [
                ("mcc", card.mcc.is_some()),
                (
                    "network_transaction_id",
                    card.network_transaction_id.is_some(),
                ),
            ];
            if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
                return Err(ApiError::invalid(
                    &format!("payment_method_options.card.{field}"),
                    format!(
                        "is not supported by processor `{}`: Stripe's PaymentIntents API (version {}) has no such parameter",
                        self.config.id, self.config.stripe_version
                    ),
                ));
            }
        }
        let facts = self.facts(payment).await?;
        let method = &facts.method;
        if method.customer_id() != Some(payment.customer.as_str()) {
            return Err(ApiError::new(
                ErrorCode::OspPaymentMethodNotAttached,
                format!(
                    "Payment method `{}` is not attached to customer `{}`; attach it with a SetupIntent first.",
                    quote(&method.id),
                    quote(&payment.customer)
                ),
            )
            .with_param("payment_method"));
        }
        if !self.capabilities.supports_type(&method.method_type) {
            return Err(ApiError::new(
                ErrorCode::OspInvalidPaymentMethodType,
                format!(
                    "payment method type `{}` is not supported",
                    quote(&method.method_type)
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
                    quote(&method.id)
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
                            "Payment method `{}` was set up on the platform, not for `{}`.",
                            quote(&method.id),
                            quote(account)
                        ),
                    )
                } else {
                    ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                        format!(
                            "Payment method `{}` was set up for another connected account.",
                            quote(&method.id)
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
                        quote(&method.id)
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
                &["v1", "payment_intents"],
                &[],
                Some(&form),
                Some(request.idempotency_key),
            )
            .await
        {
            // Whatever a 2xx says, Stripe may have charged: anything but a readable
            // PaymentIntent with a known status is `Unknown` (replayed with the same key).
            Reply::Response {
                status,
                truncated: true,
                ..
            } if status.is_success() => AttemptOutcome::Unknown {
                message: format!(
                    "stripe: {status} answer over {MAX_BODY_BYTES} bytes, not read; the charge may have been made"
                ),
            },
            Reply::Response { status, body, .. } if status.is_success() => {
                match PaymentIntent::read(&body) {
                    Ok(intent) => match intent.outcome() {
                        Some(outcome) => outcome,
                        None => self.reconcile_processing(&intent).await,
                    },
                    Err(why) => AttemptOutcome::Unknown {
                        message: format!("stripe: {status}: {why}"),
                    },
                }
            }
            // A redirect comes from a proxy or a wrong `api_base`, not from Stripe's
            // payment API, and is never followed: the charge was not made.
            Reply::Response {
                status, location, ..
            } if status.is_redirection() => AttemptOutcome::ProcessorFault {
                retryable: false,
                rate_limited: false,
                message: format!(
                    "stripe: {}",
                    redirected("payment intent creation", status, location.as_deref())
                ),
            },
            Reply::Response {
                status,
                body,
                truncated,
                ..
            } => self.error_outcome(status, &body, truncated),
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
        let reply = self
            .send(
                Method::POST,
                &["v1", "payment_intents", pi, "capture"],
                &[],
                Some(&form),
                Some(request.idempotency_key),
            )
            .await;
        settle_reply("capture", reply).map_err(error)
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
        let reply = self
            .send(
                Method::POST,
                &["v1", "payment_intents", pi, "cancel"],
                &[],
                Some(&Vec::new()),
                Some(request.idempotency_key),
            )
            .await;
        settle_reply("cancel", reply).map_err(error)
    }
}

/// A capture's or cancel's reply: `Ok` on 2xx, otherwise a capped message.
fn settle_reply(what: &str, reply: Reply) -> Result<(), String> {
    match reply {
        Reply::Response { status, .. } if status.is_success() => Ok(()),
        Reply::Response {
            status, location, ..
        } if status.is_redirection() => Err(redirected(what, status, location.as_deref())),
        Reply::Response {
            status,
            body,
            truncated,
            ..
        } => Err(quote(&format!(
            "{status}: {}",
            quote_body(&body, truncated)
        ))),
        Reply::NotSent(e) | Reply::Lost(e) => Err(e),
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
    fn quote_caps_on_a_char_boundary_and_escapes_control_characters() {
        assert_eq!(quote("card declined"), "card declined");
        let long = "é".repeat(10_000);
        let quoted = quote(&long);
        assert!(quoted.ends_with("…(truncated)"));
        assert_eq!(
            quoted.chars().count(),
            MAX_QUOTED_CHARS + "…(truncated)".len() - 2
        );
        assert!(quoted.starts_with(&"é".repeat(MAX_QUOTED_CHARS)));
        assert_eq!(quote("a\nb\u{0}"), "a\\nb\\u{0}");
        let controls = quote(&"\u{1}".repeat(10_000));
        assert!(
            controls.chars().count() <= MAX_QUOTED_CHARS + 12,
            "{controls}"
        );
    }

    #[test]
    fn a_pasted_secret_key_is_recognized_and_a_variable_name_is_not() {
        for secret in [
            "sk_test_51Habcdefghijklmnop",
            "sk_live_51Habcdefghijklmnop",
            "rk_live_abc",
            "pk_test_abc",
            " sk_live_abc ",
            "whsec_abc",
            &"A".repeat(65),
            "not a name",
            "STRIPE-KEY",
            "key=value",
            "abc$def",
        ] {
            assert!(looks_like_secret(secret), "{secret}");
        }
        for name in [
            "STRIPE_SECRET_KEY",
            "STRIPE_TEST_SECRET_KEY",
            "stripe_key",
            "SK_ENV",
            &"A".repeat(64),
        ] {
            assert!(!looks_like_secret(name), "{name}");
        }
    }

    fn processor(api_base: &str) -> StripeProcessor {
        let mut config = StripeConfig::new("s", SecretKey::new("sk_test_x"));
        config.api_base = api_base.into();
        StripeProcessor::new(config).unwrap()
    }

    #[test]
    fn every_segment_is_one_percent_encoded_segment_and_queries_are_form_encoded() {
        let p = processor("https://api.stripe.com");
        let url = p
            .url(
                &["v1", "payment_methods", "pm_1/../x?y=1#z %2F\n\u{7}é"],
                &[],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.stripe.com/v1/payment_methods/pm_1%2F..%2Fx%3Fy%3D1%23z%20%252F%0A%07%C3%A9"
        );
        assert_eq!(url.path_segments().unwrap().count(), 3);
        let url = p
            .url(
                &["v1", "setup_intents"],
                &[("payment_method", "pm_1&limit=1"), ("customer", "cus 1#x")],
            )
            .unwrap();
        assert_eq!(
            url.query(),
            Some("payment_method=pm_1%26limit%3D1&customer=cus+1%23x")
        );
        for bad in ["", ".", ".."] {
            assert!(
                p.url(&["v1", "payment_intents", bad], &[]).is_none(),
                "{bad:?}"
            );
        }
        // A base with a path prefix keeps it.
        let p = processor("http://127.0.0.1:9/stripe/");
        assert_eq!(
            p.url(&["v1", "payment_intents"], &[]).unwrap().as_str(),
            "http://127.0.0.1:9/stripe/v1/payment_intents"
        );
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
