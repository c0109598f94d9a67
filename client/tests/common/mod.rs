//! Test harness: each test gets its own temp HOME, socket dir and state dir, and runs the
//! real `qwen` and `qwend` binaries against them. Never the machine's real `~/.qwen`.
#![allow(dead_code)]

#[path = "../../../daemon/src/oauth/mock.rs"]
pub mod oauth_mock;
pub mod openai_mock;
pub mod pty;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// More variables for every spawned process (and so for the daemon it starts).
    pub vars: Vec<(String, String)>,
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
            .env("QWEN_LOG", "debug")
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

    pub fn qwen(&self, args: &[&str]) -> Output {
        self.qwen_cmd(args).output().unwrap()
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
    fn drop(&mut self) {
        if self.socket.exists() {
            let _ = self.qwen(&["daemon", "stop"]);
        }
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
