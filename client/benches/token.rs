//! `qwen auth token`, exec to exit, against a running daemon, next to the real Qwen Code
//! reading the same credential file through its token manager, and to the floors: a
//! hello-world Rust binary (built here with `rustc -O`, or `QWEN_BENCH_HELLO`) and
//! `/bin/true`. The runs interleave, so the machine's drift hits every row alike.
//!
//! ```sh
//! cargo build --release -p qwen -p qwend && cargo bench -p qwen --bench token
//! ```
//!
//! Target: median <= 1.5x the hello-world binary's. Qwen Code's row runs
//! `oauth-oracle.mjs get` from the conformance kit with Qwen Code 0.24.4 (see
//! `support/peer.rs`); without node or the package the row is skipped with a note
//! (bench/run installs both).
//! Runs: `QWEN_BENCH_RUNS` (300) and `QWEN_BENCH_NODE_RUNS` (20).
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::stats::{self, runs};

const TOKEN: &str = "at-bench-0123456789";
/// The kit's token-manager oracle loads the package's `chunks/`, which 0.12.0 (one bundled
/// cli.js) does not have: the token rows use the release the oracle was written for.
const ORACLE_VERSION: &str = "0.24.4";

/// Page faults of the children reaped so far (`cminflt` of `/proc/self/stat`). On a
/// virtual machine a page fault costs microseconds, so a fresh process's time follows its
/// fault count more than its instructions. (Its CPU time is not reported: the kernel's
/// per-child figures are too coarse for a process this short.)
fn children_faults() -> u64 {
    support::daemon::stat_field("self", 11) // cminflt
}

/// Page faults a run, over all runs of one command.
#[derive(Default)]
struct Faults {
    runs: u64,
    total: u64,
}

impl Faults {
    fn add(&mut self, before: u64) {
        self.runs += 1;
        self.total += children_faults() - before;
    }

    fn record(&self, key: &str, what: &str) {
        let per_run = self.total as f64 / self.runs as f64;
        println!("{what}: {per_run:.0} page faults a run");
        stats::record(key, &[("faults", per_run)]);
    }
}

/// Instructions one run of `c` executes, from callgrind (the noise-free figure), when
/// `QWEN_BENCH_CALLGRIND` is set (bench/run sets it).
fn instructions(dir: &Path, name: &str, c: Command) -> Option<f64> {
    std::env::var_os("QWEN_BENCH_CALLGRIND")?;
    let out = dir.join(format!("callgrind.{name}.out"));
    let mut vg = Command::new("valgrind");
    vg.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(c.get_program())
        .args(c.get_args())
        .env_clear()
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))));
    if let Some(d) = c.get_current_dir() {
        vg.current_dir(d);
    }
    time(vg);
    stats::callgrind_total(&out)
}

/// Times one run of `c` to its exit; it must succeed.
fn time(mut c: Command) -> Duration {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let st = c.status().unwrap();
    let d = t.elapsed();
    assert!(st.success(), "{c:?} failed");
    d
}

