//! Reaching the daemon, and starting it when nothing answers (like sccache's client).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qwend_shared::paths;
use qwend_shared::transport::{self, TransportError};
use tonic::transport::Channel;

use crate::error::ClientError;

/// How long to keep trying after a start attempt lost the race to another client's daemon,
/// which may still be binding its socket.
const STARTUP_BUDGET: Duration = Duration::from_secs(5);

/// Connect to a running daemon; `Ok(None)` when none runs.
pub async fn existing(socket: &Path) -> Result<Option<Channel>, ClientError> {
    match transport::connect(socket).await {
        Ok(ch) => Ok(Some(ch)),
        Err(e) if transport::is_not_running(&e) => Ok(None),
        Err(e) => Err(unreachable(socket, &e)),
    }
}

/// The daemon of this user (at [`paths::socket_path`]), started when none answers: what
/// every command that needs the daemon calls.
pub async fn daemon() -> Result<Channel, ClientError> {
    ensure(&paths::socket_path()).await
}

/// Connect, starting the daemon first when none answers.
pub async fn ensure(socket: &Path) -> Result<Channel, ClientError> {
    if let Some(ch) = existing(socket).await? {
        crate::start_settings::check(&ch);
        return Ok(ch);
    }
    let start_error = start(socket).err();
    // `qwend` returns only once its socket answers, so normally the first try succeeds.
    // It fails only when another client's daemon won the lock and is still starting:
    // then retry with a short, bounded backoff.
    let deadline = Instant::now() + STARTUP_BUDGET;
    let mut delay = Duration::from_millis(2);
    loop {
        match transport::connect(socket).await {
            Ok(ch) => return Ok(ch),
            Err(e) if transport::is_not_running(&e) && Instant::now() < deadline => {
                if let Some(err) = start_error.as_ref().filter(|e| !e.lost_race) {
                    return Err(err.to_client_error());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(match start_error {
                    Some(err) if !err.lost_race => err.to_client_error(),
                    _ => unreachable(socket, &e),
                });
            }
        }
    }
}

fn unreachable(socket: &Path, e: &TransportError) -> ClientError {
    if e.is_untrusted() {
        return ClientError::Untrusted(e.to_string());
    }
    ClientError::Unreachable {
        socket: socket.display().to_string(),
        reason: match e {
            TransportError::Connect { source, .. } => source.to_string(),
            other => other.to_string(),
        },
    }
}

struct StartError {
    bin: PathBuf,
    reason: String,
    /// Another daemon holds the socket's lock: not a failure, just wait for it.
    lost_race: bool,
}

impl StartError {
    fn to_client_error(&self) -> ClientError {
        ClientError::StartFailed {
            bin: self.bin.display().to_string(),
            reason: self.reason.clone(),
        }
    }
}

/// The daemon binary: `QWEND_BIN`, else `qwend` beside this executable, else on `PATH`.
pub fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(paths::ENV_DAEMON_BIN).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        let beside = me.with_file_name("qwend");
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from("qwend")
}

/// Run `qwend --socket S`, which detaches and exits once the daemon serves.
fn start(socket: &Path) -> Result<(), StartError> {
    let bin = daemon_bin();
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| StartError {
            bin: bin.clone(),
            reason: e.to_string(),
            lost_race: false,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let reason = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("exited without a message")
        .trim_start_matches("qwend: ")
        .to_string();
    Err(StartError {
        bin,
        lost_race: reason.starts_with("already running"),
        reason,
    })
}
