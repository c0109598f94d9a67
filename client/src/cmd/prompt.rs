//! `qwen -p PROMPT` (or `qwen PROMPT...`, or the prompt on stdin): the main job. Credentials
//! and a quota permit from the daemon, then a streamed chat completion printed as it
//! arrives; the outcome goes back to the daemon's quota.
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use qwend_shared::api::{ClientContext, CredentialsReply};
use serde_json::json;
use tonic::transport::Channel;

use crate::chat;
use crate::cli::PromptArgs;
use crate::error::ClientError;
use crate::{connect, context, exchange};

pub async fn run(args: PromptArgs, as_json: bool) -> Result<ExitCode, ClientError> {
    // Before anything else: a typed command must not start a daemon or spend a request.
    if let Some(msg) = typed_command_refusal(&args) {
        return Err(ClientError::Usage(msg));
    }
    let Some(prompt) = collect_prompt(&args)? else {
        return no_prompt().await;
    };
    let channel = connect::daemon().await?;
    let ctx = context::current()?;
    let creds = super::credentials::obtain(&channel, &ctx, args.model.as_deref()).await?;
    let http = chat::client().map_err(|e| ClientError::Upstream(e.to_string()))?;
    let messages = [chat::Message::user(prompt)];
    let req = exchange::Request {
        messages: &messages,
        no_wait: args.no_wait,
        json: as_json,
        hints: &HINTS,
    };
    let mut daemon = Daemon {
        channel,
        ctx,
        model: args.model,
    };
    let done = exchange::send(&mut daemon, &http, creds, req, &mut None).await?;
    if as_json {
        let (c, creds) = (done.completion, done.creds);
        let v = json!({
            "auth_type": crate::method::name(creds.auth_type()),
            "model": c.model.as_deref().unwrap_or(&creds.model),
            "content": c.content,
            "finish_reason": c.finish_reason,
            "usage": c.usage,
            "warnings": creds.warnings,
        });
        println!("{v}");
    }
    Ok(ExitCode::SUCCESS)
}

const HINTS: exchange::Hints = exchange::Hints {
    relogin: "log in again with `qwen auth login`",
    check_key: "check OPENAI_API_KEY and OPENAI_BASE_URL (`qwen env` shows where they come from)",
};

/// The prompt's one connection to the daemon.
struct Daemon {
    channel: Channel,
    ctx: ClientContext,
    model: Option<String>,
}

impl exchange::Daemon for Daemon {
    fn channel(&self) -> &Channel {
        &self.channel
    }

    fn ctx(&self) -> &ClientContext {
        &self.ctx
    }

    async fn replace(&mut self, rejected: &str) -> Result<CredentialsReply, ClientError> {
        let model = self.model.as_deref();
        Ok(
            super::credentials::fetch(&self.channel, &self.ctx, model, Some(rejected.into()))
                .await?,
        )
    }
}

/// `-p`, else the words, else stdin when it is not a terminal. A prompt given with `-p` or
/// as words is followed by piped stdin (a blank line between): `git diff | qwen -p review`.
/// `None`: no prompt at all.
fn collect_prompt(args: &PromptArgs) -> Result<Option<String>, ClientError> {
    let given = if let Some(p) = &args.prompt {
        if !args.words.is_empty() {
            return Err(ClientError::Usage(
                "give the prompt either with -p or as arguments, not both".into(),
            ));
        }
        Some(p.clone())
    } else if !args.words.is_empty() {
        Some(args.words.join(" "))
    } else {
        None
    };
    let piped = !std::io::stdin().is_terminal();
    let text = match given {
        Some(p) if p.trim().is_empty() => p,
        Some(p) if piped => match read_piped()? {
            Some(input) if !input.trim().is_empty() => format!("{p}\n\n{input}"),
            _ => p,
        },
        Some(p) => p,
        None if piped => read_stdin()?,
        None => return Ok(None),
    };
    if text.trim().is_empty() {
        return Err(ClientError::Usage("the prompt is empty".into()));
    }
    Ok(Some(text))
}

/// Qwen Code's bound on piped input. Larger input is refused rather than cut, so nothing
/// is silently lost (and a stray `cat /dev/zero |` cannot eat the memory).
const MAX_STDIN_BYTES: u64 = 8 * 1024 * 1024;

fn read_stdin() -> Result<String, ClientError> {
    let mut s = String::new();
    std::io::stdin()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_string(&mut s)
        .map_err(|e| ClientError::Usage(format!("cannot read the prompt from stdin: {e}")))?;
    if s.len() as u64 > MAX_STDIN_BYTES {
        return Err(ClientError::Usage(format!(
            "stdin holds more than {} MiB, more than a prompt can carry; send a part of it",
            MAX_STDIN_BYTES / 1024 / 1024
        )));
    }
    Ok(s)
}

/// How long a prompt given as arguments waits for the first byte (or the end) of a stdin
/// that is not a terminal. Qwen Code waits 500 ms too: editors and job runners often start
/// `qwen -p` with a pipe they never write to nor close, which must not hang the prompt.
/// Once anything arrives, stdin is read to its end however slow the writer is.
const PIPED_FIRST_BYTE_MS: i64 = 500;

