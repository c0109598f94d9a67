//! The token lifecycle through the real daemon: `GetCredentials` over the socket against a
//! local authorization server: single-flight refresh, Qwen Code's outcomes (400 ends the
//! login, 5xx keeps it), adoption of Qwen Code's own refreshes, and crash safety of the
//! files written on every refresh.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::oauth_mock::{Reply, TOKEN_PATH};
use common::*;
use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::events_client::EventsClient;
use qwend_shared::api::{ClientContext, GetCredentialsRequest, WatchRequest, event};
use serde_json::Value;
use tokio::sync::Semaphore;

fn write_creds(home: &Path, access: &str, refresh: &str, expiry_ms: i64) {
    let dir = home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"{access}","refresh_token":"{refresh}","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":{expiry_ms}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
}

fn setup() -> Setup {
    oauth_setup(&[])
}

impl Setup {
    fn request(&self, rejected: Option<&str>) -> GetCredentialsRequest {
        GetCredentialsRequest {
            client: Some(ClientContext {
                cwd: self.env.home.display().to_string(),
                env: HashMap::from([("HOME".into(), self.env.home.display().to_string())]),
            }),
            rejected_token: rejected.map(String::from),
            model: None,
        }
    }

    async fn client(&self) -> AuthClient<tonic::transport::Channel> {
        AuthClient::new(
            qwend_shared::transport::connect(&self.env.socket)
                .await
                .unwrap(),
        )
    }

    fn get(
        &self,
        rejected: Option<&str>,
    ) -> Result<qwend_shared::api::CredentialsReply, tonic::Status> {
        self.rt.block_on(async {
            let mut c = self.client().await;
            c.get_credentials(self.request(rejected))
                .await
                .map(|r| r.into_inner())
        })
    }

    fn qwen_file(&self) -> std::path::PathBuf {
        self.env.home.join(".qwen/oauth_creds.json")
    }

    fn our_file(&self) -> std::path::PathBuf {
        self.env.state.join("credentials/credentials.json")
    }
}

#[test]
fn an_expired_token_is_refreshed_once_however_many_clients_ask() {
    let s = setup();
    write_creds(&s.env.home, "at-old", "rt-old", now_ms() - 1000);
    let gate = Arc::new(Semaphore::new(0));
    s.mock
        .push(TOKEN_PATH, Reply::refresh_rotate().gated(gate.clone()));
    s.env.status();

    // 1,000 callers on 20 connections (as separate processes would be), all waiting on the
    // one refresh, which the server answers only once it has arrived.
    let replies = s.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let client = s.client().await;
            for _ in 0..50 {
                let (mut c, req) = (client.clone(), s.request(None));
                tasks.spawn(async move { c.get_credentials(req).await });
            }
        }
        s.mock.wait_for_requests(1).await;
        gate.add_permits(1);
        let mut replies = Vec::new();
        while let Some(r) = tasks.join_next().await {
            replies.push(r.unwrap().unwrap().into_inner());
        }
        replies
    });
    assert_eq!(replies.len(), 1000);
    assert!(replies.iter().all(|r| r.token == "at-refreshed"));
    assert_eq!(replies[0].base_url, "https://portal.qwen.ai/v1");
    assert_eq!(replies[0].model, "coder-model");
    assert_eq!(s.mock.count(TOKEN_PATH), 1, "exactly one refresh upstream");
    let form = s.mock.requests()[0].form();
    assert_eq!(
        form,
        [
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".into(), "rt-old".into()),
            (
                "client_id".into(),
                "f0304373b74a44d2b584a3fb70ca9e56".into()
            ),
        ]
    );

    // Qwen Code's file, as its own refresh writes it: its key order, the rotated token.
    let raw = std::fs::read_to_string(s.qwen_file()).unwrap();
    let keys = top_level_keys(&raw);
    assert_eq!(
        keys,
        [
            "access_token",
            "token_type",
            "refresh_token",
            "resource_url",
            "expiry_date"
        ]
    );
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["refresh_token"], "rt-rotated");
    assert_eq!(mode(&s.qwen_file()), 0o600);
    assert_eq!(mode(&s.our_file()), 0o600);
    assert!(
        !s.env.home.join(".qwen/oauth_creds.lock").exists(),
        "lock released"
    );
    let log = s.env.log();
    for secret in ["at-old", "rt-old", "at-refreshed", "rt-rotated"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn a_refused_refresh_ends_the_login_everywhere_and_says_so() {
    let s = setup();
    write_creds(&s.env.home, "at-old", "rt-old", now_ms() - 1000);
    s.mock.push(TOKEN_PATH, Reply::refresh_400());
    s.env.status();
    let mut events = s.rt.block_on(async {
        let ch = qwend_shared::transport::connect(&s.env.socket)
            .await
            .unwrap();
        EventsClient::new(ch)
            .watch(WatchRequest {})
            .await
            .unwrap()
            .into_inner()
    });

    let err = s.get(None).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("log in again"), "{}", err.message());
    assert!(
        !s.qwen_file().exists(),
        "Qwen Code's file removed, as Qwen Code does"
    );
    assert!(!s.our_file().exists(), "our copy removed");
    let out = s.env.qwen(&["auth", "status", "--json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["logged_in"], false);
    assert!(
        st["warnings"].to_string().contains("qwen auth login"),
        "{st}"
    );
    // `qwen auth status` in words says the same; plugins hear it as an event.
    let logged_out = s.rt.block_on(async {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), events.message())
                .await
                .expect("no event")
                .unwrap()
                .unwrap();
            if let Some(event::Kind::LoggedOut(l)) = ev.kind {
                return l;
            }
        }
    });
    assert!(logged_out.relogin_needed);
    assert!(logged_out.reason.contains("400"), "{}", logged_out.reason);
}

