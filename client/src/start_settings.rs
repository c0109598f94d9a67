//! The daemon reads some settings only when it starts (`QWEN_OAUTH_BASE_URL`,
//! `QWEND_QUOTA_*`, `QWEN_CREDENTIAL_STORE`, ...) and reports them in its status. This
//! module compares them with this client's environment: once per process on connecting to
//! a daemon that was already running, and for `qwen daemon restart`.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qwend_shared::api::StatusRequest;
use qwend_shared::api::daemon_client::DaemonClient;
use tonic::transport::Channel;

use crate::term;

/// The settings check on every connection must never hold a command up for long.
const CHECK_BUDGET: Duration = Duration::from_millis(500);

/// The settings check of this process, running beside the command's own calls.
static SETTINGS_CHECK: Mutex<Option<tokio::task::JoinHandle<()>>> = Mutex::new(None);
static CHECK_STARTED: AtomicBool = AtomicBool::new(false);

/// On connecting to a daemon that was already running: one warning when it started with
/// settings other than this client's environment (it reads them only at start). The
/// `Status` call goes out on the command's own connection, concurrently with the
/// command's calls (HTTP/2 multiplexes them), so it adds no round trip; [`settings_checked`]
/// waits for it, bounded. Silent on any failure: the command's own call reports a broken
/// daemon.
pub fn check(channel: &Channel) {
    // One warning per process: a second connection needs no second check.
    if CHECK_STARTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut client = DaemonClient::new(channel.clone());
    let task = tokio::spawn(async move {
        let Ok(reply) = client
            .status(StatusRequest {
                include_start_settings: true,
            })
            .await
        else {
            return;
        };
        let reply = reply.into_inner();
        if let Some(d) = Differing::from_here(&reply.start_settings) {
            term::warn(&format!(
                "the running qwend (pid {}) started with other {}; it reads {} only at start: run `qwen daemon restart` to apply yours",
                reply.pid,
                d.names(),
                d.them()
            ));
        }
    });
    *SETTINGS_CHECK.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
}

/// Lets a pending settings check finish (at most a short bound), so its warning is shown
/// before the command hands over to a child or exits.
pub async fn settings_checked() {
    let task = SETTINGS_CHECK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(mut task) = task
        && tokio::time::timeout(CHECK_BUDGET, &mut task).await.is_err()
    {
        task.abort();
    }
}

/// The names of the daemon's start settings that this environment sets differently
/// (blank and unset are the same, as for the daemon), sorted; never empty.
pub struct Differing(Vec<String>);

impl Differing {
    /// Against this process's environment; `None` when everything agrees.
    pub fn from_here(daemon: &HashMap<String, String>) -> Option<Self> {
        Self::against(daemon, |k| std::env::var(k).ok())
    }

    fn against(
        daemon: &HashMap<String, String>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Option<Self> {
        let mut out: Vec<String> = daemon
            .iter()
            .filter(|(k, theirs)| {
                let mine = var(k).map(|v| v.trim().to_string()).unwrap_or_default();
                mine != theirs.trim()
            })
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        (!out.is_empty()).then_some(Self(out))
    }

    /// `A, B` for a message.
    pub fn names(&self) -> String {
        self.0.join(", ")
    }

    /// The pronoun for the names.
    pub fn them(&self) -> &'static str {
        if self.0.len() == 1 { "it" } else { "them" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_differ_only_when_the_values_do() {
        let daemon: std::collections::HashMap<String, String> = [
            ("QWEN_OAUTH_BASE_URL", "http://a"),
            ("QWEND_QUOTA_PER_DAY", ""),
            ("QWEND_STATE_DIR", "/s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let same = |k: &str| match k {
            "QWEN_OAUTH_BASE_URL" => Some("http://a ".to_string()),
            "QWEND_QUOTA_PER_DAY" => Some(" ".to_string()),
            "QWEND_STATE_DIR" => Some("/s".to_string()),
            _ => None,
        };
        assert!(Differing::against(&daemon, same).is_none());
        let other = |k: &str| match k {
            "QWEN_OAUTH_BASE_URL" => Some("http://b".to_string()),
            "QWEND_QUOTA_PER_DAY" => Some("5".to_string()),
            _ => None,
        };
        assert_eq!(
            Differing::against(&daemon, other).unwrap().0,
            [
                "QWEND_QUOTA_PER_DAY",
                "QWEND_STATE_DIR",
                "QWEN_OAUTH_BASE_URL"
            ]
        );
    }
}
