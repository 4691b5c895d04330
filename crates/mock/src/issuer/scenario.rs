//! What a simulated world is made of: a scenario file's population, pay rules, time
//! zones, balances, declines, payment methods and outages, as data.
//!
//! Nothing here is imported from the retry strategies: paydays, landing hours, time
//! zones and night hours are the scenario's own tables, so a world can differ from
//! every strategy's assumptions.

use super::*;

/// A simulation scenario (`config/scenarios/*.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What the scenario models.
    #[serde(default)]
    pub description: String,
    /// Seed of the population.
    pub seed: u64,
    /// Customers (one payment method each).
    pub customers: u64,
    /// Simulated days.
    pub days: u32,
    /// Charges are created over the first this many days.
    pub billing_days: u32,
    /// Simulation start (RFC 3339).
    pub start: String,
    /// Charge amounts, minor units of `currency`.
    pub amount_min: i64,
    /// Upper bound of charge amounts.
    pub amount_max: i64,
    /// Currency of every simulated charge (ISO 4217, lowercase).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Weights of the number of charges per customer: entry `k` is the weight of
    /// `k + 1` charges (several subscriptions on one payment method). Default: one.
    #[serde(default = "one_charge")]
    pub charges_per_customer: Vec<f64>,
    /// Weights of the four classic pay cycles (paid on the 1st; the 1st and 15th;
    /// every other Friday; every Friday, all landing 06:00 local). Either this or
    /// `pay_rules`.
    #[serde(default)]
    pub pay_cycles: Option<PayCycleMix>,
    /// Pay rules with their shares of customers. Either this or `pay_cycles`.
    #[serde(default)]
    pub pay_rules: Vec<PayRule>,
    /// Money behaviour.
    pub balance: BalanceModel,
    /// Non-funds declines.
    pub declines: DeclineModel,
    /// Card brands, weights.
    pub brands: HashMap<String, f64>,
    /// Issuing countries, weights.
    pub countries: HashMap<String, f64>,
    /// Time zones within a country; countries not listed use one zone of the
    /// simulator's own table.
    #[serde(default)]
    pub time_zones: Vec<TimeZones>,
    /// Payment method types, weights (`card`, `us_bank_account`, `sepa_debit`).
    /// Default: cards only. A bank account is where its scheme is: an ACH customer
    /// lives in the US, a SEPA customer in one of `countries` that is in the SEPA
    /// area (drawn by their weights; from all of `countries` when none is).
    #[serde(default)]
    pub payment_methods: HashMap<String, f64>,
    /// Brand-wide issuer outages.
    #[serde(default)]
    pub outages: Vec<Outage>,
}

fn default_currency() -> String {
    "usd".into()
}

fn one_charge() -> Vec<f64> {
    vec![1.0]
}

/// Share of customers on each classic pay cycle.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayCycleMix {
    /// Paid on the 1st.
    pub monthly: f64,
    /// Paid on the 1st and 15th.
    pub semi_monthly: f64,
    /// Paid every other Friday.
    pub biweekly: f64,
    /// Paid every Friday.
    pub weekly: f64,
}

/// When one group of customers is paid.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRule {
    /// Share of customers (weights, normalised over all rules).
    pub share: f64,
    /// Days of the month (29–31 mean the month's last day when it is shorter).
    #[serde(default)]
    pub days_of_month: Vec<u32>,
    /// A weekday (`mon` … `sun`).
    #[serde(default)]
    pub weekday: Option<String>,
    /// With `weekday`: every this many weeks (1 or 2; the phase is drawn per customer).
    #[serde(default = "one")]
    pub every_weeks: u32,
    /// Paid on the last Monday–Friday of the month.
    #[serde(default)]
    pub last_business_day: bool,
    /// A day of the month on a Saturday or Sunday is paid the Friday before.
    #[serde(default)]
    pub weekend_before: bool,
    /// Local hour at which the money lands.
    #[serde(default = "six")]
    pub landing_hour: u32,
    /// Each deposit lands up to this many hours after `landing_hour` (drawn per
    /// customer and payday).
    #[serde(default)]
    pub jitter_hours: u32,
    /// Share of each payday's income that lands `split_days` later.
    #[serde(default)]
    pub split_share: f64,
    /// Days between the two parts of a split deposit.
    #[serde(default)]
    pub split_days: u32,
}

fn one() -> u32 {
    1
}

fn six() -> u32 {
    6
}

impl PayRule {
    fn every(share: f64) -> PayRule {
        PayRule {
            share,
            days_of_month: Vec::new(),
            weekday: None,
            every_weeks: 1,
            last_business_day: false,
            weekend_before: false,
            landing_hour: 6,
            jitter_hours: 0,
            split_share: 0.0,
            split_days: 0,
        }
    }

