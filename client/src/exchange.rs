//! One model request as `qwen -p` and the chat session both make it: a quota permit from
//! the daemon, the streamed chat completion, its outcome reported back to the quota. An
//! HTTP 401 gets one retry with credentials other than the refused ones (the daemon
//! refreshes once for every client that saw the same 401); an HTTP 429 is waited out
//! through the next permit (the report started the daemon's cool-down), at most
//! [`MAX_RATE_LIMITED`] times in a row, never with `--no-wait` nor for a used-up day.
use std::io::{IsTerminal, Write};

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AuthType, ClientContext, CredentialsReply, ReportOutcomeRequest};
use tonic::transport::Channel;

use crate::chat::{self, ChatError, ChatRequest, Message};
use crate::error::ClientError;
use crate::{permit, term};

/// How many HTTP 429 answers in a row before giving up (each one waits first).
pub const MAX_RATE_LIMITED: u32 = 5;

/// The caller's connection to the daemon, as the exchange needs it.
pub trait Daemon {
    fn channel(&self) -> &Channel;
    fn ctx(&self) -> &ClientContext;
    /// After an HTTP 401: credentials other than the `rejected` token.
    async fn replace(&mut self, rejected: &str) -> Result<CredentialsReply, ClientError>;
}

/// The next step after credentials were refused twice, in the words of the caller's
/// interface (a command line, or the session's slash commands).
pub struct Hints {
    /// Qwen OAuth: how to log in again.
    pub relogin: &'static str,
    /// An API key: where to check it.
    pub check_key: &'static str,
}

pub struct Request<'a> {
    pub messages: &'a [Message],
    pub no_wait: bool,
    /// The answer is printed at the end as JSON (by the caller), not streamed.
    pub json: bool,
    pub hints: &'a Hints,
}

pub struct Answer {
    pub completion: chat::Completion,
    /// The credentials that were accepted.
    pub creds: CredentialsReply,
}

/// Sends `req` with `creds` (their warnings are shown first). The answer streams to
/// `out` (stdout) as it arrives; `out` is left with the caller, so that an exchange that
/// is dropped half-way (Ctrl-C) can still end its line.
pub async fn send(
    daemon: &mut impl Daemon,
    http: &reqwest::Client,
    mut creds: CredentialsReply,
    req: Request<'_>,
    out: &mut Option<Output>,
) -> Result<Answer, ClientError> {
    for w in &creds.warnings {
        term::warn_once(w);
    }
    let mut retried_401 = false;
    let mut rate_limited = 0;
    loop {
        permit::acquire(daemon.channel(), daemon.ctx(), req.no_wait).await?;
        let chat = ChatRequest {
            base_url: &creds.base_url,
            token: &creds.token,
            model: &creds.model,
            messages: req.messages,
        };
        let o = out.insert(Output::new(req.json, &creds.model));
        let result = chat::send(http, &chat, |t| o.token(t)).await;
        o.end();
        report(daemon.channel(), daemon.ctx(), &result).await;
        o.check()?;
        let err = match result {
            Ok(completion) => return Ok(Answer { completion, creds }),
            Err(e) => e,
        };
        match err {
            ChatError::Http { status: 401, .. } if !retried_401 => {
                retried_401 = true;
                creds = daemon.replace(&creds.token).await?;
            }
            ChatError::Http { status: 401, .. } => {
                return Err(ClientError::AuthNeeded(format!(
                    "{err}; the credentials were refused twice ({})",
                    match creds.auth_type() {
                        AuthType::QwenOauth => req.hints.relogin,
                        _ => req.hints.check_key,
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
                if req.no_wait || rate_limited >= MAX_RATE_LIMITED {
                    return Err(ClientError::Quota(format!(
                        "{err}{}",
                        if req.no_wait {
                            String::new()
                        } else {
                            format!(" ({rate_limited} times in a row)")
                        }
                    )));
                }
                // The report above started the daemon's cool-down; the next permit waits it
                // out. On a terminal its spinner says so.
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

async fn report(
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

/// Where tokens go: stdout as they arrive (text), or nowhere until the end (JSON). A
/// spinner on a terminal until the first token.
pub struct Output {
    json: bool,
    spinner: Option<indicatif::ProgressBar>,
    stdout: std::io::Stdout,
    last: Option<char>,
    error: Option<std::io::Error>,
}

impl Output {
    pub fn new(json: bool, model: &str) -> Self {
        Self {
            json,
            spinner: term::spinner(format!("waiting for {model}")),
            stdout: std::io::stdout(),
            last: None,
            error: None,
        }
    }

    pub fn token(&mut self, t: &str) {
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
    pub fn end(&mut self) {
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

    pub fn check(&mut self) -> Result<(), ClientError> {
        match self.error.take() {
            Some(e) => Err(ClientError::Output(e.to_string())),
            None => Ok(()),
        }
    }
}
