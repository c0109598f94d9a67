//! The one auth-method menu, in one prompt style: `qwen auth switch` with no argument, the
//! first-run picker and the session's `/auth` all show this and read the answer the same
//! way. How the answer is read is the caller's (a plain line on stdin, or the session's
//! line editor, where Ctrl-C backs out).
use std::io::{BufRead, Write};

use crate::error::ClientError;
use crate::method::Method;

pub const PROMPT: &str = "Choice [1/2]: ";

/// The question and the choices, each line ending in `\n`.
fn text() -> String {
    "How do you want to authenticate?\n\
     \x20 1) Qwen OAuth (log in at qwen.ai in a browser; free: 60 requests/min, 2,000/day)\n\
     \x20 2) OpenAI-compatible API key (OPENAI_API_KEY, optional OPENAI_BASE_URL and OPENAI_MODEL; \
     OpenAI, DashScope, ModelScope, OpenRouter, ...)\n"
        .to_string()
}

/// `1`/`2` or the method's name.
pub fn parse(answer: &str) -> Option<Method> {
    match answer.trim() {
        "1" => Some(Method::QwenOauth),
        "2" => Some(Method::Openai),
        name => Method::parse(name),
    }
}

/// Show the menu on stderr and read one answer with `read` (`None`: the person backed
/// out). A wrong answer is an error: the caller decides whether to ask again.
pub async fn pick(
    read: impl AsyncFnOnce(&str) -> Result<Option<String>, ClientError>,
) -> Result<Option<Method>, ClientError> {
    let mut err = std::io::stderr();
    let _ = err.write_all(text().as_bytes());
    let _ = err.flush();
    let Some(answer) = read(PROMPT).await? else {
        return Ok(None);
    };
    match parse(&answer) {
        Some(m) => Ok(Some(m)),
        None => Err(ClientError::Usage(format!(
            "no such choice: {:?} (answer 1 or 2)",
            answer.trim()
        ))),
    }
}

/// [`pick`] with the answer read as a line of stdin; no answer (end of input) is an error.
pub async fn pick_on_stdin() -> Result<Method, ClientError> {
    pick(async |q| read_line(q))
        .await?
        .ok_or_else(|| ClientError::Usage("no answer (end of input)".into()))
}

/// A question on stderr, the answer as one line of stdin (trimmed); `None` at end of input.
pub fn read_line(question: &str) -> Result<Option<String>, ClientError> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| ClientError::Usage(format!("cannot read the answer: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers() {
        assert_eq!(parse(" 1\n"), Some(Method::QwenOauth));
        assert_eq!(parse("openai"), Some(Method::Openai));
        assert_eq!(parse("3"), None);
        let e = pick(async |_| Ok(Some("x".into()))).await.unwrap_err();
        assert!(e.to_string().contains("no such choice"));
        assert_eq!(pick(async |_| Ok(None)).await.unwrap(), None);
        let mut asked = String::new();
        let m = pick(async |q| {
            asked = q.to_string();
            Ok(Some("2".into()))
        })
        .await
        .unwrap();
        assert_eq!((m, asked.as_str()), (Some(Method::Openai), PROMPT));
    }
}
