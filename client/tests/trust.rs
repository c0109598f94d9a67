//! The client talks only to a daemon of its own uid, in a place nobody else controls
//! (docs/trust.md); a daemon that does not answer is named; the socket path is resolved
//! once. Through the real binaries.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

const NOBODY: u32 = 65534;

/// Tests that need a second uid: only root can run a process as `nobody` (through setpriv).
/// CI runs as root, so there a missing capability is a failure, not a skip.
fn need_root() -> bool {
    require_root("running a process as the user nobody") && require_program("setpriv", "util-linux")
}

/// A Python interpreter the user nobody may run (a pyenv shim under /root is not one).
fn system_python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect(
            "the trust tests need python3 in /usr/bin (or /usr/local/bin) for their fake server",
        )
}

/// A server that impersonates qwend: it listens at `socket` (creating its directory 0700
/// as its own user) and logs every connection and every byte count it receives.
const FAKE_SERVER: &str = r#"
import os, socket, sys, threading
path, log = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def note(line):
    with lock, open(log, "a") as f:
        f.write(line + "\n")
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o666)
s.listen(64)
note("ready")
def serve(c):
    total = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        total += len(b)
        note("data %d" % len(b))
    note("closed %d" % total)
while True:
    c, _ = s.accept()
    note("conn")
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The fake server, run as nobody; killed on drop.
struct Fake {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// World-writable and sticky, like /tmp: where nobody may create its directory.
    public: PathBuf,
}

impl Fake {
    /// Start it at `<public>/<rel>` (`public` is a fresh 1777 directory).
    fn start(rel: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("qwend-trust")
            .tempdir_in("/tmp")
            .unwrap();
        let public = dir.path().to_path_buf();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let script = public.join("fake.py");
        std::fs::write(&script, FAKE_SERVER).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = public.join("fake.log");
        let child = Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(system_python())
            .arg(&script)
            .arg(public.join(rel))
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot run setpriv");
        let fake = Self {
            child,
            log,
            _dir: dir,
            public,
        };
        fake.wait_for(|l| l.contains("ready"));
        fake
    }

