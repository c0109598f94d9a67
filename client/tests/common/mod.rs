//! Test harness: each test gets its own temp HOME, socket dir and state dir, and runs the
//! real `qwen` and `qwend` binaries against them. Never the machine's real `~/.qwen`.
#![allow(dead_code)]

#[path = "../../../daemon/src/oauth/mock.rs"]
pub mod oauth_mock;
pub mod openai_mock;
pub mod pty;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// More variables for every spawned process (and so for the daemon it starts).
    pub vars: Vec<(String, String)>,
    /// Secrets planted by hand or by a mock, searched for when the environment is dropped.
    planted: Mutex<Vec<secrets::Planted>>,
    /// Output the test captured (what, text), searched too.
    captured: Mutex<Vec<(String, String)>>,
}

/// `QWEN_LOG` for every daemon the tests start: everything at trace, for the secret scan
/// (tests/common/secrets.rs), except the HTTP/2 and gRPC plumbing's frame-by-frame trace
/// (which logs frame metadata, never header values or bodies): at that volume the daemon
/// of a 1,000-caller test misses its clients' 3 s keep-alive. `QWEND_TEST_LOG` overrides.
pub const TEST_LOG: &str = "trace,h2=debug,hyper=debug,hyper_util=debug,tower=debug,tonic=debug";

pub fn log_filter() -> String {
    std::env::var("QWEND_TEST_LOG").unwrap_or_else(|_| TEST_LOG.to_string())
}

pub fn qwen_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qwen"))
}

/// The `qwend` binary beside `qwen`. `cargo test` builds only this package's binaries, so
/// the first caller builds the daemon (same profile, same target dir) with the cargo that
/// runs the tests: never a stale binary from an earlier build.
pub fn qwend_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let p = qwen_bin().with_file_name("qwend");
    BUILT.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "qwend", "--bin", "qwend"]);
        // What cargo sets for this test process is no input of the build, but build
        // scripts watch some of it (ring: CARGO_MANIFEST_DIR): passed on, every build from a
        // shell and from a test would invalidate the other's.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = ["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_MANIFEST_"]
                .iter()
                .any(|p| key.starts_with(p))
                || matches!(
                    &*key,
                    "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                );
            if set_for_tests {
                cmd.env_remove(&*key);
            }
        }
        if p.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cannot run cargo to build qwend");
        assert!(
            out.status.success(),
            "building qwend failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

impl TestEnv {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("qwend-test")
            .tempdir()
            .unwrap();
        let home = root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Self {
            socket: root.path().join("run").join("qwend.sock"),
            state: root.path().join("state"),
            home,
            root,
            vars: Vec::new(),
            planted: Mutex::default(),
            captured: Mutex::default(),
        }
    }

    pub fn with_var(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.push((key.to_string(), value.into()));
        self
    }

    /// Environment every spawned process gets: nothing from the developer's session that
    /// could point at a real daemon or a real home.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("QWEND_SOCKET", &self.socket)
            .env("QWEND_STATE_DIR", &self.state)
            .env("QWEND_BIN", qwend_bin())
            // The most the daemon can log, all of it searched for secrets on drop.
            .env("QWEN_LOG", log_filter())
            // No session bus in tests: the file backend, without a keyring probe.
            .env("QWEN_CREDENTIAL_STORE", "file")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
    }

    pub fn qwen_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(qwen_bin());
        self.apply(&mut c);
        c.args(args);
        c
    }

    /// Runs `qwen`; its stderr is kept for the secret scan (stdout may hold a secret on
    /// purpose: `qwen auth token` prints one).
    pub fn qwen(&self, args: &[&str]) -> Output {
        let out = self.qwen_cmd(args).output().unwrap();
        self.capture(
            &format!("the stderr of `qwen {}`", args.join(" ")),
            &out.stderr,
        );
        out
    }

    /// Keeps `output` for the secret scan at drop, named `what` in a report.
    pub fn capture(&self, what: &str, output: &[u8]) {
        if !output.is_empty() {
            self.captured
                .lock()
                .unwrap()
                .push((what.to_string(), text(output)));
        }
    }

    /// Forgets the output captured so far (a test that leaked on purpose, then cleaned up).
    pub fn forget_captured(&self) {
        self.captured.lock().unwrap().clear();
    }

    /// A secret this test put somewhere (or a mock handed out): its logs and captured
    /// output must never show it. `kind` names it in a report; the value is never printed.
    pub fn plant(&self, kind: &str, secret: &str) {
        secrets::push(&mut self.planted.lock().unwrap(), kind, secret);
    }

    /// Every secret known now: planted ones, the variables given to every process, and
    /// those in the test's `.env`, settings and credential files.
    pub fn planted(&self) -> Vec<secrets::Planted> {
        let mut all = self.planted.lock().unwrap().clone();
        for (k, v) in &self.vars {
            if secrets::secret_name(k) {
                secrets::push(&mut all, "API key given in the environment", v);
            }
        }
        secrets::from_files(self.root.path(), &mut all);
        all
    }

    /// What the scan at drop would report: one line per secret found in a log under the
    /// test's root or in captured output, each naming the kind and never the secret.
    pub fn secret_leaks(&self) -> Vec<String> {
        let planted = self.planted();
        let mut leaks = Vec::new();
        for log in secrets::logs(self.root.path()) {
            let body =
                String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            let name = log.strip_prefix(self.root.path()).unwrap_or(&log);
            leaks.extend(secrets::scan(
                &format!("the log {}", name.display()),
                &body,
                &planted,
            ));
        }
        for (what, body) in self.captured.lock().unwrap().iter() {
            leaks.extend(secrets::scan(what, body, &planted));
        }
        leaks
    }

    pub fn qwend_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(qwend_bin());
        self.apply(&mut c);
        c.args(args);
        c
    }

    /// `qwen daemon status --json`, which starts the daemon if needed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.qwen(&["daemon", "status", "--json"]);
        assert!(out.status.success(), "status failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn daemon_pid(&self) -> u32 {
        self.status()["pid"].as_u64().unwrap() as u32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("qwend.log")).unwrap_or_default()
    }
}

