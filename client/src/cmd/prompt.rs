//! `qwen -p PROMPT` (or `qwen PROMPT...`, or the prompt on stdin): the main job. Credentials
//! and a quota permit from the daemon, then a streamed chat completion printed as it
//! arrives; the outcome goes back to the daemon's quota.
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AuthType, ClientContext, ReportOutcomeRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::chat::{self, ChatError, ChatRequest};
use crate::cli::PromptArgs;
use crate::connect;
use crate::error::ClientError;
use crate::term;

/// How many HTTP 429 answers in a row before giving up (each one waits first).
const MAX_RATE_LIMITED: u32 = 5;

pub async fn run(args: PromptArgs, as_json: bool) -> Result<ExitCode, ClientError> {
    // Before anything else: a typed command must not start a daemon or spend a request.
    if let Some(msg) = typed_command_refusal(&args) {
        return Err(ClientError::Usage(msg));
    }
    let Some(prompt) = collect_prompt(&args)? else {
        return no_prompt().await;
    };
    let channel = connect::ensure(&qwend_shared::paths::socket_path()).await?;
    let ctx = super::env::context()?;
    let model = args.model.as_deref();
    let mut creds = super::credentials::obtain(&channel, &ctx, model).await?;
    for w in &creds.warnings {
        term::warn(w);
    }
    let http = chat::client().map_err(|e| ClientError::Upstream(e.to_string()))?;
    let mut retried_401 = false;
    let mut rate_limited = 0;
    let messages = [chat::Message::user(prompt)];
    loop {
        super::permit::acquire(&channel, &ctx, args.no_wait).await?;
        let req = ChatRequest {
            base_url: &creds.base_url,
            token: &creds.token,
            model: &creds.model,
            messages: &messages,
        };
        let mut out = Output::new(as_json, &creds.model);
        let result = chat::send(&http, &req, |t| out.token(t)).await;
        out.end();
        report(&channel, &ctx, &result).await;
        out.check()?;
        let err = match result {
            Ok(done) => {
                if as_json {
                    let v = json!({
                        "auth_type": type_name(creds.auth_type()),
                        "model": done.model.as_deref().unwrap_or(&creds.model),
                        "content": done.content,
                        "finish_reason": done.finish_reason,
                        "usage": done.usage,
                        "warnings": creds.warnings,
                    });
                    println!("{v}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => e,
        };
        match err {
            ChatError::Http { status: 401, .. } if !retried_401 => {
                retried_401 = true;
                creds = super::credentials::replace(&channel, &ctx, model, &creds.token).await?;
            }
            ChatError::Http { status: 401, .. } => {
                return Err(ClientError::AuthNeeded(format!(
                    "{err}; the credentials were refused twice ({})",
                    match creds.auth_type() {
                        AuthType::QwenOauth => "log in again with `qwen auth login`",
                        _ =>
                            "check OPENAI_API_KEY and OPENAI_BASE_URL (`qwen env` shows where they come from)",
                    }
                )));
            }
            ChatError::Http {
                status: 429,
                daily_exhausted: true,
                ..
            } => {
                return Err(ClientError::Quota(match creds.auth_type() {
                    // Not a limit of ours: usually the key's credit or plan; qwen keeps no
                    // day for this method, so nothing beyond a Retry-After is locked.
                    AuthType::Openai => format!(
                        "{err} (insufficient_quota: the provider says this key's quota or \
                         credit is used up; check its plan or billing)"
                    ),
                    _ => format!("{err} (daily quota used up)"),
                }));
            }
            ChatError::Http {
                status: 429,
                retry_after_ms,
                ..
            } => {
                rate_limited += 1;
                if args.no_wait || rate_limited >= MAX_RATE_LIMITED {
                    return Err(ClientError::Quota(format!(
                        "{err}{}",
                        if args.no_wait {
                            String::new()
                        } else {
                            format!(" ({rate_limited} times in a row)")
                        }
                    )));
                }
                // The report above started the daemon's cool-down; the next permit waits it out.
                if !std::io::stderr().is_terminal() {
                    eprintln!(
                        "qwen: rate limited (HTTP 429{}); waiting as the server asked",
                        retry_after_ms
                            .map(|ms| format!(", Retry-After {}", term::human_duration(ms)))
                            .unwrap_or_default()
                    );
                }
            }
            other => return Err(ClientError::Upstream(other.to_string())),
        }
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
pub(crate) fn typed_command(word: &str) -> Option<String> {
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
    let channel = connect::ensure(&qwend_shared::paths::socket_path()).await?;
    let ctx = super::env::context()?;
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

pub(super) async fn report(
    channel: &Channel,
    ctx: &ClientContext,
    result: &Result<chat::Completion, ChatError>,
) {
    let (status, retry_after_ms, daily_exhausted) = match result {
        Ok(_) => (200, None, false),
        Err(ChatError::Http {
            status,
            retry_after_ms,
            daily_exhausted,
            ..
        }) => (*status, *retry_after_ms, *daily_exhausted),
        // A stream that failed midway was still answered with 200 upstream.
        Err(ChatError::Stream(_) | ChatError::Malformed(_)) => (200, None, false),
        Err(ChatError::Network { .. }) => return,
    };
    let req = ReportOutcomeRequest {
        client: Some(ctx.clone()),
        http_status: status.into(),
        retry_after_ms,
        daily_exhausted,
    };
    // The answer matters more than the bookkeeping: a failed report is only logged.
    if let Err(e) = QuotaClient::new(channel.clone()).report_outcome(req).await {
        term::warn(&format!(
            "could not report the outcome to the quota: {}",
            e.message()
        ));
    }
}

fn type_name(t: AuthType) -> Option<&'static str> {
    match t {
        AuthType::QwenOauth => Some("qwen-oauth"),
        AuthType::Openai => Some("openai"),
        AuthType::Unspecified => None,
    }
}

/// Where tokens go: stdout as they arrive (text), or nowhere until the end (JSON). A
/// spinner on a terminal until the first token.
pub(super) struct Output {
    json: bool,
    spinner: Option<indicatif::ProgressBar>,
    stdout: std::io::Stdout,
    last: Option<char>,
    error: Option<std::io::Error>,
}

impl Output {
    pub(super) fn new(json: bool, model: &str) -> Self {
        Self {
            json,
            spinner: term::spinner(format!("waiting for {model}")),
            stdout: std::io::stdout(),
            last: None,
            error: None,
        }
    }

    pub(super) fn token(&mut self, t: &str) {
        if self.json {
            return;
        }
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
        if self.error.is_none() {
            let mut lock = self.stdout.lock();
            if let Err(e) = lock.write_all(t.as_bytes()).and_then(|()| lock.flush()) {
                self.error = Some(e);
            }
        }
        self.last = t.chars().last().or(self.last);
    }

    /// Finish the line, so a shell prompt or an error starts on its own.
    pub(super) fn end(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
        if self.error.is_none() && self.last.is_some_and(|c| c != '\n') {
            let mut lock = self.stdout.lock();
            if let Err(e) = lock.write_all(b"\n").and_then(|()| lock.flush()) {
                self.error = Some(e);
            }
        }
    }

    pub(super) fn check(&mut self) -> Result<(), ClientError> {
        match self.error.take() {
            Some(e) => Err(ClientError::Output(e.to_string())),
            None => Ok(()),
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