    fn wait_for(&self, done: impl Fn(&str) -> bool) -> String {
        wait_for_file(&self.log, done)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three commands that would hand over the caller's environment, or act on the answer.
const COMMANDS: [&[&str]; 3] = [
    &["auth", "token"],
    &["env", "--json"],
    &["exec", "--", "true"],
];

#[test]
fn a_socket_dir_made_by_another_user_gets_nothing() {
    if !need_root() {
        return;
    }
    // XDG_RUNTIME_DIR unset: the fallback is $TMPDIR/qwend-<uid>, which nobody made first.
    let me = rustix::process::getuid().as_raw();
    let fake = Fake::start(&format!("qwend-{me}/qwend.sock"));
    let env = TestEnv::new();
    let dir = fake.public.join(format!("qwend-{me}"));
    for args in COMMANDS {
        let out = env
            .qwen_cmd(args)
            .env_remove("QWEND_SOCKET")
            .env("TMPDIR", &fake.public)
            .output()
            .unwrap();
        assert_refused(
            &out,
            &args.join(" "),
            &[&dir.display().to_string(), "uid 65534"],
        );
    }
    let log = fake.log();
    assert!(
        !log.contains("conn"),
        "the fake server was contacted:\n{log}"
    );
    assert!(
        !env.socket.exists() && !dir.join("qwend.sock.lock").exists(),
        "no daemon may be started in someone else's directory"
    );
}

#[test]
fn a_socket_served_by_another_user_gets_nothing() {
    if !need_root() {
        return;
    }
    let fake = Fake::start("nobody/qwend.sock");
    // The socket now sits in our own private directory, but nobody still serves it (a
    // socket keeps its listener when renamed): only the peer's credentials can tell.
    let env = TestEnv::new();
    std::fs::create_dir(env.socket.parent().unwrap()).unwrap();
    std::fs::set_permissions(
        env.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::rename(fake.public.join("nobody/qwend.sock"), &env.socket).unwrap();
    for (i, args) in COMMANDS.iter().enumerate() {
        let out = env.qwen(args);
        assert_refused(
            &out,
            &args.join(" "),
            &[&env.socket.display().to_string(), "uid 65534 (nobody)"],
        );
        // The fake logs a connection's end once the client has gone: wait for this one.
        fake.wait_for(|l| l.matches("closed").count() > i);
    }
    let log = fake.log();
    assert!(
        !log.contains("data"),
        "the fake server received bytes:\n{log}"
    );
    assert!(
        log.lines().filter(|l| *l == "closed 0").count() >= COMMANDS.len(),
        "{log}"
    );
}

#[test]
fn an_open_socket_dir_is_refused_before_connecting() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.qwen(&["env", "--json"]);
    assert_refused(&out, "qwen env", &[&dir.display().to_string(), "chmod 700"]);
    assert!(!env.socket.exists(), "no daemon was started there");
}

#[test]
fn a_group_writable_runtime_dir_without_sticky_bit_is_refused() {
    let env = TestEnv::new();
    let runtime = env.root.path().join("xdg");
    std::fs::create_dir(&runtime).unwrap();
    let run = |mode: u32| {
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(mode)).unwrap();
        env.qwen_cmd(&["env", "--json"])
            .env_remove("QWEND_SOCKET")
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap()
    };
    for mode in [0o777, 0o770] {
        let out = run(mode);
        assert_refused(
            &out,
            &format!("XDG_RUNTIME_DIR mode {mode:o}"),
            &[&runtime.display().to_string(), "sticky"],
        );
    }
    assert!(
        !runtime.join("qwend").exists(),
        "no daemon was started there"
    );
    // Sticky, like /tmp: others cannot rename our directory away.
    let out = run(0o1777);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let socket = runtime.join("qwend/qwend.sock");
    assert!(socket.exists());
    let stop = env
        .qwen_cmd(&["daemon", "stop"])
        .env("QWEND_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
}

/// Resumes a stopped process, whatever the test's outcome.
struct Resume(u32);
impl Drop for Resume {
    fn drop(&mut self) {
        kill(self.0, "CONT");
    }
}

#[test]
fn a_stopped_daemon_is_named_by_its_pid() {
    let env = TestEnv::new();
    let pid = env.daemon_pid();
    assert_eq!(qwend_shared::transport::daemon_pid(&env.socket), Some(pid));
    kill(pid, "STOP");
    let _resume = Resume(pid);
    // Bounded by the client's HTTP/2 keep-alive (a few seconds), not by a test timer.
    let out = env.qwen(&["env", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("PID {pid}")) && err.contains("not answering"),
        "{err}"
    );
    drop(_resume);
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        qwend_shared::transport::daemon_pid(&env.socket),
        None,
        "no pid once the daemon is gone"
    );
}

#[test]
fn a_relative_socket_path_is_resolved_against_the_cwd() {
    let env = TestEnv::new();
    let cwd = env.root.path().join("project");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::set_permissions(&cwd, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run = |args: &[&str]| {
        env.qwen_cmd(args)
            .env("QWEND_SOCKET", "relative.sock")
            .current_dir(&cwd)
            .output()
            .unwrap()
    };
    let out = run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        Path::new(status["socket"].as_str().unwrap()),
        cwd.join("relative.sock")
    );
    assert!(cwd.join("relative.sock").exists());
    let out = run(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `ResolveEnvRequest` as raw bytes, so a test can send what no well-behaved client would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawResolveEnv {
    #[prost(bytes = "vec", tag = "1")]
    cwd: Vec<u8>,
    /// A map entry's encoding, or garbage.
    #[prost(bytes = "vec", repeated, tag = "2")]
    env_entries: Vec<Vec<u8>>,
}

async fn raw_resolve_env(channel: tonic::transport::Channel, req: RawResolveEnv) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<RawResolveEnv, qwend_shared::api::ResolveEnvResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/qwend.v1.Env/ResolveEnv");
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .expect_err("the daemon must refuse this request")
}

/// One `map<string, string>` entry, `key` and `value` as given (valid UTF-8 or not).
fn map_entry(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    for (tag, bytes) in [(0x0a, key), (0x12, value)] {
        e.push(tag);
        prost::encoding::encode_varint(bytes.len() as u64, &mut e);
        e.extend_from_slice(bytes);
    }
    e
}

fn assert_short_invalid(s: &tonic::Status, what: &str) {
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}");
    assert!(
        s.message().len() < 400,
        "{what}: {} bytes of message",
        s.message().len()
    );
}

#[tokio::test]
async fn huge_or_invalid_request_fields_are_invalid_argument_with_short_messages() {
    use qwend_shared::api::auth_client::AuthClient;
    use qwend_shared::api::{AuthStatusRequest, ClientContext};
    let env = TestEnv::new();
    env.status();
    let channel = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let huge_cwd = format!("/{}", "d".repeat(3_900_000));

    // Well-formed but absurd: a 3.9 MB cwd, through every service that takes a context.
    let s = AuthClient::new(channel.clone())
        .get_auth_status(AuthStatusRequest {
            client: Some(ClientContext {
                cwd: huge_cwd.clone(),
                env: Default::default(),
            }),
        })
        .await
        .unwrap_err();
    assert_short_invalid(&s, "GetAuthStatus with a 3.9 MB cwd");
    let s = raw_resolve_env(
        channel.clone(),
        RawResolveEnv {
            cwd: huge_cwd.into_bytes(),
            env_entries: vec![],
        },
    )
    .await;
    assert_short_invalid(&s, "ResolveEnv with a 3.9 MB cwd");

    // Not decodable: invalid UTF-8 in a string, in a map value, and plain garbage.
    let cases = [
        ("cwd not UTF-8", b"/tmp/\xff\xfe".to_vec(), vec![]),
        (
            "env value not UTF-8",
            b"/tmp".to_vec(),
            vec![map_entry(b"OPENAI_API_KEY", b"sk-\xff-secret")],
        ),
        ("garbage map entry", b"/tmp".to_vec(), vec![vec![0xff; 16]]),
    ];
    for (what, cwd, env_entries) in cases {
        let s = raw_resolve_env(channel.clone(), RawResolveEnv { cwd, env_entries }).await;
        assert_short_invalid(&s, what);
        assert!(!s.message().contains("secret"), "{what}: {}", s.message());
    }

    // A NUL in a value (which no process environment can hold) is refused, unquoted.
    let s = raw_resolve_env(
        channel.clone(),
        RawResolveEnv {
            cwd: b"/tmp".to_vec(),
            env_entries: vec![map_entry(b"OPENAI_API_KEY", b"sk-\0-secret")],
        },
    )
    .await;
    assert_short_invalid(&s, "NUL in an env value");
    assert!(!s.message().contains("secret"), "{}", s.message());

    // Within bounds but long and non-ASCII (percent-encoded threefold in grpc-message):
    // the error quoting it is cut so that grpcio's 8 KiB metadata limit is never hit.
    let long = format!("/{}", "é".repeat(2000));
    let s = raw_resolve_env(
        channel.clone(),
        RawResolveEnv {
            cwd: long.into_bytes(),
            env_entries: vec![],
        },
    )
    .await;
    assert_ne!(s.code(), tonic::Code::Internal, "{s:?}");
    assert!(s.message().len() < 1100, "{} bytes", s.message().len());

    // And the daemon still serves.
    let out = env.qwen(&["env", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Connections that never send a request are closed after the configured time; with the
/// configured cap reached, a new client waits (it is not refused) and is served as soon as
/// a connection closes.
#[tokio::test]
async fn connection_cap_and_silent_connections() {
    use qwend_shared::api::WatchRequest;
    use qwend_shared::api::events_client::EventsClient;
    use std::io::Read;
    let env = TestEnv::new()
        .with_var("QWEND_MAX_CONNECTIONS", "2")
        .with_var("QWEND_FIRST_REQUEST_TIMEOUT_MS", "300");
    env.status();

    // Two silent connections fill the cap, and are closed by the daemon (EOF here).
    let silent: Vec<_> = (0..2)
        .map(|_| std::os::unix::net::UnixStream::connect(&env.socket).unwrap())
        .collect();
    for mut s in silent {
        let mut buf = [0u8; 64];
        // The daemon's HTTP/2 SETTINGS, then EOF when it gives up on us.
        while s.read(&mut buf).unwrap() > 0 {}
    }

    // Two busy connections (a Watch stream each) fill it for good.
    let mut held = Vec::new();
    for _ in 0..2 {
        let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
        let stream = EventsClient::new(ch.clone())
            .watch(WatchRequest {})
            .await
            .unwrap()
            .into_inner();
        held.push((ch, stream));
    }
    let log = env.state.join("qwend.log");
    let mut third = env.qwen_cmd(&["env", "--json"]);
    third.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut third = third.spawn().unwrap();
    wait_for_file(&log, |l| l.contains("connection limit reached"));
    assert!(
        third.try_wait().unwrap().is_none(),
        "a client beyond the cap must wait for a free slot"
    );
    held.pop();
    let out = tokio::task::spawn_blocking(move || third.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A malformed limit stops the start with the variable's name, like every other setting,
/// instead of quietly serving with a default nobody asked for.
#[test]
fn a_malformed_connection_limit_stops_the_start_with_its_name() {
    for (var, value) in [
        ("QWEND_MAX_CONNECTIONS", "lots"),
        ("QWEND_MAX_CONNECTIONS", "0"),
        ("QWEND_FIRST_REQUEST_TIMEOUT_MS", "-5"),
    ] {
        let env = TestEnv::new().with_var(var, value);
        let out = env.qwen(&["daemon", "status", "--json"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{var}={value}: {err}");
        assert!(
            err.contains(var) && err.contains(value),
            "{var}={value}: {err}"
        );
        assert!(!env.socket.exists(), "{var}={value}: nothing serves");
    }
}

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// At its descriptor limit the daemon pauses accepting (no busy loop), and serves again
/// once descriptors free up.
#[test]
fn out_of_descriptors_the_daemon_backs_off_and_recovers() {
    if !require_program("prlimit", "util-linux") {
        return;
    }
    let env = TestEnv::new()
        .with_var("QWEND_MAX_CONNECTIONS", "10000")
        .with_var("QWEND_FIRST_REQUEST_TIMEOUT_MS", "600000");
    let mut start = Command::new("prlimit");
    env.apply(&mut start);
    start
        .arg("--nofile=64:64")
        .arg(qwend_bin())
        .arg("--socket")
        .arg(&env.socket);
    let out = start.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = env.daemon_pid();
    let log = env.state.join("qwend.log");
    // More silent connections than the daemon has descriptors for.
    let flood: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&env.socket).unwrap())
        .collect();
    let pauses = |l: &str| l.matches("cannot accept a connection; pausing").count();
    wait_for_file(&log, |l| pauses(l) >= 1);
    let before = cpu_ticks(pid);
    // Pauses double from 10 ms: the next six take at least 0.6 s of wall time, which a
    // spinning loop would spend entirely on the CPU (60 ticks at the usual 100 Hz).
    let seen = pauses(&std::fs::read_to_string(&log).unwrap());
    wait_for_file(&log, |l| pauses(l) >= seen + 6);
    let used = cpu_ticks(pid) - before;
    assert!(used < 15, "{used} clock ticks of CPU while paused");
    drop(flood);
    let out = env.qwen(&["env", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Set for [`helper_foreign_client`] when it runs as another user.
const FOREIGN_CLIENT_SOCKET: &str = "QWEND_TEST_FOREIGN_CLIENT_SOCKET";

/// Not a test of its own: run by [`the_daemon_refuses_another_uid`] as the user nobody
/// (a copy of this test binary), it calls `Daemon.Status` without any of the client's
/// checks, as a hostile or careless client would, and prints the answer. Without the
/// variable it does nothing.
#[tokio::test]
async fn helper_foreign_client() {
    let Some(socket) = std::env::var_os(FOREIGN_CLIENT_SOCKET).map(PathBuf::from) else {
        return;
    };
    let channel = tonic::transport::Endpoint::from_static("http://qwend.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    let answer = qwend_shared::api::daemon_client::DaemonClient::new(channel)
        .status(qwend_shared::api::StatusRequest::default())
        .await;
    match answer {
        Ok(r) => println!("ANSWER ok pid {}", r.into_inner().pid),
        Err(s) => println!("ANSWER {:?} {}", s.code(), s.message()),
    }
}

/// The daemon's side of the rule: a caller of another uid gets PERMISSION_DENIED, even
/// with the socket's directory and mode opened on purpose.
#[test]
fn the_daemon_refuses_another_uid() {
    if !need_root() {
        return;
    }
    let env = TestEnv::new();
    env.status();
    for p in [env.root.path(), env.socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // nobody cannot run this binary where cargo put it (under a private home, often).
    let dir = tempfile::Builder::new()
        .prefix("qwend-foreign")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("trust-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(&exe)
        .args(["--exact", "helper_foreign_client", "--nocapture"])
        .env(FOREIGN_CLIENT_SOCKET, &env.socket)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("ANSWER PermissionDenied") && stdout.contains("caller is uid 65534"),
        "{stdout}"
    );
}