impl Drop for TestEnv {
    /// Stops the daemon (so its log is complete), then fails the test if a planted secret
    /// shows up in a log or captured output. Not while the test is failing already: a
    /// second panic would abort the run and hide the first.
    fn drop(&mut self) {
        if self.socket.exists() {
            let _ = self.qwen_cmd(&["daemon", "stop"]).output();
        }
        if std::thread::panicking() {
            return;
        }
        let started = Instant::now();
        let leaks = self.secret_leaks();
        if std::env::var_os("QWEND_TEST_SCAN_STATS").is_some() {
            // What the scan costs, for docs: QWEND_TEST_SCAN_STATS=1 cargo test -- --nocapture
            let bytes: u64 = secrets::logs(self.root.path())
                .iter()
                .filter_map(|l| std::fs::metadata(l).ok())
                .map(|m| m.len())
                .sum();
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "secret scan: {} secrets, {bytes} bytes of logs, {:?}",
                self.planted().len(),
                started.elapsed()
            );
        }
        assert!(
            leaks.is_empty(),
            "secret scan: {} leak(s) at trace level:\n{}",
            leaks.len(),
            leaks.join("\n")
        );
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn kill(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{signal} {pid} failed");
}

/// Whether any thread of a process is still alive. The main thread of a killed
/// multi-threaded process turns zombie before its other threads have exited (and they hold
/// its file descriptors, sockets included), so every thread is checked.
pub fn alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit_once(')')?.1.trim_start().chars().next()?;
                Some(!matches!(state, 'Z' | 'X'))
            })
            .unwrap_or(false)
    })
}

/// A test environment whose daemon talks OAuth to a local mock authorization server
/// (running on its own runtime while the test thread blocks).
pub struct Setup {
    pub rt: tokio::runtime::Runtime,
    pub mock: oauth_mock::MockServer,
    pub env: TestEnv,
}

impl Drop for Setup {
    /// Hands the mock's record of what it issued and received to the environment's secret
    /// scan, which runs when `env` is dropped right after this.
    fn drop(&mut self) {
        for (kind, value) in self.mock.secrets() {
            self.env.plant(kind, &value);
        }
    }
}

pub fn oauth_setup(vars: &[(&str, &str)]) -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(oauth_mock::MockServer::start());
    let mut env = TestEnv::new().with_var("QWEN_OAUTH_BASE_URL", mock.base_url());
    for (k, v) in vars {
        env = env.with_var(k, *v);
    }
    Setup { rt, mock, env }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits until `done` holds for the contents of `path` (read as text; "" while missing),
/// woken by inotify on its directory: no sleeping. Panics after a minute (a broken build).
pub fn wait_for_file(path: &Path, done: impl Fn(&str) -> bool) -> String {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    inotify::add_watch(
        &fd,
        dir,
        WatchFlags::MODIFY | WatchFlags::CREATE | WatchFlags::CLOSE_WRITE | WatchFlags::MOVED_TO,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    loop {
        // Read after arming the watch, so a change in between is not missed.
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "{} never got there:\n{text}",
            path.display()
        );
        let timeout = Timespec::try_from(left).unwrap();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&timeout));
        let mut reader = inotify::Reader::new(&fd, &mut buf);
        while reader.next().is_ok() {}
    }
}

