//! Wire-level tests against the local mock authorization server. Times are scaled: one
//! protocol second lasts a few milliseconds, and every wait is on an event, never a sleep.
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::mock::{
    DEVICE_PATH, MockServer, Recorded, Reply, assert_request_like, conformance_case,
    conformance_time, is_uuid,
};
use super::*;
use crate::clock::ManualClock;

const NOW: i64 = 1_700_000_000_000;
/// One protocol second in these tests.
const UNIT: Duration = Duration::from_millis(10);

fn client_with(server: &MockServer, timeout: Duration) -> OAuthClient {
    OAuthClient::new(OAuthConfig {
        request_timeout: timeout,
        ..OAuthConfig::with_base_url(server.base_url())
    })
    .unwrap()
}

fn client(server: &MockServer) -> OAuthClient {
    client_with(server, Duration::from_secs(10))
}

fn scaled(unit: Duration) -> DeviceFlowConfig {
    DeviceFlowConfig {
        time_unit: unit,
        ..DeviceFlowConfig::default()
    }
}

/// Runs a whole device flow against `server` and returns its result, events and requests.
async fn run_flow(
    server: &MockServer,
    client: &OAuthClient,
    unit: Duration,
) -> (
    Result<Credentials, DeviceFlowError>,
    Vec<DeviceFlowEvent>,
    Vec<Recorded>,
) {
    let clock = ManualClock::new(NOW);
    let flow = DeviceFlow::start(client, scaled(unit)).await.unwrap();
    let mut events = Vec::new();
    let result = flow
        .poll(&*clock, &CancellationToken::new(), |e| events.push(e))
        .await;
    (result, events, server.requests())
}

