//! `qwen daemon install|uninstall`: register qwend with the user's service manager
//! (systemd user units with socket activation, or a launchd LaunchAgent).
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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

/// The unit files with this installation's real paths.
pub fn render(kind: ServiceKind, qwend: &Path, home: &Path) -> Vec<UnitFile> {
    let fill = |t: &str| {
        t.replace("@QWEND@", &qwend.display().to_string())
            .replace("@HOME@", &home.display().to_string())
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

pub fn install(kind: Option<ServiceKind>, print: bool) -> Result<ExitCode, ClientError> {
    let kind = kind.unwrap_or_else(default_kind);
    let home = home()?;
    let units = render(kind, &qwend_path()?, &home);
    if print {
        for u in &units {
            println!("# {}\n{}", u.name, u.text);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dir = unit_dir(kind, &home);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ClientError::Rpc(format!("cannot create {}: {e}", dir.display())))?;
    for u in &units {
        let path = dir.join(u.name);
        std::fs::write(&path, &u.text)
            .map_err(|e| ClientError::Rpc(format!("cannot write {}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    match kind {
        ServiceKind::Systemd => {
            run("systemctl", &["--user", "daemon-reload"])?;
            run("systemctl", &["--user", "enable", "--now", "qwend.socket"])?;
            println!("enabled qwend.socket: the first client now starts qwend through systemd");
        }
        ServiceKind::Launchd => {
            let plist = dir.join(units[0].name);
            run(
                "launchctl",
                &["bootstrap", &gui_domain(), &plist.display().to_string()],
            )?;
            println!("loaded {LAUNCHD_LABEL}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(kind: Option<ServiceKind>) -> Result<ExitCode, ClientError> {
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
    for u in render(kind, Path::new(""), &home) {
        let path = dir.join(u.name);
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
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
    Ok(ExitCode::SUCCESS)
}

fn gui_domain() -> String {
    format!("gui/{}", qwend_shared::transport::current_uid())
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
    fn rendering_fills_every_placeholder() {
        for kind in [ServiceKind::Systemd, ServiceKind::Launchd] {
            for u in render(kind, Path::new("/opt/q/qwend"), Path::new("/home/u")) {
                assert!(!u.text.contains('@'), "{}: {}", u.name, u.text);
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
