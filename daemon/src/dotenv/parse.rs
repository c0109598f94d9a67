//! The `.env` syntax of the npm `dotenv` package's `parse()` (17.x; Qwen Code 0.12.0 bundles
//! 17.1.0), reproduced exactly so that one file gives Qwen Code and us the same values.
//!
//! Not `dotenvy`: it expands `${VAR}`, ends unquoted values at ` #` only, and knows neither
//! backtick quotes nor `KEY: value`; Qwen Code does none of that.
//!
//! dotenv is one JavaScript regex run with the `gm` flags plus a few replaces:
//!
//! ```text
//! (?:^|^)\s*(?:export\s+)?([\w.-]+)(?:\s*=\s*?|:\s+?)(\s*'(?:\\'|[^'])*'|\s*"(?:\\"|[^"])*"
//!   |\s*`(?:\\`|[^`])*`|[^#\r\n]+)?\s*(?:#.*)?(?:$|$)
//! ```
//!
//! Rather than a regex engine, the matcher below follows the only paths a backtracking engine
//! can succeed on (each shortcut is argued where it is taken), so it runs in linear time on
//! inputs where V8 itself would backtrack quadratically (e.g. a megabyte of blank lines
//! ending in a line without `=`). JS semantics that matter: `\s` includes U+FEFF (that is how
//! a BOM before the first key is skipped) and U+2028/U+2029, which also end lines for `^`,
//! `$` and `.`; `\w` is ASCII only. The result keeps JavaScript object semantics: the last
//! duplicate wins but keeps the first one's position, integer-like keys come first, and
//! `__proto__` is silently dropped.
use std::collections::HashMap;

