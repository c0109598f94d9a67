//! Qwen Code's `settings.json` files, read the way Qwen Code 0.12.0 reads them: JSON with
//! comments, user settings (`$QWEN_HOME/settings.json`, default `~/.qwen/settings.json`)
//! and workspace settings (`<cwd>/.qwen/settings.json`, not when cwd is HOME), unknown
//! keys ignored. The parsed documents are kept as `serde_json::Value` so writers can
//! preserve every key they do not own.
use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: invalid JSON at line {line}, column {column}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{path}: settings must be a JSON object")]
    NotAnObject { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One parsed settings file (an object), or nothing when the file does not exist.
pub fn read_file(path: &Path) -> Result<Option<Value>, SettingsError> {
    let text = match read_bytes(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(None),
        Err(source) => {
            return Err(SettingsError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse(path, &text).map(Some)
}

/// Settings files are small; this bound only keeps a runaway file from costing the daemon
/// its memory.
pub const MAX_SETTINGS_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes of a settings file: a regular file of at most [`MAX_SETTINGS_BYTES`] (a FIFO
/// in its place would block the read forever). `NotFound` when it does not exist.
pub fn read_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    match crate::fsread::read_regular(path, MAX_SETTINGS_BYTES, &mut buf)? {
        None => Err(std::io::ErrorKind::NotFound.into()),
        Some(crate::fsread::Capped::Read) => Ok(buf),
        Some(crate::fsread::Capped::TooLarge { size, limit }) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{size} bytes, over the {limit}-byte limit for settings files"),
        )),
    }
}

pub fn parse(path: &Path, text: &str) -> Result<Value, SettingsError> {
    let stripped = strip_json_comments(text);
    let value: Value = serde_json::from_str(&stripped).map_err(|e| SettingsError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(SettingsError::NotAnObject {
            path: path.to_path_buf(),
        });
    }
    Ok(value)
}

/// What `strip-json-comments` does for Qwen Code: `//` and `/* */` comments outside
/// strings become spaces (newlines kept), so JSON error positions still point at the
/// user's line and column.
pub fn strip_json_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                out.push_str("  ");
                chars.next();
                while let Some(&n) = chars.peek() {
                    if n == '\n' || n == '\r' {
                        break;
                    }
                    out.push(if n == '\t' { '\t' } else { ' ' });
                    chars.next();
                }
            }
            ('/', Some('*')) => {
                out.push_str("  ");
                chars.next();
                let mut prev = '\0';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        out.push(' ');
                        break;
                    }
                    out.push(if n == '\n' || n == '\r' { n } else { ' ' });
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// A dotted path lookup: `get(v, &["security", "auth", "selectedType"])`.
pub fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Where the user settings live for a client with this environment.
pub fn user_settings_path(home: &Path, qwen_home: Option<&Path>) -> PathBuf {
    match qwen_home {
        Some(q) => q.join("settings.json"),
        None => home.join(".qwen").join("settings.json"),
    }
}

/// `advanced.excludedEnvVars` merged as Qwen Code merges it (union, user first), or
/// `None` when no file sets it. A string value keeps JS semantics: `"A_B".includes(k)`
/// is a substring test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusions {
    Default,
    List(Vec<String>),
    Substring(String),
}

impl Exclusions {
    pub const DEFAULT: [&'static str; 2] = ["DEBUG", "DEBUG_MODE"];

    pub fn from_settings<'a>(docs: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut list: Option<Vec<String>> = None;
        let mut substring = None;
        for doc in docs {
            match get(doc, &["advanced", "excludedEnvVars"]) {
                Some(Value::Array(items)) => {
                    let l = list.get_or_insert_with(Vec::new);
                    for s in items.iter().filter_map(Value::as_str) {
                        if !l.iter().any(|x| x == s) {
                            l.push(s.to_string());
                        }
                    }
                }
                Some(Value::String(s)) => substring = Some(s.clone()),
                _ => {}
            }
        }
        match (list, substring) {
            (Some(l), _) => Self::List(l),
            (None, Some(s)) => Self::Substring(s),
            (None, None) => Self::Default,
        }
    }

    pub fn excludes(&self, key: &str) -> bool {
        match self {
            Self::Default => Self::DEFAULT.contains(&key),
            Self::List(l) => l.iter().any(|x| x == key),
            Self::Substring(s) => s.contains(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn comments_are_blanked_and_strings_kept() {
        let src = "{\n  // line\n  \"a\": \"x//y\", /* block\n */ \"b\": 1\n}";
        let v = parse(Path::new("s.json"), src).unwrap();
        assert_eq!(v, json!({"a": "x//y", "b": 1}));
        assert_eq!(
            strip_json_comments(src).lines().count(),
            src.lines().count()
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = parse(Path::new("/h/.qwen/settings.json"), "{\n  \"a\": 1,,\n}").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/h/.qwen/settings.json") && msg.contains("line 2"),
            "{msg}"
        );
        assert!(matches!(
            parse(Path::new("x"), "[1]").unwrap_err(),
            SettingsError::NotAnObject { .. }
        ));
    }

    #[test]
    fn missing_file_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert!(read_file(&t.path().join("nope.json")).unwrap().is_none());
        assert!(
            read_file(&t.path().join("nope/inner.json"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn exclusions_union_and_default() {
        let user = json!({"advanced": {"excludedEnvVars": ["FOO", "X"]}});
        let ws = json!({"advanced": {"excludedEnvVars": ["X", "BAR"]}, "unknown": true});
        let e = Exclusions::from_settings([&user, &ws]);
        assert_eq!(
            e,
            Exclusions::List(vec!["FOO".into(), "X".into(), "BAR".into()])
        );
        assert!(!e.excludes("DEBUG"));
        assert_eq!(Exclusions::from_settings([&json!({})]), Exclusions::Default);
        assert!(Exclusions::Default.excludes("DEBUG_MODE"));
        assert!(!Exclusions::Default.excludes("debug"));
        let empty = Exclusions::from_settings([&json!({"advanced": {"excludedEnvVars": []}})]);
        assert!(
            !empty.excludes("DEBUG"),
            "an empty list excludes nothing, as in JS"
        );
    }
}