#[test]
fn server_errors_keep_the_login_and_the_still_valid_token() {
    let s = setup();
    write_creds(&s.env.home, "at-valid", "rt-1", now_ms() + 3_600_000);
    s.mock.set_default(TOKEN_PATH, Reply::refresh_500());
    s.env.status();
    let before = std::fs::read_to_string(s.qwen_file()).unwrap();

    // The API refused the token; the refresh fails with 500: the caller hears "try later".
    let err = s.get(Some("at-valid")).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("HTTP 500"), "{}", err.message());
    assert!(!err.message().contains("rt-1"));
    // Others keep the valid token; nothing was removed or rewritten.
    assert_eq!(s.get(None).unwrap().token, "at-valid");
    assert_eq!(std::fs::read_to_string(s.qwen_file()).unwrap(), before);
    assert_eq!(s.mock.count(TOKEN_PATH), 1);
}

#[test]
fn a_refresh_made_by_qwen_code_is_adopted_without_a_request() {
    let s = setup();
    write_creds(&s.env.home, "at-1", "rt-1", now_ms() + 3_600_000);
    s.env.status();
    assert_eq!(s.get(None).unwrap().token, "at-1");
    // Qwen Code refreshed (and rotated) on its own and wrote its file.
    let tmp = s.qwen_file().with_extension("tmp");
    std::fs::write(
        &tmp,
        format!(
            r#"{{"access_token":"at-2","refresh_token":"rt-2","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":{}}}"#,
            now_ms() + 7_200_000
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, s.qwen_file()).unwrap();
    assert_eq!(s.get(None).unwrap().token, "at-2");
    assert!(s.mock.requests().is_empty());
}

/// Issue #4: a crash at any point while saving leaves the old or the new credentials in
/// both files, never a torn one.
#[test]
fn killing_the_daemon_mid_refresh_never_leaves_a_torn_file() {
    let s = setup();
    write_creds(&s.env.home, "at-0", "rt-0", now_ms() + 3_600_000);
    s.mock.set_default(TOKEN_PATH, Reply::refresh_rotate());
    for round in 0..12u32 {
        let pid = s.env.daemon_pid();
        // Force refreshes back to back (each one saves both files) and kill -9 the daemon
        // at a different point of that cycle each round.
        let seen = s.mock.count(TOKEN_PATH);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forcer = {
            let (socket, home, stop) = (s.env.socket.clone(), s.env.home.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let Ok(ch) = qwend_shared::transport::connect(&socket).await else {
                        return;
                    };
                    let mut c = AuthClient::new(ch);
                    let mut last = String::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let req = GetCredentialsRequest {
                            client: Some(ClientContext {
                                cwd: home.display().to_string(),
                                env: HashMap::from([("HOME".into(), home.display().to_string())]),
                            }),
                            rejected_token: Some(last.clone()).filter(|l| !l.is_empty()),
                            model: None,
                        };
                        match c.get_credentials(req).await {
                            Ok(r) => last = r.into_inner().token,
                            Err(_) => return,
                        }
                    }
                });
            })
        };
        s.rt.block_on(s.mock.wait_for_requests(seen + 1 + (round as usize % 4)));
        // Spin a little: a different point of the write each round.
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_micros(u64::from(round) * 150) {}
        kill(pid, "KILL");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        forcer.join().unwrap();
        wait_gone(pid, Duration::from_secs(30), "the killed daemon");
        for file in [s.qwen_file(), s.our_file()] {
            let raw = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("round {round}: {} gone: {e}", file.display()));
            let v: Value = serde_json::from_str(&raw)
                .unwrap_or_else(|e| panic!("round {round}: {} torn: {e}\n{raw}", file.display()));
            assert!(
                v["access_token"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("at-"))
            );
        }
    }
    // After all that, the login still works.
    s.env.status();
    let r = s.get(None).unwrap();
    assert!(r.token.starts_with("at-"));
}

