//! Payment method types and card brands, as processors name them.
//!
//! Both enums name the values the engine acts on and keep any other value a
//! processor sends as `Other`, so a new brand or type from a processor is carried
//! and shown, never mistaken for a known one. Configuration that names them
//! (routing rules, processor capabilities) refuses `Other` with [`PaymentMethodType::check_known`]
//! and [`CardBrand::check_known`], so a typo is an error, not a rule that never matches.

/// Declares a string enum: the listed values, and `Other` for any other string, kept
/// as written. Reading never fails on an unknown value; `check_known` refuses it
/// where a typo must be an error (configuration). Used for the core's method types
/// and card brands and for the Stripe adapter's wire values.
#[macro_export]
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value the engine does not know, as it was written.
            Other(String),
        }

        impl $name {
            /// Every value the engine knows.
            pub const KNOWN: &'static [$name] = &[$($name::$variant,)*];

            /// The wire name (what was written, for `Other`).
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

            /// Whether the value is one of the named ones (not `Other`).
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }

            /// Refuses `Other`, listing the known names.
            pub fn check_known(&self) -> ::std::result::Result<(), String> {
                match self {
                    $name::Other(text) => Err(format!(
                        "`{text}` is not one of {}",
                        $name::KNOWN.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                    _ => Ok(()),
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;
            fn from_str(text: &str) -> ::std::result::Result<$name, Self::Err> {
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

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<$name, D::Error> {
                let text = <String as $crate::__private::serde::Deserialize>::deserialize(deserializer)?;
                Ok($name::from_name(&text))
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

    /// The country every account of this type is in, where the scheme fixes it: `US`
    /// for `us_bank_account` (ACH); none for cards and SEPA, whose country varies.
    pub fn scheme_country(&self) -> Option<&'static str> {
        match self {
            PaymentMethodType::UsBankAccount => Some("US"),
            _ => None,
        }
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
