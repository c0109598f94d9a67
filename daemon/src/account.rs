//! Which Qwen account a login belongs to, so that quota counters follow the account.
//!
//! Qwen's token answers carry no documented account field. The scope asks for `openid`, so
//! an OIDC `id_token` may come with the tokens, and its `iss` and `sub` claims name the
//! account; failing that, an access token that is itself a JWT names it the same way. The
//! claims are read, not verified: they only choose which counters apply, and they came
//! straight from the token endpoint over TLS. Only a hash is kept, so neither the subject
//! nor an e-mail address ever reaches the state dir, the logs or the RPC answers.
//!
//! When a login names no account (opaque tokens, or Qwen Code's file, which drops
//! `id_token`), the counters of the last known account carry on: a different account then
//! shares them, which over-counts (refuses early) but never lets a client past the
//! server's limit because of a re-login.
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use qwend_shared::files;

/// Quota account of Qwen OAuth while no login has named its account; a named one counts
/// on `qwen-oauth:<id>` (see [`AccountId::quota_key`]).
pub const QWEN_OAUTH_ACCOUNT: &str = "qwen-oauth";
/// A JWT larger than this is not looked into (real ones are a few KiB).
const MAX_JWT_BYTES: usize = 16 * 1024;
/// Hex digits kept of the SHA-256 of issuer and subject: 64 bits tell a user's few
/// accounts apart with room to spare.
const ID_HEX_LEN: usize = 16;

/// An account, as the hash of its issuer and subject.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// The account a JWT (an `id_token`, or an access token that is a JWT) names, from its
    /// unverified `iss` and `sub` claims. `None` for anything that is not such a JWT.
    pub fn from_jwt(token: &str) -> Option<Self> {
        if token.len() > MAX_JWT_BYTES {
            return None;
        }
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        let claims: Value = serde_json::from_slice(&bytes).ok()?;
        let sub = claims.get("sub")?.as_str().filter(|s| !s.is_empty())?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let digest = Sha256::new()
            .chain_update(iss.as_bytes())
            .chain_update([0u8])
            .chain_update(sub.as_bytes())
            .finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(Self(hex[..ID_HEX_LEN].to_string()))
    }

    /// An id as [`AccountId::as_str`] wrote it.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == ID_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quota account key for this account.
    pub fn quota_key(&self) -> String {
        format!("{QWEN_OAUTH_ACCOUNT}:{}", self.0)
    }
}

// A hash, not a secret; shown as is so logs can tell accounts apart.
impl std::fmt::Debug for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Qwen OAuth account the quota counters belong to now, kept in `<state>/oauth_account`
/// so that a restart (which reloads credentials that may name no account) keeps counting
/// on the same counters.
#[derive(Debug)]
pub struct AccountTracker {
    path: PathBuf,
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    id: Option<AccountId>,
    key: Arc<str>,
}

impl Current {
    fn new(id: Option<AccountId>) -> Self {
        let key = id
            .as_ref()
            .map_or_else(|| QWEN_OAUTH_ACCOUNT.to_string(), AccountId::quota_key);
        Self {
            id,
            key: key.into(),
        }
    }
}

impl AccountTracker {
    /// Reads the last known account from `path`. A damaged file is reported and counts as
    /// no account known (the shared `qwen-oauth` counters); it is replaced at the next login
    /// that names an account.
    pub fn open(path: PathBuf) -> Self {
        // An id is a short line; a FIFO or a huge file here must not hang or bloat start-up.
        let id = match crate::fsread::read_small_text(&path, 64 * 1024) {
            Ok(text) => {
                let id = AccountId::parse(text.trim());
                if id.is_none() {
                    tracing::warn!(
                        "ignoring {}: it does not hold an account id; quota counts on the \
                         shared Qwen OAuth counters until the next login",
                        path.display()
                    );
                }
                id
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                None
            }
        };
        Self {
            path,
            current: RwLock::new(Current::new(id)),
        }
    }

    /// The quota account key of the Qwen OAuth login: `qwen-oauth:<id>`, or `qwen-oauth`
    /// while no login has named its account.
    pub fn key(&self) -> Arc<str> {
        self.read().key.clone()
    }

    /// The last known account.
    pub fn current(&self) -> Option<AccountId> {
        self.read().id.clone()
    }

