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
        if let Some(path) = line
            .strip_prefix("# ==> ")
            .and_then(|l| l.strip_suffix(" <=="))
        {
            let name = std::path::Path::new(path).file_name().unwrap();
            let name = name.to_string_lossy().into_owned();
            current = Some(name.clone());
            files.insert(name, String::new());
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
    if !require_program(
        "systemd-analyze",
        "apt-get install systemd; .ci/run installs it",
    ) {
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
fn install_reports_a_missing_user_manager_clearly_and_writes_nothing() {
    let env = TestEnv::new();
    let out = env
        .qwen_cmd(&["daemon", "install", "--systemd"])
        // No session bus here: systemctl --user cannot reach a user manager.
        .env("XDG_RUNTIME_DIR", env.root.path().join("no-runtime"))
        .output()
        .unwrap();
    let unit_dir = env.home.join(".config/systemd/user");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("systemctl --user") || err.contains("cannot run systemctl"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!unit_dir.join("qwend.socket").exists());
    let out = env
        .qwen_cmd(&["daemon", "uninstall", "--systemd"])
        .env("XDG_RUNTIME_DIR", env.root.path().join("no-runtime"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A stand-in `systemctl` first on PATH: answers `show`, logs every call, and fails the
/// subcommand named in `$FAIL_AT`.
fn fake_systemctl(env: &TestEnv) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = env.root.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = env.root.path().join("systemctl.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nfor a in \"$@\"; do [ \"$a\" = \"$FAIL_AT\" ] && {{ echo \"Failed to $a: no\" >&2; exit 1; }}; done\nexit 0\n",
        log.display()
    );
    let path = bin.join("systemctl");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path_var = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (std::path::PathBuf::from(path_var), log)
}

#[test]
fn install_without_a_user_manager_writes_nothing() {
    let env = TestEnv::new();
    let (path, _) = fake_systemctl(&env);
    let out = env
        .qwen_cmd(&["daemon", "install", "--systemd"])
        .env("PATH", &path)
        .env("FAIL_AT", "show")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!env.home.join(".config/systemd").exists());
}

#[test]
fn a_failed_enable_removes_the_units_it_wrote() {
    let env = TestEnv::new();
    let (path, log) = fake_systemctl(&env);
    let out = env
        .qwen_cmd(&["daemon", "install", "--systemd"])
        .env("PATH", &path)
        .env("FAIL_AT", "enable")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("enable"),
        "{}",
        text(&out.stderr)
    );
    let unit_dir = env.home.join(".config/systemd/user");
    assert!(!unit_dir.join("qwend.socket").exists());
    assert!(!unit_dir.join("qwend.service").exists());
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.trim_end().ends_with("--user daemon-reload"),
        "{calls}"
    );
}

#[test]
fn install_and_uninstall_honour_json() {
    let env = TestEnv::new();
    let (path, log) = fake_systemctl(&env);
    let out = env
        .qwen_cmd(&["daemon", "install", "--systemd", "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unit_dir = env.home.join(".config/systemd/user");
    assert_eq!(v["kind"], "systemd");
    assert_eq!(
        v["files"],
        serde_json::json!([
            unit_dir.join("qwend.socket"),
            unit_dir.join("qwend.service")
        ])
    );
    assert!(unit_dir.join("qwend.service").is_file());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("--user enable --now qwend.socket")
    );
    let out = env
        .qwen_cmd(&["daemon", "uninstall", "--systemd", "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 2, "{v}");
    assert!(!unit_dir.join("qwend.service").exists());
}

#[test]
fn print_names_the_destinations_and_keeps_the_comments() {
    let env = TestEnv::new();
    let out = env.qwen(&["daemon", "install", "--systemd", "--print", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unit_dir = env.home.join(".config/systemd/user");
    assert_eq!(
        v["files"][1]["path"],
        unit_dir.join("qwend.service").display().to_string()
    );
    let service = v["files"][1]["text"].as_str().unwrap();
    assert!(service.contains("replaces @QWEND@ with"), "{service}");
    let qwend = std::fs::canonicalize(qwend_bin()).unwrap();
    assert!(service.contains(&format!("ExecStart={} ", qwend.display())));
    // Nothing was installed.
    assert!(!unit_dir.exists());

    let out = env.qwen(&["daemon", "install", "--launchd", "--print"]);
    let plist = text(&out.stdout);
    assert!(
        plist.contains(&format!(
            "# ==> {} <==",
            env.home
                .join("Library/LaunchAgents/dev.qwend.qwend.plist")
                .display()
        )),
        "{plist}"
    );
    assert!(plist.contains("replaces @QWEND@ and @HOME@"), "{plist}");
}