fn device_form_pairs(challenge: &str) -> Vec<(&str, &str)> {
    vec![
        ("client_id", CLIENT_ID),
        ("scope", "openid profile email model.completion"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

fn assert_json_headers(r: &Recorded, with_request_id: bool) {
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("accept"), Some("application/json"));
    match r.header("x-request-id") {
        Some(id) => assert!(with_request_id && is_uuid(id), "x-request-id {id}"),
        None => assert!(!with_request_id, "x-request-id missing"),
    }
}

/// The RPC layer spawns these futures; this only has to compile.
#[test]
fn the_protocol_futures_can_be_spawned() {
    fn send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    fn poll_is_send(flow: DeviceFlow, clock: &dyn crate::clock::Clock, cancel: &CancellationToken) {
        send(&flow.poll(clock, cancel, |_| {}));
    }
    let client = OAuthClient::new(OAuthConfig::default()).unwrap();
    send(&DeviceFlow::start(&client, DeviceFlowConfig::default()));
    send(&client.refresh(&SecretString::from("x")));
}

#[test]
fn pkce_challenge_is_s256_of_the_verifier() {
    // The pair Qwen Code itself sent in the recorded device-flow login.
    assert_eq!(
        s256_challenge("yjdxUwr9CMGESN_suP1I1KpZCTJfPtaXGvpHZFTCJEw"),
        "5No2xeYmh4d1sPmjD2_zSBBmKELhlSwRZQGieFNk5wc"
    );
    // RFC 7636 appendix B.
    assert_eq!(
        s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let a = PkceVerifier::generate().unwrap();
    let b = PkceVerifier::generate().unwrap();
    let v = a.secret().expose_secret();
    assert_eq!(v.len(), 43, "32 bytes in unpadded base64url");
    assert!(
        v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_ne!(v, b.secret().expose_secret());
    assert_eq!(a.challenge(), s256_challenge(v));
}

#[test]
fn form_is_encoded_like_encode_uri_component() {
    assert_eq!(
        encode_form(&[
            ("scope", SCOPE),
            ("grant_type", DEVICE_CODE_GRANT_TYPE),
            ("x", "a+b/c=d&é~*'()!")
        ]),
        "scope=openid%20profile%20email%20model.completion\
         &grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code\
         &x=a%2Bb%2Fc%3Dd%26%C3%A9~*'()!"
    );
}

/// `oauth-device-flow-login.json`: device request, one `authorization_pending`, success.
#[tokio::test]
async fn device_flow_login_matches_qwen_code() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(60, Some(1)));
    server.push(TOKEN_PATH, Reply::pending());
    server.push(TOKEN_PATH, Reply::device_token());
    let clock = ManualClock::new(NOW);
    let flow = DeviceFlow::start(&client(&server), scaled(UNIT))
        .await
        .unwrap();
    assert_eq!(
        flow.prompt(),
        &DevicePrompt {
            verification_uri: "https://chat.qwen.ai/authorize".into(),
            verification_uri_complete:
                "https://chat.qwen.ai/authorize?user_code=ABCD-EFGH&client=qwen-code".into(),
            user_code: "ABCD-EFGH".into(),
            expires_in: UNIT * 60,
            interval: UNIT,
        }
    );
    let mut events = Vec::new();
    let creds = flow
        .poll(&*clock, &CancellationToken::new(), |e| events.push(e))
        .await
        .unwrap();
    assert!(matches!(events[..], [DeviceFlowEvent::Pending { .. }]));

    assert_eq!(creds.access_token.expose_secret(), "at-device");
    assert_eq!(creds.refresh_token.expose_secret(), "rt-device");
    assert_eq!(creds.token_type, "Bearer");
    assert_eq!(creds.resource_url.as_deref(), Some("portal.qwen.ai"));
    assert_eq!(creds.expiry_date, NOW + 3_600_000);

    // Hard-coded: what Qwen Code 0.24.4 sends, byte for byte.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let (dev, polls) = (&reqs[0], &reqs[1..]);
    assert_eq!(dev.path, DEVICE_PATH);
    assert_json_headers(dev, true);
    let challenge = dev.form_value("code_challenge").unwrap();
    assert_eq!(dev.body, encode_form(&device_form_pairs(&challenge)));
    let verifier = polls[0].form_value("code_verifier").unwrap();
    assert_eq!(s256_challenge(&verifier), challenge, "PKCE S256");
    for p in polls {
        assert_eq!(p.path, TOKEN_PATH);
        assert_json_headers(p, false);
        assert_eq!(
            p.body,
            encode_form(&[
                ("grant_type", DEVICE_CODE_GRANT_TYPE),
                ("client_id", CLIENT_ID),
                ("device_code", "dc-1"),
                ("code_verifier", &verifier),
            ])
        );
    }

    // And against the recording itself, when the kit is beside the repo.
    if let Some(case) = conformance_case("oauth-device-flow-login") {
        let expected = case["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), expected.len());
        for (ours, theirs) in reqs.iter().zip(expected) {
            assert_request_like(ours, theirs, &["code_challenge", "code_verifier"]);
        }
        assert_eq!(case["pkce_s256_ok"], true);
        let result = &case["result"];
        assert_eq!(creds.access_token.expose_secret(), result["access_token"]);
        assert_eq!(creds.refresh_token.expose_secret(), result["refresh_token"]);
        assert_eq!(creds.token_type, result["token_type"]);
        assert_eq!(
            creds.resource_url.as_deref(),
            result["resource_url"].as_str()
        );
        // The recording dates expiry from the start of the run; Qwen Code spent its fixed
        // 2 s poll wait in between. We date it from the answer, like Qwen Code does.
        let theirs = conformance_time(&result["expiry_date"], NOW);
        assert!(
            (theirs - creds.expiry_date).abs() <= 5_000,
            "expiry {theirs}"
        );
    }
}

#[tokio::test]
async fn pending_n_times_then_success() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
    for _ in 0..4 {
        server.push(TOKEN_PATH, Reply::pending());
    }
    server.push(TOKEN_PATH, Reply::device_token());
    let (result, events, reqs) =
        run_flow(&server, &client(&server), Duration::from_millis(1)).await;
    assert!(result.is_ok());
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, DeviceFlowEvent::Pending { remaining } if *remaining <= Duration::from_secs(6)))
    );
    assert_eq!(reqs.len(), 6);
}

