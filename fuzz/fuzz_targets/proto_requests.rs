//! What a peer can put on the daemon's socket: arbitrary bytes decoded as every request
//! message of proto/ (prost, as the server's codec does), and whatever decodes run through
//! the daemon's request validation (daemon/src/server/validate.rs).
//!
//! Properties: decoding never panics and never takes time or memory out of proportion to
//! the input (libFuzzer's -timeout and -rss_limit_mb); a decoded request re-encodes to
//! bytes that decode to the same request; validation never panics, refuses with
//! INVALID_ARGUMENT only, in a message under 512 bytes that never quotes an environment
//! value.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qwend::server::validate;
use qwend_shared::api;
use tonic::{Code, Status};

/// Decodes `data` as `T`; on success checks the round trip and hands the message on.
fn decode<T: Message + Default + PartialEq>(data: &[u8]) -> Option<T> {
    let msg = T::decode(data).ok()?;
    let again = T::decode(msg.encode_to_vec().as_slice()).expect("re-encoded request decodes");
    assert!(
        again == msg,
        "round trip changed a {}",
        std::any::type_name::<T>()
    );
    Some(msg)
}

fn check_refusal(r: Result<(), Status>, cwd: &str, env: &HashMap<String, String>) {
    let Err(s) = r else { return };
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let msg = s.message();
    // A quoted prefix is at most 64 bytes, but `{:?}` escapes a control character as six
    // (`\u{10}`): the template plus 64 escaped bytes stays under 512.
    assert!(msg.len() < 512, "refusal of {} bytes: {msg}", msg.len());
    for value in env.values().filter(|v| v.len() >= 16) {
        // Keys and the cwd may be quoted (a bounded prefix); values never.
        let quoted_elsewhere =
            env.keys().any(|k| k.contains(value.as_str())) || cwd.contains(value.as_str());
        assert!(
            quoted_elsewhere || !msg.contains(value.as_str()),
            "refusal quotes a value: {msg}"
        );
    }
}

fn client(c: Option<api::ClientContext>) {
    let (cwd, env) = c
        .as_ref()
        .map(|c| (c.cwd.clone(), c.env.clone()))
        .unwrap_or_default();
    match validate::client_ctx(c) {
        Ok(ctx) => {
            assert_eq!(ctx.cwd.as_os_str().len(), cwd.len());
            assert!(ctx.cwd.as_os_str().len() <= validate::MAX_CWD);
            assert_eq!(ctx.env, env);
        }
        Err(s) => check_refusal(Err(s), &cwd, &env),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = decode::<api::AuthStatusRequest>(data) {
        client(r.client);
    }
    if let Some(r) = decode::<api::SwitchAuthRequest>(data) {
        // An unknown enum number must read as the default, not panic.
        let _ = r.auth_type();
        client(r.client);
    }
    decode::<api::LogoutRequest>(data);
    decode::<api::LoginRequest>(data);
    if let Some(r) = decode::<api::GetCredentialsRequest>(data) {
        client(r.client);
    }
    decode::<api::StatusRequest>(data);
    decode::<api::ShutdownRequest>(data);
    if let Some(r) = decode::<api::ResolveEnvRequest>(data) {
        check_refusal(validate::cwd(&r.cwd), &r.cwd, &r.env);
        check_refusal(validate::env(&r.env), &r.cwd, &r.env);
    }
    decode::<api::WatchRequest>(data);
    if let Some(r) = decode::<api::OpenProxySessionRequest>(data) {
        client(r.client);
    }
    decode::<api::ProxyStatusRequest>(data);
    if let Some(r) = decode::<api::AcquirePermitRequest>(data) {
        client(r.client);
    }
    if let Some(r) = decode::<api::ReportOutcomeRequest>(data) {
        client(r.client);
    }
    if let Some(r) = decode::<api::GetQuotaRequest>(data) {
        client(r.client);
    }
    if let Some(r) = decode::<api::ResetQuotaRequest>(data) {
        client(r.client);
    }
});