    /// Credentials of `id` are now in use. An unknown account (`None`) changes nothing; a
    /// different known one becomes current and is recorded before this returns, so a
    /// crash right after a login cannot put its usage on the previous account's counters.
    pub fn observe(&self, id: Option<&AccountId>) {
        let Some(id) = id else { return };
        if self.read().id.as_ref() == Some(id) {
            return;
        }
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if cur.id.as_ref() == Some(id) {
            return;
        }
        tracing::info!(account = %id, "quota now counts for this Qwen account");
        *cur = Current::new(Some(id.clone()));
        if let Err(e) = self.persist(id) {
            tracing::warn!(
                "cannot record the current account in {}: {e}; after a restart quota may \
                 count on the previous account's counters",
                self.path.display()
            );
        }
    }

    fn persist(&self, id: &AccountId) -> std::io::Result<()> {
        files::ensure_private_dir(files::parent_dir(&self.path), false)?;
        files::atomic_write(&self.path, format!("{id}\n").as_bytes())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// An unsigned JWT carrying `claims`, as test servers hand out.
#[cfg(test)]
pub(crate) fn jwt(claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!(
        "{}.{}.sig",
        enc(&serde_json::json!({"alg": "RS256"})),
        enc(claims)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_names_its_account_by_issuer_and_subject() {
        let a = AccountId::from_jwt(&jwt(&serde_json::json!({"iss": "q", "sub": "alice"})));
        let a2 = AccountId::from_jwt(&jwt(
            &serde_json::json!({"iss": "q", "sub": "alice", "exp": 1}),
        ));
        let b = AccountId::from_jwt(&jwt(&serde_json::json!({"iss": "q", "sub": "bob"})));
        let other_iss = AccountId::from_jwt(&jwt(&serde_json::json!({"iss": "r", "sub": "alice"})));
        assert!(a.is_some());
        assert_eq!(a, a2, "other claims do not matter");
        assert_ne!(a, b);
        assert_ne!(a, other_iss);
        let id = a.unwrap();
        assert_eq!(id.as_str().len(), ID_HEX_LEN);
        assert_eq!(AccountId::parse(id.as_str()), Some(id.clone()));
        assert!(!format!("{id:?}{id}").contains("alice"));
    }

    #[test]
    fn no_account_without_a_jwt_and_a_subject() {
        for token in [
            "opaque-access-token".to_string(),
            "a.b".into(),
            "a.b.c.d".into(),
            "x.!!!.y".into(),
            jwt(&serde_json::json!({"iss": "q"})),
            jwt(&serde_json::json!({"sub": ""})),
            jwt(&serde_json::json!({"sub": 7})),
            jwt(&serde_json::json!(["sub"])),
            format!("a.{}.c", "A".repeat(MAX_JWT_BYTES)),
        ] {
            assert_eq!(AccountId::from_jwt(&token), None, "{token:.40}");
        }
        // Padding some encoders leave on is tolerated.
        let padded = jwt(&serde_json::json!({"sub": "abc"})).replace(".sig", "=.sig");
        assert!(AccountId::from_jwt(&padded).is_some());
    }

    #[test]
    fn parse_accepts_only_what_as_str_writes() {
        for bad in [
            "",
            "0123",
            "0123456789abcdeF",
            "0123456789abcdef0",
            "g123456789abcdef",
        ] {
            assert_eq!(AccountId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_current_account_is_sticky_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/oauth_account");
        let t = AccountTracker::open(path.clone());
        assert_eq!(&*t.key(), QWEN_OAUTH_ACCOUNT);
        let a = AccountId::parse("00000000000000aa").unwrap();
        let b = AccountId::parse("00000000000000bb").unwrap();

        t.observe(None);
        assert_eq!(&*t.key(), QWEN_OAUTH_ACCOUNT, "nothing known yet");
        t.observe(Some(&a));
        assert_eq!(&*t.key(), "qwen-oauth:00000000000000aa");
        t.observe(None);
        assert_eq!(
            t.current(),
            Some(a.clone()),
            "an unnamed login keeps the counters"
        );
        t.observe(Some(&b));
        assert_eq!(&*t.key(), "qwen-oauth:00000000000000bb");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let reopened = AccountTracker::open(path);
        assert_eq!(reopened.current(), Some(b));
    }

    #[test]
    fn a_damaged_record_counts_as_no_account_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth_account");
        std::fs::write(&path, "not an id\0").unwrap();
        let t = AccountTracker::open(path.clone());
        assert_eq!(&*t.key(), QWEN_OAUTH_ACCOUNT);
        let a = AccountId::parse("0123456789abcdef").unwrap();
        t.observe(Some(&a));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "0123456789abcdef\n"
        );
    }
}
