//! A mock payment processor for offsession.
//!
//! Outcomes are driven by the payment method: Stripe's test method names (see
//! [`behavior`]) or entries of a configurable vault of customers and payment methods.
//! Faults, lost responses and latency are drawn from a seeded hash of the idempotency
//! key, so a run is reproducible whatever order attempts run in. Every charge is
//! recorded by idempotency key: a replayed key returns the stored answer and never
//! charges again, as Stripe does, and tests read the ledger to prove that no payment
//! was charged twice.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod behavior;
pub mod issuer;
mod latency;
mod vault;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizationState, AuthorizeRequest, CancelRequest, Capabilities,
    CaptureMethod, CaptureRequest, CardBrand, CardDetails, ErrorCode, OffSessionPayment,
    PaymentMethodDetails, PaymentMethodType, Processor, ProcessorError, ProcessorReference,
};
use serde::Deserialize;

pub use behavior::{parse_test_method, Behavior, TestMethod};
pub use latency::LatencyModel;
pub use vault::{Vault, VaultPaymentMethod};

use vault::default_true;

/// Mock processor settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockConfig {
    /// Seed of every random draw.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Answer latency.
    #[serde(default)]
    pub latency: LatencyModel,
    /// Fraction of sends answered with a retryable processor fault (nothing charged).
    #[serde(default)]
    pub fault_rate: f64,
    /// Fraction of sends that charge but whose answer is lost (outcome unknown).
    #[serde(default)]
    pub unknown_rate: f64,
    /// Payment method types it accepts.
    #[serde(default = "default_types")]
    pub payment_method_types: Vec<PaymentMethodType>,
    /// Whether connect payments are supported.
    #[serde(default = "default_true")]
    pub connect: bool,
    /// Customers and payment methods.
    #[serde(default)]
    pub vault: Vault,
    /// Requests per second answered before the mock returns 429s, like a processor's
    /// account rate limit (GCRA with a burst of 1/20 s of requests); none: no limit.
    #[serde(default)]
    pub enforce_rate_limit: Option<u32>,
}

fn default_seed() -> u64 {
    1
}

fn default_types() -> Vec<PaymentMethodType> {
    PaymentMethodType::KNOWN.to_vec()
}

impl MockConfig {
    /// Refuses settings the mock cannot honour: `(key, what is wrong)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        self.latency.check().map_err(|e| ("latency", e))?;
        if self.enforce_rate_limit == Some(0) {
            return Err((
                "enforce_rate_limit",
                "must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        for (key, rate) in [
            ("fault_rate", self.fault_rate),
            ("unknown_rate", self.unknown_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err((key, format!("must be between 0 and 1 (got {rate})")));
            }
        }
        for kind in &self.payment_method_types {
            kind.check_known()
                .map_err(|e| ("payment_method_types", e))?;
        }
        Ok(())
    }
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            seed: default_seed(),
            latency: LatencyModel::default(),
            fault_rate: 0.0,
            unknown_rate: 0.0,
            payment_method_types: default_types(),
            connect: true,
            vault: Vault::default(),
            enforce_rate_limit: None,
        }
    }
}

/// One idempotency key as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The engine's payment id.
    pub payment_id: String,
    /// The engine's attempt number for that payment (1 for the first).
    pub attempt_number: u32,
    /// Times the key was sent.
    pub sends: u32,
    /// Whether the charge was executed (an answer from the issuer exists).
    pub executed: bool,
    /// The stored answer, once executed.
    pub outcome: Option<AttemptOutcome>,
}

use offsession_core::hash::{mix64 as mix, unit_interval as unit};

fn hash_str(seed: u64, text: &str) -> u64 {
    text.bytes().fold(mix(seed), |h, b| mix(h ^ u64::from(b)))
}

/// A processor in memory: answers from the payment method's behaviour, keeps a
/// ledger by idempotency key, and never charges a key twice.
#[derive(Debug)]
pub struct MockProcessor {
    id: String,
    config: MockConfig,
    capabilities: Capabilities,
    vault: HashMap<String, VaultPaymentMethod>,
    /// Keyed by idempotency key; foldhash, as the memory store's maps (SipHash cost
    /// about 800 instructions per attempt in the bench).
    ledger: Mutex<HashMap<String, LedgerEntry, foldhash::fast::RandomState>>,
    captures: Mutex<HashMap<String, i64>>,
    charge_counter: AtomicU64,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    rate_limited: AtomicU64,
    sends: AtomicU64,
}

