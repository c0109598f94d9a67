//! The local transport: a Unix domain socket in a private directory, one daemon per socket
//! (an advisory lock beside it), and a per-call check that the peer is the same user.
//!
//! Every platform-specific piece lives in this file so a port (a named pipe on Windows)
//! touches one module. Only Unix is implemented and tested today.
#[cfg(not(unix))]
compile_error!(
    "qwend currently supports Unix (Linux, macOS); the Windows named-pipe transport belongs in shared/src/transport.rs"
);

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "socket directory {path} is owned by {}, not by you (uid {me}); refusing to use it",
        user_label(*owner)
    )]
    DirNotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "socket directory {path} is a symbolic link; refusing to use it (whoever can change the link can point it at a directory they control; remove it, or set QWEND_SOCKET to a path in a real directory)"
    )]
    DirIsSymlink { path: PathBuf },
    #[error(
        "socket directory {path} has mode {mode:o}; it must not be accessible to others (expected 0700); fix with: chmod 700 {path}"
    )]
    DirTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{path}, which holds the socket directory, has mode {mode:o}: others may write to it and it has no sticky bit, so they could replace the socket directory; refusing to use it (fix with: chmod go-w {path}, or point XDG_RUNTIME_DIR or QWEND_SOCKET at a private place)"
    )]
    ParentWritable { path: PathBuf, mode: u32 },
    #[error(
        "{path}, which holds the socket directory, is owned by {}, who could replace the socket directory; refusing to use it (point XDG_RUNTIME_DIR or QWEND_SOCKET at a place you own)",
        user_label(*owner)
    )]
    ParentNotOwned { path: PathBuf, owner: u32 },
    #[error(
        "the socket {path} is served by {}, not by you (uid {me}); refusing to send it anything (another user may be impersonating qwend; remove the socket or set QWEND_SOCKET to a private path)",
        user_label(*peer)
    )]
    PeerNotOwned { path: PathBuf, peer: u32, me: u32 },
    #[error("cannot tell who serves the socket {path}: {source}")]
    PeerUnknown { path: PathBuf, source: io::Error },
    #[error("socket path {0} has no parent directory")]
    NoParent(PathBuf),
    #[error("lock file {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("already running (pid {pid})")]
    AlreadyRunning { pid: String },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("gRPC channel to {path}: {source}")]
    Channel {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

impl TransportError {
    /// Whether this refuses a socket or directory that someone else controls: the client
    /// must not talk to it, and must not start a daemon there either.
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            Self::DirNotOwned { .. }
                | Self::DirIsSymlink { .. }
                | Self::DirTooOpen { .. }
                | Self::ParentWritable { .. }
                | Self::ParentNotOwned { .. }
                | Self::PeerNotOwned { .. }
                | Self::PeerUnknown { .. }
        )
    }
}

/// `uid N (name)` for messages, the name from the passwd file when it has one. Read by
/// hand: the libc lookup (`getpwuid_r`) would need `unsafe`, and a message needs no NSS.
pub fn user_label(uid: u32) -> String {
    let name = fs::read_to_string("/etc/passwd").ok().and_then(|text| {
        text.lines().find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_string())
        })
    });
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// Create (0700) or validate the directory that holds the socket. A directory that another
/// user owns, or that others can enter, could let them replace our socket: refuse it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), TransportError> {
    // Not tightened: a directory that others can enter is refused below, not silently fixed.
    match crate::files::ensure_private_dir(dir, false) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(TransportError::Dir {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    }
    check_socket_dir(dir)
}

