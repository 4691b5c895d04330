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
    pub(super) debit: bool,
}

/// Records what goes to the issuers, for the independent rule check.
#[derive(Debug)]
pub(super) struct Recorder {
    pub(super) inner: Arc<SimulatedIssuer>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sent: Mutex<Vec<SentAttempt>>,
    pub(super) brands: Mutex<HashMap<String, (String, bool)>>,
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
        self.brands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                payment.payment_method.clone(),
                (
                    details
                        .card
                        .as_ref()
                        .map(|c| c.brand.to_string())
                        .unwrap_or_default(),
                    details.payment_method_type.is_bank_debit(),
                ),
            );
        Ok(details)
    }
    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        let outcome = self.inner.authorize(request).await;
        let (brand, debit) = self
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
                debit,
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

/// The rules as the checker holds them: its own copy of the reference values (Visa's
/// and Mastercard's published retry rules, NACHA's re-presentment limit), not read
/// from the decline table the guard uses, so that a wrong table shows up here.
mod reference {
    /// Visa category 1, "issuer will never approve": never reattempt.
    pub(super) const VISA_NEVER_RETRY: [&str; 10] =
        ["04", "07", "12", "15", "41", "43", "57", "R0", "R1", "R3"];
    /// Visa: reattempts per card in 30 days.
    pub(super) const VISA_MAX_REATTEMPTS_30D: usize = 15;
    /// Mastercard advice codes after which the card takes no attempt for 30 days.
    pub(super) const MASTERCARD_NEVER_RETRY: [&str; 2] = ["03", "21"];
    /// Days of that bar.
    pub(super) const MASTERCARD_BAR_DAYS: i64 = 30;
    /// Mastercard advice codes 24–30 and the hours to wait after each.
    pub(super) const MASTERCARD_WAIT_HOURS: [(&str, i64); 7] = [
        ("24", 1),
        ("25", 24),
        ("26", 48),
        ("27", 96),
        ("28", 144),
        ("29", 192),
        ("30", 240),
    ];
    /// Mastercard: declines per card in 24 hours, and per card and amount in 30 days.
    pub(super) const MASTERCARD_MAX_DECLINES_24H: usize = 10;
    pub(super) const MASTERCARD_MAX_DECLINES_30D_SAME_AMOUNT: usize = 35;
    /// Hard declines of every brand: never retry the payment.
    pub(super) const HARD_DECLINE_CODES: [&str; 12] = [
        "lost_card",
        "stolen_card",
        "pickup_card",
        "restricted_card",
        "fraudulent",
        "merchant_blacklist",
        "revocation_of_authorization",
        "revocation_of_all_authorizations",
        "stop_payment_order",
        "invalid_account",
        "incorrect_number",
        "do_not_try_again",
    ];
    /// NACHA: a debit returned for insufficient or uncollected funds (R01, R09) may be
    /// presented twice more: three presentments in all. Other returns end it.
    pub(super) const DEBIT_MAX_PRESENTMENTS: usize = 3;
    pub(super) const DEBIT_RETRYABLE_RETURNS: [&str; 3] = ["R01", "R09", "AM04"];
}

/// What the checker counts, by rule.
pub(super) type Violations = std::collections::BTreeMap<&'static str, u64>;

