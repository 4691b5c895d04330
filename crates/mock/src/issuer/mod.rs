//! A seeded population of card holders and their issuers, for simulations.
//!
//! Each customer has one card and one recurring charge. Their balance follows their
//! pay cycle — income lands at 06:00 local on paydays, spending drains it day by
//! day — so an insufficient-funds decline clears after the next payday and not
//! before. Issuers also decline at random (more at night), brands have outages, some
//! cards are lost or stolen, some expire and some are replaced during the run.
//!
//! Every draw is a hash of the scenario seed and the customer (and, for per-attempt
//! noise, the attempt time), so two runs of the same scenario see the same world,
//! whatever the strategy under test does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use offsession_core::{
    ApiError, AttemptOutcome, AuthorizeRequest, CancelRequest, Capabilities, CaptureRequest,
    CardDetails, Clock, DeclineCodes, OffSessionPayment, PaymentMethodDetails, Processor,
    ProcessorError, ProcessorReference, Timestamp,
};
use serde::Deserialize;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

mod scenario;

pub use scenario::{BalanceModel, DeclineModel, Outage, PayCycleMix, Scenario};

use offsession_core::hash::{mix64 as mix, unit_interval as unit};

/// Draw number `k` for customer `i`.
fn draw(seed: u64, i: u64, k: u64) -> f64 {
    unit(mix(mix(seed ^ mix(i)) ^ k))
}

fn pick(weights: &HashMap<String, f64>, u: f64) -> &str {
    let mut entries: Vec<(&String, &f64)> = weights.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let total: f64 = entries.iter().map(|(_, w)| **w).sum();
    let mut left = u * total;
    for (name, weight) in &entries {
        left -= **weight;
        if left <= 0.0 {
            return name;
        }
    }
    entries.last().map_or("visa", |(n, _)| n)
}

fn utc_offset(country: &str) -> i64 {
    match country {
        "US" | "CA" => -5,
        "BR" => -3,
        "GB" | "IE" => 0,
        "DE" | "FR" | "ES" | "IT" | "NL" => 1,
        "IN" => 5,
        "JP" => 9,
        "AU" => 10,
        _ => 0,
    }
}

/// When a simulated customer's pay lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayCycle {
    /// The 1st.
    Monthly,
    /// The 1st and 15th.
    SemiMonthly,
    /// Every other Friday; `phase` picks which.
    Biweekly {
        /// 0 or 1.
        phase: i64,
    },
    /// Every Friday.
    Weekly,
}

/// One customer, their card and their charge.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    /// Index in the population.
    pub index: u64,
    /// Charge amount, minor units.
    pub amount: i64,
    /// When the charge is created.
    pub bill_at: Timestamp,
    /// Card facts.
    pub card: CardDetails,
    /// Pay cycle.
    pub cycle: PayCycle,
    utc_offset_hours: i64,
    start_balance: f64,
    income_per_payday: f64,
    daily_spend: f64,
    hard: Option<&'static str>,
    expires_at: Option<Timestamp>,
    replaced_at: Option<Timestamp>,
}

impl Customer {
    /// The customer id.
    pub fn customer_id(&self) -> String {
        format!("cus_sim_{}", self.index)
    }

    /// The payment method id.
    pub fn payment_method_id(&self) -> String {
        format!("pm_sim_{}", self.index)
    }

    /// Paydays (income landing times) in `(from, to]`.
    fn paydays_between(&self, from: Timestamp, to: Timestamp) -> u64 {
        let offset = self.utc_offset_hours * HOUR_MS;
        // Income lands at 06:00 local; count local days d in range whose 06:00 is in (from, to].
        let first_day = (from.as_millis() + offset - 6 * HOUR_MS).div_euclid(DAY_MS) + 1;
        let last_day = (to.as_millis() + offset - 6 * HOUR_MS).div_euclid(DAY_MS);
        (first_day..=last_day)
            .filter(|&day| self.is_payday(day))
            .count() as u64
    }

    fn is_payday(&self, days_since_epoch: i64) -> bool {
        let weekday = (days_since_epoch + 4).rem_euclid(7); // 0 = Sunday
        let day_of_month = day_of_month(days_since_epoch);
        match self.cycle {
            PayCycle::Monthly => day_of_month == 1,
            PayCycle::SemiMonthly => day_of_month == 1 || day_of_month == 15,
            PayCycle::Weekly => weekday == 5,
            PayCycle::Biweekly { phase } => {
                weekday == 5 && (days_since_epoch / 7).rem_euclid(2) == phase
            }
        }
    }
}

fn day_of_month(days: i64) -> u32 {
    let z = days + 719_468;
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    (doy - (153 * mp + 2) / 5 + 1) as u32
}

/// The population of a scenario.
#[derive(Debug, Clone)]
pub struct Population {
    scenario: Scenario,
    customers: Vec<Customer>,
}