/// The trust rules for the directory that holds the socket (docs/trust.md), checked by the
/// daemon before it binds and by every client before it connects:
/// - the directory is ours and private (no access for group or others), so nobody else can
///   put a socket in it, and it is a directory itself, not a symbolic link to one (checked
///   with `lstat`: the link's target could be changed under us);
/// - the directory that holds it is not writable by others unless sticky (like /tmp), and
///   is owned by us or root, so nobody else can rename our directory away and put theirs
///   in its place (an `XDG_RUNTIME_DIR` that is group- or world-writable, say).
///
/// A directory that does not exist yet passes: there is nothing to connect to, and the
/// daemon creates it 0700.
pub fn check_socket_dir(dir: &Path) -> Result<(), TransportError> {
    let me = crate::paths::current_uid();
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(meta) = fs::metadata(parent)
    {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(TransportError::ParentWritable {
                path: parent.to_path_buf(),
                mode,
            });
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(TransportError::ParentNotOwned {
                path: parent.to_path_buf(),
                owner: meta.uid(),
            });
        }
    }
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(TransportError::Dir {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    if meta.file_type().is_symlink() {
        return Err(TransportError::DirIsSymlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(TransportError::Dir {
            path: dir.to_path_buf(),
            source: io::Error::other("not a directory"),
        });
    }
    if meta.uid() != me {
        return Err(TransportError::DirNotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TransportError::DirTooOpen {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Held for the daemon's whole life: an exclusive `flock` on `<socket>.lock`, which also
/// records the holder's pid. The kernel drops the lock when the process dies, so a killed
/// daemon never blocks the next one, and whoever holds the lock may treat any socket file
/// it finds as stale.
#[derive(Debug)]
pub struct DaemonLock {
    file: File,
    path: PathBuf,
}

impl DaemonLock {
    pub fn acquire(path: &Path) -> Result<Self, TransportError> {
        let lock_err = |source| TransportError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(TransportError::AlreadyRunning {
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        file.flush().map_err(lock_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Block until no daemon holds the lock at `path` (it exited, or never ran), at most
/// `timeout`. Event-driven: the kernel wakes us when the holder's lock goes away, however
/// the process ended. Returns false on timeout.
pub fn wait_for_lock_release(path: &Path, timeout: std::time::Duration) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // A blocking flock cannot be cancelled; on timeout the thread is simply left behind
    // (callers are short-lived clients).
    std::thread::spawn(move || {
        let res = file.lock_shared();
        drop(file);
        let _ = tx.send(res);
    });
    match rx.recv_timeout(timeout) {
        Ok(res) => res.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// A socket we bound, remembered by inode so we only ever unlink our own file (never one a
/// newer daemon or a service manager put there).
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    ino: u64,
    ctime: (i64, i64),
}

impl BoundSocket {
    /// Bind `path` (0600). Call only while holding the [`DaemonLock`]: any file already
    /// there is a stale socket from a daemon that died, and is replaced.
    pub fn bind(path: &Path) -> Result<Self, TransportError> {
        let bind_err = |source| TransportError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .ok_or_else(|| TransportError::NoParent(path.to_path_buf()))?;
        ensure_private_dir(dir)?;
        match fs::remove_file(path) {
            Ok(()) => tracing::info!(socket = %path.display(), "replaced a stale socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        let meta = fs::symlink_metadata(path).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Adopt a listener handed over by a service manager (socket activation). We did not
    /// create the file, so we never remove it.
    pub fn adopt(listener: UnixListener, path: PathBuf) -> Self {
        Self {
            listener,
            path,
            ino: 0,
            ctime: (0, 0),
        }
    }

    /// Split into the listener to serve and a guard that unlinks our socket file.
    pub fn into_parts(self) -> (UnixListener, SocketGuard) {
        (
            self.listener,
            SocketGuard {
                path: self.path,
                ino: self.ino,
                ctime: self.ctime,
            },
        )
    }
}

/// Removes the socket file on drop if it is still the one we created.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    ino: u64,
    ctime: (i64, i64),
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.ino == 0 {
            return;
        }
        // Inode numbers get reused at once on some filesystems: also require a socket
        // whose status change is no newer than ours.
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && meta.file_type().is_socket()
            && meta.ino() == self.ino
            && (meta.ctime(), meta.ctime_nsec()) == self.ctime
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The uid of the process at the other end of a connection, as tonic records it.
pub fn peer_uid<T>(req: &tonic::Request<T>) -> Option<u32> {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

/// gRPC interceptor run on every call: only the daemon's own user may talk to it. The
/// socket's 0600 mode already keeps others out; this also covers root-owned tricks such as
/// a socket handed to another user's process.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn check_peer(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    // Read once: the daemon never changes its uid, and this runs on every call (the peer's
    // credentials themselves are taken once per connection, at accept).
    static ME: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let me = *ME.get_or_init(crate::paths::current_uid);
    match peer_uid(&req) {
        Some(uid) if uid == me => Ok(req),
        Some(uid) => Err(tonic::Status::permission_denied(format!(
            "qwend serves uid {me} only; the caller is uid {uid}"
        ))),
        None => Err(tonic::Status::permission_denied(
            "qwend could not identify the caller's uid",
        )),
    }
}

/// Open a gRPC channel over the socket. Fails fast (no retry) when nothing listens, so the
/// client can decide to start a daemon.
///
/// Every connection, the first and any reconnect, is checked before a byte is written: the
/// socket's directory must pass [`check_socket_dir`] and the process at the other end must
/// run as our own uid. Every request carries the caller's environment, so talking to
/// someone else's socket would hand them our secrets (and let them answer with theirs).
pub async fn connect(path: &Path) -> Result<Channel, TransportError> {
    // Connect once up front: tonic's lazy connector would otherwise turn "no daemon" into
    // a generic transport error on the first call.
    let first = connect_trusted(path).await?;
    let mut first = Some(first);
    let socket = path.to_path_buf();
    // The URI is required by the API but unused: the connector below ignores it.
    // HTTP/2 keep-alive pings bound every call, long-held ones included, to the daemon
    // actually answering: a wedged daemon, or a socket nobody accepts on, fails the call
    // after a few seconds instead of hanging every client forever.
    Endpoint::from_static("http://qwend.local")
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let pre = first.take();
            let socket = socket.clone();
            async move {
                let stream = match pre {
                    Some(s) => s,
                    None => connect_trusted(&socket).await.map_err(io::Error::other)?,
                };
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| TransportError::Channel {
            path: path.to_path_buf(),
            source,
        })
}

/// A raw connection to the socket whose peer is known to be our own uid; nothing has been
/// written to it yet.
pub async fn connect_trusted(path: &Path) -> Result<UnixStream, TransportError> {
    let dir = path
        .parent()
        .ok_or_else(|| TransportError::NoParent(path.to_path_buf()))?;
    check_socket_dir(dir)?;
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| TransportError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    verify_peer(&stream, path)?;
    Ok(stream)
}

/// The peer's credentials as the kernel recorded them when it connected us
/// (`SO_PEERCRED` on Linux, `getpeereid` on the BSDs and macOS, via tokio).
fn verify_peer(stream: &UnixStream, path: &Path) -> Result<(), TransportError> {
    let me = crate::paths::current_uid();
    let cred = stream
        .peer_cred()
        .map_err(|source| TransportError::PeerUnknown {
            path: path.to_path_buf(),
            source,
        })?;
    if cred.uid() != me {
        return Err(TransportError::PeerNotOwned {
            path: path.to_path_buf(),
            peer: cred.uid(),
            me,
        });
    }
    Ok(())
}

/// The pid of the daemon that serves `socket`, from the lock file beside it, while that
/// daemon holds the lock (alive, even if stopped or stuck); `None` when no process holds
/// it (none runs, or it died: a killed daemon's pid stays in the file).
///
/// Takes a shared lock for an instant to find out, so a daemon starting at that very
/// moment may report "already running (pid unknown)"; use it where something already
/// went wrong, not on every call.
pub fn daemon_pid(socket: &Path) -> Option<u32> {
    match lock_holder(&crate::paths::lock_path_for(socket)) {
        LockHolder::Held { pid } => pid,
        LockHolder::Free => None,
    }
}

/// Who holds a daemon lock file (see [`daemon_pid`] for the caveat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHolder {
    /// No process holds it (or it cannot be opened).
    Free,
    /// A live process holds it; `pid` as recorded in the file, when it is readable.
    Held { pid: Option<u32> },
}

pub fn lock_holder(lock: &Path) -> LockHolder {
    let Ok(mut file) = File::open(lock) else {
        return LockHolder::Free;
    };
    match file.try_lock_shared() {
        // We got it, so nobody holds it exclusively (dropping the file releases ours).
        Ok(()) => LockHolder::Free,
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            LockHolder::Held { pid }
        }
        Err(fs::TryLockError::Error(_)) => LockHolder::Free,
    }
}

const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether a connect error means "no daemon is there" (as opposed to, say, EACCES).
pub fn is_not_running(err: &TransportError) -> bool {
    match err {
        TransportError::Connect { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ),
        TransportError::Channel { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_is_created_0700() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn open_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("open");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure_private_dir(&d).unwrap_err();
        assert!(matches!(e, TransportError::DirTooOpen { .. }), "{e}");
        assert!(e.to_string().contains("chmod 700"));
    }

    #[test]
    fn a_symlinked_dir_is_refused_even_to_a_private_target() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        ensure_private_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for e in [
            check_socket_dir(&link).unwrap_err(),
            ensure_private_dir(&link).unwrap_err(),
        ] {
            assert!(matches!(e, TransportError::DirIsSymlink { .. }), "{e}");
            assert!(e.is_untrusted());
        }
        // Dangling, too: the daemon must not create the target.
        let dangling = t.path().join("dangling");
        std::os::unix::fs::symlink(t.path().join("nowhere"), &dangling).unwrap();
        let e = ensure_private_dir(&dangling).unwrap_err();
        assert!(matches!(e, TransportError::DirIsSymlink { .. }), "{e}");
        assert!(!t.path().join("nowhere").exists());
    }

    #[test]
    fn second_lock_reports_pid() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.lock");
        let held = DaemonLock::acquire(&p).unwrap();
        let e = DaemonLock::acquire(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("already running (pid {})", std::process::id())
        );
        drop(held);
        DaemonLock::acquire(&p).unwrap();
    }

    #[test]
    fn lock_release_is_seen_when_the_holder_goes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.lock");
        let short = std::time::Duration::from_millis(50);
        assert!(
            wait_for_lock_release(&p, short).unwrap(),
            "no file: nothing holds it"
        );
        let held = DaemonLock::acquire(&p).unwrap();
        assert!(!wait_for_lock_release(&p, short).unwrap());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                wait_for_lock_release(&p, std::time::Duration::from_secs(30))
            })
        };
        drop(held);
        assert!(waiter.join().unwrap().unwrap());
    }

    #[tokio::test]
    async fn bind_replaces_stale_file_and_guard_removes_only_ours() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        ensure_private_dir(&dir).unwrap();
        let sock = dir.join("s.sock");
        fs::write(&sock, b"stale").unwrap();
        let bound = BoundSocket::bind(&sock).unwrap();
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (listener, guard) = bound.into_parts();
        drop(listener);
        // Someone else's file now sits at the path: the guard must leave it alone.
        fs::remove_file(&sock).unwrap();
        fs::write(&sock, b"other").unwrap();
        drop(guard);
        assert!(sock.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_never_answers_fails_the_call_instead_of_hanging() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("private");
        ensure_private_dir(&dir).unwrap();
        let p = dir.join("mute.sock");
        // Bound and listening, but nobody ever accepts: the kernel completes the connect.
        let _mute = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let channel = connect(&p).await.unwrap();
        let mut client = crate::api::daemon_client::DaemonClient::new(channel);
        let status = client
            .status(crate::api::StatusRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }

    #[tokio::test]
    async fn connect_to_nothing_is_not_running() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("private");
        ensure_private_dir(&dir).unwrap();
        let e = connect(&dir.join("none.sock")).await.unwrap_err();
        assert!(is_not_running(&e), "{e}");
        // No directory at all: still "not running" (the daemon creates it).
        let e = connect(&t.path().join("absent/none.sock"))
            .await
            .unwrap_err();
        assert!(is_not_running(&e), "{e}");
    }

    #[test]
    fn a_writable_parent_without_sticky_bit_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("shared");
        fs::create_dir(&parent).unwrap();
        let dir = parent.join("qwend");
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_socket_dir(&dir).unwrap_err();
        assert!(matches!(e, TransportError::ParentWritable { .. }), "{e}");
        assert!(e.is_untrusted());
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o1777)).unwrap();
        check_socket_dir(&dir).unwrap();
        ensure_private_dir(&dir).unwrap();
        check_socket_dir(&dir).unwrap();
    }
}
