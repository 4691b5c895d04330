//! API keys (kept as SHA-256 hashes, never in plain text) and per-key rate limits.

use std::collections::HashSet;
use std::num::NonZeroU32;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

/// The hex SHA-256 of a secret key, as configured (`sha256:<hex>`) and compared.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The accepted keys, by hash.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    hashes: HashSet<String>,
}

impl ApiKeys {
    /// Keys from configured hashes (`sha256:<64 hex digits>` or the bare digits).
    pub fn from_hashes<'a>(hashes: impl IntoIterator<Item = &'a str>) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys::default();
        for configured in hashes {
            let hex = configured.strip_prefix("sha256:").unwrap_or(configured);
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "`{}…` is not `sha256:` and 64 hex digits (hash a key with `offsession hash-key`)",
                    configured.chars().take(12).collect::<String>()
                ));
            }
            keys.hashes.insert(hex.to_ascii_lowercase());
        }
        Ok(keys)
    }

    /// Adds a key given in plain text (from the environment), keeping only its hash.
    pub fn add_plain(&mut self, key: &str) {
        self.hashes.insert(hash_key(key));
    }

    /// Whether `key` is one of them.
    pub fn accepts(&self, key: &str) -> bool {
        self.hashes.contains(&hash_key(key))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// No key configured: every request is refused.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// A rate limit per key hash (governor, keyed).
pub(crate) struct KeyLimiter {
    limiter: Option<RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>>,
}

impl KeyLimiter {
    pub(crate) fn new(per_second: u32) -> KeyLimiter {
        KeyLimiter {
            limiter: NonZeroU32::new(per_second)
                .map(|n| RateLimiter::keyed(Quota::per_second(n).allow_burst(n))),
        }
    }

    /// `Ok` or the seconds to wait.
    pub(crate) fn check(&self, key_hash: &str) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&key_hash.to_owned())
            .map_err(|not_until| {
                not_until
                    .wait_time_from(governor::clock::Clock::now(&DefaultClock::default()))
                    .as_secs()
                    + 1
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_as_hashes_and_compared_by_hash() {
        let hash = hash_key("sk_test_123");
        assert_eq!(hash.len(), 64);
        let keys = ApiKeys::from_hashes([format!("sha256:{hash}").as_str()]).unwrap();
        assert!(keys.accepts("sk_test_123"));
        assert!(!keys.accepts("sk_test_124"));
        assert!(ApiKeys::from_hashes(["sk_test_123"]).is_err());
        assert!(ApiKeys::from_hashes(["sha256:zz"]).is_err());
    }

    #[test]
    fn the_limiter_refuses_above_the_rate_per_key() {
        let limiter = KeyLimiter::new(3);
        assert!((0..3).all(|_| limiter.check("a").is_ok()));
        assert!(limiter.check("a").is_err());
        assert!(limiter.check("b").is_ok(), "keys are limited apart");
    }
}