impl MockProcessor {
    /// A mock with `id` and `config`.
    pub fn new(id: &str, config: MockConfig) -> MockProcessor {
        let capabilities = Capabilities {
            payment_method_types: config.payment_method_types.clone(),
            currencies: Vec::new(),
            connect: config.connect,
            manual_capture: true,
        };
        let vault = config
            .vault
            .payment_methods
            .iter()
            .map(|pm| (pm.id.clone(), pm.clone()))
            .collect();
        MockProcessor {
            id: id.to_owned(),
            capabilities,
            vault,
            ledger: Mutex::new(HashMap::default()),
            captures: Mutex::new(HashMap::new()),
            charge_counter: AtomicU64::new(0),
            limiter: config
                .enforce_rate_limit
                .and_then(std::num::NonZeroU32::new)
                .map(|n| {
                    let burst = std::num::NonZeroU32::new((n.get() / 20).max(1)).unwrap_or(n);
                    governor::RateLimiter::direct(governor::Quota::per_second(n).allow_burst(burst))
                }),
            rate_limited: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            config,
        }
    }

    /// Requests answered with 429.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Authorization requests received (including 429s and replays).
    pub fn requests(&self) -> u64 {
        self.sends.load(Ordering::Relaxed)
    }

    fn behavior_of(&self, payment_method: &str) -> Behavior {
        if let Some(pm) = self.vault.get(payment_method) {
            return pm
                .behaves_like
                .as_deref()
                .and_then(parse_test_method)
                .map(|t| t.behavior)
                .unwrap_or(Behavior::Succeed);
        }
        parse_test_method(payment_method)
            .map(|t| t.behavior)
            .unwrap_or(Behavior::Succeed)
    }

