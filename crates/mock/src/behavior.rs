//! What a payment method does when charged, read from its name.
//!
//! Stripe's test payment method names work as in Stripe's docs (`pm_card_visa`
//! succeeds, `pm_card_visa_chargeDeclinedInsufficientFunds` declines with
//! `insufficient_funds`, …). A `_recoversAfter<N>` suffix on a declining name makes
//! the method decline the first N attempts of a payment and succeed from attempt
//! N + 1 on: the shape of a customer whose account is refilled. Anything after a
//! double underscore names a distinct card with the same behaviour
//! (`pm_card_visa__cus42`), so that card-network caps, which count per card, see
//! many cards rather than one.

use offsession_core::{CardDetails, DeclineCodes};

/// How a payment method answers an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Approves.
    Succeed,
    /// Declines every attempt with these codes.
    Decline(DeclineCodes),
    /// Declines attempts `1..=after` with these codes, approves later ones.
    DeclineThenSucceed {
        /// The decline.
        codes: DeclineCodes,
        /// Number of declined attempts.
        after: u32,
    },
}

impl Behavior {
    /// The answer to attempt `attempt_number` (1-based).
    pub fn decline_for(&self, attempt_number: u32) -> Option<&DeclineCodes> {
        match self {
            Behavior::Succeed => None,
            Behavior::Decline(codes) => Some(codes),
            Behavior::DeclineThenSucceed { codes, after } => {
                (attempt_number <= *after).then_some(codes)
            }
        }
    }
}

/// A test payment method: its card and its behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestMethod {
    /// Card facts.
    pub card: CardDetails,
    /// What it does.
    pub behavior: Behavior,
}

fn codes(code: &str, decline: Option<&str>, network: Option<&str>, brand: &str) -> DeclineCodes {
    let mut codes = DeclineCodes::new(code, decline);
    if brand == "mastercard" {
        // Mastercard answers with merchant advice codes rather than Visa-style codes.
        codes.network_advice_code = match decline.unwrap_or(code) {
            "lost_card" | "stolen_card" | "fraudulent" => Some("03".into()),
            "expired_card" => Some("01".into()),
            "insufficient_funds" | "generic_decline" => Some("02".into()),
            _ => None,
        };
    } else {
        codes.network_decline_code = network.map(str::to_owned);
    }
    codes.message = Some(match decline.unwrap_or(code) {
        "insufficient_funds" => "Your card has insufficient funds.".to_owned(),
        "expired_card" => "Your card has expired.".to_owned(),
        "authentication_required" => {
            "Your card was declined. This transaction requires authentication.".to_owned()
        }
        "processing_error" => {
            "An error occurred while processing your card. Try again in a little bit.".to_owned()
        }
        _ => "Your card was declined.".to_owned(),
    });
    codes
}

const BRANDS: [(&str, &str, &str); 8] = [
    // (name fragment, brand, default funding)
    ("visa_debit", "visa", "debit"),
    ("mastercard_debit", "mastercard", "debit"),
    ("mastercard_prepaid", "mastercard", "prepaid"),
    ("visa", "visa", "credit"),
    ("mastercard", "mastercard", "credit"),
    ("amex", "amex", "credit"),
    ("discover", "discover", "credit"),
    ("jcb", "jcb", "credit"),
];

/// `name_recoversAfterN` → (`name`, `N`), at the last `_recoversAfter`.
fn split_recovers_after(name: &str) -> Option<(&str, &str)> {
    const TAG: &str = "_recoversAfter";
    let mut end = name.len();
    while let Some(at) = name[..end].rfind('_') {
        if name[at..].starts_with(TAG) {
            return Some((&name[..at], &name[at + TAG.len()..]));
        }
        end = at;
    }
    None
}

