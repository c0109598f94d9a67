//! The credential codec (daemon/src/store/codec.rs): the bytes of `oauth_creds.json`, of
//! our own credential file and of the keyring entry all go through `decode`.
//!
//! Properties: decoding never panics; what decodes is written back (both of Qwen Code's
//! layouts) and decodes to the same credentials; the derived values the daemon computes
//! from a file (validity at any instant, the API base URL) never panic; `Debug` never
//! shows a token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwend::store::{QwenLayout, decode, encode};
use secrecy::ExposeSecret;

fuzz_target!(|data: &[u8]| {
    let Ok(creds) = decode(data) else {
        return;
    };
    for layout in [QwenLayout::Login, QwenLayout::Refresh] {
        let bytes = encode(&creds, layout);
        let again = decode(&bytes)
            .unwrap_or_else(|e| panic!("re-reading what we wrote failed ({layout:?}): {e}"));
        assert_eq!(
            again, creds,
            "{layout:?} round trip changed the credentials"
        );
        assert_eq!(
            again.account, creds.account,
            "{layout:?} round trip changed the account"
        );
    }
    for now in [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX] {
        let _ = creds.is_valid_at(now);
    }
    let _ = creds.api_base_url();
    let shown = format!("{creds:?}");
    for token in [
        creds.access_token.expose_secret(),
        creds.refresh_token.expose_secret(),
    ] {
        // Only a token that another, printable field also holds may appear.
        let elsewhere = creds.token_type.contains(token)
            || creds.resource_url.as_deref().is_some_and(|u| u.contains(token))
            || "Credentials [redacted] access_token refresh_token token_type expiry_date resource_url account AccountId Some None".contains(token);
        assert!(
            elsewhere || !shown.contains(token),
            "Debug shows a token: {shown}"
        );
    }
});
