//! Payment method types and card brands, as processors name them.
//!
//! Both enums name the values the engine acts on and keep any other value a
//! processor sends as `Other`, so a new brand or type from a processor is carried
//! and shown, never mistaken for a known one. Configuration that names them
//! (routing rules, processor capabilities) refuses `Other` with [`PaymentMethodType::check_known`]
//! and [`CardBrand::check_known`], so a typo is an error, not a rule that never matches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value the engine does not know, as the processor wrote it.
            Other(String),
        }

        impl $name {
            /// Every value the engine knows.
            pub const KNOWN: &'static [$name] = &[$($name::$variant,)*];

            /// The wire name.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(text) => text,
                }
            }

            /// The value named `text`; unknown names are kept as `Other`.
            pub fn from_name(text: &str) -> $name {
                match text {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }

            /// Refuses `Other`, listing the known names.
            pub fn check_known(&self) -> Result<(), String> {
                match self {
                    $name::Other(text) => Err(format!(
                        "`{text}` is not one of {}",
                        $name::KNOWN.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                    _ => Ok(()),
                }
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(text: &str) -> Result<$name, Self::Err> {
                Ok($name::from_name(text))
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> $name {
                $name::from_name(text)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                Ok($name::from_name(&String::deserialize(deserializer)?))
            }
        }
    };
}

named_enum! {
    /// A payment method type (`payment_method.type`).
    PaymentMethodType {
        /// A card.
        Card => "card",
        /// An ACH Direct Debit account.
        UsBankAccount => "us_bank_account",
        /// A SEPA Direct Debit mandate.
        SepaDebit => "sepa_debit",
    }
}

named_enum! {
    /// A card brand (`payment_method.card.brand`): the network rules differ by brand.
    CardBrand {
        /// American Express.
        Amex => "amex",
        /// Cartes Bancaires.
        CartesBancaires => "cartes_bancaires",
        /// Diners Club.
        Diners => "diners",
        /// Discover.
        Discover => "discover",
        /// eftpos Australia.
        EftposAu => "eftpos_au",
        /// Interac.
        Interac => "interac",
        /// JCB.
        Jcb => "jcb",
        /// Link (Stripe).
        Link => "link",
        /// Mastercard.
        Mastercard => "mastercard",
        /// UnionPay.
        Unionpay => "unionpay",
        /// Visa.
        Visa => "visa",
        /// The processor does not know the brand.
        Unknown => "unknown",
    }
}

impl PaymentMethodType {
    /// Bank debits (ACH, SEPA): retried only when the merchant switches it on.
    pub fn is_bank_debit(&self) -> bool {
        matches!(
            self,
            PaymentMethodType::UsBankAccount | PaymentMethodType::SepaDebit
        )
    }
}

// Written by hand: the enums come from one macro, and only brands have a default.
#[allow(clippy::derivable_impls)]
impl Default for CardBrand {
    fn default() -> CardBrand {
        CardBrand::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_kept() {
        for brand in CardBrand::KNOWN {
            assert_eq!(&CardBrand::from_name(brand.as_str()), brand);
        }
        for kind in PaymentMethodType::KNOWN {
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(
                &serde_json::from_str::<PaymentMethodType>(&json).unwrap(),
                kind
            );
        }
        let other = CardBrand::from_name("maestro");
        assert_eq!(other, CardBrand::Other("maestro".into()));
        assert_eq!(other.to_string(), "maestro");
        let err = other.check_known().unwrap_err();
        assert!(err.contains("`maestro` is not one of amex"), "{err}");
        assert!(CardBrand::Visa.check_known().is_ok());
        assert!(PaymentMethodType::SepaDebit.is_bank_debit());
        assert!(!PaymentMethodType::Card.is_bank_debit());
    }
}
