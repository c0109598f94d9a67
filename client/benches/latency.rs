//! Latency benchmark (prints a table): `cargo build --release --workspace && cargo bench -p qwen --bench latency`.
//!
//! - `Status` unary round trip over the Unix socket, daemon served in-process.
//! - A fresh `qwen daemon status --json` process, exec to exit, against a running daemon.
//!
//! Targets on the 2-core reference machine: round trip p99 < 200 µs; process median < 5 ms.
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qwend_shared::api::StatusRequest;
use qwend_shared::api::daemon_client::DaemonClient;
use qwend_shared::transport::{self, BoundSocket};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn row(name: &str, n: usize, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "| {name:<38} | {n:>6} | {:>9.1} | {:>9.1} | {:>9.1} | {target:<16} |",
        mean.as_secs_f64() * 1e6,
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
    );
}

/// The daemon runs on its own 2-worker runtime (as in `qwend`), the client on a
/// current-thread runtime in this thread (as in `qwen`): the same split as the real
/// processes, minus exec.
fn in_process_round_trip(dir: &Path) -> Vec<Duration> {
    let socket = dir.join("inproc").join("qwend.sock");
    transport::ensure_private_dir(socket.parent().unwrap()).unwrap();
    // The in-process daemon reads its configuration from this process's environment: keep
    // it off the machine's real ~/.qwen and keyring.
    // SAFETY: no other thread runs yet (the runtimes are built below).
    unsafe {
        std::env::set_var("QWEN_HOME", dir.join("inproc-home"));
        std::env::set_var("QWEND_STATE_DIR", dir.join("inproc-state"));
        std::env::set_var("QWEN_CREDENTIAL_STORE", "file");
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (listener, _guard) = server_rt
        .block_on(async { BoundSocket::bind(&socket) })
        .unwrap()
        .into_parts();
    let services = server_rt
        .block_on(qwend::lifecycle::Services::open())
        .unwrap();
    let state = qwend::server::DaemonState {
        started: Instant::now(),
        socket: socket.clone(),
        shutdown: Arc::new(tokio::sync::Notify::new()),
        resolver: services.resolver,
        auth: services.auth,
        quota: services.quota,
        clock: services.clock,
        hub: services.hub,
        login: services.login,
    };
    server_rt.spawn(qwend::server::serve(
        state,
        listener,
        qwend::idle::Connections::new(),
        std::future::pending(),
    ));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let mut client = DaemonClient::new(transport::connect(&socket).await.unwrap());
        for _ in 0..2_000 {
            client.status(StatusRequest {}).await.unwrap();
        }
        let mut samples = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            client.status(StatusRequest {}).await.unwrap();
            samples.push(t.elapsed());
        }
        samples
    })
}

fn process_runs(dir: &Path, runs: usize) -> Vec<Duration> {
    let qwen = env!("CARGO_BIN_EXE_qwen");
    let qwend = Path::new(qwen).with_file_name("qwend");
    assert!(
        qwend.is_file(),
        "{} is missing: run `cargo build --release --workspace` first",
        qwend.display()
    );
    let socket = dir.join("proc").join("qwend.sock");
    let cmd = || {
        let mut c = Command::new(qwen);
        c.env("QWEND_SOCKET", &socket)
            .env("QWEND_STATE_DIR", dir.join("state"))
            .env("QWEND_BIN", &qwend)
            .args(["daemon", "status", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    // First run starts the daemon; not measured.
    assert!(cmd().status().unwrap().success());
    let samples = (0..runs)
        .map(|_| {
            let t = Instant::now();
            assert!(cmd().status().unwrap().success());
            t.elapsed()
        })
        .collect();
    let _ = Command::new(qwen)
        .env("QWEND_SOCKET", &socket)
        .args(["daemon", "stop"])
        .stdout(Stdio::null())
        .status();
    samples
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "| {:<38} | {:>6} | {:>9} | {:>9} | {:>9} | {:<16} |",
        "measure", "n", "mean µs", "p50 µs", "p99 µs", "target"
    );
    println!(
        "|{:-<40}|{:-<8}|{:-<11}|{:-<11}|{:-<11}|{:-<18}|",
        "", "", "", "", "", ""
    );
    let rtt = in_process_round_trip(dir.path());
    row(
        "Status round trip (in-process daemon)",
        rtt.len(),
        rtt,
        "p99 < 200 µs",
    );
    let runs = 200;
    let procs = process_runs(dir.path(), runs);
    row(
        "`qwen daemon status --json` process",
        runs,
        procs,
        "p50 < 5000 µs",
    );
}
