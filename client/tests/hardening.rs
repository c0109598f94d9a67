//! What the daemon guarantees about the files it reads and about its own process
//! (docs/hardening.md), through the real binaries: hostile files (a FIFO `.env` or
//! `oauth_creds.json`) cannot hang requests or the daemon's exit, the daemon cannot dump
//! core, holds none of its caller's descriptors, leaves the caller's session and directory,
//! and temp files holding tokens do not outlive a logout or a restart.
mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Far longer than any of these commands takes, far shorter than forever.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion (stdout and stderr collected to EOF), failing the test if that
/// takes longer than `deadline`; the process is killed then.
fn output_within(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish (with its output closed) within {deadline:?}");
        }
    }
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Waits until `path` no longer exists, woken by inotify on its directory.
fn wait_removed(path: &Path, deadline: Duration) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    inotify::add_watch(
        &fd,
        path.parent().unwrap(),
        WatchFlags::DELETE | WatchFlags::MOVED_FROM,
    )
    .unwrap();
    let end = Instant::now() + deadline;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    // Checked after arming the watch, so a removal in between is not missed.
    while path.exists() {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{} was never removed", path.display());
        let timeout = Timespec::try_from(left).unwrap();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&timeout));
        let mut reader = inotify::Reader::new(&fd, &mut buf);
        while reader.next().is_ok() {}
    }
}

#[test]
fn a_fifo_env_answers_at_once_and_other_projects_are_served() {
    let env = TestEnv::new();
    let stuck = env.root.path().join("stuck");
    mkfifo(&stuck.join(".env"));
    let fine = env.root.path().join("fine");
    std::fs::create_dir_all(&fine).unwrap();
    std::fs::write(fine.join(".env"), "FINE_KEY=1\n").unwrap();
    let pid = env.daemon_pid();

    // Many at once: before the fix each one parked a daemon thread forever.
    let stuck_runs: Vec<_> = (0..40)
        .map(|_| {
            let mut cmd = env.qwen_cmd(&["env", "--json", "--cwd"]);
            cmd.arg(&stuck);
            std::thread::spawn(move || output_within(cmd, DEADLINE))
        })
        .collect();
    let mut cmd = env.qwen_cmd(&["env", "--json", "--cwd"]);
    cmd.arg(&fine);
    let out = output_within(cmd, DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vars"]["FINE_KEY"], "1", "{v}");
    for run in stuck_runs {
        let out = run.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["file"],
            stuck.join(".env").display().to_string(),
            "the FIFO still ends the walk"
        );
        assert_eq!(v["vars"], serde_json::json!({}));
        assert!(text(&out.stderr).contains("FIFO"), "{}", text(&out.stderr));
    }
    let out = output_within(env.qwen_cmd(&["auth", "status", "--json"]), DEADLINE);
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 3),
        "{}",
        text(&out.stderr)
    );
    let out = output_within(env.qwen_cmd(&["daemon", "stop"]), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_gone(pid, Duration::from_secs(10), "the stopped daemon");
}

#[test]
fn a_fifo_oauth_creds_file_does_not_hang_status_or_stop() {
    let env = TestEnv::new();
    mkfifo(&env.home.join(".qwen").join("oauth_creds.json"));
    // The daemon reads it at start-up and on every status.
    let out = output_within(env.qwen_cmd(&["auth", "status", "--json"]), DEADLINE);
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 3),
        "{}",
        text(&out.stderr)
    );
    let pid = env.daemon_pid();
    let out = output_within(env.qwen_cmd(&["daemon", "stop"]), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_gone(pid, Duration::from_secs(10), "the stopped daemon");
    assert!(
        env.log().contains("FIFO, not a regular file"),
        "the log names the problem:\n{}",
        env.log()
    );
}

/// A blocking job that runs long (here: waiting ~30 s for an `oauth_creds.lock` that
/// "Qwen Code" holds) must not keep a stopped daemon alive: its exit does not wait for it.
#[test]
fn stop_ends_the_daemon_while_a_blocking_job_is_stuck() {
    let env = TestEnv::new();
    let qwen = env.home.join(".qwen");
    std::fs::create_dir_all(&qwen).unwrap();
    std::fs::write(qwen.join("oauth_creds.lock"), "qwen-code-uuid").unwrap();
    let pid = env.daemon_pid();
    // Both bounds well under the ~30 s the lock wait takes (and the 35 s after which the
    // lock goes stale): `stop` returns once the daemon released its daemon lock, which
    // it does only after its runtime is down.
    let out = output_within(env.qwen_cmd(&["daemon", "stop"]), Duration::from_secs(15));
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_gone(pid, Duration::from_secs(10), "the stopped daemon");
}

