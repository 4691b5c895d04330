//! Object ids: `osp_…`, `evt_…`, `ospattempt_…` in Stripe's style.
//!
//! By default an id is a UUIDv7 (48 bits of Unix milliseconds, then random bits)
//! written as 22 base-62 digits, so ids are unique across processes, restarts and
//! instances with no configuration, and sort by creation time. Attempt idempotency
//! keys are built from the payment id, so they inherit that uniqueness: a second run
//! of the same batch never reuses the first run's keys within a processor's key
//! window.
//!
//! [`SeededIds`] (`EngineConfig::id_seed`) makes ids reproducible for simulations
//! against the mock; it must never face a real processor, and the runner refuses it
//! when one is configured.

use std::sync::atomic::{AtomicU64, Ordering};

/// Base 62 in ASCII order, so fixed-width ids sort like the numbers they encode.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Digits needed for 128 bits in base 62.
const WIDTH: usize = 22;

fn base62(n: u128, width: usize) -> String {
    let mut out = String::with_capacity(width);
    push_base62(&mut out, n, width);
    out
}

/// 62^10, the most base-62 digits a `u64` division step takes at once.
const CHUNK: u128 = 839_299_365_868_340_224;

/// Appends `n` as `width` base-62 digits (the lowest `width` digits when `n` has
/// more). Divides in `u64` chunks of ten digits: `u128` division by 62 per digit
/// cost about 2,000 instructions per id.
fn push_base62(out: &mut String, n: u128, width: usize) {
    let mut digits = [b'0'; WIDTH];
    let mut rest = n;
    let mut slot = WIDTH;
    while slot > WIDTH - width {
        let mut chunk = (rest % CHUNK) as u64;
        rest /= CHUNK;
        let stop = slot.saturating_sub(10).max(WIDTH - width);
        while slot > stop {
            slot -= 1;
            digits[slot] = ALPHABET[(chunk % 62) as usize];
            chunk /= 62;
        }
    }
    out.extend(digits[WIDTH - width..].iter().map(|&d| d as char));
}

/// `<kind>_<prefix><digits>` with one allocation.
fn id(kind: &str, prefix: &str, n: u128, width: usize) -> String {
    let mut out = String::with_capacity(kind.len() + 1 + prefix.len() + width);
    out.push_str(kind);
    out.push('_');
    out.push_str(prefix);
    push_base62(&mut out, n, width);
    out
}

/// Where the engine's object ids come from. Injected beside the `Clock`, so a store,
/// a test or a simulation decides them; attempt idempotency keys are built from the
/// payment id and inherit its uniqueness.
pub trait IdSource: Send + Sync + std::fmt::Debug {
    /// A new id `<kind>_…` (`osp`, `evt`, `ospattempt`, `pr`, `clock`), never
    /// returned before by this source nor by any other source of the same type.
    fn next_id(&self, kind: &str) -> String;
}

/// Time-ordered random ids (UUIDv7): unique across processes and restarts with no
/// configuration. The default.
#[derive(Debug, Clone, Copy)]
pub struct RandomIds {
    /// `test_` in test mode, empty in live mode.
    mode: &'static str,
}

impl RandomIds {
    /// Ids for live mode (`livemode`) or test mode (`…_test_…`).
    pub fn new(livemode: bool) -> RandomIds {
        RandomIds {
            mode: if livemode { "" } else { "test_" },
        }
    }
}

impl IdSource for RandomIds {
    /// `<kind>_<mode><22 base-62 digits>`.
    fn next_id(&self, kind: &str) -> String {
        id(kind, self.mode, uuid::Uuid::now_v7().as_u128(), WIDTH)
    }
}

/// Reproducible ids from a seed and a counter, for simulations against the mock.
/// Two runs with the same seed reuse ids and so attempt idempotency keys: never
/// use it in front of a real processor.
#[derive(Debug)]
pub struct SeededIds {
    /// Mode marker and the seed's digits.
    prefix: String,
    /// Next number.
    counter: AtomicU64,
}

impl SeededIds {
    /// Ids numbered from 0 under `seed`.
    pub fn new(seed: u64, livemode: bool) -> SeededIds {
        let mode = if livemode { "" } else { "test_" };
        SeededIds {
            prefix: format!("{mode}s{}", base62(u128::from(seed), 11)),
            counter: AtomicU64::new(0),
        }
    }
}

impl IdSource for SeededIds {
    fn next_id(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        id(kind, &self.prefix, u128::from(n), 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_unique_across_generators_and_time_ordered() {
        // Two generators stand for two processes started with the same (default)
        // configuration: the old counter-based ids collided here.
        let a = RandomIds::new(false);
        let b = RandomIds::new(false);
        let mut seen = std::collections::HashSet::new();
        let mut previous = String::new();
        for _ in 0..10_000 {
            let id = a.next_id("osp");
            assert!(id > previous, "{id} sorts after {previous}");
            previous = id.clone();
            assert!(seen.insert(id));
            assert!(seen.insert(b.next_id("osp")));
        }
        let id = a.next_id("osp");
        assert!(id.starts_with("osp_test_"), "{id}");
        assert_eq!(id.len(), "osp_test_".len() + WIDTH);
        assert!(id[9..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(!RandomIds::new(true).next_id("osp").contains("test"));
    }

    #[test]
    fn seeded_ids_are_reproducible() {
        let a = SeededIds::new(42, false);
        let b = SeededIds::new(42, false);
        let first = a.next_id("osp");
        assert_eq!(first, b.next_id("osp"));
        assert_ne!(first, a.next_id("osp"));
        assert_ne!(first, SeededIds::new(43, false).next_id("osp"));
    }

    #[test]
    fn base62_matches_digit_by_digit_division() {
        fn slow(mut n: u128, width: usize) -> String {
            let mut digits = vec![b'0'; width];
            for slot in digits.iter_mut().rev() {
                *slot = ALPHABET[(n % 62) as usize];
                n /= 62;
            }
            String::from_utf8(digits).unwrap()
        }
        let mut n: u128 = 1;
        for i in 0..300u32 {
            for width in [10, 11, WIDTH] {
                assert_eq!(base62(n, width), slow(n, width), "{n} at {width}");
            }
            n = n
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(u128::from(i));
        }
        assert_eq!(base62(u128::MAX, WIDTH), slow(u128::MAX, WIDTH));
        assert_eq!(base62(CHUNK, WIDTH), slow(CHUNK, WIDTH));
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