/// Checks every attempt against the reference rules and counts the attempts that
/// break one, by rule (an attempt breaking two rules counts under both).
pub(super) fn check(sent: &[SentAttempt]) -> Violations {
    use reference::*;
    let mut found = Violations::new();
    let mut by_payment: HashMap<&str, Vec<&SentAttempt>> = HashMap::new();
    let mut by_card: HashMap<&str, Vec<&SentAttempt>> = HashMap::new();
    for attempt in sent {
        by_payment
            .entry(&attempt.payment)
            .or_default()
            .push(attempt);
        by_card.entry(&attempt.card).or_default().push(attempt);
    }
    let mut flag = |rule: &'static str| *found.entry(rule).or_default() += 1;
    for attempts in by_payment.values_mut() {
        attempts.sort_by_key(|a| (a.number, a.at));
        let debit = attempts.first().is_some_and(|a| a.debit);
        if debit && attempts.len() > DEBIT_MAX_PRESENTMENTS {
            for _ in DEBIT_MAX_PRESENTMENTS..attempts.len() {
                flag("debit_presentments");
            }
        }
        for pair in attempts.windows(2) {
            let (previous, next) = (pair[0], pair[1]);
            let Some(codes) = &previous.declined else {
                continue;
            };
            let decline_code = codes.decline_code.as_deref().unwrap_or(&codes.code);
            if HARD_DECLINE_CODES.contains(&decline_code)
                || codes.advice_code.as_deref() == Some("do_not_try_again")
            {
                flag("retry_after_hard_decline");
            }
            let network = codes.network_decline_code.as_deref();
            if debit && network.is_some_and(|c| !DEBIT_RETRYABLE_RETURNS.contains(&c)) {
                flag("debit_retry_after_final_return");
            }
            if previous.brand == "visa" && network.is_some_and(|c| VISA_NEVER_RETRY.contains(&c)) {
                flag("visa_category_1_retry");
            }
            let mac = codes.network_advice_code.as_deref();
            if previous.brand == "mastercard" {
                if let Some((_, hours)) =
                    MASTERCARD_WAIT_HOURS.iter().find(|(m, _)| Some(*m) == mac)
                {
                    if next.at.as_millis() - previous.at.as_millis() < hours * 3_600_000 {
                        flag("mastercard_advice_wait");
                    }
                }
            }
        }
    }
    for attempts in by_card.values_mut() {
        attempts.sort_by_key(|a| a.at);
        for (i, attempt) in attempts.iter().enumerate() {
            let t = attempt.at.as_millis();
            let earlier = &attempts[..i];
            let within = |span: i64, keep: &dyn Fn(&SentAttempt) -> bool| {
                attempts[..=i]
                    .iter()
                    .filter(|a| a.at.as_millis() > t - span && keep(a))
                    .count()
            };
            if attempt.brand == "mastercard" {
                // Any attempt — first attempts and other payments included — within
                // 30 days of a do-not-try-again advice code on the card.
                if earlier.iter().any(|a| {
                    a.at.as_millis() > t - MASTERCARD_BAR_DAYS * DAY_MS
                        && a.declined.as_ref().is_some_and(|c| {
                            c.network_advice_code
                                .as_deref()
                                .is_some_and(|m| MASTERCARD_NEVER_RETRY.contains(&m))
                        })
                }) {
                    flag("mastercard_do_not_retry");
                }
                if attempt.declined.is_some() {
                    if within(DAY_MS, &|a| a.declined.is_some()) > MASTERCARD_MAX_DECLINES_24H {
                        flag("mastercard_declines_24h");
                    }
                    let amount = attempt.amount;
                    if within(30 * DAY_MS, &|a| a.declined.is_some() && a.amount == amount)
                        > MASTERCARD_MAX_DECLINES_30D_SAME_AMOUNT
                    {
                        flag("mastercard_declines_30d_same_amount");
                    }
                }
            }
            if attempt.brand == "visa"
                && attempt.number >= 2
                && within(30 * DAY_MS, &|a| a.number >= 2) > VISA_MAX_REATTEMPTS_30D
            {
                flag("visa_reattempts_30d");
            }
        }
    }
    found
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
            debit: false,
        }
    }

    fn total(v: &Violations) -> u64 {
        v.values().sum()
    }

    #[test]
    fn the_rule_checker_finds_each_kind_of_violation() {
        let mut lost = DeclineCodes::new("card_declined", Some("lost_card"));
        lost.network_decline_code = Some("41".into());
        let retried_cat1 = [
            attempt("pm_1", "visa", "osp_1", 1, 0, Some(lost)),
            attempt("pm_1", "visa", "osp_1", 2, 24, None),
        ];
        let found = check(&retried_cat1);
        assert_eq!(found.get("visa_category_1_retry"), Some(&1));
        assert_eq!(found.get("retry_after_hard_decline"), Some(&1));

        // A hard decline on an Amex card is a violation too: every brand.
        let stolen = DeclineCodes::new("card_declined", Some("stolen_card"));
        let amex = [
            attempt("pm_a", "amex", "osp_a", 1, 0, Some(stolen)),
            attempt("pm_a", "amex", "osp_a", 2, 24, None),
        ];
        assert_eq!(total(&check(&amex)), 1);

        let mut mac25 = DeclineCodes::new("card_declined", Some("insufficient_funds"));
        mac25.network_advice_code = Some("25".into());
        let too_soon = [
            attempt("pm_2", "mastercard", "osp_2", 1, 0, Some(mac25)),
            attempt("pm_2", "mastercard", "osp_2", 2, 12, None),
        ];
        assert_eq!(check(&too_soon).get("mastercard_advice_wait"), Some(&1));

        // Advice code 21 bars the card: another payment's first attempt 10 days later
        // breaks the rule; 31 days later it does not.
        let mut mac21 = DeclineCodes::new("card_declined", Some("do_not_honor"));
        mac21.network_advice_code = Some("21".into());
        let barred = [
            attempt("pm_6", "mastercard", "osp_6", 1, 0, Some(mac21.clone())),
            attempt("pm_6", "mastercard", "osp_7", 1, 240, None),
        ];
        assert_eq!(check(&barred).get("mastercard_do_not_retry"), Some(&1));
        let later = [
            attempt("pm_6", "mastercard", "osp_6", 1, 0, Some(mac21)),
            attempt("pm_6", "mastercard", "osp_7", 1, 31 * 24, None),
        ];
        assert_eq!(total(&check(&later)), 0);

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
            check(&visa_flood).get("visa_reattempts_30d"),
            Some(&2),
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
            check(&mc_flood).get("mastercard_declines_24h"),
            Some(&1),
            "the 11th decline in 24 h"
        );

        let mut r01 = DeclineCodes::new("insufficient_funds", Some("insufficient_funds"));
        r01.network_decline_code = Some("R01".into());
        let debit: Vec<_> = (0..5)
            .map(|i| SentAttempt {
                debit: true,
                ..attempt(
                    "pm_8",
                    "",
                    "osp_8",
                    i + 1,
                    i64::from(i) * 48,
                    Some(r01.clone()),
                )
            })
            .collect();
        assert_eq!(check(&debit).get("debit_presentments"), Some(&2));

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
        assert_eq!(total(&check(&fine)), 0);
    }
}
