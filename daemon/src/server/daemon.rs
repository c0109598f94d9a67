//! `qwend.v1.Daemon`: status and shutdown of the daemon process.
use std::collections::HashMap;

use qwend_shared::api::daemon_server::Daemon;
use qwend_shared::api::{ShutdownRequest, ShutdownResponse, StatusRequest, StatusResponse};
use tonic::{Request, Response, Status};

use super::DaemonState;
use crate::config;

/// Variables the daemon reads from its own environment only when it starts (config.rs,
/// paths, logging): a client whose environment says otherwise is told to restart it.
/// None of them is a secret; the list is reported verbatim by `Status`.
pub const READ_AT_START: &[&str] = &[
    config::ENV_OAUTH_BASE_URL,
    config::ENV_STORE,
    config::ENV_PER_MINUTE,
    config::ENV_PER_DAY,
    config::ENV_DAY_OFFSET,
    config::ENV_OPENAI_PER_MINUTE,
    config::ENV_OPENAI_PER_DAY,
    config::ENV_SYNC_QWEN_FILE,
    config::ENV_OAUTH_TIME_UNIT_MS,
    config::ENV_MAX_COOL_DOWN_MS,
    super::conn::ENV_MAX_CONNECTIONS,
    super::conn::ENV_FIRST_REQUEST_TIMEOUT_MS,
    crate::proxy::ENV_PORT,
    crate::proxy::ENV_PERMIT_WAIT_MS,
    crate::proxy::ENV_MAX_BODY,
    crate::proxy::ENV_MAX_CONCURRENT,
    crate::proxy::ENV_UPSTREAM_IDLE_MS,
    qwend_shared::paths::ENV_QWEN_HOME,
    qwend_shared::paths::ENV_STATE_DIR,
    "QWEN_LOG",
];

#[derive(Debug)]
pub struct DaemonService {
    state: DaemonState,
    start_settings: HashMap<String, String>,
}

impl DaemonService {
    /// Built while the daemon starts, so the environment read here is the one its
    /// configuration came from.
    pub fn new(state: DaemonState) -> Self {
        Self {
            state,
            start_settings: start_settings(|k| std::env::var(k).ok()),
        }
    }
}

/// Each setting's value as the configuration saw it: trimmed, "" when unset or blank.
fn start_settings(var: impl Fn(&str) -> Option<String>) -> HashMap<String, String> {
    READ_AT_START
        .iter()
        .map(|k| {
            let v = var(k).map(|v| v.trim().to_string()).unwrap_or_default();
            (k.to_string(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl Daemon for DaemonService {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        // Building the map costs more than the rest of the call: only when asked.
        let start_settings = if req.get_ref().include_start_settings {
            self.start_settings.clone()
        } else {
            HashMap::new()
        };
        Ok(Response::new(StatusResponse {
            version: qwend_shared::VERSION.to_string(),
            protocol_version: qwend_shared::PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_s: self.state.started.elapsed().as_secs(),
            socket: self.state.socket.display().to_string(),
            start_settings,
        }))
    }

    async fn shutdown(
        &self,
        _req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!("shutdown requested over the socket");
        // notify_one stores a permit, so the stop future sees it even if it is not yet
        // polling; the reply still goes out because shutdown is graceful.
        self.state.shutdown.notify_one();
        Ok(Response::new(ShutdownResponse {
            pid: std::process::id(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_setting_is_reported_trimmed_and_unset_as_empty() {
        let s = start_settings(|k| match k {
            "QWEN_OAUTH_BASE_URL" => Some(" http://127.0.0.1:9 ".into()),
            "QWEND_QUOTA_PER_DAY" => Some("".into()),
            _ => None,
        });
        assert_eq!(s.len(), READ_AT_START.len());
        assert_eq!(s["QWEN_OAUTH_BASE_URL"], "http://127.0.0.1:9");
        assert_eq!(s["QWEND_QUOTA_PER_DAY"], "");
        assert_eq!(s["QWEND_STATE_DIR"], "");
    }

    #[test]
    fn no_setting_names_a_secret() {
        for k in READ_AT_START {
            let k = k.to_ascii_uppercase();
            for secret in ["KEY", "TOKEN", "SECRET", "PASSWORD"] {
                assert!(!k.contains(secret), "{k} looks like a secret");
            }
        }
    }
}
