//! The daemon's loopback proxy, as the client uses it: a session for `qwen exec` (its
//! secret lives while the session call is open, i.e. while qwen runs) and the status line
//! for `qwen daemon status` / `qwen auth status`.
use qwend_shared::api::proxy_client::ProxyClient;
use qwend_shared::api::proxy_session_event::Kind;
use qwend_shared::api::{
    ClientContext, CredentialsReply, OpenProxySessionRequest, ProxySessionEvent, ProxyStatus,
    ProxyStatusRequest,
};
use tonic::transport::Channel;

use crate::error::ClientError;

/// Keeps the session (and so the secret) alive; dropping it, or qwen exiting however it
/// exits, revokes the secret.
pub type Session = tonic::Streaming<ProxySessionEvent>;

/// `direct` with the token and base URL replaced by the proxy's secret and address; the
/// real token is dropped here and never reaches the child.
pub async fn open(
    channel: &Channel,
    ctx: &ClientContext,
    direct: CredentialsReply,
) -> Result<(CredentialsReply, Option<Session>), ClientError> {
    let mut stream = ProxyClient::new(channel.clone())
        .open_session(OpenProxySessionRequest {
            client: Some(ctx.clone()),
        })
        .await?
        .into_inner();
    let opened = match stream.message().await? {
        Some(ProxySessionEvent {
            kind: Some(Kind::Opened(o)),
        }) => o,
        _ => {
            return Err(ClientError::Rpc(
                "the daemon closed the proxy session before opening it".into(),
            ));
        }
    };
    let creds = CredentialsReply {
        auth_type: opened.auth_type,
        token: opened.secret,
        base_url: opened.base_url,
        model: opened.model,
        expires_at_ms: None,
        warnings: direct.warnings,
    };
    Ok((creds, Some(stream)))
}

/// The proxy's state, or `None` from a daemon without a proxy (an older one).
pub async fn status(channel: &Channel) -> Option<ProxyStatus> {
    ProxyClient::new(channel.clone())
        .get_proxy_status(ProxyStatusRequest::default())
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// [`status`] over a fresh connection to the running daemon.
pub async fn fetch_status() -> Option<ProxyStatus> {
    let channel = crate::connect::existing(&qwend_shared::paths::socket_path())
        .await
        .ok()??;
    status(&channel).await
}

/// The `"proxy"` object of `--json` outputs.
pub fn to_json(p: &ProxyStatus) -> serde_json::Value {
    let address = (!p.address.is_empty()).then_some(p.address.as_str());
    serde_json::json!({
        "address": address,
        "base_url": address.map(|a| format!("http://{a}/v1")),
        "live_secrets": p.live_secrets,
        "requests": p.requests,
    })
}

/// One line for the human outputs.
pub fn human(p: &ProxyStatus) -> String {
    if p.address.is_empty() {
        "not started (it starts with the first `qwen exec` that uses it)".to_string()
    } else {
        format!(
            "http://{}/v1 ({} live secret{}, {} request{} forwarded)",
            p.address,
            p.live_secrets,
            if p.live_secrets == 1 { "" } else { "s" },
            p.requests,
            if p.requests == 1 { "" } else { "s" },
        )
    }
}