#[tokio::test]
async fn slow_down_adds_five_seconds_to_the_interval() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(2)));
    server.push(TOKEN_PATH, Reply::slow_down()); // Qwen's form: 429
    server.push(TOKEN_PATH, Reply::oauth_error(400, "slow_down")); // RFC 8628's form
    server.push(TOKEN_PATH, Reply::pending());
    server.push(TOKEN_PATH, Reply::device_token());
    let unit = Duration::from_millis(1);
    let (result, events, _) = run_flow(&server, &client(&server), unit).await;
    assert!(result.is_ok());
    assert_eq!(
        events[0],
        DeviceFlowEvent::SlowDown {
            new_interval: unit * 7
        }
    );
    assert_eq!(
        events[1],
        DeviceFlowEvent::SlowDown {
            new_interval: unit * 12
        }
    );
    assert!(matches!(events[2], DeviceFlowEvent::Pending { .. }));
}

#[tokio::test]
async fn missing_interval_defaults_to_five_seconds() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(600, None));
    let flow = DeviceFlow::start(&client(&server), scaled(UNIT))
        .await
        .unwrap();
    assert_eq!(flow.prompt().interval, UNIT * 5);
}

#[tokio::test]
async fn expired_token_and_access_denied_end_the_flow_distinctly() {
    for (error, want) in [
        ("expired_token", DeviceFlowError::ExpiredToken),
        ("access_denied", DeviceFlowError::AccessDenied),
    ] {
        let server = MockServer::start().await;
        server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
        server.push(TOKEN_PATH, Reply::pending());
        server.push(TOKEN_PATH, Reply::oauth_error(400, error));
        server.set_default(TOKEN_PATH, Reply::device_token());
        let (result, _, reqs) = run_flow(&server, &client(&server), Duration::from_millis(1)).await;
        assert_eq!(result.unwrap_err(), want);
        assert_eq!(reqs.len(), 3, "no poll after {error}");
    }
}

#[tokio::test]
async fn other_oauth_errors_end_the_flow() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
    server.push(TOKEN_PATH, Reply::oauth_error(400, "invalid_grant"));
    let (result, _, _) = run_flow(&server, &client(&server), Duration::from_millis(1)).await;
    assert!(matches!(
        result,
        Err(DeviceFlowError::OAuth(OAuthError::Rejected { status: 400, error: Some(ref e), .. })) if e == "invalid_grant"
    ));
}

#[tokio::test]
async fn the_flow_ends_at_expires_in() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(30, Some(1)));
    server.set_default(TOKEN_PATH, Reply::pending());
    let (result, events, reqs) =
        run_flow(&server, &client(&server), Duration::from_millis(1)).await;
    assert_eq!(
        result.unwrap_err(),
        DeviceFlowError::TimedOut { last_error: None }
    );
    assert!(!events.is_empty() && reqs.len() >= 2);
}

