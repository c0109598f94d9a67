//! The `qwen` command line.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "qwen",
    version,
    about = "Qwen Code credentials and quota through the qwend daemon",
    arg_required_else_help = true
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Authentication: status, method, logout.
    Auth {
        #[command(subcommand)]
        action: AuthAction,
    },
    /// Requests used and left this minute and today, and when they reset.
    Quota,
    /// Show which .env file applies to a directory and what it sets.
    Env(EnvArgs),
    /// Manage the background daemon (qwend).
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonAction {
    /// Show the daemon's pid, version, socket and uptime (starting it if needed).
    Status,
    /// Start the daemon if it is not running.
    Start,
    /// Stop the daemon (it finishes in-flight calls first).
    Stop,
    /// Register qwend with the service manager (systemd user units with socket
    /// activation on Linux, a LaunchAgent on macOS) and enable it.
    Install {
        #[command(flatten)]
        kind: ServiceChoice,
        /// Print the unit files instead of installing them.
        #[arg(long)]
        print: bool,
    },
    /// Disable and remove what `install` set up.
    Uninstall {
        #[command(flatten)]
        kind: ServiceChoice,
    },
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct ServiceChoice {
    /// systemd user units (default on Linux).
    #[arg(long)]
    pub systemd: bool,
    /// launchd LaunchAgent (default on macOS).
    #[arg(long)]
    pub launchd: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Systemd,
    Launchd,
}

impl ServiceChoice {
    pub fn kind(&self) -> Option<ServiceKind> {
        match (self.systemd, self.launchd) {
            (true, _) => Some(ServiceKind::Systemd),
            (_, true) => Some(ServiceKind::Launchd),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// Resolve for this directory instead of the current one.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Print `export KEY='value'` lines for a POSIX shell (`eval "$(qwen env --export)"`).
    #[arg(long, conflicts_with = "json")]
    pub export: bool,
    /// Show values of keys that look secret (containing KEY, TOKEN, SECRET, PASSWORD).
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthAction {
    /// Method, logged in or not, expiry, store, base URL, model and quota.
    Status,
    /// Change the method for every client now (no argument on a terminal: choose).
    Switch {
        #[arg(value_enum)]
        method: Option<Method>,
    },
    /// Forget the Qwen OAuth credentials everywhere they are stored.
    Logout,
    /// Log in with Qwen OAuth: the daemon runs the device flow; open the page shown (or
    /// scan the QR code) and approve. Needs a terminal.
    Login {
        /// Do not open a browser; just show the link, the code and the QR code.
        #[arg(long)]
        no_browser: bool,
        /// Log in again even when valid credentials are held (e.g. another account).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    #[value(name = "qwen-oauth")]
    QwenOauth,
    #[value(name = "openai")]
    Openai,
}
