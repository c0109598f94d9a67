//! Socket activation without systemd: the test binds the socket and execs `qwend` with the
//! listener on fd 3 and `LISTEN_FDS`/`LISTEN_PID` set, exactly as systemd does.
mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};

use common::*;

fn activated_daemon(env: &TestEnv, extra: &[&str]) -> (UnixListener, Child) {
    qwend_shared::transport::ensure_private_dir(env.socket.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&env.socket).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    env.apply(&mut cmd);
    // `exec` keeps the shell's pid, so $$ is the pid qwend will have: LISTEN_PID must match.
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=qwend.sock exec "$0" --foreground "$@""#)
        .arg(qwend_bin())
        .args(extra)
        .stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the new descriptor; when fd is already 3, clear it.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    (listener, child)
}

#[test]
fn serves_on_the_inherited_socket_and_leaves_it_in_place() {
    let env = TestEnv::new();
    let (_listener, mut child) = activated_daemon(&env, &[]);
    // The first client connects to the already-bound socket: no auto-start happens.
    let s = env.status();
    assert_eq!(s["pid"].as_u64().unwrap() as u32, child.id());
    assert_eq!(s["socket"], env.socket.display().to_string());
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        env.socket.exists(),
        "the service manager's socket must not be unlinked"
    );
}

#[test]
fn idle_timeout_exits_cleanly_once_no_client_is_connected() {
    let env = TestEnv::new();
    let (_listener, mut child) = activated_daemon(&env, &["--idle-timeout", "1"]);
    env.status();
    // Waiting on the child's exit is the event; the daemon's own timer decides when.
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("idle timeout"), "{log}");
    assert!(env.socket.exists());
}