#[tokio::test]
async fn server_and_network_errors_are_retried() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
    server.push(TOKEN_PATH, Reply::refresh_500());
    server.push(TOKEN_PATH, Reply::abort());
    server.push(TOKEN_PATH, Reply::pending());
    server.push(TOKEN_PATH, Reply::device_token());
    let (result, events, reqs) =
        run_flow(&server, &client(&server), Duration::from_millis(1)).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(reqs.len(), 5);
    let DeviceFlowEvent::Retrying {
        reason, retry_in, ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert!(reason.contains("HTTP 500"), "{reason}");
    assert_eq!(
        *retry_in,
        Duration::from_millis(2),
        "backoff doubles the interval"
    );
    let DeviceFlowEvent::Retrying {
        reason, retry_in, ..
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert!(reason.starts_with("could not reach"), "{reason}");
    assert_eq!(*retry_in, Duration::from_millis(4));
    assert!(matches!(events[2], DeviceFlowEvent::Pending { .. }));
}

#[tokio::test]
async fn retries_stop_at_expiry_with_the_last_error() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(40, Some(1)));
    server.set_default(TOKEN_PATH, Reply::text(503, "unavailable"));
    let (result, events, _) = run_flow(&server, &client(&server), Duration::from_millis(1)).await;
    let Err(DeviceFlowError::TimedOut {
        last_error: Some(last),
    }) = result
    else {
        panic!("{result:?}")
    };
    assert!(last.contains("HTTP 503"), "{last}");
    assert!(
        events
            .iter()
            .all(|e| matches!(e, DeviceFlowEvent::Retrying { .. }))
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(60_000, Some(1)));
    server.push(
        TOKEN_PATH,
        Reply::pending().delayed(Duration::from_secs(30)),
    );
    server.push(TOKEN_PATH, Reply::device_token());
    let client = client_with(&server, Duration::from_millis(100));
    let (result, events, _) = run_flow(&server, &client, Duration::from_millis(1)).await;
    assert!(result.is_ok(), "{result:?}");
    let [DeviceFlowEvent::Retrying { reason, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert!(reason.contains("did not answer"), "{reason}");
}

#[tokio::test]
async fn malformed_answers_are_typed_errors() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
    server.push(TOKEN_PATH, Reply::text(200, "<html>not json"));
    let (result, _, _) = run_flow(&server, &client(&server), Duration::from_millis(1)).await;
    assert!(matches!(
        result,
        Err(DeviceFlowError::OAuth(OAuthError::Malformed {
            status: 200,
            ..
        }))
    ));

    let server = MockServer::start().await;
    let c = client(&server);
    server.push(DEVICE_PATH, Reply::text(200, "{"));
    server.push(
        DEVICE_PATH,
        Reply::json(200, serde_json::json!({"user_code": "X"})),
    );
    server.push(DEVICE_PATH, Reply::text(502, "bad gateway"));
    server.push(DEVICE_PATH, Reply::oauth_error(400, "invalid_client"));
    let start = || DeviceFlow::start(&c, scaled(UNIT));
    assert!(matches!(
        start().await,
        Err(OAuthError::Malformed { status: 200, .. })
    ));
    assert!(matches!(
        start().await,
        Err(OAuthError::Malformed { ref detail, .. }) if detail == "missing device_code"
    ));
    assert_eq!(
        start().await.unwrap_err(),
        OAuthError::ServerError { status: 502 }
    );
    assert!(matches!(
        start().await,
        Err(OAuthError::Rejected { status: 400, error: Some(ref e), .. }) if e == "invalid_client"
    ));
}

#[tokio::test]
async fn a_cancellation_token_ends_the_flow() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
    server.set_default(TOKEN_PATH, Reply::pending());
    let clock = ManualClock::new(NOW);
    let flow = DeviceFlow::start(&client(&server), scaled(Duration::from_millis(1)))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let result = flow.poll(&*clock, &cancel, |_| cancel.cancel()).await;
    assert_eq!(result.unwrap_err(), DeviceFlowError::Cancelled);
    assert_eq!(
        server.count(TOKEN_PATH),
        1,
        "no poll after the cancellation"
    );
}

/// The refresh request of `oauth-expired-refresh-*.json`, hard-coded.
fn assert_refresh_request(r: &Recorded, refresh_token: &str) {
    assert_eq!(r.path, TOKEN_PATH);
    assert_json_headers(r, false);
    assert_eq!(
        r.body,
        encode_form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
        ])
    );
}

fn old_creds() -> Credentials {
    Credentials {
        access_token: SecretString::from("at-old"),
        refresh_token: SecretString::from("rt-old"),
        token_type: "Bearer".into(),
        expiry_date: NOW - 1000,
        resource_url: Some("portal.qwen.ai".into()),
        account: None,
    }
}

#[tokio::test]
async fn refresh_keeps_the_refresh_token_unless_a_new_one_comes() {
    let server = MockServer::start().await;
    server.push(TOKEN_PATH, Reply::refresh_ok());
    server.push(TOKEN_PATH, Reply::refresh_rotate());
    let c = client(&server);
    let old = old_creds();

    let kept = c.refresh(&old.refresh_token).await.unwrap();
    assert!(kept.refresh_token.is_none());
    let kept = kept.into_credentials(Some(&old), NOW);
    assert_eq!(kept.access_token.expose_secret(), "at-refreshed");
    assert_eq!(kept.refresh_token.expose_secret(), "rt-old");
    assert_eq!(kept.expiry_date, NOW + 3_600_000);

    let rotated = c
        .refresh(&old.refresh_token)
        .await
        .unwrap()
        .into_credentials(Some(&old), NOW);
    assert_eq!(rotated.refresh_token.expose_secret(), "rt-rotated");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_refresh_request(r, "rt-old");
    }
    if let Some(case) = conformance_case("oauth-expired-refresh-ok") {
        assert_request_like(&reqs[0], &case["requests"][0], &[]);
    }
}