/// Bytes as Node's `readFileSync(path, "utf-8")` decodes them: invalid sequences become
/// U+FFFD (both follow the WHATWG "maximal subpart" rule) and a BOM is kept for the parser.
pub fn decode(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `dotenv.parse(src)`: the keys and values in the order `Object.entries` would list them.
pub fn parse(src: &str) -> Vec<(String, String)> {
    let s = normalize_newlines(src);
    let mut obj = JsObject::default();
    let mut pos = 0;
    while let Some(start) = next_line_start(&s, pos) {
        match match_at(&s, start) {
            Ok(m) => {
                let raw: String = s[m.value].iter().collect();
                obj.set(s[m.key].iter().collect(), finish_value(&raw));
                pos = m.end;
            }
            // Every line start up to `e` shares the same leading-whitespace run, so every one
            // of them fails the same way: the next candidate is the line after `e`.
            Err(e) => match s[e..].iter().position(|&c| is_line_term(c)) {
                Some(i) => pos = e + i + 1,
                None => break,
            },
        }
    }
    obj.into_entries()
}

/// `lines.replace(/\r\n?/mg, "\n")`
fn normalize_newlines(src: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(src.len());
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            chars.next_if_eq(&'\n');
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    out
}

/// JS `\s` (and what `String.prototype.trim` removes): WhiteSpace plus LineTerminator.
fn is_ws(c: char) -> bool {
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

/// Where JS multiline `^`/`$` apply and what `.` refuses.
fn is_line_term(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// `[\w.-]`
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn skip_ws(s: &[char], from: usize) -> usize {
    from + s[from..].iter().take_while(|&&c| is_ws(c)).count()
}

fn next_line_start(s: &[char], pos: usize) -> Option<usize> {
    let start = if pos == 0 || is_line_term(s[pos - 1]) {
        pos
    } else {
        pos + s[pos..].iter().position(|&c| is_line_term(c))? + 1
    };
    // At the very end only an empty match could start, and the key needs a character.
    (start < s.len()).then_some(start)
}

struct Match {
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    end: usize,
}

/// One attempt of LINE at a line start; on failure, the end of the leading `\s*` run.
fn match_at(s: &[char], start: usize) -> Result<Match, usize> {
    // `\s*` could give characters back, but what follows (`export` or a key) must begin
    // with a non-space, so only the whole run can lead to a match.
    const EXPORT: [char; 6] = ['e', 'x', 'p', 'o', 'r', 't'];
    let e = skip_ws(s, start);
    if s[e..].starts_with(&EXPORT) {
        // Same argument for `\s+` before the key.
        let f = skip_ws(s, e + EXPORT.len());
        if f > e + EXPORT.len()
            && let Some(m) = after_prefix(s, f)
        {
            return Ok(m);
        }
    }
    after_prefix(s, e).ok_or(e)
}

/// From the key on. Once key and separator match, the rest always matches (see `value_at`).
fn after_prefix(s: &[char], k: usize) -> Option<Match> {
    // A shorter key would leave a key character where `\s`, `=` or `:` is needed.
    let k2 = k + s[k..].iter().take_while(|&&c| is_key_char(c)).count();
    if k2 == k {
        return None;
    }
    // `\s*=\s*?` first, then `:\s+?`. The lazy quantifiers stay minimal: `value_at` shows
    // that the first position they offer already succeeds.
    let g = skip_ws(s, k2);
    let v0 = if s.get(g) == Some(&'=') {
        g + 1
    } else if s.get(k2) == Some(&':') && s.get(k2 + 1).is_some_and(|&c| is_ws(c)) {
        k2 + 2
    } else {
        return None;
    };
    let (value, end) = value_at(s, v0);
    Some(Match {
        key: k..k2,
        value,
        end,
    })
}

/// The optional value group and the tail, at `v`. Returns the group's span and the match end.
fn value_at(s: &[char], v: usize) -> (std::ops::Range<usize>, usize) {
    // The three quoted alternatives start with `\s*`, which may cross newlines: a value on
    // the line after `KEY=` is taken when it is quoted.
    let a = skip_ws(s, v);
    if let Some(&q) = s.get(a)
        && matches!(q, '\'' | '"' | '`')
        && let Some((close, end)) = quoted(s, a, q)
    {
        return (v..close + 1, end);
    }
    // `[^#\r\n]+`, greedy: it stops before `#`, a newline or the end, and the tail always
    // matches there, so it never has to give characters back.
    if s.get(v).is_some_and(|&c| !matches!(c, '#' | '\n' | '\r')) {
        let w = v + s[v..]
            .iter()
            .take_while(|&&c| !matches!(c, '#' | '\n' | '\r'))
            .count();
        return (v..w, tail(s, w).unwrap_or(w));
    }
    // No value: `v` is at `#`, a newline or the end, where the tail always matches.
    (v..v, tail(s, v).unwrap_or(v))
}

/// `Q(?:\\Q|[^Q])*Q` at `a`, followed by a matching tail. The greedy path stops at the first
/// unescaped quote; backtracking can only end the value earlier at an escaped quote (taking
/// its backslash as a plain character), latest first.
fn quoted(s: &[char], a: usize, q: char) -> Option<(usize, usize)> {
    let mut escaped = Vec::new();
    let mut closing = None;
    let mut i = a + 1;
    while i < s.len() {
        if s[i] == '\\' && s.get(i + 1) == Some(&q) {
            escaped.push(i + 1);
            i += 2;
        } else if s[i] != q {
            i += 1;
        } else {
            closing = Some(i);
            break;
        }
    }
    closing
        .into_iter()
        .chain(escaped.into_iter().rev())
        .find_map(|c| tail(s, c + 1).map(|end| (c, end)))
}

/// `\s*(?:#.*)?(?:$|$)` at `q`: the end of the match, if the tail matches.
fn tail(s: &[char], q: usize) -> Option<usize> {
    let r = skip_ws(s, q);
    match s.get(r) {
        None => Some(r),
        Some('#') => Some(r + s[r..].iter().take_while(|&&c| !is_line_term(c)).count()),
        // Give spaces back until `$` holds, i.e. just before the run's last line break.
        Some(_) => (q..r).rev().find(|&t| is_line_term(s[t])),
    }
}

/// trim, strip the surrounding quotes, expand `\n`/`\r` when double-quoted.
fn finish_value(raw: &str) -> String {
    let value: Vec<char> = raw.trim_matches(is_ws).chars().collect();
    let double = value.first() == Some(&'"');
    let value = strip_quotes(&value);
    if double {
        value.replace("\\n", "\n").replace("\\r", "\r")
    } else {
        value
    }
}

/// `value.replace(/^(['"`])([\s\S]*)\1$/mg, "$2")`. A match starts at a line start with a
/// quote and, being greedy, ends at the LAST same quote that ends a line; once one match
/// has used that quote, no later start can find another, so one pass per quote suffices.
fn strip_quotes(v: &[char]) -> String {
    let ends_line = |j: usize| j + 1 == v.len() || is_line_term(v[j + 1]);
    let closers =
        ['\'', '"', '`'].map(|q| (q, (0..v.len()).rev().find(|&j| v[j] == q && ends_line(j))));
    let closer = |c: char| closers.iter().find(|(q, _)| *q == c).and_then(|(_, j)| *j);
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let at_line_start = i == 0 || is_line_term(v[i - 1]);
        if at_line_start
            && let Some(j) = closer(v[i])
            && j > i
        {
            out.extend(&v[i + 1..j]);
            i = j + 1;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// The parts of a JavaScript object's semantics that `obj[key] = value` exposes.
#[derive(Default)]
struct JsObject {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl JsObject {
    fn set(&mut self, key: String, value: String) {
        // Assigning a string to `__proto__` hits the prototype setter, which ignores it.
        if key == "__proto__" {
            return;
        }
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// Property order: array indices ascending, then the other keys as first inserted.
    fn into_entries(self) -> Vec<(String, String)> {
        let (mut ints, rest): (Vec<_>, Vec<_>) = self
            .entries
            .into_iter()
            .partition(|(k, _)| array_index(k).is_some());
        ints.sort_by_key(|(k, _)| array_index(k));
        ints.extend(rest);
        ints
    }
}

/// A canonical array index ("0", "17", not "01", below 2^32 - 1).
pub(crate) fn array_index(key: &str) -> Option<u32> {
    let canonical = key == "0" || (!key.starts_with('0') && !key.is_empty());
    if !canonical || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Vec<(String, String)> {
        parse(src)
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Expected values produced by the real dotenv 17.4.2 `parse` (node) on the same input.
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
            assert_eq!(p(src), kv(want), "input {src:?}");
        }
    }

    #[test]
    fn array_index_rules() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("42"), Some(42));
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index("4294967295"), None);
        assert_eq!(array_index("4294967294"), Some(4294967294));
        assert_eq!(array_index("1.5"), None);
        assert_eq!(array_index(""), None);
    }

    #[test]
    fn linear_on_blank_lines_without_a_match() {
        // V8 backtracks quadratically here; a daemon must not.
        let src = format!("{}NOEQUALS", "\n".repeat(1 << 20));
        assert!(p(&src).is_empty());
        let src = format!("A={}", "\\'".repeat(1 << 18));
        assert_eq!(p(&src).len(), 1);
    }

    #[test]
    fn nul_bytes_are_ordinary_characters() {
        assert_eq!(p("A=x\0y\nB\0=1\n"), kv(&[("A", "x\0y")]));
    }

    #[test]
    fn invalid_utf8_decodes_like_node() {
        // Expected values from Node 20: `dotenv.parse(fs.readFileSync(f, "utf-8"))`.
        let text =
            decode(b"A=\xff\xfe\nB=\xe2\x82\nC=ok\nD=\xf0\x9f\x98\nE=\xed\xa0\x80\nF=\xc0\xaf");
        let r = "\u{FFFD}";
        assert_eq!(
            p(&text),
            kv(&[
                ("A", &r.repeat(2)),
                ("B", r),
                ("C", "ok"),
                ("D", r),
                ("E", &r.repeat(3)),
                ("F", &r.repeat(2)),
            ])
        );
    }

    include!("testdata/dotenv_17_cases.rs");

    #[test]
    fn matches_dotenv_17_table() {
        for (i, (input, want)) in DOTENV_CASES.iter().enumerate() {
            let got = p(input);
            let want = kv(want);
            assert_eq!(got, want, "case {i}: {input:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&decode(&bytes));
        }

        #[test]
        fn never_panics_on_dotenv_shaped_text(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "A", "export ", "=", ":", " ", "\n", "\r", "'", "\"", "`", "\\", "#",
                    "\u{2028}", "\u{FEFF}", "x", "\\n", "__proto__", "1",
                ]),
                0..64,
            )
        ) {
            let _ = parse(&parts.concat());
        }
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
