//! One module per command group; each returns the process exit code.
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::ClientError;

mod auth;
mod daemon;
mod env;
mod install;
pub mod login;
mod quota;

pub async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    match cli.command {
        Command::Daemon { action } => daemon::run(action, cli.json).await,
        Command::Env(args) => env::run(args, cli.json).await,
        Command::Auth { action } => auth::run(action, cli.json).await,
        Command::Quota => quota::run(cli.json).await,
    }
}
