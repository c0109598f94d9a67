#![forbid(unsafe_code)]
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod chat;
mod cli;
mod cmd;
mod connect;
mod context;
mod error;
mod exchange;
mod method;
mod permit;
mod sse;
mod start_settings;
mod term;
mod unsafe_env;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
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
    let result = runtime.block_on(async {
        let result = cmd::run(cli).await;
        cmd::daemon::settings_checked().await;
        result
    });
    // A blocking helper still running (a browser launcher that stays in the foreground)
    // must not keep the command from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        // Commands that write with `write!` report the closed stdout as an error: the same
        // quiet ending as a `println!` (see `quiet_on_closed_stdout`).
        Err(error::ClientError::Output(msg)) if is_broken_pipe_text(&msg) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, error::ClientError::Exit(_)) {
                eprintln!("qwen: {e}");
            }
            e.exit_code()
        }
    }
}

/// A reader that went away (`qwen auth status | head -1`, `| true`) is not an error of
/// ours: the command ends quietly with success, as ripgrep does. Resetting SIGPIPE to its
/// default would do the same for stdout but would also let a daemon that closes its socket
/// mid-write kill the client silently instead of exit 5, so the broken pipe is caught here:
/// `println!` panics with "failed printing to stdout: Broken pipe"; every such panic, in
/// any command, exits 0 before the panic message is printed.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && is_broken_pipe_text(msg) {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn is_broken_pipe_text(msg: &str) -> bool {
    msg.contains(&format!(
        "(os error {})",
        rustix::io::Errno::PIPE.raw_os_error()
    )) || msg.contains("Broken pipe")
}

/// Writes `bytes` to stdout and flushes; a closed stdout ends the command quietly (see
/// [`quiet_on_closed_stdout`]). For output written in one piece (completions, man pages).
pub fn emit(bytes: &[u8]) -> Result<(), error::ClientError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(error::ClientError::Output(e.to_string())),
    }
}
