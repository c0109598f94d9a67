//! One module per command group; each returns the process exit code.
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::ClientError;

mod daemon;
mod env;
mod install;

pub async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    match cli.command {
        Command::Daemon { action } => daemon::run(action, cli.json).await,
        Command::Env(args) => env::run(args, cli.json).await,
    }
}
