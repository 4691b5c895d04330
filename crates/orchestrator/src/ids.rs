//! Object ids: `osp_…`, `evt_…`, `ospattempt_…` in Stripe's style.
//!
//! By default an id is a UUIDv7 (48 bits of Unix milliseconds, then random bits)
//! written as 22 base-62 digits, so ids are unique across processes, restarts and
//! instances with no configuration, and sort by creation time. Attempt idempotency
//! keys are built from the payment id, so they inherit that uniqueness: a second run
//! of the same batch never reuses the first run's keys within a processor's key
//! window.
//!
//! A seeded generator (`EngineConfig::id_seed`) makes ids reproducible for
//! simulations against the mock; it must never face a real processor, and the
//! runner refuses it when one is configured.

use std::sync::atomic::{AtomicU64, Ordering};

/// Base 62 in ASCII order, so fixed-width ids sort like the numbers they encode.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Digits needed for 128 bits in base 62.
const WIDTH: usize = 22;

fn base62(mut n: u128, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(digits).unwrap_or_default()
}

/// Where the engine's ids come from.
#[derive(Debug)]
pub(crate) enum IdGenerator {
    /// Time-ordered random ids (UUIDv7): unique without configuration.
    Random {
        /// `test_` in test mode, empty in live mode.
        mode: &'static str,
    },
    /// Reproducible ids from a seed and a counter (simulation only).
    Seeded {
        /// Mode marker and the seed's digits.
        prefix: String,
        /// Next number.
        counter: AtomicU64,
    },
}

impl IdGenerator {
    /// Unique ids; with `seed`, reproducible ones instead.
    pub(crate) fn new(seed: Option<u64>, livemode: bool) -> IdGenerator {
        let mode = if livemode { "" } else { "test_" };
        match seed {
            None => IdGenerator::Random { mode },
            Some(seed) => IdGenerator::Seeded {
                prefix: format!("{mode}s{}", base62(u128::from(seed), 11)),
                counter: AtomicU64::new(0),
            },
        }
    }

    /// `<kind>_<mode><22 base-62 digits>`.
    pub(crate) fn next(&self, kind: &str) -> String {
        match self {
            IdGenerator::Random { mode } => {
                format!(
                    "{kind}_{mode}{}",
                    base62(uuid::Uuid::now_v7().as_u128(), WIDTH)
                )
            }
            IdGenerator::Seeded { prefix, counter } => {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                format!("{kind}_{prefix}{}", base62(u128::from(n), 10))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_unique_across_generators_and_time_ordered() {
        // Two generators stand for two processes started with the same (default)
        // configuration: the old counter-based ids collided here.
        let a = IdGenerator::new(None, false);
        let b = IdGenerator::new(None, false);
        let mut seen = std::collections::HashSet::new();
        let mut previous = String::new();
        for _ in 0..10_000 {
            let id = a.next("osp");
            assert!(id > previous, "{id} sorts after {previous}");
            previous = id.clone();
            assert!(seen.insert(id));
            assert!(seen.insert(b.next("osp")));
        }
        let id = a.next("osp");
        assert!(id.starts_with("osp_test_"), "{id}");
        assert_eq!(id.len(), "osp_test_".len() + WIDTH);
        assert!(id[9..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(!IdGenerator::new(None, true).next("osp").contains("test"));
    }

    #[test]
    fn seeded_ids_are_reproducible() {
        let a = IdGenerator::new(Some(42), false);
        let b = IdGenerator::new(Some(42), false);
        let first = a.next("osp");
        assert_eq!(first, b.next("osp"));
        assert_ne!(first, a.next("osp"));
        assert_ne!(first, IdGenerator::new(Some(43), false).next("osp"));
    }

    #[test]
    fn base62_keeps_numeric_order() {
        let mut last = base62(0, WIDTH);
        for n in [1u128, 61, 62, 3_843, 3_844, u64::MAX as u128, u128::MAX] {
            let s = base62(n, WIDTH);
            assert!(s > last, "{s} > {last}");
            last = s;
        }
    }
}