/// The floor for any Rust CLI: `fn main() { println!(..) }`, built with `rustc -O`.
fn hello(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("QWEN_BENCH_HELLO") {
        return PathBuf::from(p);
    }
    let src = dir.join("hello.rs");
    std::fs::write(&src, "fn main() {\n    println!(\"hello\");\n}\n").unwrap();
    let out = dir.join("hello");
    let st = Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()))
        .args(["-O", "-C", "strip=debuginfo", "--edition", "2021", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc");
    assert!(st.success(), "cannot build the hello-world binary");
    out
}

/// `node oauth-oracle.mjs get` on `home`, or why it cannot run.
fn qwen_code(home: &Path) -> Result<impl Fn() -> Command, String> {
    let kit = support::peer::conformance_dir()
        .ok_or("conformance kit not found (QWEN_CONFORMANCE_DIR)")?;
    let pkg = support::peer::package(ORACLE_VERSION)?;
    let home = home.to_path_buf();
    let cmd = move || {
        let mut c = Command::new("node");
        c.arg(kit.join("oauth/oauth-oracle.mjs"))
            // A valid token needs no IdP; a closed port makes sure none is reached.
            .args(["get", "--idp", "http://127.0.0.1:9"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("QWEN_PEER_PKG", &pkg);
        c
    };
    let out = cmd()
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(&format!("\"access_token\": \"{TOKEN}\"")) {
        return Err(format!("the oracle did not return the token: {text}"));
    }
    Ok(cmd)
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("qwen-bench-token")
        .tempdir()
        .unwrap();
    let home = support::daemon::login_home(dir.path(), TOKEN, "portal.qwen.ai");
    let qwend = support::daemon::qwend();
    let socket = dir.path().join("run").join("qwend.sock");
    let qwen = |args: &[&str]| {
        let mut c = Command::new(support::daemon::qwen());
        c.env_clear()
            .env("HOME", &home)
            .env("QWEND_SOCKET", &socket)
            .env("QWEND_STATE_DIR", dir.path().join("state"))
            .env("QWEND_BIN", &qwend)
            .env("QWEN_CREDENTIAL_STORE", "file")
            .current_dir(&home)
            .args(args);
        c
    };
    // The first run starts the daemon and imports the file; not measured.
    let first = qwen(&["auth", "token"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(first.status.success(), "qwen auth token failed");
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), TOKEN);
    let hello = hello(dir.path());

    let n = runs("QWEN_BENCH_RUNS", 300);
    let (mut ours, mut floor, mut truth) = (vec![], vec![], vec![]);
    let (mut ours_faults, mut floor_faults) = (Faults::default(), Faults::default());
    for _ in 0..n {
        let before = children_faults();
        ours.push(time(qwen(&["auth", "token"])));
        ours_faults.add(before);
        let before = children_faults();
        floor.push(time(Command::new(&hello)));
        floor_faults.add(before);
        truth.push(time(Command::new("/bin/true")));
    }
    // Under callgrind while the daemon still runs.
    let counted: Vec<_> = [
        ("qwen", "`qwen auth token`", qwen(&["auth", "token"])),
        ("hello", "hello-world binary", Command::new(&hello)),
    ]
    .into_iter()
    .filter_map(|(key, name, cmd)| Some((key, name, instructions(dir.path(), key, cmd)?)))
    .collect();
    support::daemon::stop(&socket);

    stats::header();
    let ours = stats::row(
        "token.qwen",
        "`qwen auth token`, exec to exit, daemon running",
        ours,
        "<= 1.5x hello",
    );
    let floor = stats::row(
        "token.hello",
        "hello-world Rust binary (`rustc -O`), exec to exit",
        floor,
        "",
    );
    stats::row("token.true", "`/bin/true`, exec to exit", truth, "");
    ours_faults.record("usage.token.qwen", "`qwen auth token`");
    floor_faults.record("usage.token.hello", "hello-world binary");
    for (key, name, n) in counted {
        println!("{name}: {n:.0} instructions (callgrind)");
        stats::record(&format!("callgrind.token.{key}"), &[("instructions", n)]);
    }
    let ratio = ours.p50.as_secs_f64() / floor.p50.as_secs_f64();
    match qwen_code(&home) {
        Ok(cmd) => {
            let samples = (0..runs("QWEN_BENCH_NODE_RUNS", 20))
                .map(|_| time(cmd()))
                .collect();
            let theirs = stats::row(
                "token.qwen_code",
                "Qwen Code token manager, fresh node (`oauth-oracle.mjs get`)",
                samples,
                "",
            );
            println!(
                "\n`qwen auth token` median: {ratio:.2}x the hello-world binary's; Qwen Code's token manager takes {:.0}x as long.",
                theirs.p50.as_secs_f64() / ours.p50.as_secs_f64()
            );
        }
        Err(why) => println!(
            "\n`qwen auth token` median: {ratio:.2}x the hello-world binary's. Qwen Code row skipped: {why}"
        ),
    }
}
