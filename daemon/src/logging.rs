//! Log setup: stderr in the foreground, a 0600 file in the state dir when detached.
//! `QWEN_LOG` (or else `RUST_LOG`) filters, with `tracing_subscriber`'s syntax.
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use qwend_shared::files;
use tracing_subscriber::EnvFilter;

use crate::fsread;

pub const LOG_FILE: &str = "qwend.log";

fn filter() -> EnvFilter {
    let spec = std::env::var("QWEN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Colours only on a terminal: a pipe or a file (`qwend --foreground 2>log`, systemd's
/// journal) gets plain text, and `NO_COLOR` turns them off on a terminal too.
pub fn to_stderr() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        .try_init();
}

fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Log to `<state_dir>/qwend.log`. Returns the path, or `None` when the directory cannot
/// be written: the daemon still serves (its jobs do not depend on logging), silently.
pub fn to_file(state_dir: Option<&Path>) -> Option<PathBuf> {
    let dir = state_dir?;
    files::ensure_private_dir(dir, false).ok()?;
    let path = dir.join(LOG_FILE);
    // Non-blocking: a FIFO in the log's place must not hang start-up (open for writing
    // blocks until a reader appears). Anything but a regular file is not a log.
    let file = fsread::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    fsread::ensure_regular(&file, &path).ok()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Some(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(super::colour(true, None));
        assert!(!super::colour(false, None));
        assert!(!super::colour(true, Some("1".into())));
        assert!(super::colour(true, Some("".into())));
    }
}
