//! One module per command group; each returns the process exit code.
use std::process::ExitCode;

use crate::cli::{AuthAction, Cli, Command};
use crate::error::ClientError;

mod auth;
mod credentials;
pub mod daemon;
mod docs;
mod env;
mod exec;
mod first_run;
mod install;
mod login;
mod menu;
mod prompt;
mod proxy;
mod quota;
mod session;
mod token;

pub async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let Some(command) = cli.command else {
        if session::wanted(&cli.prompt) {
            return session::run(cli.prompt).await;
        }
        return prompt::run(cli.prompt, cli.json).await;
    };
    match command {
        Command::Daemon { action } => daemon::run(action, cli.json).await,
        Command::Env(args) => env::run(args, cli.json).await,
        Command::Auth {
            action: AuthAction::Token,
        } => token::run(cli.json).await,
        Command::Auth { action } => auth::run(action, cli.json).await,
        Command::Quota { action } => quota::run(action, cli.json).await,
        Command::Exec(args) => exec::run(args).await,
        Command::Completions { shell } => docs::completions(shell),
        Command::Man(args) => docs::man(args),
    }
}
