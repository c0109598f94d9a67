//! A local OpenAI-compatible server for the tests: `POST /v1/chat/completions` answered
//! from a script of replies (default: a streamed "Hello, world!"), every request recorded.
//! HTTP/1.1 with `Connection: close`, written by hand so each byte's timing is under the
//! test's control (a stream can stop midway until the test releases it).
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub enum Reply {
    /// 200, `text/event-stream`: one chunk per piece, then usage and `[DONE]`. With
    /// `gate_after: Some(n)` the server stops after n pieces until `release()`.
    Stream {
        pieces: Vec<String>,
        gate_after: Option<usize>,
    },
    /// Any status with headers and a body (JSON error bodies, Retry-After, ...).
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// 200 `text/event-stream` with this exact body.
    RawSse(String),
}

impl Reply {
    pub fn stream(pieces: &[&str]) -> Self {
        Self::Stream {
            pieces: pieces.iter().map(|s| s.to_string()).collect(),
            gate_after: None,
        }
    }

    pub fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        Self::Status {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Recorded {
    pub fn bearer(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

pub struct OpenAiMock {
    pub port: u16,
    state: Arc<Mutex<State>>,
    gate: Arc<tokio::sync::Notify>,
}

pub const DEFAULT_PIECES: &[&str] = &["Hello", ", ", "world", "!"];

impl OpenAiMock {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (s, g) = (state.clone(), gate.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(conn, s.clone(), g.clone()));
                }
            });
        });
        Self { port, state, gate }
    }

    /// The API base a client should use.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Queue a reply for the next request (FIFO; the default stream once empty).
    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap().script.push_back(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Let a gated stream go on.
    pub fn release(&self) {
        self.gate.notify_one();
    }
}

async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>, gate: Arc<tokio::sync::Notify>) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    let model = req.body["model"]
        .as_str()
        .unwrap_or("mock-model")
        .to_string();
    let reply = {
        let mut st = state.lock().unwrap();
        st.requests.push(req.clone());
        st.script
            .pop_front()
            .unwrap_or_else(|| Reply::stream(DEFAULT_PIECES))
    };
    if req.path != "/v1/chat/completions" {
        let _ = write_status(
            &mut conn,
            404,
            &[],
            r#"{"error":{"message":"no such path"}}"#,
        )
        .await;
        return;
    }
    match reply {
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let _ = write_status(&mut conn, status, &headers, &body).await;
        }
        Reply::RawSse(body) => {
            let _ = conn.write_all(SSE_HEAD.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        }
        Reply::Stream { pieces, gate_after } => {
            let _ = stream(&mut conn, &model, &pieces, gate_after, &gate).await;
        }
    }
    let _ = conn.shutdown().await;
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";

async fn stream(
    conn: &mut TcpStream,
    model: &str,
    pieces: &[String],
    gate_after: Option<usize>,
    gate: &tokio::sync::Notify,
) -> std::io::Result<()> {
    conn.write_all(SSE_HEAD.as_bytes()).await?;
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let event = |v: Value| format!("data: {v}\n\n");
    conn.write_all(
        event(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ))
        .as_bytes(),
    )
    .await?;
    for (i, p) in pieces.iter().enumerate() {
        if gate_after == Some(i) {
            conn.flush().await?;
            gate.notified().await;
        }
        conn.write_all(event(chunk(json!({"content": p}), Value::Null)).as_bytes())
            .await?;
        conn.flush().await?;
    }
    conn.write_all(event(chunk(json!({}), json!("stop"))).as_bytes())
        .await?;
    let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": pieces.len(), "total_tokens": 7 + pieces.len()}});
    conn.write_all(event(usage).as_bytes()).await?;
    conn.write_all(b"data: [DONE]\n\n").await?;
    conn.flush().await
}

async fn write_status(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} Mock\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.flush().await
}

async fn read_request(conn: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}
