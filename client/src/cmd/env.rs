//! `qwen env [--cwd DIR] [--json|--export] [--show-secrets]`: the `.env` resolution for a
//! directory, as the daemon computes it for this client.
use std::io::Write;
use std::process::ExitCode;

use qwend_shared::api::skipped_var::Reason;
use qwend_shared::api::{EnvVar, ResolveEnvResponse};
use serde_json::{Map, Value, json};

use crate::cli::EnvArgs;
use crate::error::ClientError;
use crate::{connect, context};
use crate::{term, unsafe_env};

pub async fn run(args: EnvArgs, as_json: bool) -> Result<ExitCode, ClientError> {
    let ctx = context::at(&context::absolute_cwd(args.cwd.as_deref())?);
    let channel = connect::daemon().await?;
    let resp = context::resolve_env(&channel, &ctx).await?;
    let mut out = std::io::stdout().lock();
    let res = if as_json {
        writeln!(out, "{}", to_json(&resp))
    } else if args.export {
        let (vars, refused) =
            unsafe_env::split_for_client(resp.vars.clone(), args.allow_unsafe_env);
        for v in &refused {
            term::warn(&format!(
                "not exporting {} from {}: it can make programs run code from that file (--allow-unsafe-env exports it)",
                v.key, v.source
            ));
        }
        write_export(&mut out, &vars, &refused)
    } else {
        write_human(&mut out, &resp, args.show_secrets)
    };
    res.map_err(|e| ClientError::Output(e.to_string()))?;
    for w in &resp.warnings {
        eprintln!("qwen: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(resp: &ResolveEnvResponse) -> Value {
    let vars: Map<String, Value> = resp
        .vars
        .iter()
        .map(|v| (v.key.clone(), Value::String(v.value.clone())))
        .collect();
    let sources: Map<String, Value> = resp
        .vars
        .iter()
        .map(|v| (v.key.clone(), Value::String(v.source.clone())))
        .collect();
    let skipped: Vec<Value> = resp
        .skipped
        .iter()
        .map(|s| json!({"key": s.key, "reason": reason_name(s.reason())}))
        .collect();
    json!({
        "file": resp.file,
        "vars": vars,
        "sources": sources,
        "skipped": skipped,
        "warnings": resp.warnings,
    })
}

fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Preset => "preset",
        Reason::Excluded => "excluded",
        Reason::Unspecified => "unknown",
    }
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD"]
        .iter()
        .any(|s| k.contains(s))
}

/// Enough of a secret to recognise it, not to use it.
fn mask(value: &str) -> String {
    let n = value.chars().count();
    if n <= 8 {
        return "*".repeat(n.max(1));
    }
    let head: String = value.chars().take(3).collect();
    let tail: String = value.chars().skip(n - 2).collect();
    format!("{head}…{tail} ({n} chars, hidden; --show-secrets)")
}

fn write_human(
    out: &mut impl Write,
    resp: &ResolveEnvResponse,
    show_secrets: bool,
) -> std::io::Result<()> {
    match &resp.file {
        None => writeln!(out, "no .env file applies")?,
        Some(f) => writeln!(out, ".env file: {f}")?,
    }
    if resp.vars.is_empty() {
        if resp.file.is_some() {
            writeln!(out, "  (sets nothing)")?;
        }
    } else {
        let width = resp.vars.iter().map(|v| v.key.len()).max().unwrap_or(0);
        let (_, refused) = unsafe_env::split_for_client(resp.vars.clone(), false);
        for v in &resp.vars {
            let shown = if !show_secrets && is_secret_key(&v.key) {
                mask(&v.value)
            } else {
                v.value.replace('\n', "\\n")
            };
            // Shown as the file has it; said once that exec and --export leave it out.
            let note = if refused.iter().any(|r| r.key == v.key) {
                "  (can run code: qwen exec and --export leave it out)"
            } else {
                ""
            };
            writeln!(out, "  {:<width$}  {shown}{note}", v.key)?;
        }
    }
    for s in &resp.skipped {
        let why = match s.reason() {
            Reason::Preset => "already set in your environment",
            Reason::Excluded => {
                "excluded for this file (DEBUG, DEBUG_MODE or advanced.excludedEnvVars)"
            }
            Reason::Unspecified => "not loaded",
        };
        writeln!(out, "  skipped {}: {why}", s.key)?;
    }
    Ok(())
}

/// `export K='V'` lines a POSIX shell can `eval`. Single quotes keep everything literal;
/// an embedded quote becomes `'\''`. Refused keys appear as comments naming only the key:
/// a value may hold a newline, which would end the comment and run the rest.
fn write_export(out: &mut impl Write, vars: &[EnvVar], refused: &[EnvVar]) -> std::io::Result<()> {
    for v in refused {
        if is_shell_name(&v.key) {
            writeln!(
                out,
                "# not exported: {} (can make programs run code; qwen env --export --allow-unsafe-env)",
                v.key
            )?;
        }
    }
    for v in vars {
        if !is_shell_name(&v.key) {
            eprintln!(
                "qwen: warning: {} is not a valid shell variable name; not exported",
                v.key
            );
            continue;
        }
        writeln!(out, "export {}={}", v.key, shell_quote(&v.value))?;
    }
    Ok(())
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn is_shell_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_by_key_name() {
        assert!(is_secret_key("OPENAI_API_KEY"));
        assert!(is_secret_key("github_token"));
        assert!(is_secret_key("CLIENT_SECRET"));
        assert!(!is_secret_key("OPENAI_MODEL"));
        let m = mask("sk-1234567890abcdef");
        assert!(!m.contains("1234567890"), "{m}");
        assert!(m.starts_with("sk-") && m.contains("19 chars"));
        assert_eq!(mask("short"), "*****");
    }

    #[test]
    fn shell_quote_keeps_everything_literal() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME `x` \\n"), "'$HOME `x` \\n'");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// What `--export` prints survives a real shell byte for byte.
        #[test]
        fn export_quoting_round_trips_through_sh(value in "[^\\x00]{0,40}") {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(&value)))
                .output()
                .unwrap();
            proptest::prop_assert!(out.status.success());
            proptest::prop_assert_eq!(String::from_utf8_lossy(&out.stdout), value);
        }
    }

    #[test]
    fn shell_names() {
        assert!(is_shell_name("OPENAI_API_KEY"));
        assert!(is_shell_name("_x1"));
        assert!(!is_shell_name("1X"));
        assert!(!is_shell_name("A.B"));
        assert!(!is_shell_name("A-B"));
        assert!(!is_shell_name(""));
    }
}
