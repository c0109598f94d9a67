#![forbid(unsafe_code)]
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

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
    let cli = hot_path(std::env::args_os().skip(1))
        .unwrap_or_else(|| cli::Cli::parse_from(json_after_command(std::env::args_os().collect())));
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
        start_settings::settings_checked().await;
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
fn hot_path(args: impl Iterator<Item = std::ffi::OsString>) -> Option<cli::Cli> {
    let mut json = false;
    let mut rest = Vec::with_capacity(2);
    for arg in args {
        match arg.to_str()? {
            "--json" if !json => json = true,
            word @ ("auth" | "token") if rest.len() < 2 => rest.push(word == "auth"),
            _ => return None,
        }
    }
    (rest == [true, false]).then(|| cli::Cli {
        json,
        prompt: cli::PromptArgs::default(),
        command: Some(cli::Command::Auth {
            action: cli::AuthAction::Token,
        }),
    })
}

/// `qwen --json auth status` is `qwen auth status --json`. clap would read it as a prompt:
/// with `args_conflicts_with_subcommands` (which lets `qwen hello world` be a prompt) any
/// argument before the first word, the global `--json` included, turns the words into the
/// prompt. A leading `--json` therefore moves behind the word when that word is a command;
/// before a prompt it stays where it is.
fn json_after_command(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let lead = args.iter().skip(1).take_while(|a| *a == "--json").count();
    let Some(word) = args.get(1 + lead).and_then(|a| a.to_str()) else {
        return args;
    };
    if lead > 0
        && cli::Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == word || c.get_all_aliases().any(|a| a == word))
    {
        args[1..=1 + lead].rotate_left(lead);
    }
    args
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> cli::Cli {
        let args = std::iter::once("qwen")
            .chain(line.split(' '))
            .map(Into::into);
        cli::Cli::try_parse_from(json_after_command(args.collect())).unwrap()
    }

    /// A leading `--json` belongs to the command that follows; before a prompt it stays.
    #[test]
    fn a_leading_json_goes_to_the_command() {
        let c = parse("--json auth status");
        assert!(c.json && c.prompt.words.is_empty(), "{c:?}");
        assert!(
            matches!(c.command, Some(cli::Command::Auth { .. })),
            "{c:?}"
        );
        let c = parse("--json daemon status");
        assert!(
            c.json && matches!(c.command, Some(cli::Command::Daemon { .. })),
            "{c:?}"
        );
        let c = parse("--json hello world");
        assert!(c.json && c.command.is_none(), "{c:?}");
        assert_eq!(c.prompt.words, ["hello", "world"]);
        let c = parse("--json");
        assert!(c.json && c.command.is_none(), "{c:?}");
    }

    /// The hot path reads exactly what clap reads, and leaves everything else to clap.
    #[test]
    fn the_hot_path_agrees_with_clap() {
        let taken = [
            "auth token",
            "--json auth token",
            "auth --json token",
            "auth token --json",
        ];
        for line in taken {
            let args = || line.split(' ').map(std::ffi::OsString::from);
            let fast = hot_path(args()).unwrap_or_else(|| panic!("{line}: not taken"));
            let slow = parse(line);
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{line}");
        }
        let left = [
            "auth",
            "token",
            "token auth",
            "auth token token",
            "--json --json auth token",
            "auth token --help",
            "auth status",
            "-p auth token",
        ];
        for line in left {
            assert!(
                hot_path(line.split(' ').map(std::ffi::OsString::from)).is_none(),
                "{line}"
            );
        }
    }
}
