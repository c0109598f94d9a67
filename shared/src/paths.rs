//! Where things live. Every location has an environment override so tests (and unusual
//! setups) can move it; the defaults are the documented ones.
use std::path::{Path, PathBuf};

pub const ENV_SOCKET: &str = "QWEND_SOCKET";
pub const ENV_STATE_DIR: &str = "QWEND_STATE_DIR";
pub const ENV_QWEN_HOME: &str = "QWEN_HOME";
pub const ENV_DAEMON_BIN: &str = "QWEND_BIN";

const SOCKET_NAME: &str = "qwend.sock";

/// The socket path: `QWEND_SOCKET`, else `$XDG_RUNTIME_DIR/qwend/qwend.sock`, else
/// `<tmp>/qwend-<uid>/qwend.sock` (the tmux convention: a per-user 0700 directory in the
/// system's runtime area, so every process of one user finds the same daemon no matter
/// which `HOME` it was started with).
///
/// A relative `QWEND_SOCKET` is taken relative to the current directory and made absolute
/// here, once: the client hands the path to the daemon it starts, and the daemon leaves
/// its start directory.
pub fn socket_path() -> PathBuf {
    socket_path_from(|k| std::env::var_os(k).map(PathBuf::from))
}

fn socket_path_from(var: impl Fn(&str) -> Option<PathBuf>) -> PathBuf {
    if let Some(p) = var(ENV_SOCKET).filter(|p| !p.as_os_str().is_empty()) {
        return absolute(p);
    }
    if let Some(rt) = var("XDG_RUNTIME_DIR").filter(|p| p.is_absolute()) {
        return rt.join("qwend").join(SOCKET_NAME);
    }
    let tmp = var("TMPDIR")
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    tmp.join(format!("qwend-{}", current_uid()))
        .join(SOCKET_NAME)
}

/// The uid this process runs as: the socket's default place is per user, and the
/// transport serves and trusts only this uid.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// `p` made absolute against the current directory (lexically: `..` and symlinks are
/// left for the kernel). Kept as given when the current directory is gone; the socket
/// directory check then reports what is wrong with it.
pub fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    std::path::absolute(&p).unwrap_or(p)
}

/// The lock file that makes one daemon per socket: it sits beside the socket.
pub fn lock_path_for(socket: &Path) -> PathBuf {
    let mut name = socket
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| SOCKET_NAME.into());
    name.push(".lock");
    socket.with_file_name(name)
}

/// The daemon's state directory (quota ledger, logs): `QWEND_STATE_DIR`, else the
/// platform's state (or local data) directory for `qwend`.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_STATE_DIR).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let dirs = directories::ProjectDirs::from("", "", "qwend")?;
    Some(
        dirs.state_dir()
            .unwrap_or_else(|| dirs.data_local_dir())
            .to_path_buf(),
    )
}

/// Qwen Code's home (`settings.json`, `oauth_creds.json`): `QWEN_HOME`, else `~/.qwen`.
pub fn qwen_home() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_QWEN_HOME).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::BaseDirs::new().map(|b| b.home_dir().join(".qwen"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> PathBuf {
        let m: HashMap<String, PathBuf> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        socket_path_from(|k| m.get(k).cloned())
    }

    #[test]
    fn explicit_socket_wins() {
        assert_eq!(
            with(&[
                ("QWEND_SOCKET", "/x/s.sock"),
                ("XDG_RUNTIME_DIR", "/run/user/1")
            ]),
            PathBuf::from("/x/s.sock")
        );
    }

    #[test]
    fn relative_socket_is_resolved_against_the_cwd() {
        let p = with(&[("QWEND_SOCKET", "relative.sock")]);
        assert_eq!(p, std::env::current_dir().unwrap().join("relative.sock"));
        assert!(lock_path_for(&p).parent().unwrap().is_absolute());
    }

    #[test]
    fn xdg_runtime_dir_next() {
        assert_eq!(
            with(&[("XDG_RUNTIME_DIR", "/run/user/1")]),
            PathBuf::from("/run/user/1/qwend/qwend.sock")
        );
    }

    #[test]
    fn relative_runtime_dir_is_ignored_and_tmp_is_per_uid() {
        let p = with(&[("XDG_RUNTIME_DIR", "relative")]);
        let uid = current_uid();
        assert_eq!(p, PathBuf::from(format!("/tmp/qwend-{uid}/qwend.sock")));
        let p = with(&[("TMPDIR", "/var/tmp")]);
        assert_eq!(p, PathBuf::from(format!("/var/tmp/qwend-{uid}/qwend.sock")));
    }

    #[test]
    fn lock_sits_beside_socket() {
        assert_eq!(
            lock_path_for(Path::new("/a/b/qwend.sock")),
            PathBuf::from("/a/b/qwend.sock.lock")
        );
    }
}
