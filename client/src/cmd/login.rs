//! `qwen auth login`: shows the device login the daemon runs (URL, code, QR code), opens
//! the browser when there is a local desktop, and waits with a spinner.
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::login_event::Kind;
use qwend_shared::api::login_progress::Kind as ProgressKind;
use qwend_shared::api::login_result::Outcome;
use qwend_shared::api::{LoginPrompt, LoginRequest, LoginResult};
use serde_json::json;
use tonic::transport::Channel;

use crate::error::{ClientError, code};

/// What every command that would need an OAuth login says when it cannot run one.
pub const NON_INTERACTIVE_HELP: &str = "Qwen OAuth login needs an interactive terminal (it opens a browser). \
For non-interactive use, set OPENAI_API_KEY (and optionally OPENAI_BASE_URL and OPENAI_MODEL) \
in the environment or in a .env file (.qwen/.env in the project, or ~/.qwen/.env), \
then select it with `qwen auth switch openai`.";

#[derive(Debug, Clone, Copy, Default)]
pub struct LoginArgs {
    pub no_browser: bool,
    pub force: bool,
}

pub async fn run(
    channel: Channel,
    args: LoginArgs,
    as_json: bool,
) -> Result<ExitCode, ClientError> {
    // A login can be shown only to someone who can act on it.
    if !crate::term::on_terminal() {
        return Err(ClientError::AuthNeeded(NON_INTERACTIVE_HELP.to_string()));
    }
    let mut client = AuthClient::new(channel);
    let mut stream = client
        .login(LoginRequest { force: args.force })
        .await?
        .into_inner();
    let mut spinner: Option<Spinner> = None;
    let mut browser: Option<tokio::task::JoinHandle<()>> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    // One listener for the whole login: a fresh one per loop turn would miss a Ctrl-C
    // that arrives between turns (the handler is installed, so nothing else would see it).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            ev = stream.message() => ev?,
            _ = ticker.tick() => {
                if let Some(s) = &mut spinner { s.tick(); }
                continue;
            }
            // Leaving ends our attachment; the daemon cancels the flow when nobody else
            // is waiting on it.
            _ = &mut ctrl_c => {
                if let Some(s) = spinner.take() { s.clear(); }
                eprintln!("login cancelled");
                return Ok(ExitCode::from(130));
            }
        };
        let Some(kind) = event.and_then(|e| e.kind) else {
            if let Some(s) = spinner.take() {
                s.clear();
            }
            return Err(ClientError::Rpc(
                "the daemon ended the login without a result".into(),
            ));
        };
        match kind {
            Kind::Prompt(p) => {
                show_prompt(&p, as_json)?;
                if !args.no_browser && can_open_browser() {
                    browser = Some(open_browser(p.verification_uri_complete.clone()));
                }
                spinner = Some(Spinner::new(p.expires_at_ms));
            }
            Kind::Progress(p) => {
                if let Some(s) = &mut spinner {
                    s.note(match p.kind() {
                        ProgressKind::SlowDown => {
                            format!("server asked to slow down ({})", p.detail)
                        }
                        ProgressKind::Retrying => p.detail.clone(),
                        _ => String::new(),
                    });
                }
            }
            Kind::Result(r) => {
                if let Some(s) = spinner.take() {
                    s.clear();
                }
                // A quick outcome must not exit before the browser was even launched; a
                // launcher that keeps running is not waited for.
                if let Some(b) = browser.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), b).await;
                }
                return finish(&r, as_json);
            }
        }
    }
}

