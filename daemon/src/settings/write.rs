//! The one writer of settings.json: `security.auth.selectedType`, every other key kept.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::AuthType;
use super::file::{SettingsError, parse, read_bytes, strip_json_comments};

/// A read-modify-write of one settings file. Opening reads the file as it is now (never
/// from a cache): invalid JSON is an error naming the file and line, and nothing is
/// written. Like Qwen Code's own settings writer, the result is plain JSON: when the file
/// had comments, the original is kept beside it as `settings.json.orig`.
#[derive(Debug)]
pub struct Edit {
    path: PathBuf,
    doc: Value,
    original: Option<String>,
}

impl Edit {
    pub fn open(path: &Path) -> Result<Self, SettingsError> {
        let (doc, original) = match read_bytes(path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (parse(path, &text)?, Some(text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Value::Object(Default::default()), None)
            }
            Err(source) => {
                return Err(SettingsError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            doc,
            original,
        })
    }

    /// The method this file selects, by the rule of [`super::View::method`].
    pub fn method(&self) -> Option<AuthType> {
        let values = super::FileValues::of(&self.doc);
        values.selected_type.or(values.selected_auth_type).flatten()
    }

    pub fn set_selected_type(&mut self, to: AuthType) {
        let obj = self
            .doc
            .as_object_mut()
            .expect("parse guarantees an object");
        let security = obj
            .entry("security")
            .or_insert_with(|| Value::Object(Default::default()));
        if !security.is_object() {
            *security = Value::Object(Default::default());
        }
        let auth = security
            .as_object_mut()
            .expect("object")
            .entry("auth")
            .or_insert_with(|| Value::Object(Default::default()));
        if !auth.is_object() {
            *auth = Value::Object(Default::default());
        }
        auth.as_object_mut()
            .expect("object")
            .insert("selectedType".into(), Value::String(to.as_str().into()));
    }

    /// Writes the file atomically with the old file's mode (0600 for a new one:
    /// settings.json may hold an API key, `security.auth.apiKey`).
    pub fn save(self) -> Result<(), SettingsError> {
        let path = self.path.as_path();
        let werr = |source| SettingsError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(orig) = &self.original
            && strip_json_comments(orig) != *orig
        {
            std::fs::write(path.with_extension("json.orig"), orig).map_err(werr)?;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(werr)?;
        let mut text = serde_json::to_string_pretty(&self.doc).expect("a Value always serializes");
        text.push('\n');
        qwend_shared::files::atomic_write_keeping_mode(path, text.as_bytes()).map_err(werr)?;
        Ok(())
    }
}

/// Selects `to` in the settings file at `path` (see [`Edit`]).
pub fn write_selected_type(path: &Path, to: AuthType) -> Result<(), SettingsError> {
    let mut edit = Edit::open(path)?;
    edit.set_selected_type(to);
    edit.save()
}
