//! The daemon's lifecycle through the real binaries: auto-start, status, stop, one daemon
//! per socket, stale sockets, concurrent starts, permissions and peer checks.
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::*;

#[test]
fn status_auto_starts_and_reports_the_contract_shape() {
    let env = TestEnv::new();
    assert!(!env.socket.exists());
    let s = env.status();
    assert_eq!(s["running"], true);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["socket"], env.socket.display().to_string());
    assert!(s["pid"].as_u64().unwrap() > 0);
    assert!(s["uptime_s"].is_u64());
    assert!(alive(s["pid"].as_u64().unwrap() as u32));
    // Detached: it logs to the state dir.
    assert!(env.log().contains("qwend serving"), "{}", env.log());
}

#[test]
fn human_status_names_pid_and_socket() {
    let env = TestEnv::new();
    let pid = env.daemon_pid();
    let out = env.qwen(&["daemon", "status"]);
    let s = text(&out.stdout);
    assert!(s.contains(&format!("pid       {pid}")), "{s}");
    assert!(s.contains(&env.socket.display().to_string()), "{s}");
}

#[test]
fn socket_dir_is_0700_and_socket_0600() {
    let env = TestEnv::new();
    env.status();
    assert_eq!(mode(env.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&env.socket), 0o600);
    assert_eq!(mode(&env.state.join("qwend.log")), 0o600);
}

#[test]
fn stop_removes_the_socket_and_the_next_command_starts_a_new_daemon() {
    let env = TestEnv::new();
    let first = env.daemon_pid();
    let out = env.qwen(&["daemon", "stop", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["running"], false);
    assert_eq!(v["pid"], first);
    assert!(!env.socket.exists());
    // stop returns once the daemon released its lock, the last thing it does.
    while alive(first) {
        std::thread::yield_now();
    }
    // Stopping again is not an error.
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("not running"));
    let second = env.daemon_pid();
    assert_ne!(first, second);
}

#[test]
fn second_daemon_on_the_same_socket_is_refused_with_the_pid() {
    let env = TestEnv::new();
    let pid = env.daemon_pid();
    for args in [&["--foreground"][..], &[][..]] {
        let out = env.qwend_cmd(args).output().unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("already running (pid {pid})")),
            "{args:?}: {err}"
        );
    }
    // The first daemon is unharmed.
    assert_eq!(env.daemon_pid(), pid);
}

#[test]
fn stale_socket_of_a_killed_daemon_is_replaced() {
    let env = TestEnv::new();
    let pid = env.daemon_pid();
    kill(pid, "KILL");
    // Reap-free wait: the daemon is not our child, so watch /proc until it is gone.
    while alive(pid) {
        std::thread::yield_now();
    }
    assert!(env.socket.exists(), "kill -9 leaves the socket file behind");
    let new_pid = env.daemon_pid();
    assert_ne!(pid, new_pid);
    assert!(
        env.log().contains("replaced a stale socket"),
        "{}",
        env.log()
    );
}

#[test]
fn twenty_simultaneous_clients_leave_exactly_one_daemon() {
    let env = TestEnv::new();
    let children: Vec<_> = (0..20)
        .map(|_| {
            env.qwen_cmd(&["daemon", "status", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a client failed: {}",
            text(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pids.insert(v["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 1, "several daemons answered: {pids:?}");
    let pid = *pids.iter().next().unwrap() as u32;
    // Every daemon process on this socket is that one.
    let others: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != pid && alive(*p))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).into_owned();
                    c.contains("qwend") && c.contains(&env.socket.display().to_string())
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(others.is_empty(), "extra qwend processes: {others:?}");
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let env = TestEnv::new();
    let mut child = env
        .qwend_cmd(&["--foreground"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Foreground logs to stderr: wait for the line that says it serves.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("qwend serving") {
            break;
        }
    }
    assert!(env.socket.exists());
    kill(child.id(), "TERM");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {rest:?}");
    assert!(!env.socket.exists());
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
}

#[test]
fn an_open_socket_directory_is_refused_with_exit_5() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.qwen(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(5));
    let err = text(&out.stderr);
    assert!(err.contains("chmod 700"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

#[test]
fn a_missing_daemon_binary_exits_5_with_one_line() {
    let env = TestEnv::new();
    let out = env
        .qwen_cmd(&["daemon", "status"])
        .env("QWEND_BIN", env.root.path().join("no-such-qwend"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = text(&out.stderr);
    assert!(err.contains("cannot start the daemon"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"));
}

// The daemon refusing another uid: client/tests/trust.rs (`qwen` itself now refuses to
// talk to another uid's daemon first).
