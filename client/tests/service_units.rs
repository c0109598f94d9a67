//! The service definitions `qwen daemon install` writes: checked by the real tools.
mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;

/// `qwen daemon install --print` output split into file name → contents.
fn printed_units(env: &TestEnv, flag: &str) -> BTreeMap<String, String> {
    let out = env.qwen(&["daemon", "install", flag, "--print"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut files = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text(&out.stdout).lines() {
        if let Some(name) = line.strip_prefix("# ").filter(|n| !n.contains(' ')) {
            current = Some(name.to_string());
            files.insert(name.to_string(), String::new());
        } else if let Some(name) = &current {
            let f = files.get_mut(name).unwrap();
            f.push_str(line);
            f.push('\n');
        }
    }
    files
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let env = TestEnv::new();
    let units = printed_units(&env, "--systemd");
    assert_eq!(
        units.keys().collect::<Vec<_>>(),
        ["qwend.service", "qwend.socket"]
    );
    let service = &units["qwend.service"];
    let qwend = std::fs::canonicalize(qwend_bin()).unwrap();
    assert!(
        service.contains(&format!("ExecStart={} --foreground", qwend.display())),
        "{service}"
    );
    let dir = env.root.path().join("units");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in &units {
        std::fs::write(dir.join(name), body).unwrap();
    }
    // A user manager needs a runtime dir; give it a private one.
    let rt = env.root.path().join("xdg-runtime");
    std::fs::create_dir_all(&rt).unwrap();
    std::fs::set_permissions(&rt, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = Command::new("systemd-analyze")
        .env("XDG_RUNTIME_DIR", &rt)
        .args(["verify", "--user"])
        .arg(dir.join("qwend.socket"))
        .arg(dir.join("qwend.service"))
        .output()
        .unwrap();
    // verify exits 0 even on ignored (misspelled) settings, so any output is a failure.
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).trim(), "", "systemd-analyze complained");
    assert_eq!(text(&out.stdout).trim(), "");
}

#[test]
fn launchd_plist_parses_with_plistlib() {
    let env = TestEnv::new();
    let units = printed_units(&env, "--launchd");
    let plist = &units["dev.qwend.qwend.plist"];
    let path = env.root.path().join("agent.plist");
    std::fs::write(&path, plist).unwrap();
    let qwend = std::fs::canonicalize(qwend_bin()).unwrap();
    let check = r#"
import plistlib, sys
p = plistlib.load(open(sys.argv[1], "rb"))
assert p["Label"] == "dev.qwend.qwend", p
assert p["ProgramArguments"] == [sys.argv[2], "--foreground"], p["ProgramArguments"]
assert p["RunAtLoad"] is True
assert p["KeepAlive"] == {"SuccessfulExit": False}
assert p["Umask"] == 63  # 077: files qwend creates are private
assert p["StandardErrorPath"] == sys.argv[3] + "/Library/Logs/qwend.log"
print("ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(check)
        .arg(&path)
        .arg(&qwend)
        .arg(&env.home)
        .output()
        .expect("python3 is needed for the plist check");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn install_writes_units_and_reports_a_missing_user_manager_clearly() {
    let env = TestEnv::new();
    let out = env
        .qwen_cmd(&["daemon", "install", "--systemd"])
        // No session bus here: systemctl --user cannot reach a user manager.
        .env("XDG_RUNTIME_DIR", env.root.path().join("no-runtime"))
        .output()
        .unwrap();
    let unit_dir = env.home.join(".config/systemd/user");
    assert!(unit_dir.join("qwend.socket").is_file());
    assert!(unit_dir.join("qwend.service").is_file());
    if !out.status.success() {
        let err = text(&out.stderr);
        assert!(err.contains("systemctl --user"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let out = env
        .qwen_cmd(&["daemon", "uninstall", "--systemd"])
        .env("XDG_RUNTIME_DIR", env.root.path().join("no-runtime"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!unit_dir.join("qwend.socket").exists());
    assert!(!unit_dir.join("qwend.service").exists());
}