    /// The four classic cycles as rules.
    fn classic(mix: &PayCycleMix) -> Vec<PayRule> {
        vec![
            PayRule {
                days_of_month: vec![1],
                ..PayRule::every(mix.monthly)
            },
            PayRule {
                days_of_month: vec![1, 15],
                ..PayRule::every(mix.semi_monthly)
            },
            PayRule {
                weekday: Some("fri".into()),
                every_weeks: 2,
                ..PayRule::every(mix.biweekly)
            },
            PayRule {
                weekday: Some("fri".into()),
                ..PayRule::every(mix.weekly)
            },
        ]
    }

    /// Paydays in an average month.
    pub(super) fn paydays_per_month(&self) -> f64 {
        let mut n = self.days_of_month.len() as f64;
        if self.weekday.is_some() {
            n += 4.33 / f64::from(self.every_weeks.max(1));
        }
        if self.last_business_day {
            n += 1.0;
        }
        n
    }

    pub(super) fn weekday_number(&self) -> Option<i64> {
        let names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        self.weekday
            .as_deref()
            .and_then(|w| names.iter().position(|n| *n == w))
            .map(|i| i as i64)
    }
}

/// The UTC offsets of one country's customers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeZones {
    /// ISO 3166 country.
    pub country: String,
    /// Hours east of UTC.
    pub offsets: Vec<i64>,
    /// Weight of each offset.
    pub weights: Vec<f64>,
}

/// Balances, income and spending, in multiples of the customer's charge amount.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceModel {
    /// Share of customers whose balance covers the charge when it is first attempted.
    pub covered_share: f64,
    /// Income per payday, per month of pay, as a multiple of the charge (spread over
    /// the cycle's paydays).
    pub monthly_income: f64,
    /// Spending per day as a multiple of the charge.
    pub daily_spend: f64,
    /// Share of short customers whose income never catches up (always declined).
    pub broke_share: f64,
}

/// Declines that are not about funds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclineModel {
    /// Lost, stolen or fraudulent cards: a hard decline on every attempt.
    pub hard_share: f64,
    /// Cards that expire at a random time during the run.
    pub expiring_share: f64,
    /// Cards replaced at a random time during the run (new account information).
    pub replaced_share: f64,
    /// Chance that an issuer answers `do_not_honor` to any one attempt by day.
    pub issuer_noise: f64,
    /// Multiplier of that chance during `night_hours`.
    pub night_factor: f64,
    /// Local hours `[from, to)` counted as night.
    #[serde(default = "night")]
    pub night_hours: [u32; 2],
    /// Share of Mastercard soft declines whose merchant advice code is one of 24–30
    /// (retry after 1 h … 10 d) instead of 02.
    #[serde(default)]
    pub mastercard_retry_after_share: f64,
    /// Share of Mastercard customers who stop their recurring payments at a random
    /// time: from then on every attempt on the card is declined `do_not_honor` with
    /// merchant advice code 21 (or 03, half of them).
    #[serde(default)]
    pub mastercard_stop_share: f64,
}

fn night() -> [u32; 2] {
    [0, 6]
}

/// An outage of a brand's issuers: every attempt answers `issuer_not_available`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// The card brand whose issuers are down (`visa`, `mastercard`, …).
    pub brand: String,
    /// Start, days after the simulation start (fractions allowed).
    pub start_day: f64,
    /// Length in hours.
    pub hours: f64,
    /// Repeats every this many days (none: once).
    #[serde(default)]
    pub every_days: Option<f64>,
}

