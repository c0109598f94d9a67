//! `qwen daemon status|start|stop`.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use qwend_shared::api::daemon_client::DaemonClient;
use qwend_shared::api::{ProxyStatus, ShutdownRequest, StatusRequest, StatusResponse};
use qwend_shared::{paths, transport};
use serde_json::json;

use crate::cli::DaemonAction;
use crate::connect;
use crate::error::ClientError;

const STOP_BUDGET: Duration = Duration::from_secs(10);

pub async fn run(action: DaemonAction, as_json: bool) -> Result<ExitCode, ClientError> {
    let socket = paths::socket_path();
    match action {
        DaemonAction::Status | DaemonAction::Start => {
            let channel = connect::ensure(&socket).await?;
            let status = DaemonClient::new(channel.clone())
                .status(StatusRequest {})
                .await?
                .into_inner();
            let proxy = super::proxy::status(&channel).await;
            print_status(&status, proxy.as_ref(), as_json);
        }
        DaemonAction::Install { kind, print } => {
            return super::install::install(kind.kind(), print);
        }
        DaemonAction::Uninstall { kind } => return super::install::uninstall(kind.kind()),
        DaemonAction::Stop => {
            let Some(channel) = connect::existing(&socket).await? else {
                if as_json {
                    println!("{}", json!({"running": false}));
                } else {
                    println!("qwend is not running");
                }
                return Ok(ExitCode::SUCCESS);
            };
            let pid = DaemonClient::new(channel)
                .shutdown(ShutdownRequest {})
                .await?
                .into_inner()
                .pid;
            wait_until_gone(&socket).await?;
            if as_json {
                println!("{}", json!({"running": false, "pid": pid}));
            } else {
                println!("qwend stopped (pid {pid})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &StatusResponse, proxy: Option<&ProxyStatus>, as_json: bool) {
    if as_json {
        let mut v = json!({
            "running": true,
            "pid": s.pid,
            "version": s.version,
            "protocol_version": s.protocol_version,
            "socket": s.socket,
            "uptime_s": s.uptime_s,
        });
        if let Some(p) = proxy {
            v["proxy"] = super::proxy::to_json(p);
        }
        println!("{v}");
    } else {
        println!("qwend {} is running", s.version);
        println!("  pid       {}", s.pid);
        println!("  socket    {}", s.socket);
        println!("  uptime    {}", human_duration(s.uptime_s));
        println!("  protocol  {}", s.protocol_version);
        if let Some(p) = proxy {
            println!("  proxy     {}", super::proxy::human(p));
        }
    }
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The daemon replies before it stops; wait until it has exited (its lock is released) so
/// that `qwen daemon stop && qwen daemon start` really gets a new daemon.
async fn wait_until_gone(socket: &Path) -> Result<(), ClientError> {
    let lock = paths::lock_path_for(socket);
    let released =
        tokio::task::spawn_blocking(move || transport::wait_for_lock_release(&lock, STOP_BUDGET))
            .await
            .map_err(|e| ClientError::Rpc(e.to_string()))?
            .map_err(|e| ClientError::Rpc(format!("cannot watch the daemon's lock: {e}")))?;
    if released {
        Ok(())
    } else {
        Err(ClientError::Rpc(format!(
            "the daemon accepted the stop request but is still running after {}s",
            STOP_BUDGET.as_secs()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 5s");
        assert_eq!(human_duration(3_700), "1h 1m");
        assert_eq!(human_duration(90_000), "1d 1h");
    }
}
