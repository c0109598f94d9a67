//! `qwen completions SHELL` and `qwen man`, both generated from the clap definitions so
//! they never drift from the real command line.
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::ClientError;

pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode, ClientError> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "qwen", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man() -> Result<ExitCode, ClientError> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| ClientError::Output(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