impl Scenario {
    /// Parses a scenario file and checks it.
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Checks every key's rule (again after a caller overrides one, such as
    /// `customers`).
    pub fn check(&self) -> Result<(), String> {
        let scenario = self;
        if scenario.customers == 0 || scenario.days == 0 || scenario.billing_days > scenario.days {
            return Err(
                "`customers` and `days` must be positive and `billing_days` ≤ `days`".into(),
            );
        }
        if Timestamp::parse_rfc3339(&scenario.start).is_none() {
            return Err(format!(
                "`start`: `{}` is not an RFC 3339 time",
                scenario.start
            ));
        }
        if scenario.amount_min <= 0 || scenario.amount_max < scenario.amount_min {
            return Err("`amount_min` must be positive and at most `amount_max`".into());
        }
        match (&scenario.pay_cycles, scenario.pay_rules.is_empty()) {
            (Some(_), false) => return Err("give `pay_cycles` or `pay_rules`, not both".into()),
            (None, true) => return Err("`pay_rules` (or `pay_cycles`) is required".into()),
            _ => {}
        }
        for (i, rule) in scenario.pay_rules.iter().enumerate() {
            let at = |m: &str| format!("`pay_rules[{i}]`: {m}");
            if rule.days_of_month.is_empty() && rule.weekday.is_none() && !rule.last_business_day {
                return Err(at(
                    "needs `days_of_month`, `weekday` or `last_business_day`",
                ));
            }
            if rule.days_of_month.iter().any(|d| !(1..=31).contains(d)) {
                return Err(at("`days_of_month` must be 1–31"));
            }
            if rule.weekday.is_some() && rule.weekday_number().is_none() {
                return Err(at(
                    "`weekday` must be one of mon, tue, wed, thu, fri, sat, sun",
                ));
            }
            if !(1..=2).contains(&rule.every_weeks) {
                return Err(at("`every_weeks` must be 1 or 2"));
            }
            if rule.landing_hour > 23 || rule.jitter_hours > 72 {
                return Err(at(
                    "`landing_hour` must be 0–23 and `jitter_hours` at most 72",
                ));
            }
            if !(0.0..=1.0).contains(&rule.split_share)
                || (rule.split_share > 0.0 && rule.split_days == 0)
            {
                return Err(at("`split_share` must be in [0, 1], with `split_days` ≥ 1"));
            }
            if rule.share < 0.0 {
                return Err(at("`share` must not be negative"));
            }
        }
        for zones in &scenario.time_zones {
            if zones.offsets.is_empty()
                || zones.offsets.len() != zones.weights.len()
                || zones.offsets.iter().any(|o| !(-12..=14).contains(o))
            {
                return Err(format!(
                    "`time_zones` of `{}`: `offsets` (−12…14) and `weights` must be non-empty and of one length",
                    zones.country
                ));
            }
        }
        for kind in scenario.payment_methods.keys() {
            if !matches!(kind.as_str(), "card" | "us_bank_account" | "sepa_debit") {
                return Err(format!(
                    "`payment_methods`: `{kind}` is not one of card, us_bank_account, sepa_debit"
                ));
            }
        }
        if scenario.charges_per_customer.is_empty()
            || scenario.charges_per_customer.len() > 8
            || scenario.charges_per_customer.iter().any(|w| *w < 0.0)
        {
            return Err("`charges_per_customer` needs 1–8 non-negative weights".into());
        }
        let night = scenario.declines.night_hours;
        if night[0] > 24 || night[1] > 24 {
            return Err("`declines.night_hours` must be hours 0–24".into());
        }
        let d = &scenario.declines;
        let b = &scenario.balance;
        for (key, share) in [
            (
                "declines.mastercard_retry_after_share",
                d.mastercard_retry_after_share,
            ),
            ("declines.mastercard_stop_share", d.mastercard_stop_share),
            ("declines.hard_share", d.hard_share),
            ("declines.expiring_share", d.expiring_share),
            ("declines.replaced_share", d.replaced_share),
            ("declines.issuer_noise", d.issuer_noise),
            ("balance.covered_share", b.covered_share),
            ("balance.broke_share", b.broke_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("`{key}` must be in [0, 1] (got {share})"));
            }
        }
        if d.night_factor < 0.0 || b.monthly_income < 0.0 || b.daily_spend < 0.0 {
            return Err(
                "`declines.night_factor`, `balance.monthly_income` and `balance.daily_spend` must not be negative"
                    .into(),
            );
        }
        for (key, weights) in [
            ("brands", &scenario.brands),
            ("countries", &scenario.countries),
        ] {
            if weights.is_empty()
                || weights.values().any(|w| *w < 0.0)
                || weights.values().sum::<f64>() <= 0.0
            {
                return Err(format!(
                    "`{key}` needs at least one positive weight and none negative"
                ));
            }
        }
        for brand in scenario.brands.keys() {
            offsession_core::CardBrand::from_name(brand)
                .check_known()
                .map_err(|e| format!("`brands`: {e}"))?;
        }
        for country in scenario.countries.keys() {
            if country.len() != 2 || !country.bytes().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "`countries`: `{country}` is not an ISO 3166 country code (two capital letters)"
                ));
            }
        }
        if scenario.pay_rules.iter().map(|r| r.share).sum::<f64>() <= 0.0
            && scenario.pay_cycles.is_none()
        {
            return Err("`pay_rules` need at least one positive `share`".into());
        }
        for (i, outage) in scenario.outages.iter().enumerate() {
            if !scenario.brands.contains_key(&outage.brand) {
                return Err(format!(
                    "`outages[{i}].brand`: `{}` is not one of the scenario's `brands`",
                    outage.brand
                ));
            }
            if outage.hours <= 0.0
                || outage.start_day < 0.0
                || outage.every_days.is_some_and(|e| e <= 0.0)
            {
                return Err(format!(
                    "`outages[{i}]`: `hours` and `every_days` must be positive and `start_day` not negative"
                ));
            }
        }
        Ok(())
    }

    /// The simulation start.
    pub fn start(&self) -> Timestamp {
        Timestamp::parse_rfc3339(&self.start).unwrap_or_default()
    }

    /// The pay rules, from `pay_rules` or from the classic `pay_cycles`.
    pub fn rules(&self) -> Vec<PayRule> {
        match &self.pay_cycles {
            Some(mix) => PayRule::classic(mix),
            None => self.pay_rules.clone(),
        }
    }
}