impl Population {
    /// Generates the population of `scenario`.
    pub fn generate(scenario: &Scenario) -> Population {
        let start = scenario.start();
        let seed = scenario.seed;
        let cycles = &scenario.pay_cycles;
        let cycle_total = cycles.monthly + cycles.semi_monthly + cycles.biweekly + cycles.weekly;
        let customers = (0..scenario.customers)
            .map(|i| {
                let d = |k: u64| draw(seed, i, k);
                let amount = scenario.amount_min
                    + ((scenario.amount_max - scenario.amount_min) as f64 * d(1)) as i64;
                let amount = (amount / 100).max(1) * 100;
                let bill_at = Timestamp::from_millis(
                    start.as_millis()
                        + (d(2) * f64::from(scenario.billing_days) * DAY_MS as f64) as i64,
                );
                let brand = pick(&scenario.brands, d(3)).to_owned();
                let country = pick(&scenario.countries, d(4)).to_owned();
                let c = d(5) * cycle_total;
                let cycle = if c < cycles.monthly {
                    PayCycle::Monthly
                } else if c < cycles.monthly + cycles.semi_monthly {
                    PayCycle::SemiMonthly
                } else if c < cycles.monthly + cycles.semi_monthly + cycles.biweekly {
                    PayCycle::Biweekly {
                        phase: (d(6) * 2.0) as i64,
                    }
                } else {
                    PayCycle::Weekly
                };
                let paydays_per_month = match cycle {
                    PayCycle::Monthly => 1.0,
                    PayCycle::SemiMonthly => 2.0,
                    PayCycle::Biweekly { .. } => 2.17,
                    PayCycle::Weekly => 4.33,
                };
                let a = amount as f64;
                let balance = &scenario.balance;
                let broke = d(7) < balance.broke_share;
                let income_per_payday = if broke {
                    0.0
                } else {
                    a * balance.monthly_income * (0.5 + d(8)) / paydays_per_month
                };
                let daily_spend = a * balance.daily_spend * (0.5 + d(9));
                // Balance at the billing time: covered customers have up to four
                // charges' worth above the amount, short ones fall short by up to one.
                let covered = d(10) < balance.covered_share;
                let target_at_bill = if covered {
                    a * (1.05 + 3.0 * d(11))
                } else {
                    a * (0.95 * d(11))
                };
                let mut customer = Customer {
                    index: i,
                    amount,
                    bill_at,
                    card: CardDetails {
                        brand: offsession_core::CardBrand::from_name(&brand),
                        funding: if d(12) < 0.6 {
                            "debit".into()
                        } else {
                            "credit".into()
                        },
                        country: Some(country.clone()),
                        wallet: None,
                    },
                    cycle,
                    utc_offset_hours: utc_offset(&country),
                    start_balance: 0.0,
                    income_per_payday,
                    daily_spend,
                    hard: None,
                    expires_at: None,
                    replaced_at: None,
                };
                // Solve for the start balance that gives the target at billing time.
                let paid = customer.paydays_between(start, bill_at) as f64 * income_per_payday;
                let spent =
                    daily_spend * (bill_at.as_millis() - start.as_millis()) as f64 / DAY_MS as f64;
                customer.start_balance = target_at_bill - paid + spent;
                let declines = &scenario.declines;
                let u = d(13);
                if u < declines.hard_share {
                    customer.hard = Some(
                        ["lost_card", "stolen_card", "fraudulent"][(d(14) * 3.0) as usize % 3],
                    );
                }
                let horizon = |k| {
                    Timestamp::from_millis(
                        start.as_millis()
                            + (d(k) * f64::from(scenario.days) * DAY_MS as f64) as i64,
                    )
                };
                if d(15) < declines.expiring_share {
                    customer.expires_at = Some(horizon(16));
                }
                if d(17) < declines.replaced_share {
                    customer.replaced_at = Some(horizon(18));
                }
                customer
            })
            .collect();
        Population {
            scenario: scenario.clone(),
            customers,
        }
    }

    /// The customers.
    pub fn customers(&self) -> &[Customer] {
        &self.customers
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }
}

fn decline(
    code: &str,
    decline_code: &str,
    visa: &str,
    mac: Option<&str>,
    brand: &str,
) -> DeclineCodes {
    let mut codes = DeclineCodes::new(code, Some(decline_code));
    if brand == "visa" {
        codes.network_decline_code = Some(visa.into());
    }
    if brand == "mastercard" {
        codes.network_advice_code = mac.map(str::to_owned);
    }
    codes
}

/// A processor whose answers come from a [`Population`]'s issuers.
#[derive(Debug)]
pub struct SimulatedIssuer {
    id: String,
    population: Arc<Population>,
    clock: Arc<dyn Clock>,
    capabilities: Capabilities,
    charged: Mutex<HashMap<u64, f64>>,
    answered: Mutex<HashMap<String, AttemptOutcome>>,
}

