//! The daemon's round trips (prints a table):
//! `cargo build --release -p qwen -p qwend && cargo bench -p qwen --bench latency`
//!
//! - `Status`, `GetCredentials` (Qwen OAuth, a valid token) and `AcquirePermit` (every
//!   permit a durable grant) at 1, 16 and 64 connections against a real `qwend` started on
//!   a temp socket, each call timed; throughput is calls over the wall time of the cell;
//! - in the same run, a raw Unix-socket echo (64 bytes each way, a separate process with
//!   the daemon's runtime: tokio, 2 workers) driven by the same load generator: the
//!   physical floor, so each round trip can be given as a multiple of it;
//! - the daemon's RSS idle (after start and one call) and after the load;
//! - a fresh `qwen daemon status --json` process, exec to exit;
//! - with `QWEN_BENCH_CALLGRIND=1` (and valgrind on PATH): the daemon's instructions per
//!   call, the noise-free figure. The daemon runs under callgrind; each RPC is run twice
//!   with different call counts and the difference of the totals divided by the difference
//!   of the counts, so start-up, connection set-up and shutdown cancel out.
//!
//! Targets: `Status` p99 <= 5x the echo's at the same connection count; >= 20,000 durable
//! permits/s at 64 connections on an idle machine; idle RSS <= 10 MB.
//! Runs: `QWEN_BENCH_RPC_CALLS` (6,400 calls a cell), `QWEN_BENCH_RUNS` (200 processes).
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::daemon_client::DaemonClient;
use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{
    AcquirePermitRequest, ClientContext, GetCredentialsRequest, StatusRequest,
};
use support::stats::{self, runs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO_SERVER_VAR: &str = "QWEN_BENCH_ECHO_SERVER";
const ECHO_BYTES: usize = 64;
const CONNECTIONS: [usize; 3] = [1, 16, 64];

#[derive(Clone, Copy, PartialEq)]
enum Rpc {
    Echo,
    Status,
    Credentials,
    Permit,
}

impl Rpc {
    fn key(self) -> &'static str {
        match self {
            Rpc::Echo => "echo",
            Rpc::Status => "status",
            Rpc::Credentials => "credentials",
            Rpc::Permit => "permit",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Rpc::Echo => "raw Unix-socket echo, 64 B",
            Rpc::Status => "`Status`",
            Rpc::Credentials => "`GetCredentials`",
            Rpc::Permit => "`AcquirePermit` (durable grant)",
        }
    }
}

/// One connection of the load: a raw stream for the echo, a gRPC channel otherwise.
enum Conn {
    Raw(tokio::net::UnixStream),
    Grpc(tonic::transport::Channel),
}

impl Conn {
    async fn open(rpc: Rpc, socket: &Path) -> Conn {
        if rpc == Rpc::Echo {
            Conn::Raw(tokio::net::UnixStream::connect(socket).await.unwrap())
        } else {
            Conn::Grpc(qwend_shared::transport::connect(socket).await.unwrap())
        }
    }

