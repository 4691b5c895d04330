//! Quoting text that came from outside (a processor's answer, a merchant's input) in
//! messages and logs: bounded, on a character boundary, control characters escaped.

/// `text` with control characters escaped, cut after `max_chars` characters and
/// then marked `…(truncated)`.
pub fn quote(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars + 16));
    let mut used = 0;
    for c in text.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.into()
        };
        let len = piece.chars().count();
        if used + len > max_chars {
            out.push_str("…(truncated)");
            return out;
        }
        out.push_str(&piece);
        used += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_bounded_on_a_char_boundary_and_escaped() {
        assert_eq!(quote("abc", 5), "abc");
        assert_eq!(quote("ééééé", 3), "ééé…(truncated)");
        assert_eq!(quote("a\nb", 10), "a\\nb");
    }
}