#[tokio::test]
async fn refresh_400_and_401_end_the_login_everything_else_is_transient() {
    let server = MockServer::start().await;
    let c = client(&server);
    let rt = SecretString::from("rt-old");
    server.push(TOKEN_PATH, Reply::refresh_400());
    match c.refresh(&rt).await {
        Err(RefreshError::LoginEnded {
            status: 400,
            reason,
        }) => {
            assert_eq!(reason, "HTTP 400: invalid_grant: refresh token expired")
        }
        other => panic!("{other:?}"),
    }
    server.push(TOKEN_PATH, Reply::text(401, "nope"));
    assert!(matches!(
        c.refresh(&rt).await,
        Err(RefreshError::LoginEnded { status: 401, .. })
    ));

    let transient = [
        (
            Reply::refresh_500(),
            OAuthError::ServerError { status: 500 },
        ),
        (
            Reply::text(503, ""),
            OAuthError::ServerError { status: 503 },
        ),
        (
            Reply::text(403, "forbidden"),
            OAuthError::Rejected {
                status: 403,
                error: None,
                description: None,
            },
        ),
        (
            Reply::oauth_error(200, "server_busy"),
            OAuthError::Rejected {
                status: 200,
                error: Some("server_busy".into()),
                description: None,
            },
        ),
    ];
    for (reply, want) in transient {
        server.push(TOKEN_PATH, reply);
        assert_eq!(
            c.refresh(&rt).await.unwrap_err(),
            RefreshError::Transient(want)
        );
    }
    server.push(TOKEN_PATH, Reply::text(200, "not json"));
    assert!(matches!(
        c.refresh(&rt).await,
        Err(RefreshError::Transient(OAuthError::Malformed {
            status: 200,
            ..
        }))
    ));
    server.push(
        TOKEN_PATH,
        Reply::json(200, serde_json::json!({"access_token": "at-x"})),
    );
    assert!(matches!(
        c.refresh(&rt).await,
        Err(RefreshError::Transient(OAuthError::Malformed { ref detail, .. })) if detail == "missing expires_in"
    ));
    server.push(TOKEN_PATH, Reply::abort());
    assert!(matches!(
        c.refresh(&rt).await,
        Err(RefreshError::Transient(OAuthError::Network { .. }))
    ));
    server.push(
        TOKEN_PATH,
        Reply::refresh_ok().delayed(Duration::from_secs(30)),
    );
    let slow = client_with(&server, Duration::from_millis(100));
    assert!(matches!(
        slow.refresh(&rt).await,
        Err(RefreshError::Transient(OAuthError::Timeout { .. }))
    ));
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let c = OAuthClient::new(OAuthConfig::with_base_url(format!(
        "http://127.0.0.1:{port}"
    )))
    .unwrap();
    let err = c.refresh(&SecretString::from("rt-old")).await.unwrap_err();
    let RefreshError::Transient(OAuthError::Network { reason }) = &err else {
        panic!("{err:?}")
    };
    assert!(reason.starts_with("connection failed"), "{reason}");
    assert!(OAuthClient::new(OAuthConfig::with_base_url("chat.qwen.ai")).is_err());
}

#[tokio::test]
async fn token_answers_name_their_account_by_id_token_or_jwt_access_token() {
    use crate::account::{AccountId, jwt};
    let alice = jwt(&serde_json::json!({"iss": "https://chat.qwen.ai", "sub": "alice"}));
    let bob = jwt(&serde_json::json!({"iss": "https://chat.qwen.ai", "sub": "bob"}));
    let server = MockServer::start().await;
    let answer = |access: &str, id_token: Option<&str>| {
        let mut v =
            serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
        if let Some(t) = id_token {
            v["id_token"] = serde_json::json!(t);
        }
        Reply::json(200, v)
    };
    server.push(TOKEN_PATH, answer("opaque", Some(&alice)));
    server.push(TOKEN_PATH, answer(&bob, None));
    server.push(TOKEN_PATH, answer("opaque", None));
    let c = client(&server);
    let rt = SecretString::from("rt-old");

    let by_id_token = c.refresh(&rt).await.unwrap();
    assert_eq!(by_id_token.account, AccountId::from_jwt(&alice));
    assert!(by_id_token.account.is_some());
    let by_access = c.refresh(&rt).await.unwrap();
    assert_eq!(by_access.account, AccountId::from_jwt(&bob));
    assert_ne!(by_access.account, by_id_token.account);

    // A refresh that names nobody stays with the account it refreshed.
    let creds = by_id_token.into_credentials(Some(&old_creds()), NOW);
    let unnamed = c.refresh(&rt).await.unwrap();
    assert_eq!(unnamed.account, None);
    let refreshed = unnamed.into_credentials(Some(&creds), NOW);
    assert_eq!(refreshed.account, AccountId::from_jwt(&alice));
    assert!(
        !format!("{refreshed:?}").contains("alice"),
        "only a hash of the subject is kept"
    );
}

