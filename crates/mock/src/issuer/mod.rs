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
    CardDetails, Clock, DeclineCodes, OffSessionPayment, PaymentMethodDetails, PaymentMethodType,
    Processor, ProcessorError, ProcessorReference, Timestamp,
};
use serde::Deserialize;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

mod paydays;
mod processor;
mod scenario;

use paydays::is_payday;
pub use processor::SimulatedIssuer;

pub use scenario::{BalanceModel, DeclineModel, Outage, PayCycleMix, PayRule, Scenario, TimeZones};

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

/// Countries of the Single Euro Payments Area (ISO 3166-1 alpha-2).
const SEPA_COUNTRIES: [&str; 36] = [
    "AD", "AT", "BE", "BG", "CH", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GB", "GI", "GR",
    "HR", "HU", "IE", "IS", "IT", "LI", "LT", "LU", "LV", "MC", "MT", "NL", "NO", "PL", "PT", "RO",
    "SE", "SI", "SK", "SM",
];

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

fn pick_index(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut left = u * total;
    for (i, w) in weights.iter().enumerate() {
        left -= w;
        if left <= 0.0 && *w > 0.0 {
            return i;
        }
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// One charge (a subscription's renewal) of a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Amount, minor units.
    pub amount: i64,
    /// When it is created.
    pub bill_at: Timestamp,
}

/// One customer, their payment method and their charges.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    /// Index in the population.
    pub index: u64,
    /// Charges on this payment method, oldest first.
    pub charges: Vec<Charge>,
    /// Card facts (for cards; drawn for every customer).
    pub card: CardDetails,
    /// Card or bank debit.
    pub method_type: PaymentMethodType,
    /// Index of the customer's pay rule in [`Scenario::rules`].
    pub pay_rule: usize,
    /// The customer's UTC offset, hours.
    pub utc_offset_hours: i64,
    start_balance: f64,
    daily_spend: f64,
    /// Income landing times (ms) and amounts, in time order.
    deposits: Vec<(i64, f64)>,
    hard: Option<&'static str>,
    expires_at: Option<Timestamp>,
    replaced_at: Option<Timestamp>,
    /// When a Mastercard holder stops recurring payments, and the advice code.
    stopped: Option<(Timestamp, &'static str)>,
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

    /// What preflight reports of the customer's payment method: the card, or the bank
    /// account's country (the customer's: an ACH account is in the US, a SEPA
    /// account in the SEPA area).
    pub fn method_details(&self) -> PaymentMethodDetails {
        let card = self.method_type == PaymentMethodType::Card;
        PaymentMethodDetails {
            payment_method_type: self.method_type.clone(),
            card: card.then(|| self.card.clone()),
            bank_country: (!card).then(|| self.card.country.clone()).flatten(),
        }
    }

    /// Income landed in `(from, to]`.
    fn income_between(&self, from: Timestamp, to: Timestamp) -> f64 {
        let (from, to) = (from.as_millis(), to.as_millis());
        let a = self.deposits.partition_point(|(t, _)| *t <= from);
        let b = self.deposits.partition_point(|(t, _)| *t <= to);
        self.deposits[a..b.max(a)].iter().map(|(_, v)| v).sum()
    }
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
        let rules = scenario.rules();
        let shares: Vec<f64> = rules.iter().map(|r| r.share).collect();
        let sepa_countries: HashMap<String, f64> = scenario
            .countries
            .iter()
            .filter(|(country, _)| SEPA_COUNTRIES.contains(&country.as_str()))
            .map(|(country, weight)| (country.clone(), *weight))
            .collect();
        let horizon_days = i64::from(scenario.days) + 62;
        let customers = (0..scenario.customers)
            .map(|i| {
                let d = |k: u64| draw(seed, i, k);
                let amount_of = |u: f64| {
                    let amount = scenario.amount_min
                        + ((scenario.amount_max - scenario.amount_min) as f64 * u) as i64;
                    (amount / 100).max(1) * 100
                };
                let bill_of = |u: f64| {
                    Timestamp::from_millis(
                        start.as_millis()
                            + (u * f64::from(scenario.billing_days) * DAY_MS as f64) as i64,
                    )
                };
                let mut charges = vec![Charge {
                    amount: amount_of(d(1)),
                    bill_at: bill_of(d(2)),
                }];
                let count = pick_index(&scenario.charges_per_customer, d(21)) + 1;
                for j in 1..count as u64 {
                    charges.push(Charge {
                        amount: amount_of(d(100 + 10 * j + 1)),
                        bill_at: bill_of(d(100 + 10 * j + 2)),
                    });
                }
                let first = charges[0];
                charges.sort_by_key(|c| c.bill_at);
                let brand = pick(&scenario.brands, d(3)).to_owned();
                let method_type = if scenario.payment_methods.is_empty() {
                    PaymentMethodType::Card
                } else {
                    match pick(&scenario.payment_methods, d(20)) {
                        "us_bank_account" => PaymentMethodType::UsBankAccount,
                        "sepa_debit" => PaymentMethodType::SepaDebit,
                        _ => PaymentMethodType::Card,
                    }
                };
                // A bank account is in its scheme's area; a card is from anywhere.
                let country = match method_type {
                    PaymentMethodType::UsBankAccount => "US".to_owned(),
                    PaymentMethodType::SepaDebit if !sepa_countries.is_empty() => {
                        pick(&sepa_countries, d(4)).to_owned()
                    }
                    _ => pick(&scenario.countries, d(4)).to_owned(),
                };
                let pay_rule = pick_index(&shares, d(5));
                let rule = &rules[pay_rule];
                let phase = (d(6) * 2.0) as i64;
                let a = first.amount as f64;
                let balance = &scenario.balance;
                let broke = d(7) < balance.broke_share;
                let income_per_payday = if broke {
                    0.0
                } else {
                    a * balance.monthly_income * (0.5 + d(8)) / rule.paydays_per_month().max(0.1)
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
                let utc_offset_hours =
                    match scenario.time_zones.iter().find(|z| z.country == country) {
                        Some(zones) => zones.offsets[pick_index(&zones.weights, d(19))],
                        None => utc_offset(&country),
                    };
                // Income lands at the rule's hour, local time, on each payday.
                let offset = utc_offset_hours * HOUR_MS;
                let first_day = (start.as_millis() + offset).div_euclid(DAY_MS) - 1;
                let mut deposits = Vec::new();
                if income_per_payday > 0.0 {
                    for day in first_day..first_day + horizon_days {
                        if !is_payday(rule, phase, day) {
                            continue;
                        }
                        let jitter = if rule.jitter_hours > 0 {
                            (unit(mix(mix(seed ^ mix(i)) ^ mix(day as u64 ^ 0x9e37)))
                                * f64::from(rule.jitter_hours)
                                * HOUR_MS as f64) as i64
                        } else {
                            0
                        };
                        let at =
                            day * DAY_MS + i64::from(rule.landing_hour) * HOUR_MS + jitter - offset;
                        let split = income_per_payday * rule.split_share;
                        deposits.push((at, income_per_payday - split));
                        if split > 0.0 {
                            deposits.push((at + i64::from(rule.split_days) * DAY_MS, split));
                        }
                    }
                    deposits.retain(|(at, _)| *at > start.as_millis());
                    deposits.sort_by_key(|(at, _)| *at);
                }
                let mut customer = Customer {
                    index: i,
                    charges,
                    card: CardDetails {
                        brand: offsession_core::CardBrand::from_name(&brand),
                        funding: if d(12) < 0.6 {
                            "debit".into()
                        } else {
                            "credit".into()
                        },
                        country: Some(country.clone()),
                        wallet: None,
                        fingerprint: None,
                        fingerprint_by: None,
                    },
                    method_type: method_type.clone(),
                    pay_rule,
                    utc_offset_hours,
                    start_balance: 0.0,
                    daily_spend,
                    deposits,
                    hard: None,
                    expires_at: None,
                    replaced_at: None,
                    stopped: None,
                };
                // Solve for the start balance that gives the target at the first
                // charge's billing time.
                let paid = customer.income_between(start, first.bill_at);
                let spent = daily_spend * (first.bill_at.as_millis() - start.as_millis()) as f64
                    / DAY_MS as f64;
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
                if method_type == PaymentMethodType::Card {
                    if d(15) < declines.expiring_share {
                        customer.expires_at = Some(horizon(16));
                    }
                    if d(17) < declines.replaced_share {
                        customer.replaced_at = Some(horizon(18));
                    }
                    if brand == "mastercard" && d(22) < declines.mastercard_stop_share {
                        customer.stopped =
                            Some((horizon(23), if d(24) < 0.5 { "21" } else { "03" }));
                    }
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

    /// The customer of a simulated payment method id.
    pub fn customer_of(&self, payment_method: &str) -> Option<&Customer> {
        let index: u64 = payment_method.strip_prefix("pm_sim_")?.parse().ok()?;
        self.customers.get(index as usize)
    }

    /// The issuer's answer to an attempt of `amount` on `customer`'s payment method at
    /// `at`, when `charged` has already been taken from the account during the run:
    /// `None` approves. Pure: the same arguments give the same answer.
    pub fn answer(
        &self,
        customer: &Customer,
        amount: i64,
        at: Timestamp,
        charged: f64,
    ) -> Option<DeclineCodes> {
        let scenario = &self.scenario;
        if customer.method_type != PaymentMethodType::Card {
            let ach = customer.method_type == PaymentMethodType::UsBankAccount;
            if customer.hard.is_some() {
                let mut codes = DeclineCodes::new("invalid_account", Some("invalid_account"));
                codes.network_decline_code = Some(if ach { "R03" } else { "AC01" }.into());
                return Some(codes);
            }
            if self.balance(customer, at, charged) < amount as f64 {
                let mut codes = DeclineCodes::new("insufficient_funds", Some("insufficient_funds"));
                codes.network_decline_code = Some(if ach { "R01" } else { "AM04" }.into());
                return Some(codes);
            }
            return None;
        }
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
        if let Some((since, mac)) = customer.stopped {
            if at >= since {
                return Some(decline(
                    "card_declined",
                    "do_not_honor",
                    "05",
                    Some(mac),
                    brand,
                ));
            }
        }
        let since_start = (at.as_millis() - scenario.start().as_millis()) as f64 / DAY_MS as f64;
        for outage in scenario.outages.iter().filter(|o| o.brand == brand) {
            let into = since_start - outage.start_day;
            let into = match outage.every_days {
                Some(every) if every > 0.0 && into >= 0.0 => into.rem_euclid(every),
                _ => into,
            };
            if into >= 0.0 && into < outage.hours / 24.0 {
                return Some(decline(
                    "card_declined",
                    "issuer_not_available",
                    "91",
                    None,
                    brand,
                ));
            }
        }
        let declines = &scenario.declines;
        let soft_mac = || {
            let u = unit(mix(mix(scenario.seed ^ customer.index)
                ^ at.as_millis() as u64
                ^ 0x5bd1));
            if u < declines.mastercard_retry_after_share {
                let k = (u / declines.mastercard_retry_after_share * 7.0) as u32 % 7;
                ["24", "25", "26", "27", "28", "29", "30"][k as usize]
            } else {
                "02"
            }
        };
        let local_hour = ((at.as_millis() + customer.utc_offset_hours * HOUR_MS).rem_euclid(DAY_MS)
            / HOUR_MS) as u32;
        let [from, to] = declines.night_hours;
        let night = if from <= to {
            local_hour >= from && local_hour < to
        } else {
            local_hour >= from || local_hour < to
        };
        let noise = declines.issuer_noise * if night { declines.night_factor } else { 1.0 };
        if unit(mix(
            mix(scenario.seed ^ customer.index) ^ at.as_millis() as u64
        )) < noise
        {
            return Some(decline(
                "card_declined",
                "do_not_honor",
                "05",
                Some(soft_mac()),
                brand,
            ));
        }
        if self.balance(customer, at, charged) < amount as f64 {
            return Some(decline(
                "card_declined",
                "insufficient_funds",
                "51",
                Some(soft_mac()),
                brand,
            ));
        }
        None
    }

    fn balance(&self, customer: &Customer, at: Timestamp, charged: f64) -> f64 {
        let start = self.scenario.start();
        let days = (at.as_millis() - start.as_millis()) as f64 / DAY_MS as f64;
        customer.start_balance + customer.income_between(start, at)
            - customer.daily_spend * days
            - charged
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bank_account_is_in_its_schemes_area_and_preflight_says_where() {
        let text = include_str!("../../../../config/scenarios/bank-debits.toml");
        let mut scenario = Scenario::from_toml(text).unwrap();
        scenario.customers = 4_000;
        let population = Population::generate(&scenario);
        let mut seen = HashMap::new();
        for customer in population.customers() {
            let country = customer.card.country.clone().unwrap();
            let details = customer.method_details();
            match customer.method_type {
                PaymentMethodType::UsBankAccount => {
                    assert_eq!(country, "US");
                    assert_eq!(details.country(), Some("US"));
                    assert!(details.card.is_none());
                }
                PaymentMethodType::SepaDebit => {
                    assert!(SEPA_COUNTRIES.contains(&country.as_str()), "{country}");
                    assert_eq!(details.country(), Some(country.as_str()));
                }
                _ => {
                    assert_eq!(details.bank_country, None);
                    assert_eq!(details.country(), Some(country.as_str()));
                }
            }
            *seen
                .entry((format!("{:?}", customer.method_type), country == "US"))
                .or_insert(0) += 1;
        }
        // Cards come from both sides of the Atlantic; each debit scheme from its own.
        assert_eq!(seen.len(), 4, "{seen:?}");
    }
}