/// The keys of a pretty-printed flat JSON object, in file order (serde_json would sort or
/// keep them only with a feature; the order itself is what Qwen Code's layouts differ in).
pub fn top_level_keys(pretty: &str) -> Vec<&str> {
    pretty
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .collect()
}

/// Whether a missing tool must fail the test rather than skip it: in CI (`CI` set to
/// anything but empty, `0` or `false`, as every CI service does) or when a developer asks
/// for it with `QWEND_REQUIRE_ALL=1`.
pub fn must_have_everything() -> bool {
    ["CI", "QWEND_REQUIRE_ALL"].iter().any(|k| {
        std::env::var(k)
            .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
    })
}

/// The one rule for a test that needs something the machine may lack: `present` says
/// whether it is there. Missing, the test fails in CI (see [`must_have_everything`]) with
/// `what` and how to get it, and otherwise prints one line and returns false, so the test
/// returns without checking anything. Use as `if !require(..) { return; }`.
pub fn require(what: &str, present: bool, hint: &str) -> bool {
    if present {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    assert!(
        !must_have_everything(),
        "{test} needs {what} ({hint}); CI or QWEND_REQUIRE_ALL makes that a failure, not a skip"
    );
    // Straight to stderr, past the test harness's capture: a skip is seen without
    // --nocapture, one line.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped {test}: needs {what} ({hint})");
    false
}

/// Whether `program` runs (`program <arg>` exits 0).
pub fn runs(program: impl AsRef<std::ffi::OsStr>, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// [`require`] for a program on PATH, checked by running `program --version`.
pub fn require_program(program: &str, hint: &str) -> bool {
    require(program, runs(program, "--version"), hint)
}

/// [`require`] for root (a second uid through setpriv, /proc of a non-dumpable process).
pub fn require_root(why: &str) -> bool {
    require(
        &format!("root ({why})"),
        is_root(),
        "run the tests as root, as CI does",
    )
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("client/ sits in the workspace")
        .to_path_buf()
}

/// The Python that `.ci/run` installs the tests' packages into (`QWEND_TEST_PYTHON`
/// overrides), if it can import every one of `modules`; the test fails in CI otherwise.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let python = std::env::var_os("QWEND_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/plugin-py/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        &format!(
            "{} with the Python modules {}",
            python.display(),
            modules.join(", ")
        ),
        ok,
        ".ci/run installs them into target/plugin-py",
    )
    .then_some(python)
}

/// The `node_modules` that `.ci/run` installs the tests' Node packages into
/// (`QWEND_TEST_NODE_MODULES` overrides), if node runs and every one of `packages` is there.
pub fn node_modules_with(packages: &[&str]) -> Option<PathBuf> {
    let modules = std::env::var_os("QWEND_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/plugin-node/node_modules"));
    let ok = runs("node", "--version") && packages.iter().all(|p| modules.join(p).is_dir());
    require(
        &format!("node and {} in {}", packages.join(", "), modules.display()),
        ok,
        ".ci/run installs them into target/plugin-node",
    )
    .then_some(modules)
}

/// Waits until every thread of process `pid` has exited (it may be a zombie: it runs no
/// more and holds no descriptors), at most `deadline`, and panics naming `what` after that.
/// Works for any process, our child or not. On Linux the wait is a poll on a pidfd, which
/// the kernel wakes when the last thread is gone; elsewhere (or without pidfds) /proc is
/// polled until the deadline.
pub fn wait_gone(pid: u32, deadline: Duration, what: &str) {
    let end = Instant::now() + deadline;
    let give_up = || -> Duration {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what} (pid {pid}) still runs {deadline:?} after it should have ended"
        );
        left
    };
    #[cfg(target_os = "linux")]
    {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use rustix::process::{Pid, PidfdFlags, pidfd_open};
        let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => {
                while alive(pid) {
                    let timeout = Timespec::try_from(give_up()).unwrap();
                    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                    if poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
                        // Readable: the kernel says the whole thread group is gone.
                        return;
                    }
                }
                return;
            }
            Err(rustix::io::Errno::SRCH) => return,
            Err(_) => {}
        }
    }
    while alive(pid) {
        give_up();
        std::thread::yield_now();
    }
}

/// A client that refused to talk to a socket: exit 5, nothing on stdout, and a message
/// that names each of `must_name` (the path, its owner, the mode...).
pub fn assert_refused(out: &Output, what: &str, must_name: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{what}: {err}");
    assert!(
        out.stdout.is_empty(),
        "{what}: printed {}",
        text(&out.stdout)
    );
    for s in must_name {
        assert!(
            err.contains(s),
            "{what}: the message should name {s:?}: {err}"
        );
    }
}