#[test]
fn a_regular_env_over_a_mib_loads() {
    let env = TestEnv::new();
    let proj = env.root.path().join("big");
    std::fs::create_dir_all(&proj).unwrap();
    let mut body = format!("PAD={}\n", "x".repeat(3 * 1024 * 1024));
    body.push_str("AFTER_PAD=yes\n");
    std::fs::write(proj.join(".env"), body).unwrap();
    let mut cmd = env.qwen_cmd(&["env", "--json", "--cwd"]);
    cmd.arg(&proj);
    let out = output_within(cmd, DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vars"]["AFTER_PAD"], "yes");
}

/// Runs `program` as our own uid without capabilities: as root, through setpriv (an
/// ordinary user has none anyway). Root's capabilities would decide /proc access by
/// themselves; without them only the target's dumpable flag does.
fn capless(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let mut c = Command::new("setpriv");
    c.args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(program);
    c
}

fn can_read_environ(pid: u32) -> bool {
    capless("cat")
        .arg(format!("/proc/{pid}/environ"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cat (and, as root, setpriv from util-linux) is needed")
        .success()
}

#[test]
fn the_daemon_has_no_core_size_and_is_not_dumpable() {
    let env = TestEnv::new();
    // Started without capabilities, and with unlimited cores allowed by its caller.
    let mut cmd = capless("sh");
    env.apply(&mut cmd);
    cmd.args([
        "-c",
        r#"ulimit -c unlimited 2>/dev/null; exec "$0" daemon status --json"#,
    ])
    .arg(qwen_bin());
    let out = output_within(cmd, DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["pid"].as_u64().unwrap() as u32;

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");

    // Not dumpable: a process of the same uid and capabilities cannot read its
    // environment (the kernel's ptrace access check), while it can read that of an
    // ordinary process started the same way.
    let mut control = capless("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let control_pid = control.id();
    // setpriv execs cat: wait until the pid runs cat, not setpriv, before probing.
    let end = Instant::now() + DEADLINE;
    while std::fs::read_to_string(format!("/proc/{control_pid}/comm")).unwrap_or_default()
        != "cat\n"
    {
        assert!(Instant::now() < end, "the control process never became cat");
        std::thread::yield_now();
    }
    let control_readable = can_read_environ(control_pid);
    drop(control.stdin.take());
    control.wait().unwrap();
    assert!(control_readable, "the probe must be able to succeed");
    assert!(
        !can_read_environ(pid),
        "the daemon's /proc/{pid}/environ was readable"
    );
}

fn session_of(pid: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    after.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_detached_daemon_keeps_no_fd_session_or_directory_of_its_caller() {
    let env = TestEnv::new();
    let project = env.root.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let marker = project.join("marker");
    std::fs::write(&marker, "x").unwrap();
    // `$(qwen daemon status)` with more descriptors open than stdout: fd 5 is another
    // copy of the pipe the caller reads to EOF, fd 7 a file in the project.
    let mut cmd = Command::new("sh");
    env.apply(&mut cmd);
    cmd.current_dir(&project)
        .args(["-c", r#"exec "$0" daemon status --json 5>&1 7<"$1""#])
        .arg(qwen_bin())
        .arg(&marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let pipe = format!("pipe:[{}]", rustix::fs::fstat(&stdout).unwrap().st_ino);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let Ok(json) = rx.recv_timeout(DEADLINE) else {
        let _ = child.kill();
        panic!("the caller's pipe never reached EOF: the daemon holds a copy of it");
    };
    assert!(child.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pid = v["pid"].as_u64().unwrap() as u32;

    // Its own session (it leads it), not the caller's.
    // From /proc for both: in a container whose session leader lives outside our pid
    // namespace the test's own session id is 0, which rustix's getsid cannot return.
    let session = session_of(&pid.to_string());
    let ours = session_of("self");
    assert_ne!(session, ours, "the daemon stayed in the caller's session");
    assert_eq!(session, pid, "the daemon leads its own session");

    // In CI (root) every check runs; a developer's unprivileged run cannot look into a
    // non-dumpable process's /proc entries, and says so.
    if !require_root("reading /proc of a non-dumpable process: its cwd and descriptors") {
        return;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, PathBuf::from("/"));
    let fds: Vec<(String, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            Some((
                e.file_name().into_string().ok()?,
                std::fs::read_link(e.path()).ok()?,
            ))
        })
        .collect();
    for (fd, target) in &fds {
        assert_ne!(target, &marker, "fd {fd} is the caller's file: {fds:?}");
        assert_ne!(
            target.to_string_lossy(),
            pipe,
            "fd {fd} is the caller's pipe: {fds:?}"
        );
        assert!(
            !target.starts_with(&project),
            "fd {fd} is in the caller's project: {fds:?}"
        );
    }
}

#[test]
fn foreground_logs_have_no_colours_in_a_pipe() {
    let env = TestEnv::new();
    let mut child = env
        .qwend_cmd(&["--foreground"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("qwend serving");
        seen.push(line);
        if done {
            break;
        }
    }
    kill(child.id(), "TERM");
    seen.extend(lines.map_while(Result::ok));
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("qwend serving")), "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI escapes in a pipe: {seen:?}"
    );
}

fn temp_files(env: &TestEnv) -> [PathBuf; 2] {
    [
        env.home
            .join(".qwen")
            .join("oauth_creds.json.qwend-0123456789abcdef.tmp"),
        env.state
            .join("credentials")
            .join("credentials.json.qwend-fedcba9876543210.tmp"),
    ]
}

fn leave_temp_files(env: &TestEnv) {
    for p in temp_files(env) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, r#"{"refresh_token":"SECRET-REFRESH"}"#).unwrap();
    }
}

#[test]
fn temp_files_of_interrupted_writes_go_at_start_up_and_at_logout() {
    let env = TestEnv::new();
    // Left by a daemon killed mid-write, just now.
    leave_temp_files(&env);
    env.status();
    for p in temp_files(&env) {
        wait_removed(&p, DEADLINE);
    }
    leave_temp_files(&env);
    let out = output_within(env.qwen_cmd(&["auth", "logout"]), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for p in temp_files(&env) {
        assert!(!p.exists(), "{} survived the logout", p.display());
    }
}
