//! The suite-wide secret scan (SECURITY.md): every daemon a test starts through
//! [`TestEnv`](super::TestEnv) logs at trace level, and when the environment is dropped its
//! logs and the output the test captured are searched for every secret planted in it.
//!
//! Where the secrets come from, so that a test needs to do nothing to be covered:
//! - the OAuth mock's record of what it issued and was sent (tokens, device codes, PKCE
//!   verifiers), added by [`Setup`](super::Setup);
//! - the variables the test gave every process, and the `.env` files, `settings.json` API
//!   keys and credential files (ours and Qwen Code's) found under the test's root when it
//!   ends, for keys whose names say secret;
//! - anything a test plants by hand ([`TestEnv::plant`](super::TestEnv::plant));
//! - and, by shape, any proxy secret (`qwend-proxy-` and 32 bytes of base64url or hex).
//!
//! A hit names the kind, the file or output and the line, with every known secret masked:
//! the report never prints a secret. Searching is a plain substring search per secret over
//! the logs (a few MB at most), far below a second per test.
use std::path::{Path, PathBuf};

/// Values shorter than this are not searched for: a test's `KEY=x` would match anywhere.
const MIN_LEN: usize = 4;
/// What the daemon's proxy secrets start with (daemon/src/proxy/secrets.rs).
const PROXY_PREFIX: &str = "qwend-proxy-";
/// The shortest tail that makes a `qwend-proxy-…` string a secret rather than a mention.
const PROXY_TAIL: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planted {
    pub kind: String,
    pub value: String,
}

/// Whether a variable's name says its value is a credential.
pub fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"]
        .iter()
        .any(|w| k.contains(w))
        && !k.starts_with("QWEND_")
}

pub fn push(list: &mut Vec<Planted>, kind: &str, value: &str) {
    let value = value.trim();
    if value.len() >= MIN_LEN && !list.iter().any(|p| p.value == value) {
        list.push(Planted {
            kind: kind.to_string(),
            value: value.to_string(),
        });
    }
}

/// Secrets the test left in files under `root`: `.env` values, `settings.json` API keys and
/// the tokens of credential files.
pub fn from_files(root: &Path, out: &mut Vec<Planted>) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                if name == ".env" || name.ends_with(".env") {
                    from_dotenv(&read(&path), out);
                } else if name == "settings.json" {
                    from_json(&read(&path), "API key in settings.json", out);
                } else if name.starts_with("oauth_creds.json")
                    || name.starts_with("credentials.json")
                {
                    from_json(&read(&path), "token in a credential file", out);
                }
            }
        }
    }
}

fn read(path: &Path) -> String {
    // At most 4 MiB: a test's padding file is no place for a secret.
    use std::io::Read;
    let mut s = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(4 << 20).read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn from_dotenv(text: &str, out: &mut Vec<Planted>) {
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !secret_name(key.trim()) {
            continue;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        push(out, "API key in a .env file", value);
    }
}

/// Every string under a key that names a secret (`apiKey`, `access_token`, …), at any depth.
fn from_json(text: &str, kind: &str, out: &mut Vec<Planted>) {
    fn walk(v: &serde_json::Value, kind: &str, out: &mut Vec<Planted>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        serde_json::Value::String(s) if secret_name(k) => push(out, kind, s),
                        _ => walk(v, kind, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, kind, out)),
            _ => {}
        }
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        walk(&v, kind, out);
    }
}

/// The logs under `root`: every file whose name has `.log` in it (`qwend.log`, rotated).
pub fn logs(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name().to_string_lossy().contains(".log") {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// The proxy secrets in `text`, found by their shape.
fn proxy_secrets(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(PROXY_PREFIX) {
        let tail = &rest[i + PROXY_PREFIX.len()..];
        let n = tail
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .count();
        if n >= PROXY_TAIL {
            found.push(&rest[i..i + PROXY_PREFIX.len() + n]);
        }
        rest = &tail[n..];
    }
    found
}

/// One report line per leak in `text` (named `what`): kind, where, and the line with every
/// secret masked. Empty when clean.
pub fn scan(what: &str, text: &str, planted: &[Planted]) -> Vec<String> {
    let mut leaks = Vec::new();
    let mut hits: Vec<(&str, &str)> = planted
        .iter()
        .filter(|p| text.contains(&p.value))
        .map(|p| (p.kind.as_str(), p.value.as_str()))
        .collect();
    hits.extend(proxy_secrets(text).into_iter().map(|s| ("proxy secret", s)));
    for (kind, value) in &hits {
        let (n, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(value))
            .unwrap_or((0, ""));
        leaks.push(format!(
            "the {kind} appears in {what}, line {}: {}",
            n + 1,
            mask(line, &hits, planted)
        ));
    }
    leaks
}

/// `line` with every known secret replaced by its kind, cut to a readable length.
fn mask(line: &str, hits: &[(&str, &str)], planted: &[Planted]) -> String {
    let mut line = line.to_string();
    let mut all: Vec<(&str, &str)> = hits
        .iter()
        .copied()
        .chain(planted.iter().map(|p| (p.kind.as_str(), p.value.as_str())))
        .collect();
    // Longest first: a secret that contains another is masked whole.
    all.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (kind, value) in all {
        line = line.replace(value, &format!("<{kind}>"));
    }
    for s in proxy_secrets(&line.clone()) {
        line = line.replace(s, "<proxy secret>");
    }
    let mut cut: String = line.chars().take(400).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    cut
}
