//! The daemon's lifecycle through the real binaries: auto-start, status, stop, one daemon
//! per socket, stale sockets, concurrent starts, permissions and peer checks.
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

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
    wait_gone(first, Duration::from_secs(30), "the stopped daemon");
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
    wait_gone(pid, Duration::from_secs(30), "the killed daemon");
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

#[test]
fn a_setting_read_at_start_that_differs_gets_one_warning_until_restart() {
    let env = TestEnv::new();
    let first = env.daemon_pid();
    // Same environment: nothing to say.
    let out = env.qwen(&["quota"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("restart"),
        "{}",
        text(&out.stderr)
    );

    let changed = |args: &[&str]| {
        env.qwen_cmd(args)
            .env("QWEND_QUOTA_PER_DAY", "5")
            .env("QWEN_OAUTH_BASE_URL", "http://127.0.0.1:9")
            .output()
            .unwrap()
    };
    let out = changed(&["quota"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {err}");
    for needle in [
        "QWEND_QUOTA_PER_DAY",
        "QWEN_OAUTH_BASE_URL",
        "qwen daemon restart",
        &first.to_string(),
    ] {
        assert!(warnings[0].contains(needle), "{needle}: {err}");
    }
    // The daemon reports what it started with; no warning in JSON output's stdout.
    let s = env.status();
    assert_eq!(
        s["start_settings"]["QWEND_STATE_DIR"],
        env.state.display().to_string()
    );
    assert!(s["start_settings"].get("QWEND_QUOTA_PER_DAY").is_none());

    let out = changed(&["daemon", "restart", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["previous_pid"], first);
    let second = v["pid"].as_u64().unwrap() as u32;
    assert_ne!(second, first);
    assert!(!alive(first));
    // The new daemon has the new settings: the warning is gone, and the quota uses them.
    let out = changed(&["quota", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["day"]["limit"], 5, "{q}");
    // And now the old environment is the one that differs.
    let out = env.qwen(&["quota"]);
    assert!(text(&out.stderr).contains("qwen daemon restart"));
}

/// The readiness probe stays cheap: the start settings come only when asked for.
#[tokio::test]
async fn status_reports_start_settings_only_when_asked() {
    use qwend_shared::api::StatusRequest;
    use qwend_shared::api::daemon_client::DaemonClient;
    let env = TestEnv::new();
    env.status();
    let mut c = DaemonClient::new(qwend_shared::transport::connect(&env.socket).await.unwrap());
    let plain = c
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(plain.start_settings.is_empty(), "{plain:?}");
    assert!(plain.pid > 0);
    let full = c
        .status(StatusRequest {
            include_start_settings: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        full.start_settings.get("QWEND_STATE_DIR"),
        Some(&env.state.display().to_string())
    );
}

#[test]
fn restart_without_a_daemon_starts_one() {
    let env = TestEnv::new();
    let out = env.qwen(&["daemon", "restart"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("was not running"),
        "{}",
        text(&out.stdout)
    );
    assert!(alive(env.daemon_pid()));
}

#[test]
fn stop_ends_a_daemon_that_does_not_answer() {
    let env = TestEnv::new();
    let pid = env.daemon_pid();
    kill(pid, "STOP");
    let out = env
        .qwen_cmd(&["daemon", "stop", "--json"])
        .env("QWEN_STOP_GRACE_MS", "300")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pid"], pid);
    assert_eq!(v["forced"], "SIGTERM");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("not answering"),
        "{err}"
    );
    // stop returned once the lock was released: the process is on its way out.
    wait_gone(pid, Duration::from_secs(30), "the stopped daemon");
    // SIGTERM (with SIGCONT) let it shut down cleanly: the socket is gone.
    assert!(!env.socket.exists());
    assert_ne!(env.daemon_pid(), pid);
}

#[test]
fn stop_kills_a_lock_holder_that_ignores_sigterm() {
    // A stand-in for a daemon wedged beyond SIGTERM: it holds the lock beside the socket,
    // records its pid there like qwend, ignores TERM, and never answers.
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let lock = dir.join("qwend.sock.lock");
    let script =
        r#"trap '' TERM; exec 9>>"$1"; flock -x 9; echo $$ > "$1"; echo ready; exec sleep 600"#;
    let mut holder = std::process::Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let out = env
        .qwen_cmd(&["daemon", "stop"])
        .env("QWEN_STOP_GRACE_MS", "200")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("SIGKILL"),
        "{}",
        text(&out.stdout)
    );
    let status = holder.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
}
