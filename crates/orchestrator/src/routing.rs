//! Routing: which processor a payment goes to, and where it may cascade.
//!
//! Rules are evaluated in order; the first whose conditions all hold gives the route
//! — an ordered list of processors, or a weighted split. A split is decided by a hash
//! of the payment id, so every attempt of a payment goes to the same primary and a
//! restarted engine routes it the same way. Processors that cannot take the payment
//! (method type, currency, connect) are dropped from the route; a payment no
//! processor can take is refused with the reason.

use offsession_core::{
    ApiError, Cadence, CardBrand, OffSessionPayment, PaymentMethodDetails, PaymentMethodType,
    Processor,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Conditions of a rule; an absent condition always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Lower-case currency codes.
    #[serde(default)]
    pub currencies: Option<Vec<String>>,
    /// Smallest amount (minor units), inclusive.
    #[serde(default)]
    pub amount_min: Option<i64>,
    /// Largest amount (minor units), inclusive.
    #[serde(default)]
    pub amount_max: Option<i64>,
    /// Matches only these payment method types.
    #[serde(default)]
    pub payment_method_types: Option<Vec<PaymentMethodType>>,
    /// Matches only cards of these brands.
    #[serde(default)]
    pub card_brands: Option<Vec<CardBrand>>,
    /// Card issuing countries.
    #[serde(default)]
    pub card_countries: Option<Vec<String>>,
    /// Card funding (`credit`, `debit`, `prepaid`).
    #[serde(default)]
    pub funding: Option<Vec<String>>,
    /// Matches only these cadences.
    #[serde(default)]
    pub cadences: Option<Vec<Cadence>>,
    /// Whether `on_behalf_of` is set.
    #[serde(default)]
    pub on_behalf_of: Option<bool>,
    /// Metadata keys that must be present.
    #[serde(default)]
    pub metadata_keys: Option<Vec<String>>,
}

impl RouteMatch {
    fn holds(&self, payment: &OffSessionPayment, method: &PaymentMethodDetails) -> bool {
        let card = method.card.as_ref();
        let any = |list: &Option<Vec<String>>, value: Option<&str>| {
            list.as_ref()
                .is_none_or(|l| value.is_some_and(|v| l.iter().any(|x| x.eq_ignore_ascii_case(v))))
        };
        let amount = payment.amount_requested.value;
        any(
            &self.currencies,
            Some(payment.amount_requested.currency.as_str()),
        ) && self.amount_min.is_none_or(|min| amount >= min)
            && self.amount_max.is_none_or(|max| amount <= max)
            && self
                .payment_method_types
                .as_ref()
                .is_none_or(|types| types.contains(&method.payment_method_type))
            && self
                .card_brands
                .as_ref()
                .is_none_or(|brands| card.is_some_and(|c| brands.contains(&c.brand)))
            && any(
                &self.card_countries,
                card.and_then(|c| c.country.as_deref()),
            )
            && any(&self.funding, card.map(|c| c.funding.as_str()))
            && self
                .cadences
                .as_ref()
                .is_none_or(|c| c.contains(&payment.cadence))
            && self
                .on_behalf_of
                .is_none_or(|want| want == payment.on_behalf_of.is_some())
            && self
                .metadata_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().all(|k| payment.metadata.contains_key(k)))
    }
}

/// Where a matching payment goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Processors in order of preference.
    #[serde(default)]
    pub processors: Vec<String>,
    /// Or a weighted split: processor id → weight.
    #[serde(default)]
    pub split: BTreeMap<String, u32>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Name, for errors and logs.
    pub name: String,
    /// Conditions.
    #[serde(default)]
    pub when: RouteMatch,
    /// Destination.
    #[serde(flatten)]
    pub route: Route,
}

/// The routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Route when no rule matches (default: every processor in configuration order).
    #[serde(default)]
    pub default: Option<Route>,
}

fn hash(text: &str) -> u64 {
    offsession_core::hash::mix64(offsession_core::hash::fnv1a(text))
}

impl Route {
    /// The processors in order for `payment_id`: a split picks the primary by a hash of
    /// the payment id and keeps the others as fallbacks, heaviest first.
    pub fn order(&self, payment_id: &str) -> Vec<String> {
        if self.split.is_empty() {
            return self.processors.clone();
        }
        let total: u64 = self.split.values().map(|w| u64::from(*w)).sum();
        let mut ranked: Vec<(String, u32)> = self.split.clone().into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if total == 0 {
            return ranked.into_iter().map(|(p, _)| p).collect();
        }
        let mut point = hash(payment_id) % total;
        let mut first = String::new();
        for (id, weight) in &self.split {
            if point < u64::from(*weight) {
                first = id.clone();
                break;
            }
            point -= u64::from(*weight);
        }
        std::iter::once(first.clone())
            .chain(ranked.into_iter().map(|(p, _)| p).filter(|p| *p != first))
            .collect()
    }

