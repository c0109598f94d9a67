//! `.env` resolution benchmark (prints a table):
//! `cargo build --release --workspace && cargo bench -p qwen --bench env`
//!
//! - inside the daemon (the `Resolver`), 10- and 30-level trees, cold (empty cache) and
//!   warm; targets: warm < 20 µs, cold at 30 levels < 500 µs;
//! - a fresh `qwen env --json` process against a running daemon;
//! - the real Qwen Code 0.12.0 on the same tree, through the conformance kit's oracle
//!   (a fresh node process that loads the 19 MB bundle and runs its loadSettings +
//!   loadEnvironment), when node and the kit (../shared) are present.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qwend::dotenv::{EnvRequest, Resolver};

fn tree(root: &Path, depth: usize) -> PathBuf {
    let mut dir = root.join(format!("t{depth}"));
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::write(
        dir.join("../.env")
            .as_path()
            .to_str()
            .map(|_| root.join(format!("t{depth}.env")))
            .unwrap(),
        "",
    )
    .ok();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "OPENAI_API_KEY=sk-bench\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\nOPENAI_MODEL=qwen3\n",
    )
    .unwrap();
    for i in 0..depth.saturating_sub(1) {
        dir = dir.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    (mean, v[v.len() / 2], v[(v.len() - 1) * 99 / 100])
}

fn row(name: &str, n: usize, v: Vec<Duration>, target: &str) -> Duration {
    let (mean, p50, p99) = stats(v);
    println!(
        "| {name:<44} | {n:>6} | {:>10.1} | {:>10.1} | {:>10.1} | {target:<15} |",
        mean.as_secs_f64() * 1e6,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    p50
}

fn main() {
    let root = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let home = root_path.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let client_env: HashMap<String, String> =
        [("HOME".to_string(), home.display().to_string())].into();
    println!(
        "| {:<44} | {:>6} | {:>10} | {:>10} | {:>10} | {:<15} |",
        "measure", "n", "mean µs", "p50 µs", "p99 µs", "target"
    );
    println!(
        "|{:-<46}|{:-<8}|{:-<12}|{:-<12}|{:-<12}|{:-<17}|",
        "", "", "", "", "", ""
    );
    let mut deep = PathBuf::new();
    for depth in [10usize, 30] {
        let cwd = tree(&root_path, depth);
        deep = cwd.clone();
        let req = EnvRequest {
            cwd: &cwd,
            client_env: &client_env,
        };
        let cold: Vec<Duration> = (0..2_000)
            .map(|_| {
                let r = Resolver::default();
                let t = Instant::now();
                let res = r.resolve(&req).unwrap();
                let d = t.elapsed();
                assert_eq!(res.vars.len(), 3);
                d
            })
            .collect();
        row(
            &format!("resolve, {depth} levels, cold cache"),
            cold.len(),
            cold,
            if depth == 30 { "< 500 µs" } else { "" },
        );
        let r = Resolver::default();
        // Warm = cached and no longer inside the "racy" window of a just-written file.
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(root_path.join(format!("t{depth}/.env")))
            .unwrap()
            .set_modified(old)
            .unwrap();
        r.resolve(&req).unwrap();
        let warm: Vec<Duration> = (0..20_000)
            .map(|_| {
                let t = Instant::now();
                r.resolve(&req).unwrap();
                t.elapsed()
            })
            .collect();
        row(
            &format!("resolve, {depth} levels, warm cache"),
            warm.len(),
            warm,
            "< 20 µs",
        );
    }

    let qwen = PathBuf::from(env!("CARGO_BIN_EXE_qwen"));
    let qwend = qwen.with_file_name("qwend");
    assert!(
        qwend.is_file(),
        "run `cargo build --release --workspace` first"
    );
    let socket = root_path.join("run/qwend.sock");
    let qwen_env = || {
        let mut c = Command::new(&qwen);
        c.env_clear()
            .env("HOME", &home)
            .env("QWEND_SOCKET", &socket)
            .env("QWEND_STATE_DIR", root_path.join("state"))
            .env("QWEND_BIN", &qwend)
            .args(["env", "--json"])
            .current_dir(&deep)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    assert!(qwen_env().status().unwrap().success());
    let procs: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            assert!(qwen_env().status().unwrap().success());
            t.elapsed()
        })
        .collect();
    let ours = row(
        "`qwen env --json` process, 30 levels",
        procs.len(),
        procs,
        "",
    );
    let _ = Command::new(&qwen)
        .env("QWEND_SOCKET", &socket)
        .args(["daemon", "stop"])
        .stdout(Stdio::null())
        .status();

    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/env");
    let oracle = kit.join("env-oracle-012.mjs");
    let peer = Path::new("/tmp/qwen-peer-0.12.0/node_modules/@qwen-code/qwen-code/cli.js");
    if !oracle.is_file() || !peer.is_file() {
        println!(
            "\nQwen Code comparison skipped: needs {} and the 0.12.0 package (QWEN_PEER_VERSION=0.12.0 bash {}/setup.sh)",
            oracle.display(),
            kit.display()
        );
        return;
    }
    let runs: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new("node")
                .arg(&oracle)
                .arg(&deep)
                .env("HOME", &home)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed()
        })
        .collect();
    let theirs = row(
        "Qwen Code 0.12.0 loader, fresh node process",
        runs.len(),
        runs,
        "",
    );
    println!(
        "\nfresh process, same 30-level tree: Qwen Code / qwen env = {:.0}x",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}
