//! The `qwen` command line.
use clap::{Parser, Subcommand};

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
}
