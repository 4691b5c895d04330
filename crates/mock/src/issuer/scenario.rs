//! What a simulated world is made of: a scenario file's population, pay cycles,
//! balances, declines and outages, as data.

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
    /// Customers (one card and one charge each).
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
    /// Weights of pay cycles.
    pub pay_cycles: PayCycleMix,
    /// Money behaviour.
    pub balance: BalanceModel,
    /// Non-funds declines.
    pub declines: DeclineModel,
    /// Card brands, weights.
    pub brands: HashMap<String, f64>,
    /// Issuing countries, weights.
    pub countries: HashMap<String, f64>,
    /// Brand-wide issuer outages.
    #[serde(default)]
    pub outages: Vec<Outage>,
}

fn default_currency() -> String {
    "usd".into()
}

/// Share of customers on each pay cycle.
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
    /// Multiplier of that chance between 00:00 and 06:00 local.
    pub night_factor: f64,
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
}

impl Scenario {
    /// Parses a scenario file.
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
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
        Ok(scenario)
    }

    /// The simulation start.
    pub fn start(&self) -> Timestamp {
        Timestamp::parse_rfc3339(&self.start).unwrap_or_default()
    }
}
