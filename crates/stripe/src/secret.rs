//! The secret key, which never prints.

use std::fmt;

/// A Stripe secret key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> SecretKey {
        SecretKey(key.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take_while(|c| *c != '_').collect();
        write!(f, "SecretKey({prefix}_…redacted)")
    }
}

impl<'de> serde::Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretKey)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Whether a value given as the *name* of an environment variable looks like a secret
/// key pasted in by mistake (`sk_…`, `rk_…`, `pk_…`, very long, or characters no
/// variable name has), so that an error message must not repeat it.
pub fn looks_like_secret(value: &str) -> bool {
    let value = value.trim();
    ["sk_", "rk_", "pk_", "whsec_"]
        .iter()
        .any(|prefix| value.starts_with(prefix))
        || value.chars().count() > 64
        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
