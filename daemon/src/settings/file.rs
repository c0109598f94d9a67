//! One settings file: JSON with comments, parsed as Qwen Code parses it, and the values of
//! it the daemon uses.
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde_json::Value;

use super::AuthType;

/// Settings files are small; this bound only keeps a runaway file from costing the daemon
/// its memory.
pub const MAX_SETTINGS_BYTES: u64 = 4 * 1024 * 1024;

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
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `advanced.excludedEnvVars` as one file sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Excluded {
    List(Vec<String>),
    /// A string: JavaScript's `"A_B".includes(k)`, a substring test.
    Substring(String),
}

/// What the daemon uses of one settings file. For each key, the outer `Option` says whether
/// the file has it: as in Qwen Code, a key's presence (not the validity of its value)
/// decides which file's value counts, so a workspace `"model": {"name": 7}` hides the
/// user's model name. The API key is a secret: `Debug` hides it.
#[derive(Default)]
pub struct FileValues {
    pub(super) selected_type: Option<Option<AuthType>>,
    pub(super) selected_auth_type: Option<Option<AuthType>>,
    pub(super) model_name: Option<Option<String>>,
    pub(super) api_key: Option<Option<SecretString>>,
    pub(super) base_url: Option<Option<String>>,
    pub(super) excluded: Option<Excluded>,
}

impl std::fmt::Debug for FileValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileValues")
            .field("selected_type", &self.selected_type)
            .field("selected_auth_type", &self.selected_auth_type)
            .field("model_name", &self.model_name)
            .field(
                "api_key",
                &self
                    .api_key
                    .as_ref()
                    .map(|k| k.as_ref().map(|_| "[redacted]")),
            )
            .field("base_url", &self.base_url)
            .field("excluded", &self.excluded)
            .finish()
    }
}

impl FileValues {
    /// The values of a file's bytes (invalid UTF-8 decoded as U+FFFD, as node does).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, SettingsError> {
        parse(path, &String::from_utf8_lossy(bytes)).map(|doc| Self::of(&doc))
    }

    pub fn of(doc: &Value) -> Self {
        let method = |path: &[&str]| get(doc, path).map(|v| v.as_str().and_then(AuthType::parse));
        let string = |path: &[&str]| get(doc, path).map(|v| v.as_str().map(String::from));
        Self {
            selected_type: method(&["security", "auth", "selectedType"]),
            selected_auth_type: method(&["selectedAuthType"]),
            model_name: string(&["model", "name"]),
            api_key: get(doc, &["security", "auth", "apiKey"])
                .map(|v| v.as_str().map(|s| SecretString::from(s.to_string()))),
            base_url: string(&["security", "auth", "baseUrl"]),
            excluded: match get(doc, &["advanced", "excludedEnvVars"]) {
                Some(Value::Array(items)) => Some(Excluded::List(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect(),
                )),
                Some(Value::String(s)) => Some(Excluded::Substring(s.clone())),
                _ => None,
            },
        }
    }
}

/// The bytes of a settings file: a regular file of at most [`MAX_SETTINGS_BYTES`] (a FIFO
/// in its place would block the read forever). `NotFound` when it does not exist.
pub(super) fn read_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
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

/// A settings document: an object, or an error naming the file, line and column.
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
