//! Client failures and the exit codes the contract gives them.
use std::process::ExitCode;

/// Exit codes from DESIGN.md.
pub mod code {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const AUTH_NEEDED: u8 = 3;
    pub const QUOTA: u8 = 4;
    pub const DAEMON_UNREACHABLE: u8 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    /// The socket, or where it lives, is controlled by someone else: nothing was sent.
    #[error("{0}")]
    Untrusted(String),
    /// A daemon holds the socket's lock but does not answer (stopped, or stuck).
    #[error(
        "the daemon at PID {pid} ({socket}) is not answering (stopped or stuck?); `qwen daemon stop` ends it"
    )]
    NotAnswering { socket: String, pid: u32 },
    #[error("cannot start the daemon ({bin}): {reason}")]
    StartFailed { bin: String, reason: String },
    #[error("the daemon refused this client: {0}")]
    Denied(String),
    #[error("{0}")]
    Rpc(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    AuthNeeded(String),
    #[error("cannot write output: {0}")]
    Output(String),
    /// The quota refused and the caller did not want to wait.
    #[error("{0}")]
    Quota(String),
    /// The model API failed (HTTP error, network, malformed stream).
    #[error("{0}")]
    Upstream(String),
    /// Ends with this code; whatever needed saying has been said.
    #[error("")]
    Exit(ExitCode),
}

impl ClientError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Unreachable { .. }
            | Self::Untrusted(_)
            | Self::NotAnswering { .. }
            | Self::StartFailed { .. }
            | Self::Denied(_) => code::DAEMON_UNREACHABLE,
            Self::Rpc(_) | Self::Output(_) | Self::Upstream(_) => code::FAILURE,
            Self::Quota(_) => code::QUOTA,
            Self::Exit(c) => return *c,
            Self::Usage(_) => code::USAGE,
            Self::AuthNeeded(_) => code::AUTH_NEEDED,
        })
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::PermissionDenied => Self::Denied(s.message().to_string()),
            // Sent by the daemon itself (a token refresh failed for a transient reason):
            // the daemon is fine, the authorization server is not.
            tonic::Code::Unavailable if std::error::Error::source(&s).is_none() => {
                Self::Rpc(s.message().to_string())
            }
            tonic::Code::Unavailable => {
                let socket = qwend_shared::paths::socket_path();
                // The keep-alive ping went unanswered. If a daemon still holds the lock it
                // is alive but not answering (SIGSTOP, a wedged process): say which.
                match timed_out(&s)
                    .then(|| qwend_shared::transport::daemon_pid(&socket))
                    .flatten()
                {
                    Some(pid) => Self::NotAnswering {
                        socket: socket.display().to_string(),
                        pid,
                    },
                    None => Self::Unreachable {
                        socket: socket.display().to_string(),
                        reason: s.message().to_string(),
                    },
                }
            }
            tonic::Code::FailedPrecondition => Self::AuthNeeded(s.message().to_string()),
            tonic::Code::InvalidArgument | tonic::Code::NotFound => {
                Self::Rpc(s.message().to_string())
            }
            _ => Self::Rpc(format!("daemon: {}", s.message())),
        }
    }
}

/// Whether a transport failure was the daemon not answering in time (the HTTP/2 keep-alive
/// ping went unanswered), as opposed to, say, a connection it closed. hyper reports that
/// with its own private error types, so the causes' text is all there is to go on.
fn timed_out(s: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        if e.to_string().contains("timed out") {
            return true;
        }
        cause = e.source();
    }
    false
}