    async fn call(&mut self, rpc: Rpc, ctx: &ClientContext) {
        match (self, rpc) {
            (Conn::Raw(s), _) => {
                let mut buf = [7u8; ECHO_BYTES];
                s.write_all(&buf).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
            }
            (Conn::Grpc(ch), Rpc::Status) => {
                DaemonClient::new(ch.clone())
                    .status(StatusRequest::default())
                    .await
                    .unwrap();
            }
            (Conn::Grpc(ch), Rpc::Credentials) => {
                let r = AuthClient::new(ch.clone())
                    .get_credentials(GetCredentialsRequest {
                        client: Some(ctx.clone()),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.token, TOKEN);
            }
            (Conn::Grpc(ch), _) => {
                let r = QuotaClient::new(ch.clone())
                    .acquire_permit(AcquirePermitRequest {
                        client: Some(ctx.clone()),
                        wait_ms: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.granted, "a permit was refused");
            }
        }
    }
}

const TOKEN: &str = "at-bench-latency";

/// `conns` connections each making `per` calls back to back: every call's latency, and the
/// wall time of the whole cell.
async fn load(
    rpc: Rpc,
    socket: &Path,
    ctx: &ClientContext,
    conns: usize,
    per: usize,
) -> (Vec<Duration>, Duration) {
    let mut open = Vec::new();
    for _ in 0..conns {
        let mut c = Conn::open(rpc, socket).await;
        // Warm: the connection's first call (HTTP/2 settings, the daemon's caches).
        for _ in 0..5 {
            c.call(rpc, ctx).await;
        }
        open.push(c);
    }
    let t = Instant::now();
    let tasks: Vec<_> = open
        .into_iter()
        .map(|mut c| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    c.call(rpc, &ctx).await;
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::with_capacity(conns * per);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, t.elapsed())
}

/// The echo server's process: accept, and echo every connection's bytes back.
fn echo_server(socket: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

struct Daemon {
    socket: PathBuf,
    home: PathBuf,
    state: PathBuf,
}

impl Daemon {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(support::daemon::qwen());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("QWEND_SOCKET", &self.socket)
            .env("QWEND_STATE_DIR", &self.state)
            .env("QWEND_BIN", support::daemon::qwend())
            .env("QWEN_CREDENTIAL_STORE", "file")
            .env("QWEND_QUOTA_PER_MINUTE", "1000000000")
            .env("QWEND_QUOTA_PER_DAY", "1000000000")
            .current_dir(&self.home)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn ctx(&self) -> ClientContext {
        ClientContext {
            cwd: self.home.display().to_string(),
            env: [("HOME".to_string(), self.home.display().to_string())].into(),
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A helper process (the echo server, a daemon under valgrind) that a failed measurement
/// must not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Instructions the daemon executes per call of each RPC, from two callgrind runs.
fn callgrind(dir: &Path, d: &Daemon, rt: &tokio::runtime::Runtime) {
    if std::env::var_os("QWEN_BENCH_CALLGRIND").is_none() {
        println!("\n(callgrind rows: set QWEN_BENCH_CALLGRIND=1; bench/run does)");
        return;
    }
    let total = |rpc: Rpc, calls: usize, run: usize| -> f64 {
        let socket = dir.join(format!("cg{run}/qwend.sock"));
        let out = dir.join(format!("callgrind.{run}.out"));
        let daemon = Daemon {
            socket: socket.clone(),
            home: d.home.clone(),
            state: dir.join(format!("cg{run}/state")),
        };
        qwend_shared::transport::ensure_private_dir(socket.parent().unwrap()).unwrap();
        let mut child = Command::new("valgrind");
        child
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(support::daemon::qwend())
            .args(["--foreground", "--socket"])
            .arg(&socket)
            .env_clear();
        for (k, v) in daemon.cmd(&[]).get_envs() {
            if let (false, Some(v)) = (k == "QWEND_BIN", v) {
                child.env(k, v);
            }
        }
        let mut child = KillOnDrop(
            child
                .current_dir(&daemon.home)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("valgrind"),
        );
        wait_for(&socket);
        rt.block_on(async {
            let ctx = daemon.ctx();
            // The socket file appears at bind, a moment before the (slow, under valgrind)
            // daemon listens: retry until it accepts.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut conn = loop {
                match qwend_shared::transport::connect(&socket).await {
                    Ok(ch) => break Conn::Grpc(ch),
                    Err(e) => {
                        assert!(Instant::now() < deadline, "the daemon under valgrind: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            for _ in 0..calls {
                conn.call(rpc, &ctx).await;
            }
        });
        support::daemon::stop(&socket);
        assert!(child.0.wait().unwrap().success() || out.is_file());
        stats::callgrind_total(&out).expect("a total in callgrind's output")
    };
    let (few, many) = (50, 550);
    let mut run = 0;
    for rpc in [Rpc::Status, Rpc::Credentials, Rpc::Permit] {
        run += 2;
        let a = total(rpc, few, run - 1);
        let b = total(rpc, many, run);
        let per = (b - a) / (many - few) as f64;
        println!(
            "daemon instructions per {} call (callgrind): {per:.0}",
            rpc.label()
        );
        stats::record(
            &format!("callgrind.{}", rpc.key()),
            &[("instructions", per)],
        );
    }
}

fn main() {
    if let Some(socket) = std::env::var_os(ECHO_SERVER_VAR) {
        echo_server(Path::new(&socket));
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("qwen-bench-latency")
        .tempdir()
        .unwrap();
    let d = Daemon {
        socket: dir.path().join("run/qwend.sock"),
        home: support::daemon::login_home(dir.path(), TOKEN, "portal.qwen.ai"),
        state: dir.path().join("state"),
    };
    assert!(d.cmd(&["daemon", "start"]).status().unwrap().success());
    let pid = support::daemon::pid(&d.socket);
    let echo_socket = dir.path().join("echo.sock");
    let echo = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .env(ECHO_SERVER_VAR, &echo_socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&echo_socket);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ctx = d.ctx();
    rt.block_on(async {
        let mut c = Conn::open(Rpc::Status, &d.socket).await;
        c.call(Rpc::Status, &ctx).await;
    });
    std::thread::sleep(Duration::from_millis(200));
    let idle = support::daemon::rss_kb(pid);

    stats::header();
    let calls = runs("QWEN_BENCH_RPC_CALLS", 6_400);
    for conns in CONNECTIONS {
        let per = (calls / conns).max(20);
        let mut echo_p99 = Duration::ZERO;
        for rpc in [Rpc::Echo, Rpc::Status, Rpc::Credentials, Rpc::Permit] {
            let socket = if rpc == Rpc::Echo {
                &echo_socket
            } else {
                &d.socket
            };
            let (samples, wall) = rt.block_on(load(rpc, socket, &ctx, conns, per));
            let n = samples.len();
            let target = match (rpc, conns) {
                (Rpc::Status, _) => "p99 <= 5x echo",
                (Rpc::Permit, 64) => ">= 20,000/s",
                _ => "",
            };
            let key = format!("rpc.{}.{conns}", rpc.key());
            let s = stats::row(
                &key,
                &format!("{}, {conns} connection(s)", rpc.label()),
                samples,
                target,
            );
            let per_s = n as f64 / wall.as_secs_f64();
            stats::record(&format!("{key}.rate"), &[("per_s", per_s)]);
            if rpc == Rpc::Echo {
                echo_p99 = s.p99;
            } else {
                println!(
                    "    {per_s:.0} calls/s; p99 {:.1}x the echo's",
                    s.p99.as_secs_f64() / echo_p99.as_secs_f64()
                );
            }
        }
    }
    let loaded = support::daemon::rss_kb(pid);

    let procs: Vec<Duration> = (0..runs("QWEN_BENCH_RUNS", 200))
        .map(|_| {
            let mut c = d.cmd(&["daemon", "status", "--json"]);
            let t = Instant::now();
            assert!(c.status().unwrap().success());
            t.elapsed()
        })
        .collect();
    stats::row(
        "process.daemon_status",
        "`qwen daemon status --json` process, exec to exit",
        procs,
        "",
    );
    println!(
        "\ndaemon RSS: {:.1} MB idle, {:.1} MB after the load above",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
    stats::record("mem.idle", &[("kb", idle as f64)]);
    stats::record("mem.after_load", &[("kb", loaded as f64)]);
    support::daemon::stop(&d.socket);
    drop(echo);

    callgrind(dir.path(), &d, &rt);
}
