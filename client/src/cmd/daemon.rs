//! `qwen daemon status|start|stop|restart|install|uninstall`.
//!
//! Stopping is graceful first (the `Shutdown` call: in-flight calls finish), and forceful
//! when the daemon does not answer or does not exit: it holds an exclusive lock beside its
//! socket that records its pid, so the client sends SIGTERM (with SIGCONT, so a stopped
//! process can act on it), then SIGKILL after a grace period. The lock is what makes the
//! pid trustworthy: only the live holder's pid is signalled, never a stale one.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use qwend_shared::api::daemon_client::DaemonClient;
use qwend_shared::api::{ProxyStatus, ShutdownRequest, StatusRequest, StatusResponse};
use qwend_shared::transport::LockHolder;
use qwend_shared::{paths, transport};
use serde_json::json;
use tonic::transport::Channel;

use crate::cli::DaemonAction;
use crate::connect;
use crate::error::ClientError;
use crate::{start_settings, term};

/// How long a daemon that accepted the stop request may take to finish in-flight calls.
const STOP_BUDGET: Duration = Duration::from_secs(10);
/// How long a daemon gets to answer the stop request, and then to act on SIGTERM, before
/// the next step; `QWEN_STOP_GRACE_MS` moves it.
const DEFAULT_GRACE: Duration = Duration::from_secs(5);
const ENV_GRACE: &str = "QWEN_STOP_GRACE_MS";

