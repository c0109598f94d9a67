//! Terminal conventions: spinners and colour only on a terminal, `NO_COLOR` respected,
//! prompts only when a human can answer.
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A question can be asked: stdin and stderr (where questions go) are terminals. For the
/// prompts of a set-up (the first-run menu, the key).
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// stdin and stdout are terminals: someone reads what is printed and can act on it (a
/// device login shows its link and QR code there; a chat session its answers).
pub fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// https://no-color.org: any non-empty value turns colour off.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// A spinner on stderr, or nothing when stderr is not a terminal.
pub fn spinner(message: impl Into<String>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let template = if color() {
        "{spinner:.cyan} {msg}"
    } else {
        "{spinner} {msg}"
    };
    let pb = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_message(message.into());
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

/// `qwen: warning: ...`, yellow on a colour terminal.
pub fn warn(text: &str) {
    if color() {
        eprintln!("qwen: \x1b[33mwarning\x1b[0m: {text}");
    } else {
        eprintln!("qwen: warning: {text}");
    }
}

/// [`warn`], each text once per process: a command that asks the daemon twice (`qwen
/// exec`'s `.env` and credentials requests, every message of a session) would otherwise
/// repeat the same settings or `.env` warning.
pub fn warn_once(text: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    {
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        if said.iter().any(|s| s == text) {
            return;
        }
        said.push(text.to_string());
    }
    warn(text);
}

/// A time from the daemon (ms since the epoch) as RFC 3339; `None` when out of range.
pub fn rfc3339(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// "41s", "2m 05s", "3h 10m".
pub fn human_duration(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Some of a terminal's local modes (`ECHO`, `ISIG`, ...) turned off until dropped; then
/// the settings from before come back. `None` when `tty` is no terminal.
#[cfg(unix)]
pub struct ModesOff<F: std::os::fd::AsFd> {
    tty: F,
    saved: rustix::termios::Termios,
}

#[cfg(unix)]
impl<F: std::os::fd::AsFd> ModesOff<F> {
    pub fn new(tty: F, modes: rustix::termios::LocalModes) -> Option<Self> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(&tty).ok()?;
        let mut changed = saved.clone();
        changed.local_modes &= !modes;
        tcsetattr(&tty, OptionalActions::Now, &changed).ok()?;
        Some(Self { tty, saved })
    }
}

#[cfg(unix)]
impl<F: std::os::fd::AsFd> Drop for ModesOff<F> {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(&self.tty, OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::human_duration(0), "0s");
        assert_eq!(super::human_duration(1), "1s");
        assert_eq!(super::human_duration(41_000), "41s");
        assert_eq!(super::human_duration(125_000), "2m 05s");
        assert_eq!(super::human_duration(3_600_000 * 3 + 600_000), "3h 10m");
    }
}