#[test]
fn qwen_auth_token_reports_a_failing_refresh_as_such() {
    let s = setup();
    write_creds(&s.env.home, "at-old", "rt-old", now_ms() - 1000);
    s.mock.set_default(TOKEN_PATH, Reply::refresh_500());
    let out = s.env.qwen(&["auth", "token"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("HTTP 500"), "{err}");
    assert!(!err.contains("cannot reach the daemon"), "{err}");
    assert!(out.stdout.is_empty());
    // The credentials are kept for when the server is back.
    s.mock.set_default(TOKEN_PATH, Reply::refresh_ok());
    let out = s.env.qwen(&["auth", "token"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "at-refreshed");
}

/// A refreshed token that cannot be written to the store is used from memory, and
/// `qwen auth status` says so instead of only logging it (issue 13 item 5).
#[test]
fn a_refresh_that_cannot_be_saved_is_served_and_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    // A valid token, so nothing refreshes until the test asks: an expired one would be
    // refreshed (and saved) as soon as the daemon reads it, racing the chmod below.
    write_creds(&s.env.home, "at-old", "rt-old", now_ms() + 3_600_000);
    s.mock.push(TOKEN_PATH, Reply::refresh_rotate());
    // Without root's power to write where the modes say no, so the read-only dir holds
    // for the daemon even when the tests run as root.
    let qwen = |args: &[&str]| {
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("setpriv");
            s.env.apply(&mut c);
            c.args(["--bounding-set=-dac_override,-dac_read_search", "--"])
                .arg(qwen_bin());
            c
        } else {
            let mut c = std::process::Command::new(qwen_bin());
            s.env.apply(&mut c);
            c
        };
        cmd.args(args).current_dir(&s.env.home).output().unwrap()
    };
    let out = qwen(&["daemon", "start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Imported into our store while it is still writable.
    assert_eq!(s.get(None).unwrap().token, "at-old");

    // Our store becomes read-only; Qwen Code's dir stays writable, so its lock protocol
    // works and only our save fails (ours is written first, and a failure stops there).
    let creds = s.env.state.join("credentials");
    let ours = creds.join("credentials.json");
    if ours.exists() {
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o500)).unwrap();

    let reply = s.get(Some("at-old")).unwrap();
    assert_eq!(reply.token, "at-refreshed", "served from memory");
    let out = qwen(&["auth", "status", "--json"]);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o700)).unwrap();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        st["warnings"].to_string().contains("could not be saved"),
        "{st}"
    );
}
