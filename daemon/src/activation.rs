//! Socket activation: systemd (or a test harness acting like it) binds the socket and
//! passes it as fd 3 with `LISTEN_FDS`/`LISTEN_PID`. We serve on it and never unlink it:
//! the service manager owns the file.
use std::path::PathBuf;

use qwend_shared::transport::BoundSocket;

/// A listener handed over by the service manager, not yet registered with the runtime.
#[derive(Debug)]
pub struct Inherited {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl Inherited {
    /// Register with the running tokio runtime (must be called inside it).
    pub fn into_bound(self) -> Result<BoundSocket, ActivationError> {
        let listener = tokio::net::UnixListener::from_std(self.listener)?;
        Ok(BoundSocket::adopt(listener, self.path))
    }
}

/// The descriptor number, so the daemon keeps it when it closes what it inherited.
impl std::os::fd::AsFd for Inherited {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Io(#[from] std::io::Error),
}

/// The inherited listener, if we were socket-activated. Must run before any other code
/// opens file descriptors (we read the environment once, then clear it so children do not
/// think the sockets are theirs). Runs before the async runtime starts.
pub fn take_inherited(fallback_path: PathBuf) -> Result<Option<Inherited>, ActivationError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let Some(std_listener) = fds.take_unix_listener(0)? else {
        return Ok(None);
    };
    std_listener.set_nonblocking(true)?;
    let path = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
        .unwrap_or(fallback_path);
    Ok(Some(Inherited {
        listener: std_listener,
        path,
    }))
}