/// Piped input to go with a prompt; `None` when nothing arrives in time.
#[cfg(unix)]
fn read_piped() -> Result<Option<String>, ClientError> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdin = std::io::stdin();
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: PIPED_FIRST_BYTE_MS * 1_000_000,
    };
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Ok(None),
            Ok(_) if fds[0].revents().contains(PollFlags::NVAL) => return Ok(None),
            Ok(_) => return read_stdin().map(Some),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(ClientError::Usage(format!("cannot read stdin: {e}")));
            }
        }
    }
}

#[cfg(not(unix))]
fn read_piped() -> Result<Option<String>, ClientError> {
    read_stdin().map(Some)
}

/// Commands people type at the shell without their group (`qwen login`, `qwen status`) and
/// near misses of any command name (`qwen statuss`). Given as a one-word prompt they would
/// go to the model and spend a request; almost nobody means that, so they are a usage
/// error with the command meant. `-p` sends any text. The names come from the clap
/// definition, so a new subcommand is covered without a list to keep; `strsim` measures
/// the misses (clap keeps its own suggestion code private).
fn typed_command_refusal(args: &PromptArgs) -> Option<String> {
    if args.prompt.is_some() {
        return None;
    }
    let [word] = args.words.as_slice() else {
        return None;
    };
    let suggestion = typed_command(word)?;
    Some(format!(
        "{word:?} looks like a command, so it was not sent to the model\n  did you mean: {suggestion}\n  to send it as a prompt anyway: qwen -p {word:?}"
    ))
}

/// Words that are commands elsewhere, meant here (the first holder of a name wins: `status`
/// is `qwen auth status`, not `qwen daemon status`).
const ALIASES: [(&str, &str); 3] = [
    ("whoami", "qwen auth status"),
    ("help", "qwen --help"),
    ("version", "qwen --version"),
];

/// The command a word most likely meant, if it is one.
fn typed_command(word: &str) -> Option<String> {
    use clap::CommandFactory;
    if word.len() < 2 || !word.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
        return None;
    }
    let word = word.to_ascii_lowercase();
    let cli = crate::cli::Cli::command();
    let mut names: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, command: String| {
        if !names.iter().any(|(n, _)| n == name) {
            names.push((name.to_string(), command));
        }
    };
    let visible = || cli.get_subcommands().filter(|c| !c.is_hide_set());
    for top in visible() {
        add(top.get_name(), format!("qwen {}", top.get_name()));
    }
    for top in visible() {
        for sub in top.get_subcommands().filter(|c| !c.is_hide_set()) {
            add(
                sub.get_name(),
                format!("qwen {} {}", top.get_name(), sub.get_name()),
            );
        }
    }
    for (name, command) in ALIASES {
        add(name, command.to_string());
    }
    names
        .into_iter()
        .filter_map(|(name, command)| {
            let d = strsim::damerau_levenshtein(&word, &name);
            (d <= near_miss_distance(&name)).then_some((d, command))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, command)| command)
}

/// How far a word may be from a command name to count as a miss of it: none for short
/// names (`man`, `env`: `map` and `eve` are words), one for most, two for long ones.
fn near_miss_distance(name: &str) -> usize {
    match name.len() {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2,
    }
}

/// Bare `qwen` on a terminal: set up authentication when nothing is configured (Qwen
/// Code's first run), else show the help.
async fn no_prompt() -> Result<ExitCode, ClientError> {
    use clap::CommandFactory;
    let channel = connect::daemon().await?;
    let ctx = context::current()?;
    match super::credentials::fetch(&channel, &ctx, None, None).await {
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            super::credentials::obtain(&channel, &ctx, None).await?;
            eprintln!("qwen: ready. Ask something: qwen -p 'PROMPT'");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let _ = crate::cli::Cli::command().print_help();
            Ok(ExitCode::from(crate::error::code::USAGE))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::typed_command;

    #[test]
    fn verbs_and_near_misses_name_the_command() {
        for (word, meant) in [
            ("login", "qwen auth login"),
            ("logout", "qwen auth logout"),
            ("status", "qwen auth status"),
            ("statuss", "qwen auth status"),
            ("Status", "qwen auth status"),
            ("stauts", "qwen auth status"),
            ("token", "qwen auth token"),
            ("switch", "qwen auth switch"),
            ("whoami", "qwen auth status"),
            ("quot", "qwen quota"),
            ("deamon", "qwen daemon"),
            ("completion", "qwen completions"),
            ("stop", "qwen daemon stop"),
            ("install", "qwen daemon install"),
        ] {
            assert_eq!(typed_command(word).as_deref(), Some(meant), "{word}");
        }
    }

    #[test]
    fn ordinary_words_are_prompts() {
        for word in [
            "hi",
            "hello",
            "why",
            "explain",
            "map",
            "eve",
            "summarize",
            "2+2",
            "what?",
            "x",
            "translate",
            "refactor",
        ] {
            assert_eq!(typed_command(word), None, "{word}");
        }
    }
}
