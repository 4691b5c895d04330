//! What the simulated network saw: every attempt as it reached an issuer, and an
//! independent check of those attempts against the card-network rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest, Clock,
    DeclineCodes, OffSessionPayment, PaymentMethodDetails, Processor, ProcessorError, Timestamp,
};
use offsession_mock::issuer::SimulatedIssuer;
use offsession_retry::NetworkRules;

use super::DAY_MS;

/// One attempt as it reached the network.
#[derive(Debug, Clone)]
pub(super) struct SentAttempt {
    pub(super) card: String,
    pub(super) brand: String,
    pub(super) payment: String,
    pub(super) number: u32,
    pub(super) at: Timestamp,
    pub(super) amount: i64,
    pub(super) declined: Option<DeclineCodes>,
}

/// Records what goes to the issuers, for the independent rule check.
#[derive(Debug)]
pub(super) struct Recorder {
    pub(super) inner: Arc<SimulatedIssuer>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sent: Mutex<Vec<SentAttempt>>,
    pub(super) brands: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl Processor for Recorder {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn preflight(
        &self,
        payment: &OffSessionPayment,
    ) -> Result<PaymentMethodDetails, ApiError> {
        let details = self.inner.preflight(payment).await?;
        if let Some(card) = &details.card {
            self.brands
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(payment.payment_method.clone(), card.brand.to_string());
        }
        Ok(details)
    }
    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        let outcome = self.inner.authorize(request).await;
        let brand = self
            .brands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.payment.payment_method)
            .cloned()
            .unwrap_or_default();
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SentAttempt {
                card: request.payment.payment_method.clone(),
                brand,
                payment: request.payment.id.clone(),
                number: request.attempt_number,
                at: self.clock.now(),
                amount: request.payment.amount_requested.value,
                declined: match &outcome {
                    AttemptOutcome::Declined { codes, .. } => Some(codes.clone()),
                    _ => None,
                },
            });
        outcome
    }
    async fn capture(&self, request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        self.inner.capture(request).await
    }
    async fn cancel(&self, request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        self.inner.cancel(request).await
    }
}

/// Counts attempts that break a rule, by its own reading of the rules (not the
/// guard's code): never-retry codes, advice-code waits, and per-card caps.
pub(super) fn count_violations(sent: &[SentAttempt], rules: &NetworkRules) -> u64 {
    let mut by_payment: HashMap<&str, Vec<&SentAttempt>> = HashMap::new();
    let mut by_card: HashMap<&str, Vec<&SentAttempt>> = HashMap::new();
    for attempt in sent {
        by_payment
            .entry(&attempt.payment)
            .or_default()
            .push(attempt);
        by_card.entry(&attempt.card).or_default().push(attempt);
    }
    let mut violations = 0;
    for attempts in by_payment.values_mut() {
        attempts.sort_by_key(|a| (a.number, a.at));
        for pair in attempts.windows(2) {
            let (previous, next) = (pair[0], pair[1]);
            let Some(codes) = &previous.declined else {
                continue;
            };
            let visa_final = previous.brand == "visa"
                && codes
                    .network_decline_code
                    .as_deref()
                    .is_some_and(|c| rules.visa_never_retry.contains(c));
            let mac = codes.network_advice_code.as_deref();
            let mc_final = previous.brand == "mastercard"
                && mac.is_some_and(|m| rules.mastercard_never_retry.contains(m));
            let too_soon = previous.brand == "mastercard"
                && mac
                    .and_then(|m| rules.mastercard_retry_after.get(m))
                    .is_some_and(|wait| {
                        next.at.as_millis() - previous.at.as_millis() < wait.as_millis() as i64
                    });
            if visa_final || mc_final || too_soon {
                violations += 1;
            }
        }
    }
    for attempts in by_card.values_mut() {
        attempts.sort_by_key(|a| a.at);
        for (i, attempt) in attempts.iter().enumerate() {
            let t = attempt.at.as_millis();
            let window = |span: i64, keep: &dyn Fn(&SentAttempt) -> bool| {
                attempts[..=i]
                    .iter()
                    .filter(|a| a.at.as_millis() > t - span && keep(a))
                    .count()
            };
            if attempt.brand == "visa"
                && attempt.number >= 2
                && window(30 * DAY_MS, &|a| a.number >= 2) > rules.visa_max_reattempts_30d as usize
            {
                violations += 1;
            }
            if attempt.brand == "mastercard" && attempt.declined.is_some() {
                if window(DAY_MS, &|a| a.declined.is_some())
                    > rules.mastercard_max_declines_24h as usize
                {
                    violations += 1;
                }
                let amount = attempt.amount;
                if window(30 * DAY_MS, &|a| a.declined.is_some() && a.amount == amount)
                    > rules.mastercard_max_declines_30d_same_amount as usize
                {
                    violations += 1;
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(
        card: &str,
        brand: &str,
        payment: &str,
        number: u32,
        hours: i64,
        declined: Option<DeclineCodes>,
    ) -> SentAttempt {
        SentAttempt {
            card: card.into(),
            brand: brand.into(),
            payment: payment.into(),
            number,
            at: Timestamp::from_millis(hours * 3_600_000),
            amount: 1000,
            declined,
        }
    }

    #[test]
    fn the_rule_checker_finds_each_kind_of_violation() {
        let rules = offsession_retry::DeclineTable::standard()
            .network_rules()
            .clone();
        let mut lost = DeclineCodes::new("card_declined", Some("lost_card"));
        lost.network_decline_code = Some("41".into());
        let retried_cat1 = [
            attempt("pm_1", "visa", "osp_1", 1, 0, Some(lost)),
            attempt("pm_1", "visa", "osp_1", 2, 24, None),
        ];
        assert_eq!(count_violations(&retried_cat1, &rules), 1);

        let mut mac25 = DeclineCodes::new("card_declined", Some("insufficient_funds"));
        mac25.network_advice_code = Some("25".into());
        let too_soon = [
            attempt("pm_2", "mastercard", "osp_2", 1, 0, Some(mac25)),
            attempt("pm_2", "mastercard", "osp_2", 2, 12, None),
        ];
        assert_eq!(count_violations(&too_soon, &rules), 1);

        let funds = DeclineCodes::new("card_declined", Some("insufficient_funds"));
        let visa_flood: Vec<_> = (0..17)
            .map(|i| {
                attempt(
                    "pm_3",
                    "visa",
                    &format!("osp_{i}"),
                    2,
                    i,
                    Some(funds.clone()),
                )
            })
            .collect();
        assert_eq!(
            count_violations(&visa_flood, &rules),
            2,
            "the 16th and 17th reattempt"
        );

        let mc_flood: Vec<_> = (0..11)
            .map(|i| {
                attempt(
                    "pm_4",
                    "mastercard",
                    &format!("osp_{i}"),
                    1,
                    i,
                    Some(funds.clone()),
                )
            })
            .collect();
        assert_eq!(
            count_violations(&mc_flood, &rules),
            1,
            "the 11th decline in 24 h"
        );

        let fine: Vec<_> = (0..5)
            .map(|i| {
                attempt(
                    "pm_5",
                    "visa",
                    "osp_5",
                    i + 1,
                    i64::from(i) * 48,
                    Some(funds.clone()),
                )
            })
            .collect();
        assert_eq!(count_violations(&fine, &rules), 0);
    }
}
