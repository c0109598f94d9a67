use std::process::ExitCode;

use clap::Parser;

mod chat;
mod cli;
mod cmd;
mod connect;
mod error;
mod sse;
mod term;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qwen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cmd::run(cli));
    // A blocking helper still running (a browser launcher that stays in the foreground)
    // must not keep the command from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            if !matches!(e, error::ClientError::Exit(_)) {
                eprintln!("qwen: {e}");
            }
            e.exit_code()
        }
    }
}