/// Reads a Stripe-style test payment method name; `None` if it is not one.
pub fn parse_test_method(id: &str) -> Option<TestMethod> {
    let rest = id.strip_prefix("pm_card_")?;
    // Byte searches: `str` patterns build a two-way searcher per call, which was most
    // of the mock's cost per attempt in the bench.
    let rest = rest
        .as_bytes()
        .windows(2)
        .position(|w| w == b"__")
        .map_or(rest, |at| &rest[..at]);
    let (base, recovers_after) = match split_recovers_after(rest) {
        Some((base, n)) => (base, Some(n.parse::<u32>().ok().filter(|n| *n > 0)?)),
        None => (rest, None),
    };
    let (brand, funding, scenario) = match BRANDS.iter().find(|(frag, _, _)| {
        base == *frag || base.strip_prefix(frag).is_some_and(|s| s.starts_with('_'))
    }) {
        Some((frag, brand, funding)) => {
            (*brand, *funding, base[frag.len()..].trim_start_matches('_'))
        }
        None => ("visa", "credit", base),
    };
    let decline = match scenario {
        "" => None,
        "chargeDeclined" => Some(codes(
            "card_declined",
            Some("generic_decline"),
            Some("05"),
            brand,
        )),
        "chargeDeclinedInsufficientFunds" => Some(codes(
            "card_declined",
            Some("insufficient_funds"),
            Some("51"),
            brand,
        )),
        "chargeDeclinedLostCard" => {
            Some(codes("card_declined", Some("lost_card"), Some("41"), brand))
        }
        "chargeDeclinedStolenCard" => Some(codes(
            "card_declined",
            Some("stolen_card"),
            Some("43"),
            brand,
        )),
        "chargeDeclinedFraudulent" => Some(codes(
            "card_declined",
            Some("fraudulent"),
            Some("59"),
            brand,
        )),
        "chargeDeclinedExpiredCard" => Some(codes(
            "expired_card",
            Some("expired_card"),
            Some("54"),
            brand,
        )),
        "chargeDeclinedIncorrectCvc" => Some(codes(
            "incorrect_cvc",
            Some("incorrect_cvc"),
            Some("N7"),
            brand,
        )),
        "chargeDeclinedProcessingError" => Some(codes(
            "processing_error",
            Some("processing_error"),
            Some("96"),
            brand,
        )),
        "chargeDeclinedVelocityLimitExceeded" => Some(codes(
            "card_declined",
            Some("card_velocity_exceeded"),
            Some("61"),
            brand,
        )),
        "chargeDeclinedDoNotHonor" => Some(codes(
            "card_declined",
            Some("do_not_honor"),
            Some("05"),
            brand,
        )),
        "authenticationRequired" => Some(codes(
            "authentication_required",
            Some("authentication_required"),
            Some("1A"),
            brand,
        )),
        _ => return None,
    };
    let behavior = match (decline, recovers_after) {
        (None, None) => Behavior::Succeed,
        (None, Some(_)) => return None,
        (Some(codes), None) => Behavior::Decline(codes),
        (Some(codes), Some(after)) => Behavior::DeclineThenSucceed { codes, after },
    };
    Some(TestMethod {
        card: CardDetails {
            brand: offsession_core::CardBrand::from_name(brand),
            funding: funding.to_owned(),
            country: Some("US".to_owned()),
            wallet: None,
            fingerprint: None,
            fingerprint_by: None,
        },
        behavior,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_test_names_map_to_their_outcomes() {
        let visa = parse_test_method("pm_card_visa").unwrap();
        assert_eq!(visa.behavior, Behavior::Succeed);
        assert_eq!(visa.card.brand, "visa");

        let funds = parse_test_method("pm_card_visa_chargeDeclinedInsufficientFunds").unwrap();
        let codes = funds.behavior.decline_for(1).unwrap();
        assert_eq!(codes.decline_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(codes.network_decline_code.as_deref(), Some("51"));

        let expired = parse_test_method("pm_card_chargeDeclinedExpiredCard").unwrap();
        assert_eq!(
            expired.behavior.decline_for(1).unwrap().code,
            "expired_card"
        );

        let auth = parse_test_method("pm_card_authenticationRequired").unwrap();
        assert_eq!(
            auth.behavior.decline_for(1).unwrap().code,
            "authentication_required"
        );

        let mc = parse_test_method("pm_card_mastercard_chargeDeclinedLostCard").unwrap();
        assert_eq!(mc.card.brand, "mastercard");
        assert_eq!(
            mc.behavior
                .decline_for(1)
                .unwrap()
                .network_advice_code
                .as_deref(),
            Some("03")
        );
        assert_eq!(
            parse_test_method("pm_card_visa_debit")
                .unwrap()
                .card
                .funding,
            "debit"
        );
    }

    #[test]
    fn recovers_after_declines_n_attempts_then_succeeds() {
        let m = parse_test_method("pm_card_visa_chargeDeclinedInsufficientFunds_recoversAfter2")
            .unwrap();
        assert!(m.behavior.decline_for(1).is_some());
        assert!(m.behavior.decline_for(2).is_some());
        assert!(m.behavior.decline_for(3).is_none());
    }

    #[test]
    fn a_double_underscore_tag_names_a_distinct_card_with_the_same_behaviour() {
        let tagged =
            parse_test_method("pm_card_visa_chargeDeclined_recoversAfter2__cus_42").unwrap();
        let plain = parse_test_method("pm_card_visa_chargeDeclined_recoversAfter2").unwrap();
        assert_eq!(tagged, plain);
    }

    #[test]
    fn unknown_names_are_not_test_methods() {
        assert!(parse_test_method("pm_1RP6TAG7mvlzf7RN").is_none());
        assert!(parse_test_method("pm_card_visa_chargeDeclinedBogus").is_none());
        assert!(parse_test_method("pm_card_visa_recoversAfter2").is_none());
        assert!(parse_test_method("pm_card_visa_chargeDeclined_recoversAfter0").is_none());
    }
}
