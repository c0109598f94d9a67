//! The `qwen` command line.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::method::Method;

#[derive(Debug, Parser)]
#[command(
    name = "qwen",
    version,
    about = "Ask Qwen from the command line, with the credentials and quota of the qwend daemon",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub prompt: PromptArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `qwen [-p PROMPT | PROMPT...]`: send a prompt to the model (stdin when not a terminal).
#[derive(Debug, Default, Args)]
pub struct PromptArgs {
    /// The prompt to send (else the remaining arguments, else stdin when it is not a terminal).
    #[arg(short = 'p', long = "prompt", value_name = "PROMPT")]
    pub prompt: Option<String>,
    /// Open an interactive chat session whose first message is PROMPT (`qwen` alone on a
    /// terminal opens one with no first message).
    #[arg(
        short = 'i',
        long = "interactive",
        value_name = "PROMPT",
        conflicts_with = "prompt"
    )]
    pub interactive: Option<String>,
    /// Model to request instead of the one configured for the auth method.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Exit 4 at once when the quota refuses, instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// The prompt as words (joined with spaces).
    #[arg(value_name = "PROMPT", trailing_var_arg = true)]
    pub words: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run in this directory, with the .env and credentials that apply there.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Also load keys that can make CMD run code (LD_PRELOAD, GIT_DIR, NODE_OPTIONS, HOME,
    /// XDG_*, npm_config_*, ...) from a project .env; the user's ~/.qwen/.env and ~/.env
    /// may always set them.
    #[arg(long)]
    pub allow_unsafe_env: bool,
    /// Give CMD the real token instead of a proxy secret (the default for Qwen OAuth is the daemon's loopback proxy).
    #[arg(long, conflicts_with = "proxy")]
    pub direct: bool,
    /// Send CMD's requests through the daemon's loopback proxy with a per-run secret (the default for Qwen OAuth; opt-in for an API key).
    #[arg(long)]
    pub proxy: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Authentication: status, method, logout.
    Auth {
        #[command(subcommand)]
        action: AuthAction,
    },
    /// Requests used and left this minute and today, and when they reset.
    Quota {
        #[command(subcommand)]
        action: Option<QuotaAction>,
    },
    /// Show which .env file applies to a directory and what it sets.
    Env(EnvArgs),
    /// Manage the background daemon (qwend).
    Daemon {
        #[command(subcommand)]
        action: DaemonAction,
    },
    /// Run CMD with the .env and OPENAI_API_KEY/OPENAI_BASE_URL/OPENAI_MODEL of the current login.
    Exec(ExecArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): `qwen man > qwen.1`, `qwen man auth > qwen-auth.1`, or
    /// write every page with `qwen man --dir DIR`.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The subcommand whose page to print (`auth`, `daemon stop`, ...); none: qwen(1).
    #[arg(value_name = "SUBCOMMAND")]
    pub command: Vec<String>,
    /// Write every page (qwen.1, qwen-auth.1, qwen-auth-status.1, ...) into DIR instead.
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum QuotaAction {
    /// Clear the counters, cool-down and "day used up" of an account (default: the one
    /// the current method uses here).
    Reset {
        /// The account to reset, as `qwen quota` names it (`openai`, `qwen-oauth:…`).
        #[arg(long, value_name = "A")]
        account: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonAction {
    /// Show the daemon's pid, version, socket and uptime (starting it if needed).
    Status,
    /// Start the daemon if it is not running.
    Start,
    /// Stop the daemon (it finishes in-flight calls first). A daemon that does not answer
    /// or does not exit gets SIGTERM, then SIGKILL after a grace period.
    Stop,
    /// Stop the daemon and start it again with this environment: applies the settings it
    /// reads only at start (QWEN_OAUTH_BASE_URL, QWEND_QUOTA_*, QWEN_CREDENTIAL_STORE, ...).
    Restart,
    /// Register qwend with the service manager (systemd user units with socket
    /// activation on Linux, a LaunchAgent on macOS) and enable it.
    Install {
        #[command(flatten)]
        kind: ServiceChoice,
        /// Print the unit files and where they would go, instead of installing them.
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
    /// With --export, also export keys that can make programs run code (LD_PRELOAD,
    /// GIT_DIR, NODE_OPTIONS, ...) from a project .env; see `qwen exec --allow-unsafe-env`.
    #[arg(long, requires = "export")]
    pub allow_unsafe_env: bool,
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
    /// Print the current bearer token and nothing else (for scripts).
    Token,
}
