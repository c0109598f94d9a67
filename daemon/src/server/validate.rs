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

#[cfg(test)]
mod tests {
    use super::*;

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
