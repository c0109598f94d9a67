//! `qwen daemon install|uninstall`: register qwend with the user's service manager
//! (systemd user units with socket activation, or a launchd LaunchAgent).
//!
//! Install checks that the service manager answers before writing anything, and removes
//! what it wrote when enabling fails: a failed install leaves the machine as it was.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::json;

use crate::cli::ServiceKind;
use crate::error::ClientError;

const SYSTEMD_SOCKET: &str = include_str!("../../../systemd/qwend.socket");
const SYSTEMD_SERVICE: &str = include_str!("../../../systemd/qwend.service");
const LAUNCHD_PLIST: &str = include_str!("../../../launchd/dev.qwend.qwend.plist");
const LAUNCHD_LABEL: &str = "dev.qwend.qwend";

pub struct UnitFile {
    pub name: &'static str,
    pub text: String,
}

pub fn default_kind() -> ServiceKind {
    if cfg!(target_os = "macos") {
        ServiceKind::Launchd
    } else {
        ServiceKind::Systemd
    }
}

/// The unit files with this installation's real paths. Comments keep their text: they
/// explain the placeholders, which a filled-in path would turn into nonsense.
pub fn render(kind: ServiceKind, qwend: &Path, home: &Path) -> Vec<UnitFile> {
    let fill = |t: &str| {
        let replace = |line: &str| {
            line.replace("@QWEND@", &qwend.display().to_string())
                .replace("@HOME@", &home.display().to_string())
        };
        let mut out = String::with_capacity(t.len() + 64);
        let mut in_xml_comment = false;
        for line in t.split_inclusive('\n') {
            let trimmed = line.trim_start();
            let comment = match kind {
                ServiceKind::Systemd => trimmed.starts_with('#') || trimmed.starts_with(';'),
                ServiceKind::Launchd => {
                    // Comments in this plist are whole lines, as the template writes them.
                    let starts = in_xml_comment || trimmed.starts_with("<!--");
                    in_xml_comment = starts && !line.contains("-->");
                    starts
                }
            };
            if comment {
                out.push_str(line);
            } else {
                out.push_str(&replace(line));
            }
        }
        out
    };
    match kind {
        ServiceKind::Systemd => vec![
            UnitFile {
                name: "qwend.socket",
                text: fill(SYSTEMD_SOCKET),
            },
            UnitFile {
                name: "qwend.service",
                text: fill(SYSTEMD_SERVICE),
            },
        ],
        ServiceKind::Launchd => vec![UnitFile {
            name: "dev.qwend.qwend.plist",
            text: fill(LAUNCHD_PLIST),
        }],
    }
}

fn home() -> Result<PathBuf, ClientError> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| ClientError::Usage("HOME is not set".into()))
}

fn unit_dir(kind: ServiceKind, home: &Path) -> PathBuf {
    match kind {
        ServiceKind::Systemd => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| Path::new(p).is_absolute())
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"))
            .join("systemd/user"),
        ServiceKind::Launchd => home.join("Library/LaunchAgents"),
    }
}

/// The qwend this client would start: the installed binary's absolute path.
fn qwend_path() -> Result<PathBuf, ClientError> {
    let bin = crate::connect::daemon_bin();
    let found = if bin.is_absolute() {
        Some(bin.clone())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(&bin))
                .find(|p| p.is_file())
        })
    };
    found
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "cannot find the qwend binary ({}); install it or set QWEND_BIN",
                bin.display()
            ))
        })
}