#[test]
fn token_answers_fill_gaps_from_the_previous_credentials() {
    let answer = TokenResponse {
        access_token: SecretString::from("at-new"),
        refresh_token: None,
        token_type: None,
        expires_in_secs: 60,
        resource_url: None,
        account: None,
    };
    let c = answer.clone().into_credentials(Some(&old_creds()), NOW);
    assert_eq!(c.token_type, "Bearer");
    assert_eq!(c.resource_url.as_deref(), Some("portal.qwen.ai"));
    assert_eq!(c.refresh_token.expose_secret(), "rt-old");
    assert_eq!(c.expiry_date, NOW + 60_000);
    let fresh = answer.into_credentials(None, NOW);
    assert_eq!(
        fresh.refresh_token.expose_secret(),
        "",
        "no refresh token to keep"
    );
    assert_eq!(fresh.resource_url, None);
}

/// Secrets never show in the Debug or Display of errors, events and handles, even when the
/// server echoes what it received.
#[tokio::test]
async fn secrets_never_appear_in_errors_or_events() {
    let server = MockServer::start().await;
    server.push(DEVICE_PATH, Reply::device_code(6000, Some(1)));
    server.push(TOKEN_PATH, Reply::refresh_500());
    server.push(TOKEN_PATH, Reply::abort());
    server.push(TOKEN_PATH, Reply::pending());
    server.push(TOKEN_PATH, Reply::slow_down());
    server.push(TOKEN_PATH, Reply::echo(400));
    let c = client(&server);
    let clock = ManualClock::new(NOW);
    let flow = DeviceFlow::start(&c, scaled(Duration::from_millis(1)))
        .await
        .unwrap();
    let mut texts = vec![format!("{flow:?}")];
    let mut events = Vec::new();
    let err = flow
        .poll(&*clock, &CancellationToken::new(), |e| events.push(e))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeviceFlowError::OAuth(OAuthError::Rejected { description: Some(ref d), .. }) if d.contains("[redacted]")),
        "{err:?}"
    );
    texts.push(format!("{err} {err:?}"));
    texts.extend(events.iter().map(|e| format!("{e:?}")));
    let verifier = server.requests()[1].form_value("code_verifier").unwrap();

    // Refresh answers that echo the refresh token back.
    let rt = SecretString::from("rt-old");
    for status in [400, 401, 403, 200] {
        server.push(TOKEN_PATH, Reply::echo(status));
        let e = c.refresh(&rt).await.unwrap_err();
        texts.push(format!("{e} {e:?}"));
    }
    server.push(TOKEN_PATH, Reply::device_token());
    let answer = c.refresh(&rt).await.unwrap();
    texts.push(format!("{answer:?}"));
    texts.push(format!(
        "{:?}",
        PkceVerifier::from_secret(verifier.clone().into())
    ));
    server.push(DEVICE_PATH, Reply::device_code(60, Some(1)));
    let auth = c
        .request_device_authorization(&PkceVerifier::generate().unwrap())
        .await
        .unwrap();
    texts.push(format!("{auth:?}"));

    let secrets = [
        "rt-old",
        "dc-1",
        "ABCD-EFGH",
        "at-device",
        "rt-device",
        verifier.as_str(),
    ];
    for text in &texts {
        for s in secrets {
            assert!(!text.contains(s), "{s} leaked in: {text}");
        }
    }
}
