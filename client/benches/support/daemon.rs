//! Finding the release `qwend` beside the bench's `qwen`, and watching a running daemon.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The client under test (the bench's own build of `qwen`).
pub fn qwen() -> &'static str {
    env!("CARGO_BIN_EXE_qwen")
}

/// `qwend` beside `qwen`; the benches need it built first.
pub fn qwend() -> PathBuf {
    let qwend = Path::new(qwen()).with_file_name("qwend");
    assert!(
        qwend.is_file(),
        "{} is missing: run `cargo build --release -p qwen -p qwend` first (bench/run does)",
        qwend.display()
    );
    qwend
}

/// `qwen daemon stop` on `socket`, quietly (the daemon may already be gone).
pub fn stop(socket: &Path) {
    let _ = Command::new(qwen())
        .env("QWEND_SOCKET", socket)
        .args(["daemon", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The pid the daemon on `socket` recorded in its lock file.
pub fn pid(socket: &Path) -> u32 {
    let text = std::fs::read_to_string(qwend_shared::paths::lock_path_for(socket))
        .expect("the daemon's lock file");
    text.trim()
        .parse()
        .expect("a pid in the daemon's lock file")
}

/// Resident set size in KiB, from /proc (0 when the process is gone).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Field `n` (1-based, as `man 5 proc` numbers them) of `/proc/<pid>/stat`, `pid` being
/// a number or `self`. The command name (field 2) is in parentheses and may hold anything,
/// so fields are counted from its closing one.
pub fn stat_field(pid: &str, n: usize) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(n - 3)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("field {n} of /proc/{pid}/stat"))
}

/// The process's CPU time (user + system) so far, from /proc.
pub fn cpu(pid: u32) -> Duration {
    let pid = pid.to_string();
    let ticks = stat_field(&pid, 14) + stat_field(&pid, 15);
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

/// A HOME holding a Qwen Code login valid for a day (`access_token`, served at
/// `resource_url`) with Qwen OAuth selected, as after Qwen Code's own login. The files are
/// dated a minute back, out of the racy window of a just-written file, so the daemon's
/// change stamps settle at once.
pub fn login_home(dir: &Path, access_token: &str, resource_url: &str) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".qwen")).unwrap();
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 24 * 3_600_000;
    let creds = home.join(".qwen/oauth_creds.json");
    std::fs::write(
        &creds,
        format!(
            r#"{{"access_token":"{access_token}","refresh_token":"rt-bench","token_type":"Bearer","resource_url":"{resource_url}","expiry_date":{expiry}}}"#
        ),
    )
    .unwrap();
    let settings = home.join(".qwen/settings.json");
    std::fs::write(
        &settings,
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
    let old = SystemTime::now() - Duration::from_secs(60);
    for f in [settings, creds] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    home
}
