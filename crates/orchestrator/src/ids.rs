//! Object ids: `osp_…`, `evt_…`. A per-engine prefix keeps instances that share a
//! store apart; a counter keeps ids unique and, with a fixed prefix, reproducible.

use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn base36(mut n: u64, width: usize) -> String {
    let mut digits = Vec::with_capacity(width);
    while n > 0 || digits.len() < width {
        digits.push(ALPHABET[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Makes ids.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    prefix: String,
    counter: AtomicU64,
}

impl IdGenerator {
    pub(crate) fn new(seed: u64, livemode: bool) -> IdGenerator {
        let mode = if livemode { "" } else { "test_" };
        IdGenerator {
            prefix: format!("{mode}{}", base36(seed % 36u64.pow(6), 6)),
            counter: AtomicU64::new(0),
        }
    }

    /// `<kind>_<prefix><counter>`.
    pub(crate) fn next(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{kind}_{}{}", self.prefix, base36(n, 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_reproducible() {
        let a = IdGenerator::new(42, false);
        let b = IdGenerator::new(42, false);
        let first = a.next("osp");
        assert_eq!(first, b.next("osp"));
        assert_ne!(first, a.next("osp"));
        assert!(first.starts_with("osp_test_"));
        assert!(IdGenerator::new(1, true).next("osp").starts_with("osp_0"));
    }
}