fn show_prompt(p: &LoginPrompt, as_json: bool) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    let w = |e: std::io::Error| ClientError::Output(e.to_string());
    if as_json {
        let v = json!({
            "event": "prompt",
            "verification_uri": p.verification_uri,
            "verification_uri_complete": p.verification_uri_complete,
            "user_code": p.user_code,
            "expires_at": rfc3339(p.expires_at_ms),
            "attached": p.attached,
        });
        writeln!(out, "{v}").map_err(w)?;
        return Ok(());
    }
    if p.attached {
        writeln!(out, "A login is already in progress; showing it here too.").map_err(w)?;
    }
    writeln!(
        out,
        "To log in to Qwen, open this page and approve the request:"
    )
    .map_err(w)?;
    writeln!(out).map_err(w)?;
    writeln!(out, "  {}", p.verification_uri_complete).map_err(w)?;
    writeln!(out).map_err(w)?;
    if let Some(qr) = qr_code(&p.verification_uri_complete) {
        writeln!(out, "{qr}").map_err(w)?;
    }
    writeln!(
        out,
        "Or go to {} and enter the code {}",
        p.verification_uri, p.user_code
    )
    .map_err(w)?;
    out.flush().map_err(w)
}

/// The URL as a QR code in half-block characters, light modules on dark so it scans on
/// the usual dark terminal, with the quiet zone the standard asks for.
fn qr_code(url: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

fn finish(r: &LoginResult, as_json: bool) -> Result<ExitCode, ClientError> {
    let outcome = r.outcome();
    let (name, exit) = match outcome {
        Outcome::Success => ("success", 0),
        Outcome::AlreadyLoggedIn => ("already_logged_in", 0),
        Outcome::Denied => ("denied", code::AUTH_NEEDED),
        Outcome::Expired => ("expired", code::AUTH_NEEDED),
        Outcome::Cancelled => ("cancelled", code::FAILURE),
        Outcome::Error | Outcome::Unspecified => ("error", code::FAILURE),
    };
    if as_json {
        println!(
            "{}",
            json!({
                "event": "result",
                "outcome": name,
                "message": r.message,
                "expires_at": r.expires_at_ms.map(rfc3339),
                "store": r.store,
            })
        );
    } else if exit == 0 {
        match r.expires_at_ms {
            Some(ms) => println!("{} (token valid until {})", r.message, rfc3339(ms)),
            None => println!("{}", r.message),
        }
    } else {
        eprintln!("qwen: login failed: {}", r.message);
    }
    Ok(ExitCode::from(exit))
}

fn rfc3339(ms: i64) -> String {
    crate::term::rfc3339(ms).unwrap_or_default()
}

/// A browser on this machine is useful only with a local desktop: not over SSH, and on
/// Linux only with a display.
fn can_open_browser() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if set("SSH_CONNECTION") || set("SSH_CLIENT") || set("SSH_TTY") {
        return false;
    }
    if cfg!(any(target_os = "macos", target_os = "windows")) {
        return true;
    }
    set("DISPLAY") || set("WAYLAND_DISPLAY")
}

fn open_browser(url: String) -> tokio::task::JoinHandle<()> {
    // Off the async thread: some launchers wait for the browser to start.
    tokio::task::spawn_blocking(move || {
        let opts = {
            let mut o = webbrowser::BrowserOptions::new();
            o.with_suppress_output(true);
            o
        };
        if let Err(e) =
            webbrowser::open_browser_with_options(webbrowser::Browser::Default, &url, &opts)
        {
            eprintln!("(could not open a browser: {e}; open the link above yourself)");
        }
    })
}

/// "Waiting for approval… 4:32 left", on stderr, only on a terminal.
struct Spinner {
    bar: ProgressBar,
    expires_at_ms: i64,
    note: String,
}

impl Spinner {
    fn new(expires_at_ms: i64) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let mut s = Self {
            bar,
            expires_at_ms,
            note: String::new(),
        };
        s.tick();
        s
    }

    fn note(&mut self, note: String) {
        self.note = note;
        self.tick();
    }

    fn tick(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let left = (self.expires_at_ms - now).max(0) / 1000;
        let mut msg = format!(
            "Waiting for approval in the browser… {}:{:02} left",
            left / 60,
            left % 60
        );
        if !self.note.is_empty() {
            msg.push_str(" (");
            msg.push_str(&self.note);
            msg.push(')');
        }
        self.bar.set_message(msg);
    }

    fn clear(self) {
        self.bar.finish_and_clear();
    }
}
