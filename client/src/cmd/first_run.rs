//! First run on a terminal with nothing configured: Qwen Code's `/auth` choice. Qwen OAuth
//! goes to the device login; an API key is asked for (hidden), saved in `~/.qwen/.env`
//! (0600, other lines kept) and the method switched to openai for every client.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{AuthType, ClientContext, SwitchAuthRequest};
use qwend_shared::files;
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::method::Method;

pub async fn choose(channel: &Channel, ctx: &ClientContext) -> Result<(), ClientError> {
    let method = super::menu::pick_on_stdin().await?;
    set_up(channel, ctx, method).await
}

/// Make `method` work: the device login for Qwen OAuth (a cancelled login is
/// `Exit(130)`), the key prompt for openai.
pub async fn set_up(
    channel: &Channel,
    ctx: &ClientContext,
    method: Method,
) -> Result<(), ClientError> {
    match method {
        Method::QwenOauth => {
            let args = super::login::LoginArgs::default();
            let code = super::login::run(channel.clone(), args, false).await?;
            if code != ExitCode::SUCCESS {
                return Err(ClientError::Exit(code));
            }
            Ok(())
        }
        Method::Openai => api_key(channel, ctx).await,
    }
}

fn ask(question: &str) -> Result<String, ClientError> {
    super::menu::read_line(question)?
        .ok_or_else(|| ClientError::Usage("no answer (end of input)".into()))
}

/// Ask for a key (hidden), base URL and model; save them in `~/.qwen/.env` and switch to
/// openai.
pub async fn api_key(channel: &Channel, ctx: &ClientContext) -> Result<(), ClientError> {
    let key = {
        // Echo goes off before the prompt appears: rpassword prints first and configures
        // the terminal after, so a fast typist (or paste) could see the key echoed.
        let _quiet = quiet_terminal();
        rpassword::prompt_password("API key (input hidden): ")
            .map_err(|e| ClientError::Usage(format!("cannot read the key: {e}")))?
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(ClientError::Usage("no API key entered".into()));
    }
    let base = ask("Base URL (Enter for https://api.openai.com/v1): ")?;
    let model = ask("Model (Enter for qwen3.5-plus): ")?;
    let mut vars = vec![("OPENAI_API_KEY", key.as_str())];
    if !base.is_empty() {
        vars.push(("OPENAI_BASE_URL", base.as_str()));
    }
    if !model.is_empty() {
        vars.push(("OPENAI_MODEL", model.as_str()));
    }
    let home = ctx
        .env
        .get("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| ClientError::Usage("HOME is not set: nowhere to save the key".into()))?;
    let file = home.join(".qwen").join(".env");
    save_env(&file, &vars)
        .map_err(|e| ClientError::Rpc(format!("cannot write {}: {e}", file.display())))?;
    eprintln!("qwen: saved in {} (mode 0600)", file.display());
    let switched = AuthClient::new(channel.clone())
        .switch_auth(SwitchAuthRequest {
            auth_type: AuthType::Openai as i32,
            client: Some(ctx.clone()),
        })
        .await;
    match switched {
        Ok(st) => {
            eprintln!(
                "qwen: auth method is now openai (saved in {})",
                st.into_inner().settings_file
            );
            Ok(())
        }
        // The first .env found from the cwd upwards wins; a project one hides ~/.qwen/.env.
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            Err(ClientError::AuthNeeded(format!(
                "the key was saved in {} but does not apply here, because a .env file nearer to this directory is read instead (only the first one found is used): {}",
                file.display(),
                s.message()
            )))
        }
        Err(s) => Err(s.into()),
    }
}

/// Echo off on the controlling terminal until dropped (nothing where there is none).
#[cfg(unix)]
fn quiet_terminal() -> Option<crate::term::ModesOff<std::fs::File>> {
    use rustix::termios::LocalModes;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    crate::term::ModesOff::new(tty, LocalModes::ECHO | LocalModes::ECHONL)
}

#[cfg(not(unix))]
fn quiet_terminal() -> Option<()> {
    None
}

/// Set `vars` in a dotenv file, keeping every other line. Earlier one-line assignments of
/// the same keys are removed; a multi-line one is left alone (dotenv's last duplicate wins,
/// so the appended value applies either way).
pub fn save_env(path: &Path, vars: &[(&str, &str)]) -> std::io::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let new = upsert(&old, vars)?;
    std::fs::create_dir_all(files::parent_dir(path))?;
    // The key is a secret: the file ends up 0600 whatever it was.
    files::atomic_write(path, new.as_bytes())
}

fn upsert(old: &str, vars: &[(&str, &str)]) -> std::io::Result<String> {
    let mut out = String::new();
    for line in old.split_inclusive('\n') {
        let replaced = assigned_key(line)
            .is_some_and(|(k, single)| single && vars.iter().any(|(v, _)| *v == k));
        if !replaced {
            out.push_str(line);
        }
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for (k, v) in vars {
        out.push_str(&format!("{k}={}\n", quote(v)?));
    }
    Ok(out)
}

/// The key a line assigns, and whether the assignment ends on this line.
fn assigned_key(line: &str) -> Option<(&str, bool)> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").map(str::trim_start).unwrap_or(t);
    let end = t.find(['=', ':'])?;
    let key = t[..end].trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    let value = t[end + 1..].trim();
    let single = match value.chars().next() {
        Some(q @ ('\'' | '"' | '`')) => value[1..].contains(q),
        _ => true,
    };
    Some((key, single))
}

/// A quote that keeps the value literal for dotenv: single quotes first (no escapes at
/// all), then backticks; double quotes would expand `\n`.
fn quote(v: &str) -> std::io::Result<String> {
    if v.contains(['\n', '\r']) {
        return Err(std::io::Error::other("the value spans lines"));
    }
    for q in ['\'', '`'] {
        if !v.contains(q) {
            return Ok(format!("{q}{v}{q}"));
        }
    }
    if !v.contains('"') && !v.contains("\\n") && !v.contains("\\r") {
        return Ok(format!("\"{v}\""));
    }
    Err(std::io::Error::other(
        "the value contains every kind of quote; set it by hand",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_other_lines_and_replaces_ours() {
        let old = "# mine\nFOO=1\nexport OPENAI_API_KEY=old\nOPENAI_MODEL: \"m\"\nMULTI='a\nb'\nOPENAI_BASE_URL='x\ny'\nBAR=2";
        let new = upsert(
            old,
            &[
                ("OPENAI_API_KEY", "sk-new"),
                ("OPENAI_BASE_URL", "http://h/v1"),
            ],
        )
        .unwrap();
        assert_eq!(
            new,
            "# mine\nFOO=1\nOPENAI_MODEL: \"m\"\nMULTI='a\nb'\nOPENAI_BASE_URL='x\ny'\nBAR=2\nOPENAI_API_KEY='sk-new'\nOPENAI_BASE_URL='http://h/v1'\n"
        );
    }

    #[test]
    fn quoting_stays_literal() {
        assert_eq!(quote("a#b $X").unwrap(), "'a#b $X'");
        assert_eq!(quote("it's").unwrap(), "`it's`");
        assert_eq!(quote("it's `x`").unwrap(), "\"it's `x`\"");
        assert!(quote("a\nb").is_err());
    }
}