    fn processors(&self) -> impl Iterator<Item = &String> {
        self.processors.iter().chain(self.split.keys())
    }
}

/// Routes payments to processors.
#[derive(Debug, Clone)]
pub struct Router {
    config: RoutingConfig,
    all: Vec<String>,
}

impl Router {
    /// A router over `processors` (ids in configuration order). Every processor a rule
    /// names must exist.
    pub fn new(config: RoutingConfig, processors: &[Arc<dyn Processor>]) -> Result<Router, String> {
        let all: Vec<String> = processors.iter().map(|p| p.id().to_owned()).collect();
        for rule in &config.rules {
            let types = rule.when.payment_method_types.iter().flatten();
            if let Some(err) = types
                .map(PaymentMethodType::check_known)
                .find_map(Result::err)
            {
                return Err(format!("rule `{}`: payment_method_types: {err}", rule.name));
            }
            let brands = rule.when.card_brands.iter().flatten();
            if let Some(err) = brands.map(CardBrand::check_known).find_map(Result::err) {
                return Err(format!("rule `{}`: card_brands: {err}", rule.name));
            }
        }
        let routes = config
            .rules
            .iter()
            .map(|r| (r.name.as_str(), &r.route))
            .chain(config.default.iter().map(|d| ("default", d)));
        for (name, route) in routes {
            if route.processors.is_empty() && route.split.is_empty() {
                return Err(format!("route `{name}` names no processor"));
            }
            if let Some(unknown) = route.processors().find(|p| !all.contains(p)) {
                return Err(format!(
                    "route `{name}` names processor `{unknown}`, which is not configured ({})",
                    all.join(", ")
                ));
            }
        }
        Ok(Router { config, all })
    }

    /// The processors for a payment, primary first; only processors whose capabilities
    /// fit the payment.
    pub fn route(
        &self,
        payment: &OffSessionPayment,
        method: &PaymentMethodDetails,
        processors: &[Arc<dyn Processor>],
    ) -> Result<Vec<String>, ApiError> {
        let (name, order) = match self
            .config
            .rules
            .iter()
            .find(|r| r.when.holds(payment, method))
        {
            Some(rule) => (rule.name.as_str(), rule.route.order(&payment.id)),
            None => match &self.config.default {
                Some(route) => ("default", route.order(&payment.id)),
                None => ("default", self.all.clone()),
            },
        };
        let connect = payment.on_behalf_of.is_some() || payment.transfer_data.is_some();
        let mut reasons = Vec::new();
        let eligible: Vec<String> = order
            .iter()
            .filter(|id| {
                let Some(p) = processors.iter().find(|p| p.id() == id.as_str()) else {
                    return false;
                };
                let caps = p.capabilities();
                let currency = payment.amount_requested.currency.as_str();
                let why = if !caps.supports_type(&method.payment_method_type) {
                    Some(format!(
                        "`{id}` does not take {}",
                        method.payment_method_type
                    ))
                } else if !caps.currencies.is_empty()
                    && !caps.currencies.iter().any(|c| c == currency)
                {
                    Some(format!("`{id}` does not take {currency}"))
                } else if connect && !caps.connect {
                    Some(format!("`{id}` does not support connect"))
                } else {
                    None
                };
                if let Some(why) = why {
                    reasons.push(why);
                    return false;
                }
                true
            })
            .cloned()
            .collect();
        if eligible.is_empty() {
            return Err(ApiError::invalid(
                "payment_method",
                format!(
                    "no processor can take this payment: route `{name}` leads to [{}] and {}",
                    order.join(", "),
                    if reasons.is_empty() {
                        "none is configured".to_owned()
                    } else {
                        reasons.join("; ")
                    }
                ),
            ));
        }
        Ok(eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_deterministic_per_payment_and_follows_the_weights() {
        let route = Route {
            processors: vec![],
            split: [("a".to_owned(), 70), ("b".to_owned(), 30)].into(),
        };
        let mut a = 0;
        for i in 0..10_000 {
            let id = format!("osp_{i}");
            let order = route.order(&id);
            assert_eq!(order, route.order(&id), "same payment, same route");
            assert_eq!(order.len(), 2);
            if order[0] == "a" {
                a += 1;
            }
        }
        assert!((6_700..7_300).contains(&a), "{a} of 10000 to `a`");
    }
}
