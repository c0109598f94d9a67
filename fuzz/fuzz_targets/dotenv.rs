//! The `.env` parser (daemon/src/dotenv/parse.rs) on arbitrary bytes, decoded as the
//! resolver decodes a file (UTF-8 with replacement characters).
//!
//! Besides "never panics, never hangs" (libFuzzer's -timeout), what every result must
//! satisfy whatever the input: keys are `[\w.-]+`, each appears once, `__proto__` never
//! does, and integer-like keys come first in ascending order (JavaScript property order).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries = qwend::dotenv::parse(&text);
    let mut seen = std::collections::HashSet::new();
    let mut last_index: Option<u64> = None;
    let mut past_indices = false;
    for (key, value) in &entries {
        assert!(!key.is_empty(), "empty key");
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
            "key outside [\\w.-]: {key:?}"
        );
        assert_ne!(key, "__proto__");
        assert!(seen.insert(key.as_str()), "duplicate key {key:?}");
        // A value is built from the input's characters (plus the \n and \r that double
        // quotes expand), so it can never be longer than the whole input.
        assert!(value.len() <= text.len(), "value longer than its file");
        match array_index(key) {
            Some(i) => {
                assert!(!past_indices, "integer key {key:?} after a string key");
                assert!(
                    last_index.is_none_or(|l| l < i),
                    "integer keys out of order"
                );
                last_index = Some(i);
            }
            None => past_indices = true,
        }
    }
});

/// A canonical array index: "0" or digits without a leading zero, below 2^32 - 1.
fn array_index(key: &str) -> Option<u64> {
    let canonical = key == "0" || !key.starts_with('0');
    if !canonical || !key.bytes().all(|b| b.is_ascii_digit()) || key.len() > 10 {
        return None;
    }
    key.parse::<u64>().ok().filter(|&n| n < u64::from(u32::MAX))
}