pub fn install(
    kind: Option<ServiceKind>,
    print: bool,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    let kind = kind.unwrap_or_else(default_kind);
    let home = home()?;
    let units = render(kind, &qwend_path()?, &home);
    let dir = unit_dir(kind, &home);
    if print {
        if as_json {
            let files: Vec<_> = units
                .iter()
                .map(|u| json!({"path": dir.join(u.name), "text": u.text}))
                .collect();
            println!("{}", json!({"kind": kind_name(kind), "files": files}));
        } else {
            for u in &units {
                println!("# ==> {} <==\n{}", dir.join(u.name).display(), u.text);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Before writing anything: a machine without a reachable user manager gets nothing.
    match kind {
        ServiceKind::Systemd => run("systemctl", &["--user", "show", "--property=Version"])
            .map_err(|e| {
                ClientError::Rpc(format!(
                    "no systemd user manager to install into ({e}); nothing was written. Use --print to install by hand, or run qwen without a service (it starts qwend itself)"
                ))
            })?,
        ServiceKind::Launchd => run("launchctl", &["print", &gui_domain()]).map_err(|e| {
            ClientError::Rpc(format!(
                "no launchd GUI session to install into ({e}); nothing was written. Use --print to install by hand"
            ))
        })?,
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| ClientError::Rpc(format!("cannot create {}: {e}", dir.display())))?;
    let mut written = Vec::new();
    let result = write_and_enable(kind, &dir, &units, &mut written);
    if let Err(e) = result {
        // Leave the machine as it was: remove every file this run wrote.
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        if kind == ServiceKind::Systemd && !written.is_empty() {
            let _ = run("systemctl", &["--user", "daemon-reload"]);
        }
        return Err(e);
    }
    if as_json {
        println!(
            "{}",
            json!({"installed": true, "kind": kind_name(kind), "files": written})
        );
    } else {
        for path in &written {
            println!("wrote {}", path.display());
        }
        match kind {
            ServiceKind::Systemd => {
                println!("enabled qwend.socket: the first client now starts qwend through systemd")
            }
            ServiceKind::Launchd => println!("loaded {LAUNCHD_LABEL}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Systemd => "systemd",
        ServiceKind::Launchd => "launchd",
    }
}

fn write_and_enable(
    kind: ServiceKind,
    dir: &Path,
    units: &[UnitFile],
    written: &mut Vec<PathBuf>,
) -> Result<(), ClientError> {
    for u in units {
        let path = dir.join(u.name);
        if path.exists() {
            // Replaced, not created: an earlier install's file is not ours to remove.
            std::fs::write(&path, &u.text)
                .map_err(|e| ClientError::Rpc(format!("cannot write {}: {e}", path.display())))?;
            continue;
        }
        std::fs::write(&path, &u.text)
            .map_err(|e| ClientError::Rpc(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    match kind {
        ServiceKind::Systemd => {
            run("systemctl", &["--user", "daemon-reload"])?;
            run("systemctl", &["--user", "enable", "--now", "qwend.socket"])?;
        }
        ServiceKind::Launchd => {
            let plist = dir.join(units[0].name);
            run(
                "launchctl",
                &["bootstrap", &gui_domain(), &plist.display().to_string()],
            )?;
        }
    }
    Ok(())
}

pub fn uninstall(kind: Option<ServiceKind>, as_json: bool) -> Result<ExitCode, ClientError> {
    let kind = kind.unwrap_or_else(default_kind);
    let home = home()?;
    let dir = unit_dir(kind, &home);
    match kind {
        ServiceKind::Systemd => {
            // Tolerate "not loaded": uninstall must work on a half-installed system.
            let _ = run(
                "systemctl",
                &[
                    "--user",
                    "disable",
                    "--now",
                    "qwend.socket",
                    "qwend.service",
                ],
            );
        }
        ServiceKind::Launchd => {
            let _ = run(
                "launchctl",
                &["bootout", &format!("{}/{LAUNCHD_LABEL}", gui_domain())],
            );
        }
    }
    let mut removed = Vec::new();
    for u in render(kind, Path::new(""), &home) {
        let path = dir.join(u.name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ClientError::Rpc(format!(
                    "cannot remove {}: {e}",
                    path.display()
                )));
            }
        }
    }
    if kind == ServiceKind::Systemd {
        let _ = run("systemctl", &["--user", "daemon-reload"]);
    }
    if as_json {
        println!("{}", json!({"kind": kind_name(kind), "removed": removed}));
    } else {
        for path in &removed {
            println!("removed {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gui_domain() -> String {
    format!("gui/{}", qwend_shared::paths::current_uid())
}

fn run(program: &str, args: &[&str]) -> Result<(), ClientError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        ClientError::Rpc(format!(
            "cannot run {program}: {e} (use --print to install by hand)"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(ClientError::Rpc(format!(
        "{program} {} failed: {}",
        args.join(" "),
        err.lines().next().unwrap_or("no message").trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_fills_every_placeholder_outside_comments() {
        for kind in [ServiceKind::Systemd, ServiceKind::Launchd] {
            for u in render(kind, Path::new("/opt/q/qwend"), Path::new("/home/u")) {
                let mut in_comment = false;
                for line in u.text.lines() {
                    let t = line.trim_start();
                    let comment = t.starts_with('#') || in_comment || t.starts_with("<!--");
                    in_comment = comment && kind == ServiceKind::Launchd && !line.contains("-->");
                    if !comment {
                        assert!(!line.contains('@'), "{}: {line}", u.name);
                    }
                }
                assert!(
                    !u.text.contains("replaces /opt/q/qwend"),
                    "a comment's placeholder was filled in: {}",
                    u.text
                );
                if u.name != "qwend.socket" {
                    assert!(u.text.contains("/opt/q/qwend"), "{}", u.name);
                }
            }
        }
    }

    #[test]
    fn systemd_socket_matches_the_client_default_path() {
        let units = render(ServiceKind::Systemd, Path::new("/q"), Path::new("/h"));
        assert!(units[0].text.contains("ListenStream=%t/qwend/qwend.sock"));
        assert!(units[0].text.contains("SocketMode=0600"));
    }
}
