//! The `.env` syntax of the npm `dotenv` package (17.x) that Qwen Code bundles, reproduced
//! exactly, so one `.env` file gives the same values to Qwen Code and to us.
//!
//! Not `dotenvy`: it expands `${VAR}`, treats `#` differently (dotenv ends an unquoted
//! value at any `#`, even without a space), and does not take backtick quotes or `KEY: v`.
//!
//! dotenv is one JavaScript regex plus two replaces. The regex is ported as is (the
//! `regex` crate's leftmost-first captures agree with a backtracking engine), with JS's
//! character classes spelled out: JS `\s` includes U+FEFF (which is how a BOM before the
//! first key is skipped), `\w` is ASCII, `.` stops at \n, \r, U+2028 and U+2029. The
//! quote-stripping replace needs a backreference, which the `regex` crate lacks, so it
//! is written by hand in `strip_quotes`.
use std::sync::LazyLock;

use regex::Regex;

/// JS `\s` (ECMAScript WhiteSpace + LineTerminator).
const JS_WS: &str = r"[\t\n\x0B\x0C\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}]";

static LINE: LazyLock<Regex> = LazyLock::new(|| {
    let s = JS_WS;
    let dot = r"[^\n\r\x{2028}\x{2029}]";
    let pattern = format!(
        r#"(?m)(?:^|^){s}*(?:export{s}+)?([A-Za-z0-9_.\-]+)(?:{s}*={s}*?|:{s}+?)({s}*'(?:\\'|[^'])*'|{s}*"(?:\\"|[^"])*"|{s}*`(?:\\`|[^`])*`|[^#\r\n]+)?{s}*(?:#{dot}*)?(?:$|$)"#
    );
    Regex::new(&pattern).expect("the dotenv LINE pattern compiles")
});

fn is_js_ws(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

fn is_line_terminator(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// `dotenv.parse(src)`: the keys in first-appearance order (as a JS object keeps them),
/// each with the value of its last occurrence.
pub fn parse(src: &str) -> Vec<(String, String)> {
    let lines = normalize_newlines(src);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for caps in LINE.captures_iter(&lines) {
        let key = &caps[1];
        // `obj["__proto__"] = "x"` sets no own property in JS: Qwen Code never sees it.
        if key == "__proto__" {
            continue;
        }
        let raw = caps.get(2).map_or("", |m| m.as_str());
        let value = raw.trim_matches(is_js_ws);
        let double_quoted = value.starts_with('"');
        let mut value = strip_quotes(value);
        if double_quoted {
            value = value.replace("\\n", "\n").replace("\\r", "\r");
        }
        match index.get(key) {
            Some(&i) => out[i] = (key.to_string(), value),
            None => {
                index.insert(key.to_string(), out.len());
                out.push((key.to_string(), value));
            }
        }
    }
    out
}

/// `src.replace(/\r\n?/mg, "\n")`
fn normalize_newlines(src: &str) -> String {
    let mut s = String::with_capacity(src.len());
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            if chars.peek() == Some(&'\n') {
                chars.next();
            }
            s.push('\n');
        } else {
            s.push(c);
        }
    }
    s
}

/// `value.replace(/^(['"`])([\s\S]*)\1$/mg, "$2")`: at each line start holding a quote,
/// the greedy body runs to the LAST same quote that ends a line; matches do not overlap.
fn strip_quotes(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    let mut out = String::with_capacity(value.len());
    let mut copied = 0; // chars[..copied] are already in `out`
    let mut p = 0;
    while p < n {
        let at_line_start = p == 0 || is_line_terminator(chars[p - 1]);
        let q = chars[p];
        if at_line_start && matches!(q, '\'' | '"' | '`') {
            let end = (p + 1..n)
                .rev()
                .find(|&e| chars[e] == q && (e + 1 == n || is_line_terminator(chars[e + 1])));
            if let Some(e) = end {
                out.extend(&chars[copied..p]);
                out.extend(&chars[p + 1..e]);
                copied = e + 1;
                p = e + 1;
                continue;
            }
        }
        p += 1;
    }
    out.extend(&chars[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(src: &str) -> Vec<(String, String)> {
        parse(src)
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Expected values produced by the real dotenv 17.2 `parse` (node) on the same input.
    #[test]
    fn table_agrees_with_real_dotenv() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("A=1", &[("A", "1")]),
            ("export A=1", &[("A", "1")]),
            ("exportGLUED=1", &[("exportGLUED", "1")]),
            ("A: colon", &[("A", "colon")]),
            ("A:nospace", &[]),
            ("  A  =  padded value  ", &[("A", "padded value")]),
            ("A=abc#def", &[("A", "abc")]),
            ("A=abc # c", &[("A", "abc")]),
            ("A=#x", &[("A", "")]),
            ("A=\"abc#def\"", &[("A", "abc#def")]),
            ("A='x # y'", &[("A", "x # y")]),
            ("A=\"a\\nb\\rc\\td\"", &[("A", "a\nb\rc\\td")]),
            ("A='a\\nb'", &[("A", "a\\nb")]),
            ("A=`bq`", &[("A", "bq")]),
            ("A=${B}", &[("A", "${B}")]),
            ("A=\"l1\nl2\"\nB=2", &[("A", "l1\nl2"), ("B", "2")]),
            ("A=1\r\nB=\"x\r\ny\"\r\n", &[("A", "1"), ("B", "x\ny")]),
            (
                "\u{FEFF}FIRST=1\nSECOND=2",
                &[("FIRST", "1"), ("SECOND", "2")],
            ),
            ("A=1\nA=2\nB=3\nA=4", &[("A", "4"), ("B", "3")]),
            ("A=", &[("A", "")]),
            ("A=''", &[("A", "")]),
            ("A=\"never closed", &[("A", "\"never closed")]),
            ("A='single'trail", &[("A", "'single'trail")]),
            ("A=\"a\\\"b\"", &[("A", "a\\\"b")]),
            (
                "dotted.key=1\ndashed-key=2",
                &[("dotted.key", "1"), ("dashed-key", "2")],
            ),
            ("# only a comment\n\n", &[]),
            ("__proto__=x\nA=1", &[("A", "1")]),
            ("A=x\u{0}y", &[("A", "x\u{0}y")]),
        ];
        for (src, want) in cases {
            assert_eq!(get(src), kv(want), "input {src:?}");
        }
    }

    #[test]
    fn strip_quotes_is_greedy_to_the_last_closing_quote_on_a_line_end() {
        assert_eq!(strip_quotes("\"a\"b\""), "a\"b");
        assert_eq!(strip_quotes("'x'y"), "'x'y");
        assert_eq!(strip_quotes("`a\nb`"), "a\nb");
        assert_eq!(strip_quotes("\""), "\"");
        assert_eq!(strip_quotes(""), "");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = super::parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn never_panics_on_dotenv_shaped_text(s in r#"([A-Za-z_.:= \t\r\n'"`#\\-]|export ){0,200}"#) {
            let parsed = super::parse(&s);
            // Keys are unique and non-empty whatever the input.
            let mut keys: Vec<_> = parsed.iter().map(|(k, _)| k.clone()).collect();
            prop_assert!(keys.iter().all(|k| !k.is_empty()));
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), parsed.len());
        }
    }
}
