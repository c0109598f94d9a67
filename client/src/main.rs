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
    let cli = hot_path().unwrap_or_else(cli::Cli::parse);
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

/// `qwen auth token` runs once per request in scripts (`curl -H "Authorization: Bearer
/// $(qwen auth token)"`), so its start-up is part of their latency. Building clap's command
/// tree (every subcommand with its help text) costs about a sixth of the whole command's
/// instructions, as much as the round trip to the daemon; the argument lists that clap
/// would read as `auth token` are recognised here without it (`--json` is global, so it may
/// stand anywhere, once). Anything else, `--help` included, goes through clap.
fn hot_path() -> Option<cli::Cli> {
    let mut json = false;
    let mut rest = Vec::with_capacity(2);
    for arg in std::env::args_os().skip(1) {
        match arg.to_str()? {
            "--json" if !json => json = true,
            word @ ("auth" | "token") if rest.len() < 2 => rest.push(word == "auth"),
            _ => return None,
        }
    }
    (rest == [true, false]).then(|| cli::Cli {
        json,
        prompt: cli::PromptArgs {
            prompt: None,
            interactive: None,
            model: None,
            no_wait: false,
            words: Vec::new(),
        },
        command: Some(cli::Command::Auth {
            action: cli::AuthAction::Token,
        }),
    })
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
