//! `Events.Watch` for plugins: from Rust, from real Node (@grpc/grpc-js) and Python (grpcio)
//! clients over the Unix socket, and under load.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use qwend_shared::api::event::Kind;
use qwend_shared::api::events_client::EventsClient;
use qwend_shared::api::{AuthType, WatchRequest};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn switch_openai(env: &TestEnv) {
    let out = env
        .qwen_cmd(&["auth", "switch", "openai"])
        .env("OPENAI_API_KEY", "sk-plugin-test")
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn watch_reports_a_switch_and_ends_with_shutting_down() {
    let env = TestEnv::new();
    env.status();
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let mut stream = EventsClient::new(ch)
        .watch(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut switch = env.qwen_cmd(&["auth", "switch", "openai"]);
    switch
        .env("OPENAI_API_KEY", "sk-plugin-test")
        .current_dir(&env.home);
    let out = tokio::task::spawn_blocking(move || switch.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ev = stream.message().await.unwrap().unwrap();
    match ev.kind {
        Some(Kind::AuthSwitched(s)) => assert_eq!(s.auth_type(), AuthType::Openai),
        other => panic!("{other:?}"),
    }
    assert!(ev.seq >= 1 && ev.at_ms > 0);
    let mut stop = env.qwen_cmd(&["daemon", "stop"]);
    let stop = tokio::task::spawn_blocking(move || stop.output().unwrap());
    let ev = stream.message().await.unwrap().unwrap();
    assert!(matches!(ev.kind, Some(Kind::ShuttingDown(_))), "{ev:?}");
    assert!(stream.message().await.unwrap().is_none(), "the stream ends");
    assert!(stop.await.unwrap().status.success());
}

/// Run a plugin client (its environment already applied) through a switch and a stop.
fn run_plugin(env: &TestEnv, mut cmd: Command) {
    env.status();
    let mut child = cmd
        .env("QWEND_SOCKET", &env.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut next_until = |pred: &dyn Fn(&str) -> bool, seen: &mut Vec<String>| loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("plugin ended early: {seen:?}"))
            .unwrap();
        seen.push(line.clone());
        if pred(&line) {
            return line;
        }
    };
    let status = next_until(&|l| l.contains("\"status\""), &mut seen);
    assert!(status.contains(env!("CARGO_PKG_VERSION")), "{status}");
    next_until(&|l| l.contains("\"subscribed\""), &mut seen);
    switch_openai(env);
    let ev = next_until(&|l| l.contains("authSwitched"), &mut seen);
    assert!(ev.contains("AUTH_TYPE_OPENAI"), "{ev}");
    assert!(env.qwen(&["daemon", "stop"]).status.success());
    next_until(&|l| l.contains("shuttingDown"), &mut seen);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "plugin exit {:?}: {}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn node_grpc_js_plugin_sees_status_and_events() {
    let Some(modules) = node_modules_with(&["@grpc/grpc-js", "@grpc/proto-loader"]) else {
        return;
    };
    let env = TestEnv::new();
    let mut cmd = Command::new("node");
    cmd.arg(workspace().join("docs/plugins/watch.mjs"));
    env.apply(&mut cmd);
    cmd.env("NODE_PATH", &modules);
    run_plugin(&env, cmd);
}

#[test]
fn python_grpcio_plugin_sees_status_and_events() {
    let Some(python) = python_with(&["grpc", "grpc_tools"]) else {
        return;
    };
    let env = TestEnv::new();
    let mut cmd = Command::new(python);
    cmd.arg(workspace().join("docs/plugins/watch.py"));
    env.apply(&mut cmd);
    run_plugin(&env, cmd);
}