impl SimulatedIssuer {
    /// A processor `id` for `population`, reading time from `clock`.
    pub fn new(id: &str, population: Arc<Population>, clock: Arc<dyn Clock>) -> SimulatedIssuer {
        SimulatedIssuer {
            id: id.into(),
            population,
            clock,
            capabilities: Capabilities {
                payment_method_types: vec![offsession_core::PaymentMethodType::Card],
                currencies: Vec::new(),
                connect: true,
                manual_capture: true,
            },
            charged: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }
    }

    fn customer(&self, payment_method: &str) -> Option<&Customer> {
        let index: u64 = payment_method.strip_prefix("pm_sim_")?.parse().ok()?;
        self.population.customers.get(index as usize)
    }

    /// The issuer's decline of an attempt at `at`, or `None` when it approves.
    fn decline_for(&self, customer: &Customer, at: Timestamp) -> Option<DeclineCodes> {
        let brand = customer.card.brand.as_str();
        if let Some(hard) = customer.hard {
            let (visa, mac) = match hard {
                "lost_card" => ("41", "03"),
                "stolen_card" => ("43", "03"),
                _ => ("59", "21"),
            };
            return Some(decline("card_declined", hard, visa, Some(mac), brand));
        }
        if customer.expires_at.is_some_and(|e| at >= e) {
            return Some(decline(
                "expired_card",
                "expired_card",
                "54",
                Some("01"),
                brand,
            ));
        }
        if customer.replaced_at.is_some_and(|r| at >= r) {
            return Some(decline(
                "card_declined",
                "new_account_information_available",
                "14",
                Some("01"),
                brand,
            ));
        }
        let scenario = &self.population.scenario;
        let since_start = (at.as_millis() - scenario.start().as_millis()) as f64 / DAY_MS as f64;
        for outage in scenario.outages.iter().filter(|o| o.brand == brand) {
            if since_start >= outage.start_day
                && since_start < outage.start_day + outage.hours / 24.0
            {
                return Some(decline(
                    "card_declined",
                    "issuer_not_available",
                    "91",
                    None,
                    brand,
                ));
            }
        }
        let local_hour =
            (at.as_millis() + customer.utc_offset_hours * HOUR_MS).rem_euclid(DAY_MS) / HOUR_MS;
        let noise = scenario.declines.issuer_noise
            * if local_hour < 6 {
                scenario.declines.night_factor
            } else {
                1.0
            };
        if unit(mix(
            mix(scenario.seed ^ customer.index) ^ at.as_millis() as u64
        )) < noise
        {
            return Some(decline(
                "card_declined",
                "do_not_honor",
                "05",
                Some("02"),
                brand,
            ));
        }
        let start = scenario.start();
        let days = (at.as_millis() - start.as_millis()) as f64 / DAY_MS as f64;
        let charged = self
            .charged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&customer.index)
            .copied()
            .unwrap_or(0.0);
        let balance = customer.start_balance
            + customer.paydays_between(start, at) as f64 * customer.income_per_payday
            - customer.daily_spend * days
            - charged;
        if balance < customer.amount as f64 {
            return Some(decline(
                "card_declined",
                "insufficient_funds",
                "51",
                Some("02"),
                brand,
            ));
        }
        None
    }
}

#[async_trait]
impl Processor for SimulatedIssuer {
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
        let customer = self
            .customer(&payment.payment_method)
            .ok_or_else(|| ApiError::invalid("payment_method", "not a simulated card"))?;
        Ok(PaymentMethodDetails {
            payment_method_type: offsession_core::PaymentMethodType::Card,
            card: Some(customer.card.clone()),
        })
    }

    async fn authorize(&self, request: AuthorizeRequest<'_>) -> AttemptOutcome {
        if let Some(outcome) = self
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(request.idempotency_key)
        {
            return outcome.clone();
        }
        let Some(customer) = self.customer(&request.payment.payment_method) else {
            return AttemptOutcome::fault(
                offsession_core::FaultKind::Refused,
                "unknown simulated card",
            );
        };
        let outcome = match self.decline_for(customer, self.clock.now()) {
            None => {
                *self
                    .charged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(customer.index)
                    .or_default() += customer.amount as f64;
                AttemptOutcome::Approved {
                    reference: ProcessorReference::default(),
                }
            }
            Some(codes) => AttemptOutcome::Declined {
                codes,
                reference: ProcessorReference::default(),
            },
        };
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.idempotency_key.to_owned(), outcome.clone());
        outcome
    }

    async fn capture(&self, _request: CaptureRequest<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn cancel(&self, _request: CancelRequest<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }
}
