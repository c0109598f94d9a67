//! Qwen Code's `settings.json`: the daemon's one reader and writer of it.
//!
//! Read the way Qwen Code 0.12.0 reads it: JSON with comments, the user file and the
//! workspace file, unknown keys ignored. Every reader (the method, the OpenAI-compatible
//! settings, the model, the `.env` exclusions) asks a [`View`]: the settings that apply to
//! one client, built once per request from what the client says about itself. The rule,
//! in full in `docs/settings.md`:
//!
//! * **User file**: the client's `$QWEN_HOME/settings.json` (relative to its cwd), else
//!   `<client's HOME>/.qwen/settings.json`: the file a Qwen Code started in the client's
//!   environment reads. Only a client that sends neither gets the daemon's own Qwen home.
//! * **Workspace file**: `<cwd>/.qwen/settings.json`, not read when the cwd is the client's
//!   HOME, compared by device and inode (Qwen Code compares real paths; a symlinked HOME
//!   is the same directory either way).
//! * **Errors**: a file that cannot be read or parsed is left out, with a warning naming
//!   the file (and line) that goes back to the client; everything else goes on with the
//!   other file. Only the writer ([`Edit`]) refuses: it never overwrites a file it cannot
//!   parse.
//!
//! Files are read through one [`FileCache`] (one `stat` per use, racy-timestamp aware,
//! FIFOs refused without blocking), and only the few values the daemon uses are kept of
//! each: the permit path asks for the method on every request.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::filecache::{FileCache, Loaded};

mod file;
mod view;
mod write;

#[cfg(test)]
mod tests;

pub use file::{FileValues, MAX_SETTINGS_BYTES, SettingsError, get, parse, strip_json_comments};
pub use view::{Exclusions, View};
pub use write::{Edit, write_selected_type};

/// How many settings files the cache keeps (user files and every workspace asked about).
const CACHE_ENTRIES: usize = 512;

/// The two auth methods, as `security.auth.selectedType` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    QwenOAuth,
    OpenAi,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QwenOAuth => "qwen-oauth",
            Self::OpenAi => "openai",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qwen-oauth" => Some(Self::QwenOAuth),
            "openai" => Some(Self::OpenAi),
            _ => None,
        }
    }
}

type Parsed = Result<FileValues, SettingsError>;

/// The settings files the daemon has read, shared by every request.
pub struct Settings {
    files: FileCache<Parsed>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            files: FileCache::new(CACHE_ENTRIES, MAX_SETTINGS_BYTES),
        }
    }
}

/// One file, as a view needs it.
enum Read {
    Absent,
    Values(Arc<Parsed>),
    Ignored(String),
}

impl Settings {
    /// The settings for a client in `cwd` with environment `env`. `own_home`: the daemon's
    /// Qwen home, used only when the client names neither `QWEN_HOME` nor `HOME`.
    pub fn view(&self, cwd: &Path, env: &HashMap<String, String>, own_home: Option<&Path>) -> View {
        let home = env
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| normalize(Path::new(h)));
        let user_file = user_file(cwd, env, home.as_deref(), own_home);
        let mut view = View::new(user_file);
        if let Some(path) = view.user_file().map(Path::to_path_buf) {
            match self.read(&path) {
                Read::Values(v) => view.user = Some(v),
                Read::Ignored(w) => view.warnings.push(w),
                Read::Absent => {}
            }
        }
        if cwd.is_absolute() {
            let ws = cwd.join(".qwen").join("settings.json");
            // The same file as the user's adds nothing (and no second warning).
            if view.user_file() != Some(ws.as_path()) {
                let read = self.read(&ws);
                // Asked only when there is a file: most directories have none.
                let counts = !matches!(read, Read::Absent)
                    && !home.as_deref().is_some_and(|h| same_dir(cwd, h));
                if counts {
                    match read {
                        Read::Values(v) => view.workspace = Some(v),
                        Read::Ignored(w) => view.warnings.push(w),
                        Read::Absent => {}
                    }
                }
            }
        }
        view
    }

    fn read(&self, path: &Path) -> Read {
        match self.files.get(path, |bytes| FileValues::parse(path, bytes)) {
            Ok(Loaded::Value(v)) => match &*v {
                Ok(_) => Read::Values(v),
                Err(e) => Read::Ignored(format!("settings ignored: {e}")),
            },
            Ok(Loaded::TooLarge { size, limit }) => Read::Ignored(format!(
                "settings ignored: {} is {size} bytes, over the {limit}-byte limit for settings files",
                path.display()
            )),
            Err(e) if is_absent(&e) => Read::Absent,
            Err(e) => Read::Ignored(format!("settings ignored: {}: {e}", path.display())),
        }
    }
}

/// The user settings file of a client: `$QWEN_HOME/settings.json` (a relative `QWEN_HOME`
/// taken from the client's cwd, as node's `path.resolve` does), else
/// `$HOME/.qwen/settings.json`, else the daemon's own.
fn user_file(
    cwd: &Path,
    env: &HashMap<String, String>,
    home: Option<&Path>,
    own_home: Option<&Path>,
) -> Option<PathBuf> {
    if let Some(q) = env.get("QWEN_HOME").filter(|q| !q.is_empty()) {
        return Some(normalize(&cwd.join(q)).join("settings.json"));
    }
    if let Some(h) = home {
        return Some(h.join(".qwen").join("settings.json"));
    }
    own_home.map(|q| q.join("settings.json"))
}

/// Whether two paths name one directory (device and inode, so symlinks do not matter).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

pub(crate) fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// node's `path.normalize` for an absolute path: `.` and `..` removed lexically, no
/// symlinks resolved (Qwen Code joins HOME this way).
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
