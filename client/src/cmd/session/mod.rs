//! `qwen` alone on a terminal (or `qwen -i PROMPT`): an interactive chat session. The
//! conversation is sent each turn; credentials, quota permits and the auth method come
//! from the daemon before every message, so a switch made here (`/auth`) or anywhere else
//! applies to the next message without a restart. Ctrl-C cancels a streaming answer;
//! Ctrl-C twice on an empty line, Ctrl-D or `/quit` leave.
use std::process::ExitCode;

use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{AuthStatus, AuthType, SwitchAuthRequest};
use tokio::signal::unix::{SignalKind, signal};

use crate::chat::{self, Message};
use crate::cli::PromptArgs;
use crate::connect;
use crate::error::ClientError;
use crate::exchange;
use crate::method::{self, Method};
use crate::term;

mod editor;
mod events;
mod link;

use editor::{Editor, Read};
use events::Known;
use link::Link;

pub const PROMPT: &str = "qwen> ";

/// A session is what the person asked for: `-i`, or no prompt at all on a terminal.
pub fn wanted(args: &PromptArgs) -> bool {
    args.interactive.is_some()
        || (args.prompt.is_none() && args.words.is_empty() && term::on_terminal())
}

pub async fn run(args: PromptArgs) -> Result<ExitCode, ClientError> {
    if !term::on_terminal() {
        return Err(ClientError::Usage(
            "an interactive session needs a terminal (stdin and stdout); in scripts use -p PROMPT"
                .into(),
        ));
    }
    let channel = connect::daemon().await?;
    let editor = Editor::new(editor::history_path())?;
    // Installs the SIGINT handler for the process: from now on Ctrl-C outside the line
    // editor cancels what runs (an answer, a quota wait) instead of killing the session.
    // After the editor, which sets a SIGINT handler of its own when created (it needs
    // none: it reads Ctrl-C as a key in raw mode).
    drop(
        signal(SignalKind::interrupt())
            .map_err(|e| ClientError::Output(format!("cannot handle Ctrl-C: {e}")))?,
    );
    let mut s = Session {
        link: Link {
            channel,
            ctx: crate::context::current()?,
            model: args.model,
            known: Known::default(),
            notices: editor.notices(),
            events: None,
        },
        http: chat::client().map_err(|e| ClientError::Upstream(e.to_string()))?,
        no_wait: args.no_wait,
        messages: Vec::new(),
        editor,
    };
    s.link.watch().await;
    s.first_run().await;
    s.header().await;
    if let Some(first) = args.interactive.filter(|p| !p.trim().is_empty()) {
        println!("{PROMPT}{first}");
        s.turn(first).await;
        s.editor.forget_interrupts();
    }
    let mut interrupted_once = false;
    loop {
        match s.editor.read(PROMPT, true).await? {
            Read::Eof => break,
            Read::Interrupted { empty } => {
                if empty && interrupted_once {
                    break;
                }
                interrupted_once = empty;
                if empty {
                    eprintln!("(Ctrl-C again, Ctrl-D or /quit to leave)");
                }
            }
            Read::Line(line) => {
                interrupted_once = false;
                if line.trim().is_empty() {
                    continue;
                }
                if line.starts_with('/') {
                    if s.command(line.trim()).await == Flow::Quit {
                        break;
                    }
                } else {
                    // A Ctrl-C during the answer cancelled it; it is not one at the prompt.
                    s.turn(line).await;
                    s.editor.forget_interrupts();
                }
            }
        }
    }
    if let Some(h) = s.link.events.take() {
        h.abort();
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

struct Session {
    link: Link,
    http: reqwest::Client,
    no_wait: bool,
    messages: Vec<Message>,
    editor: Editor,
}

const HINTS: exchange::Hints = exchange::Hints {
    relogin: "log in again: /auth qwen-oauth",
    check_key: "check OPENAI_API_KEY and OPENAI_BASE_URL (/env shows where they come from)",
};

impl Session {
    /// Nothing configured: Qwen Code's first-run choice, inside the session.
    async fn first_run(&mut self) {
        match super::credentials::fetch(
            &self.link.channel,
            &self.link.ctx,
            self.link.model.as_deref(),
            None,
        )
        .await
        {
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                eprintln!("qwen: {}", one_line(s.message()));
                self.set_up(None).await;
            }
            _ => {}
        }
    }

    /// The picker (unless `method` is given) and what the method needs, until it works
    /// or the person backs out. A cancelled login comes back to the picker.
    async fn set_up(&mut self, mut method: Option<Method>) -> bool {
        loop {
            let m = match method.take() {
                Some(m) => m,
                None => match self.pick().await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        eprintln!("qwen: not set up; type /auth when you are ready");
                        return false;
                    }
                    Err(e) => {
                        eprintln!("qwen: {}", one_line(&e.to_string()));
                        continue;
                    }
                },
            };
            let made = self.make_work(m).await;
            // A Ctrl-C that cancelled the login must not also back out of the menu.
            self.editor.forget_interrupts();
            match made {
                Ok(()) => return true,
                // The login was cancelled (Ctrl-C): choose again.
                Err(ClientError::Exit(_)) => {}
                Err(e) => eprintln!("qwen: {}", one_line(&e.to_string())),
            }
        }
    }

    async fn pick(&mut self) -> Result<Option<Method>, ClientError> {
        // The answer is read with the line editor: Ctrl-C backs out.
        let editor = &self.editor;
        super::menu::pick(async |q| match editor.read(q, false).await? {
            Read::Line(a) => Ok(Some(a)),
            Read::Interrupted { .. } | Read::Eof => Ok(None),
        })
        .await
    }

    /// Log in, or ask for a key; either way the method ends up selected.
    async fn make_work(&mut self, m: Method) -> Result<(), ClientError> {
        match m {
            Method::QwenOauth => {
                self.link.known.logging_in();
                let r = super::first_run::set_up(&self.link.channel, &self.link.ctx, m).await;
                self.link.known.login_done(r.is_ok());
                r?;
                // A login selects Qwen OAuth only when nothing was selected; asking for it
                // here means wanting it.
                if self.link.known.method() != Some(AuthType::QwenOauth) {
                    let st = self.switch_rpc(Method::QwenOauth).await?;
                    println!(
                        "auth method is now {} (every client uses it from now on)",
                        method::name(st.auth_type()).unwrap_or("none")
                    );
                }
                Ok(())
            }
            Method::Openai => {
                let before = self.link.known.method();
                self.link.known.set_method(Some(AuthType::Openai));
                let r = super::first_run::api_key(&self.link.channel, &self.link.ctx).await;
                if r.is_err() {
                    self.link.known.set_method(before);
                }
                r
            }
        }
    }

    /// `qwen — openai · model m · quota 1/60 this minute, 1/2000 today`.
    async fn header(&mut self) {
        let st = match self.link.status().await {
            Ok(st) => st,
            Err(e) => {
                eprintln!("qwen: {}", one_line(&e.to_string()));
                return;
            }
        };
        let method = method::name(st.auth_type()).unwrap_or("no auth method");
        let model = self
            .link
            .model
            .clone()
            .or(st.model.clone())
            .unwrap_or_else(|| "?".into());
        let quota = self
            .quota()
            .await
            .map(|q| format!(" · {}", quota_left(&q)))
            .unwrap_or_default();
        println!("qwen — {method} · model {model}{quota}");
        println!("Ask anything. /help lists commands; Ctrl-D leaves.");
    }

    /// The quota of the account in use, on the session's connection.
    async fn quota(&self) -> Option<qwend_shared::api::QuotaStatus> {
        let req = qwend_shared::api::GetQuotaRequest {
            client: Some(self.link.ctx.clone()),
        };
        qwend_shared::api::quota_client::QuotaClient::new(self.link.channel.clone())
            .get_quota(req)
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    async fn command(&mut self, line: &str) -> Flow {
        let (name, arg) = match line.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (line, ""),
        };
        let r = match name {
            "/quit" | "/exit" | "/q" => return Flow::Quit,
            "/help" | "/?" => {
                help();
                Ok(())
            }
            "/clear" => {
                self.messages.clear();
                println!("conversation cleared");
                Ok(())
            }
            "/model" => {
                self.set_model(arg).await;
                Ok(())
            }
            "/auth" => self.auth(arg).await,
            "/status" => self.show_status().await,
            "/quota" => super::quota::run(None, false).await.map(drop),
            "/env" => {
                let args = crate::cli::EnvArgs {
                    cwd: None,
                    export: false,
                    show_secrets: false,
                    allow_unsafe_env: false,
                };
                super::env::run(args, false).await.map(drop)
            }
            other => Err(ClientError::Usage(format!(
                "unknown command {other}; /help lists them (start the line with a space to send it as a message)"
            ))),
        };
        if let Err(e) = r {
            eprintln!("qwen: {}", one_line(&e.to_string()));
        }
        Flow::Continue
    }

    async fn set_model(&mut self, arg: &str) {
        if arg.is_empty() {
            let configured = self.link.status().await.ok().and_then(|s| s.model);
            match (&self.link.model, configured) {
                (Some(m), _) => println!("model {m} (this session; /model NAME to change)"),
                (None, Some(m)) => println!("model {m} (configured; /model NAME for this session)"),
                (None, None) => println!("no model configured yet (/auth to set up)"),
            }
            return;
        }
        self.link.model = Some(arg.to_string());
        println!("model for this session: {arg}");
    }

    async fn auth(&mut self, arg: &str) -> Result<(), ClientError> {
        let method = match arg {
            "" => match self.pick().await? {
                Some(m) => m,
                None => {
                    println!("auth method unchanged");
                    return Ok(());
                }
            },
            a => super::menu::parse(a).ok_or_else(|| {
                ClientError::Usage(format!(
                    "no such method {a:?}: /auth qwen-oauth or /auth openai"
                ))
            })?,
        };
        self.switch(method, true).await;
        Ok(())
    }

    /// `Auth.SwitchAuth` for every client. A method that cannot work yet gets its fix
    /// offered (the login; the key prompt) instead of a session that fails at the next
    /// message.
    async fn switch(&mut self, method: Method, offer_fix: bool) {
        match self.switch_rpc(method).await {
            Ok(st) => {
                println!(
                    "auth method is now {} (every client uses it from now on)",
                    method::name(st.auth_type()).unwrap_or("none")
                );
                if st.auth_type() == AuthType::QwenOauth && !st.logged_in && offer_fix {
                    println!("not logged in to Qwen OAuth yet");
                    if self.yes("Log in now? [Y/n] ").await {
                        self.set_up(Some(Method::QwenOauth)).await;
                    } else {
                        println!("messages will fail until you log in (/auth qwen-oauth)");
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                eprintln!(
                    "qwen: cannot switch to {}: {}",
                    method.name(),
                    one_line(s.message())
                );
                if method == Method::Openai
                    && offer_fix
                    && self
                        .yes("Enter an API key now (saved in ~/.qwen/.env)? [Y/n] ")
                        .await
                {
                    self.set_up(Some(Method::Openai)).await;
                }
            }
            Err(s) => eprintln!("qwen: {}", one_line(&ClientError::from(s).to_string())),
        }
    }

    /// The switch itself; the session knows the method before the daemon announces it.
    async fn switch_rpc(&mut self, method: Method) -> Result<AuthStatus, tonic::Status> {
        let before = self.link.known.method();
        self.link.known.set_method(Some(method.auth_type()));
        let r = AuthClient::new(self.link.channel.clone())
            .switch_auth(SwitchAuthRequest {
                auth_type: method.auth_type() as i32,
                client: Some(self.link.ctx.clone()),
            })
            .await;
        if r.is_err() {
            self.link.known.set_method(before);
        }
        r.map(tonic::Response::into_inner)
    }

    async fn yes(&self, question: &str) -> bool {
        match self.editor.read(question, false).await {
            Ok(Read::Line(a)) => {
                let a = a.trim().to_ascii_lowercase();
                a.is_empty() || a == "y" || a == "yes"
            }
            _ => false,
        }
    }

    async fn show_status(&mut self) -> Result<(), ClientError> {
        let st = self.link.status().await?;
        let Some(method) = method::name(st.auth_type()) else {
            println!("no auth method configured (/auth to choose one)");
            return Ok(());
        };
        println!("method     {method}");
        println!("{}", super::auth::logged_in_line(&st));
        match (&self.link.model, &st.model) {
            (Some(m), _) => println!("model      {m} (this session)"),
            (None, Some(m)) => println!("model      {m}"),
            (None, None) => {}
        }
        if let Some(b) = &st.base_url {
            println!("base URL   {b}");
        }
        if let Some(q) = self.quota().await {
            println!("quota      {}", quota_left(&q));
        }
        for w in &st.warnings {
            term::warn(w);
        }
        Ok(())
    }

    /// One message and its streamed answer. Ctrl-C cancels it (the message is then not
    /// kept in the conversation); any failure is one line and the session goes on.
    async fn turn(&mut self, text: String) {
        self.link.watch().await;
        let mut sigint = match signal(SignalKind::interrupt()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("qwen: cannot handle Ctrl-C: {e}");
                return;
            }
        };
        self.messages.push(Message::user(text));
        let mut out: Option<exchange::Output> = None;
        let result = {
            let (link, http, out) = (&mut self.link, &self.http, &mut out);
            let req = exchange::Request {
                messages: &self.messages,
                no_wait: self.no_wait,
                json: false,
                hints: &HINTS,
            };
            let exchange = async move {
                let creds = link.credentials(None).await?;
                let done = exchange::send(link, http, creds, req, out).await?;
                Ok::<_, ClientError>(done.completion.content)
            };
            tokio::pin!(exchange);
            tokio::select! {
                r = &mut exchange => Some(r),
                _ = sigint.recv() => None,
            }
        };
        if let Some(o) = &mut out {
            o.end();
        }
        match result {
            Some(Ok(answer)) => self.messages.push(Message::assistant(answer)),
            Some(Err(e)) => {
                self.messages.pop();
                eprintln!("qwen: {}", one_line(&e.to_string()));
            }
            None => {
                self.messages.pop();
                eprintln!("(cancelled)");
            }
        }
    }
}

fn help() {
    println!(
        "Type a message and press Enter; end a line with \\ (or press Alt-Enter) to go on on the next line."
    );
    for (c, what) in editor::COMMANDS {
        println!("  {c:<8} {what}");
    }
    println!("Ctrl-C cancels an answer; Ctrl-C twice on an empty line or Ctrl-D leaves.");
}

/// Errors are one line in a session, however the server wrote them.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn quota_left(q: &qwend_shared::api::QuotaStatus) -> String {
    let m = q.minute.clone().unwrap_or_default();
    let d = q.day.clone().unwrap_or_default();
    let part = |w: &qwend_shared::api::QuotaWindow, what: &str| match w.limit {
        Some(l) => format!("{} of {l} left {what}", l.saturating_sub(w.used)),
        None => format!("{} used {what}", w.used),
    };
    format!("quota {}, {}", part(&m, "this minute"), part(&d, "today"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("a\n  b\r\nc "), "a b c");
    }
}