    /// Every key the mock has seen.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Approved (money-moving) charges per engine payment id.
    pub fn approved_charges_by_payment(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for entry in self.ledger() {
            if matches!(
                entry.outcome,
                Some(AttemptOutcome::Approved { .. } | AttemptOutcome::RequiresCapture { .. })
            ) {
                *counts.entry(entry.payment_id).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Total sends (including replays and faults).
    pub fn total_sends(&self) -> u64 {
        self.ledger().iter().map(|e| u64::from(e.sends)).sum()
    }

    /// Amount captured per processor payment id.
    pub fn captured(&self, processor_payment: &str) -> Option<i64> {
        self.captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(processor_payment)
            .copied()
    }
}

#[async_trait]
impl Processor for MockProcessor {
    fn id(&self) -> &str {
        &self.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        let customers = &self.config.vault.customers;
        if let Some(pm) = self.vault.get(&payment.payment_method) {
            if !customers.is_empty() && !customers.contains(&payment.customer) {
                return Err(ApiError::invalid(
                    "customer",
                    format!("no such customer `{}`", payment.customer),
                ));
            }
            if pm.customer != payment.customer {
                return Err(ApiError::new(
                    ErrorCode::OspPaymentMethodNotAttached,
                    format!(
                        "Payment method `{}` is not attached to customer `{}`; attach it with a SetupIntent first.",
                        pm.id, payment.customer
                    ),
                )
                .with_param("payment_method"));
            }
            if !pm.off_session {
                return Err(ApiError::new(
                    ErrorCode::OspPmNotSetupForOffSession,
                    format!(
                        "Payment method `{}` was never set up for off-session use; confirm a SetupIntent with `usage=off_session` first.",
                        pm.id
                    ),
                )
                .with_param("payment_method"));
            }
            match (&pm.on_behalf_of, &payment.on_behalf_of) {
                (Some(setup), Some(used)) if setup != used => {
                    return Err(ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                        format!("Payment method `{}` was set up with on_behalf_of `{setup}`, not `{used}`.", pm.id),
                    )
                    .with_param("on_behalf_of"))
                }
                (Some(setup), None) => {
                    return Err(ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnConnectedAccount,
                        format!("Payment method `{}` was set up only on connected account `{setup}`; pass the same `on_behalf_of`.", pm.id),
                    )
                    .with_param("on_behalf_of"))
                }
                (None, Some(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::OspPmSetUpOnlyOnPlatform,
                        format!("Payment method `{}` was set up on the platform; it cannot be used with `on_behalf_of`.", pm.id),
                    )
                    .with_param("on_behalf_of"))
                }
                _ => {}
            }
            let card = (pm.payment_method_type == PaymentMethodType::Card).then(|| CardDetails {
                brand: pm.brand.clone().unwrap_or(CardBrand::Visa),
                funding: pm.funding.clone().unwrap_or_else(|| "credit".into()),
                country: pm.country.clone(),
                wallet: pm.wallet.clone(),
                fingerprint: pm.fingerprint.clone(),
                fingerprint_by: None,
            });
            return Ok(PaymentMethodDetails {
                payment_method_type: pm.payment_method_type.clone(),
                card,
                bank_country: pm.bank_country(),
            });
        }
        // Stripe's test methods are usable by any customer, on the platform or any
        // connected account, as in Stripe's test mode.
        match parse_test_method(&payment.payment_method) {
            Some(test) => Ok(PaymentMethodDetails {
                payment_method_type: PaymentMethodType::Card,
                card: Some(test.card),
                bank_country: None,
            }),
            None => Err(ApiError::invalid(
                "payment_method",
                format!("no such payment method `{}`", payment.payment_method),
            )),
        }
    }

    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        let key = request.idempotency_key;
        let key_hash = hash_str(self.config.seed, key);
        let latency = self
            .config
            .latency
            .sample(unit(mix(key_hash ^ 1)), unit(mix(key_hash ^ 2)));
        self.sends.fetch_add(1, Ordering::Relaxed);
        if let Some(limiter) = &self.limiter {
            if limiter.check().is_err() {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                return AttemptOutcome::fault(
                    offsession_core::FaultKind::RateLimited,
                    "mock: 429 rate limit exceeded (nothing was charged)",
                );
            }
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let entry = ledger.entry(key.to_owned()).or_insert_with(|| LedgerEntry {
            payment_id: request.payment.id.clone(),
            attempt_number: request.attempt_number,
            sends: 0,
            executed: false,
            outcome: None,
        });
        entry.sends += 1;
        let send_hash = mix(key_hash ^ u64::from(entry.sends).wrapping_mul(0x1000_0001));
        if let Some(outcome) = &entry.outcome {
            // An idempotent replay: the stored answer, no new charge — whose answer
            // can be lost on the way back like any other.
            if unit(mix(send_hash ^ 3)) < self.config.unknown_rate {
                return AttemptOutcome::Unknown {
                    message: "mock: connection reset after the replay was sent".into(),
                };
            }
            return outcome.clone();
        }
        if unit(send_hash) < self.config.fault_rate {
            return AttemptOutcome::fault(
                offsession_core::FaultKind::Unavailable,
                "mock: 503 service unavailable (nothing was charged)",
            );
        }
        let n = self.charge_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut digits = itoa::Buffer::new();
        let n = digits.format(n);
        let reference = ProcessorReference {
            payment: Some(["pi_mock_", n].concat()),
            charge: Some(["ch_mock_", n].concat()),
        };
        let outcome = match self
            .behavior_of(&request.payment.payment_method)
            .decline_for(request.attempt_number)
        {
            Some(codes) => AttemptOutcome::Declined {
                codes: codes.clone(),
                reference,
            },
            None if request.payment.capture.capture_method == CaptureMethod::Manual => {
                AttemptOutcome::RequiresCapture { reference }
            }
            None => AttemptOutcome::Approved { reference },
        };
        entry.executed = true;
        entry.outcome = Some(outcome.clone());
        if unit(mix(send_hash ^ 3)) < self.config.unknown_rate {
            return AttemptOutcome::Unknown {
                message: "mock: connection reset after the request was sent".into(),
            };
        }
        outcome
    }

    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        let pi = request.reference.payment.clone().unwrap_or_default();
        let mut captures = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = captures.get(&pi) {
            if *existing == request.amount.value {
                return Ok(());
            }
            return Err(ProcessorError {
                processor: self.id.clone(),
                operation: "capture",
                message: format!("`{pi}` was already captured"),
            });
        }
        captures.insert(pi, request.amount.value);
        Ok(())
    }

    async fn cancel(&self, _request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn authorization_state(
        &self,
        reference: &ProcessorReference,
    ) -> Result<Option<AuthorizationState>, ProcessorError> {
        let pi = reference.payment.as_deref().unwrap_or_default();
        let captured = self
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(pi);
        Ok(Some(if captured {
            AuthorizationState::Captured
        } else {
            AuthorizationState::Held
        }))
    }
}
