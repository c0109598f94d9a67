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
            } => return Err(ClientError::Quota(format!("{err} (daily quota used up)"))),
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

/// `-p`, else the words, else stdin when it is not a terminal. `None`: no prompt at all.
fn collect_prompt(args: &PromptArgs) -> Result<Option<String>, ClientError> {
    let text = if let Some(p) = &args.prompt {
        if !args.words.is_empty() {
            return Err(ClientError::Usage(
                "give the prompt either with -p or as arguments, not both".into(),
            ));
        }
        p.clone()
    } else if !args.words.is_empty() {
        args.words.join(" ")
    } else if !std::io::stdin().is_terminal() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| ClientError::Usage(format!("cannot read the prompt from stdin: {e}")))?;
        s
    } else {
        return Ok(None);
    };
    if text.trim().is_empty() {
        return Err(ClientError::Usage("the prompt is empty".into()));
    }
    Ok(Some(text))
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