pub async fn run(action: DaemonAction, as_json: bool) -> Result<ExitCode, ClientError> {
    let socket = paths::socket_path();
    match action {
        DaemonAction::Status | DaemonAction::Start => {
            let channel = connect::ensure(&socket).await?;
            let status = status(&channel).await?;
            let proxy = super::proxy::status(&channel).await;
            print_status(&status, proxy.as_ref(), as_json);
        }
        DaemonAction::Install { kind, print } => {
            return super::install::install(kind.kind(), print, as_json);
        }
        DaemonAction::Uninstall { kind } => return super::install::uninstall(kind.kind(), as_json),
        DaemonAction::Stop => match stop(&socket).await? {
            None => {
                if as_json {
                    println!("{}", json!({"running": false}));
                } else {
                    println!("qwend is not running");
                }
            }
            Some(stopped) => {
                if as_json {
                    println!(
                        "{}",
                        json!({"running": false, "pid": stopped.pid, "forced": stopped.how.signal()})
                    );
                } else {
                    println!("qwend stopped (pid {}{})", stopped.pid, stopped.how.note());
                }
            }
        },
        DaemonAction::Restart => {
            let previous = stop(&socket).await?;
            let channel = connect::ensure(&socket).await?;
            let status = status(&channel).await?;
            // We started it with our environment, unless a service manager (systemd
            // socket activation, launchd) answered the socket and used its own.
            if let Some(d) = start_settings::Differing::from_here(&status.start_settings) {
                term::warn(&format!(
                    "qwend was started by your service manager with other {}: set {} in its environment (docs/daemon.md)",
                    d.names(),
                    d.them()
                ));
            }
            if as_json {
                println!(
                    "{}",
                    json!({
                        "running": true,
                        "pid": status.pid,
                        "previous_pid": previous.as_ref().map(|p| p.pid),
                        "version": status.version,
                        "socket": status.socket,
                    })
                );
            } else {
                match previous {
                    Some(p) => println!(
                        "qwend restarted (pid {}{} → pid {})",
                        p.pid,
                        p.how.note(),
                        status.pid
                    ),
                    None => println!("qwend was not running; started it (pid {})", status.pid),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(channel: &Channel) -> Result<StatusResponse, ClientError> {
    Ok(DaemonClient::new(channel.clone())
        .status(StatusRequest {
            include_start_settings: true,
        })
        .await?
        .into_inner())
}

fn print_status(s: &StatusResponse, proxy: Option<&ProxyStatus>, as_json: bool) {
    let settings: BTreeMap<&String, &String> = s
        .start_settings
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if as_json {
        let mut v = json!({
            "running": true,
            "pid": s.pid,
            "version": s.version,
            "protocol_version": s.protocol_version,
            "socket": s.socket,
            "uptime_s": s.uptime_s,
            "start_settings": settings,
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
        if !settings.is_empty() {
            println!("  started with (read at start; `qwen daemon restart` applies changes):");
            for (k, v) in settings {
                println!("    {k}={v}");
            }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// It answered the stop request and exited.
    Asked,
    Term,
    Kill,
}

impl How {
    fn signal(self) -> Option<&'static str> {
        match self {
            How::Asked => None,
            How::Term => Some("SIGTERM"),
            How::Kill => Some("SIGKILL"),
        }
    }

    fn note(self) -> &'static str {
        match self {
            How::Asked => "",
            How::Term => ", not answering: ended with SIGTERM",
            How::Kill => ", not answering: killed with SIGKILL",
        }
    }
}

struct Stopped {
    pid: u32,
    how: How,
}

fn grace() -> Duration {
    std::env::var(ENV_GRACE)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_GRACE)
}

/// Stops the daemon on `socket`; `None` when none was running.
async fn stop(socket: &Path) -> Result<Option<Stopped>, ClientError> {
    let grace = grace();
    let lock = paths::lock_path_for(socket);
    // Ask politely; a daemon that does not answer within the grace period is wedged.
    let asked = tokio::time::timeout(grace, async {
        let channel = connect::existing(socket).await.ok()??;
        DaemonClient::new(channel)
            .shutdown(ShutdownRequest {})
            .await
            .ok()
            .map(|r| r.into_inner().pid)
    })
    .await
    .ok()
    .flatten();
    if let Some(pid) = asked {
        if wait_released(&lock, STOP_BUDGET).await? {
            return Ok(Some(Stopped {
                pid,
                how: How::Asked,
            }));
        }
        term::warn(&format!(
            "qwend (pid {pid}) accepted the stop request but is still running after {}s",
            STOP_BUDGET.as_secs()
        ));
    }
    let pid = match transport::lock_holder(&lock) {
        LockHolder::Free => {
            return Ok(asked.map(|pid| Stopped {
                pid,
                how: How::Asked,
            }));
        }
        // Never signal init (or "0", the whole process group) on the word of a file.
        LockHolder::Held { pid: Some(pid) } if pid > 1 => pid,
        LockHolder::Held { .. } => {
            return Err(ClientError::Rpc(format!(
                "a qwend holds {} but its pid is not recorded there; stop it by hand",
                lock.display()
            )));
        }
    };
    if asked.is_none() {
        term::warn(&format!(
            "qwend (pid {pid}) is not answering on {}; sending SIGTERM",
            socket.display()
        ));
    }
    signal(pid, rustix::process::Signal::TERM)?;
    // A stopped (SIGSTOP, Ctrl-Z) process acts on nothing until it runs again.
    let _ = signal(pid, rustix::process::Signal::CONT);
    if wait_released(&lock, grace).await? {
        return Ok(Some(Stopped {
            pid,
            how: How::Term,
        }));
    }
    term::warn(&format!(
        "qwend (pid {pid}) did not exit within {} ms of SIGTERM; sending SIGKILL",
        grace.as_millis()
    ));
    signal(pid, rustix::process::Signal::KILL)?;
    if wait_released(&lock, STOP_BUDGET).await? {
        return Ok(Some(Stopped {
            pid,
            how: How::Kill,
        }));
    }
    Err(ClientError::Rpc(format!(
        "qwend (pid {pid}) is still running after SIGKILL"
    )))
}

fn signal(pid: u32, sig: rustix::process::Signal) -> Result<(), ClientError> {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Err(ClientError::Rpc(format!("invalid daemon pid {pid}")));
    };
    match rustix::process::kill_process(p, sig) {
        // Gone already: that is what we wanted.
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(ClientError::Rpc(format!(
            "cannot signal qwend (pid {pid}): {e}"
        ))),
    }
}

/// Waits (event-driven, on the lock) until the daemon has exited.
async fn wait_released(lock: &Path, budget: Duration) -> Result<bool, ClientError> {
    let lock = lock.to_path_buf();
    tokio::task::spawn_blocking(move || transport::wait_for_lock_release(&lock, budget))
        .await
        .map_err(|e| ClientError::Rpc(e.to_string()))?
        .map_err(|e| ClientError::Rpc(format!("cannot watch the daemon's lock: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 5s");
        assert_eq!(human_duration(3_700), "1h 1m");
        assert_eq!(human_duration(90_000), "1d 1h");
    }
}
