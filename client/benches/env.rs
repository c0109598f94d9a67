//! `.env` resolution benchmark (prints a table):
//! `cargo build --release -p qwen -p qwend && cargo bench -p qwen --bench env`
//!
//! - inside the daemon (the `Resolver`), 10- and 30-level trees, cold (empty cache) and
//!   warm; targets: warm < 20 µs, cold at 30 levels < 500 µs;
//! - a fresh `qwen env --json` process against a running daemon, at 10 and 30 levels;
//! - the real Qwen Code 0.12.0 on the same trees, through the conformance kit's oracle
//!   (`env-oracle-012.mjs`: a fresh node process that loads the 19 MB bundle and runs its
//!   loadSettings + loadEnvironment), when node and the package are present.
//!
//! Runs: `QWEN_BENCH_RUNS` (200 processes; 10x that cold, 100x warm) and
//! `QWEN_BENCH_NODE_RUNS` (5).
#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qwend::dotenv::{EnvRequest, Resolver};
use support::stats::{self, runs};

/// A `.env` at the top of a `depth`-level tree; returns the deepest directory.
fn tree(root: &Path, depth: usize) -> PathBuf {
    let mut dir = root.join(format!("t{depth}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "OPENAI_API_KEY=sk-bench\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\nOPENAI_MODEL=qwen3\n",
    )
    .unwrap();
    // Warm = cached and no longer inside the "racy" window of a just-written file.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(dir.join(".env"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    for i in 0..depth.saturating_sub(1) {
        dir = dir.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn in_daemon(depth: usize, cwd: &Path, home: &Path) {
    let client_env: HashMap<String, String> =
        [("HOME".to_string(), home.display().to_string())].into();
    let req = EnvRequest {
        cwd,
        client_env: &client_env,
    };
    let n = runs("QWEN_BENCH_RUNS", 200);
    let cold: Vec<Duration> = (0..n * 10)
        .map(|_| {
            let r = Resolver::default();
            let t = Instant::now();
            let res = r.resolve(&req).unwrap();
            let d = t.elapsed();
            assert_eq!(res.vars.len(), 3);
            d
        })
        .collect();
    stats::row(
        &format!("env.cold.{depth}"),
        &format!("resolve in the daemon, {depth} levels, cold cache"),
        cold,
        if depth == 30 { "< 0.5" } else { "" },
    );
    let r = Resolver::default();
    r.resolve(&req).unwrap();
    let warm: Vec<Duration> = (0..n * 100)
        .map(|_| {
            let t = Instant::now();
            r.resolve(&req).unwrap();
            t.elapsed()
        })
        .collect();
    stats::row(
        &format!("env.warm.{depth}"),
        &format!("resolve in the daemon, {depth} levels, warm cache"),
        warm,
        "< 0.02",
    );
}

fn main() {
    let root = tempfile::Builder::new()
        .prefix("qwen-bench-env")
        .tempdir()
        .unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let home = root_path.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let trees: Vec<(usize, PathBuf)> = [10usize, 30]
        .into_iter()
        .map(|d| (d, tree(&root_path, d)))
        .collect();
    stats::header();
    for (depth, cwd) in &trees {
        in_daemon(*depth, cwd, &home);
    }

    let qwend = support::daemon::qwend();
    let socket = root_path.join("run/qwend.sock");
    let qwen_env = |cwd: &Path| {
        let mut c = Command::new(support::daemon::qwen());
        c.env_clear()
            .env("HOME", &home)
            .env("QWEND_SOCKET", &socket)
            .env("QWEND_STATE_DIR", root_path.join("state"))
            .env("QWEND_BIN", &qwend)
            .env("QWEN_CREDENTIAL_STORE", "file")
            .args(["env", "--json"])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let oracle = support::peer::conformance_dir()
        .map(|k| k.join("env/env-oracle-012.mjs"))
        .filter(|o| o.is_file())
        .ok_or_else(|| "the conformance kit's env/env-oracle-012.mjs not found".to_string());
    let peer = oracle
        .clone()
        .and_then(|_| support::peer::package("0.12.0"));
    for (depth, cwd) in &trees {
        // The first run starts the daemon; not measured.
        assert!(qwen_env(cwd).status().unwrap().success());
        let procs: Vec<Duration> = (0..runs("QWEN_BENCH_RUNS", 200))
            .map(|_| {
                let mut c = qwen_env(cwd);
                let t = Instant::now();
                assert!(c.status().unwrap().success());
                t.elapsed()
            })
            .collect();
        let ours = stats::row(
            &format!("env.process.{depth}"),
            &format!("`qwen env --json` process, {depth} levels"),
            procs,
            "",
        );
        let (Ok(oracle), Ok(pkg)) = (&oracle, &peer) else {
            let why = oracle.clone().and(peer.clone()).unwrap_err();
            println!("Qwen Code comparison skipped: {why}");
            continue;
        };
        let node: Vec<Duration> = (0..runs("QWEN_BENCH_NODE_RUNS", 5))
            .map(|_| {
                let t = Instant::now();
                let out = Command::new("node")
                    .arg(oracle)
                    .arg(cwd)
                    .env("HOME", &home)
                    .env("QWEN_PEER_PKG", pkg)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let d = t.elapsed();
                assert!(
                    out.status.success()
                        && String::from_utf8_lossy(&out.stdout).contains("sk-bench"),
                    "the oracle failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                d
            })
            .collect();
        let theirs = stats::row(
            &format!("env.qwen_code.{depth}"),
            &format!("Qwen Code 0.12.0 loader, fresh node, {depth} levels"),
            node,
            "",
        );
        println!(
            "fresh process, same {depth}-level tree: Qwen Code / qwen env = {:.0}x",
            theirs.p50.as_secs_f64() / ours.p50.as_secs_f64()
        );
    }
    support::daemon::stop(&socket);
}
