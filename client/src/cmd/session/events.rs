//! The session's view of changes made elsewhere (`Events.Watch`): another client switching
//! the method, logging in or out, the daemon stopping. Each is one line; a token refresh
//! and quota changes are silent. What this session did itself is not announced twice.
use std::sync::{Arc, Mutex};

use qwend_shared::api::event::Kind;
use qwend_shared::api::events_client::EventsClient;
use qwend_shared::api::{AuthType, WatchRequest};
use tonic::transport::Channel;

/// What this session knows of the daemon's state, so it announces only what changed
/// behind its back (its own switch or login is reported where it happens).
#[derive(Clone, Default)]
pub struct Known(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    method: Option<AuthType>,
    logging_in: bool,
    /// This session's login's `LoggedIn` came while it ran.
    seen_own_login: bool,
    /// The events of a login this session just finished may still be on their way: the
    /// stream is not ordered with the login's reply.
    own_login_pending: bool,
    own_switch_pending: bool,
}

impl Known {
    /// The method this session believes is selected (set before its own switch).
    pub fn set_method(&self, m: Option<AuthType>) {
        if let Ok(mut s) = self.0.lock() {
            s.method = m.filter(|m| *m != AuthType::Unspecified);
            s.own_switch_pending = false;
        }
    }

    pub fn method(&self) -> Option<AuthType> {
        self.0.lock().ok().and_then(|s| s.method)
    }

    /// While this session runs a login, its events (a login, the method it selects) are
    /// its own.
    pub fn logging_in(&self) {
        if let Ok(mut s) = self.0.lock() {
            s.logging_in = true;
            s.seen_own_login = false;
            s.own_login_pending = false;
            s.own_switch_pending = false;
        }
    }

    /// The login this session ran has ended; when it succeeded, its `LoggedIn` (if not seen
    /// yet) and a switch to Qwen OAuth that may come after this are still its own.
    pub fn login_done(&self, succeeded: bool) {
        if let Ok(mut s) = self.0.lock() {
            s.logging_in = false;
            s.own_login_pending = succeeded && !s.seen_own_login;
            s.own_switch_pending = succeeded;
        }
    }

    fn describe(&self, kind: Kind) -> Option<String> {
        let mut s = self.0.lock().ok()?;
        match kind {
            Kind::AuthSwitched(sw) => {
                let t = sw.auth_type();
                let own = t == AuthType::QwenOauth
                    && (s.logging_in || std::mem::take(&mut s.own_switch_pending));
                let known = s.method == Some(t) || own;
                s.method = Some(t);
                (!known).then(|| {
                    format!(
                        "the auth method was switched to {} by another client; the next message uses it",
                        crate::method::name(t).unwrap_or("none")
                    )
                })
            }
            Kind::LoggedIn(_) => {
                if s.logging_in {
                    s.seen_own_login = true;
                    None
                } else if std::mem::take(&mut s.own_login_pending) {
                    None
                } else {
                    Some("logged in to Qwen OAuth by another client".to_string())
                }
            }
            Kind::LoggedOut(o) => Some(if o.reason.is_empty() {
                "logged out of Qwen OAuth (/auth to log in again)".into()
            } else {
                format!(
                    "logged out of Qwen OAuth: {} (/auth to log in again)",
                    o.reason
                )
            }),
            Kind::ShuttingDown(_) => {
                Some("the daemon is stopping; the next message starts it again".into())
            }
            Kind::TokenRefreshed(_) | Kind::QuotaChanged(_) | Kind::Dropped(_) => None,
        }
    }
}

/// Subscribe, then print what others change until the stream ends (the daemon stopped).
/// Returns once subscribed, so nothing that happens after it is missed.
pub async fn watch(
    channel: Channel,
    known: Known,
    notices: super::editor::Notices,
) -> Result<tokio::task::JoinHandle<()>, tonic::Status> {
    let mut stream = EventsClient::new(channel)
        .watch(WatchRequest {})
        .await?
        .into_inner();
    Ok(tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.message().await {
            let Some(line) = ev.kind.and_then(|k| known.describe(k)) else {
                continue;
            };
            notices.show(&format!("qwen: {line}"));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwend_shared::api::{AuthSwitched, LoggedIn, TokenRefreshed};

    #[test]
    fn only_changes_made_elsewhere_are_announced() {
        let known = Known::default();
        let switched = |t: AuthType| {
            Kind::AuthSwitched(AuthSwitched {
                auth_type: t as i32,
            })
        };
        known.set_method(Some(AuthType::Openai));
        assert_eq!(known.describe(switched(AuthType::Openai)), None);
        let line = known.describe(switched(AuthType::QwenOauth)).unwrap();
        assert!(
            line.contains("switched to qwen-oauth by another client"),
            "{line}"
        );
        assert_eq!(known.method(), Some(AuthType::QwenOauth));
        known.logging_in();
        assert_eq!(
            known.describe(Kind::LoggedIn(LoggedIn { expires_at_ms: 1 })),
            None
        );
        known.login_done(true);
        assert!(
            known
                .describe(Kind::LoggedIn(LoggedIn { expires_at_ms: 1 }))
                .is_some()
        );
        assert_eq!(
            known.describe(Kind::TokenRefreshed(TokenRefreshed { expires_at_ms: 1 })),
            None
        );
    }

    /// The events of this session's own login may arrive after its reply: still its own,
    /// once; a later login or switch elsewhere is announced again.
    #[test]
    fn a_late_event_of_our_own_login_is_not_announced() {
        let known = Known::default();
        known.set_method(Some(AuthType::Openai));
        known.logging_in();
        known.login_done(true);
        let login = || Kind::LoggedIn(LoggedIn { expires_at_ms: 1 });
        let to_oauth = || {
            Kind::AuthSwitched(AuthSwitched {
                auth_type: AuthType::QwenOauth as i32,
            })
        };
        assert_eq!(known.describe(to_oauth()), None);
        assert_eq!(known.describe(login()), None);
        assert!(known.describe(login()).is_some());
        known.set_method(Some(AuthType::Openai));
        assert!(known.describe(to_oauth()).is_some());

        // A failed login leaves nothing pending.
        known.set_method(Some(AuthType::Openai));
        known.logging_in();
        known.login_done(false);
        assert!(known.describe(login()).is_some());
        assert!(known.describe(to_oauth()).is_some());
    }
}
