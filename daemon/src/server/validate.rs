//! The one place where what a client says about itself (its working directory and
//! environment) is checked before any service acts on it. Anything out of bounds is
//! INVALID_ARGUMENT with a short message that quotes at most a small prefix of the value:
//! never INTERNAL, never the whole value (a multi-megabyte `grpc-message` is refused by
//! clients such as grpcio, and the value may be a secret).
//!
//! Undecodable bytes (invalid UTF-8 in a string, a broken message) never get this far:
//! the codec answers INVALID_ARGUMENT for them (`qwend_shared::codec`).
use std::collections::HashMap;

use qwend_shared::api;
use qwend_shared::codec::bounded;
use tonic::Status;
use tonic::codegen::http;

use crate::auth::ClientCtx;

/// Longest working directory accepted: Linux's PATH_MAX, which no real path exceeds.
pub const MAX_CWD: usize = 4096;
/// Longest environment entry accepted: Linux's MAX_ARG_STRLEN, the most `execve` passes.
pub const MAX_ENV_ENTRY: usize = 128 * 1024;
/// How much of a refused value a message quotes.
const QUOTE: usize = 64;

/// A request's `ClientContext` as the services use it.
pub fn client_ctx(c: Option<api::ClientContext>) -> Result<ClientCtx, Status> {
    let c = c.unwrap_or_default();
    cwd(&c.cwd)?;
    env(&c.env)?;
    Ok(ClientCtx {
        cwd: c.cwd.into(),
        env: c.env,
    })
}

pub fn cwd(cwd: &str) -> Result<(), Status> {
    if cwd.len() > MAX_CWD {
        return Err(Status::invalid_argument(format!(
            "cwd is {} bytes long, more than any path can be ({MAX_CWD}): {:?}",
            cwd.len(),
            bounded(cwd, QUOTE)
        )));
    }
    if cwd.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "cwd contains a NUL byte: {:?}",
            bounded(cwd, QUOTE)
        )));
    }
    Ok(())
}

/// Entries a process could not have had in its environment. Values are never quoted: they
/// are often secrets.
pub fn env(env: &HashMap<String, String>) -> Result<(), Status> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "invalid environment variable name {:?} (empty, or contains '=' or NUL)",
                bounded(key, QUOTE)
            )));
        }
        if key.len() + value.len() + 1 > MAX_ENV_ENTRY {
            return Err(Status::invalid_argument(format!(
                "environment variable {:?} is {} bytes long, more than a process can be given ({MAX_ENV_ENTRY})",
                bounded(key, QUOTE),
                key.len() + value.len() + 1
            )));
        }
        if value.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "environment variable {:?} contains a NUL byte",
                bounded(key, QUOTE)
            )));
        }
    }
    Ok(())
}

/// The longest `grpc-message` the daemon sends, percent-encoded. grpc-core clients
/// (grpcio) refuse replies whose metadata passes 8 KiB, so a message quoting a long path
/// would hide the error itself.
const MAX_GRPC_MESSAGE: usize = 1024;

/// Response layer for every call: a `grpc-message` longer than [`MAX_GRPC_MESSAGE`] is cut,
/// between escapes and characters, and marked with "…". Errors are sent trailers-only
/// (status in the headers), which is where this looks.
pub fn bound_grpc_message<B>(mut res: http::Response<B>) -> http::Response<B> {
    let Some(v) = res.headers().get("grpc-message") else {
        return res;
    };
    let b = v.as_bytes();
    if b.len() <= MAX_GRPC_MESSAGE {
        return res;
    }
    let escape_at = |i: usize| b.get(i) == Some(&b'%');
    let continuation_at = |i: usize| {
        escape_at(i)
            && b.get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|byte| byte & 0xC0 == 0x80)
    };
    let mut end = MAX_GRPC_MESSAGE;
    // Not inside a %XX escape...
    for back in 1..=2 {
        if end >= back && escape_at(end - back) {
            end -= back;
            break;
        }
    }
    // ...nor inside a multi-byte character.
    while end >= 3 && continuation_at(end) {
        end -= 3;
    }
    let mut cut = b[..end].to_vec();
    cut.extend_from_slice(b"%E2%80%A6");
    if let Ok(v) = http::HeaderValue::from_bytes(&cut) {
        res.headers_mut().insert("grpc-message", v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_grpc_messages_are_cut_between_characters() {
        let msg = format!("cwd {}: not found", "%C3%A9".repeat(2000));
        let res = http::Response::builder()
            .header("grpc-message", msg.as_str())
            .body(())
            .unwrap();
        let res = bound_grpc_message(res);
        let v = res.headers()["grpc-message"].to_str().unwrap();
        assert!(v.len() <= MAX_GRPC_MESSAGE + 9, "{}", v.len());
        assert!(v.ends_with("%C3%A9%E2%80%A6"), "{v}");
        let short = http::Response::builder()
            .header("grpc-message", "short")
            .body(())
            .unwrap();
        assert_eq!(bound_grpc_message(short).headers()["grpc-message"], "short");
    }

    #[test]
    fn a_huge_cwd_is_invalid_and_barely_quoted() {
        let huge = format!("/{}", "a".repeat(4_000_000));
        let s = cwd(&huge).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().len() < 200, "{}", s.message());
        assert!(cwd("/home/me/project").is_ok());
    }

    #[test]
    fn env_values_are_never_quoted() {
        let mut e = HashMap::new();
        e.insert("SECRET".to_string(), format!("sk-{}\0", "x".repeat(10)));
        let s = env(&e).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(!s.message().contains("sk-"), "{}", s.message());
        e.clear();
        e.insert("BIG".to_string(), "v".repeat(MAX_ENV_ENTRY));
        assert!(env(&e).unwrap_err().message().len() < 200);
        e.clear();
        e.insert("A=B".to_string(), String::new());
        assert_eq!(env(&e).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
