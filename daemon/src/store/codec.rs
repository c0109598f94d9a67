//! The JSON shape of `oauth_creds.json`, decoded with Qwen Code's validation rules and
//! encoded byte-for-byte as Qwen Code's `JSON.stringify(creds, null, 2)` does.
//!
//! Our own file and keyring entry reuse this shape so a user can copy one to the other.
use secrecy::zeroize::{Zeroize, Zeroizing};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

// Re-exported for `store::MAX_FILE_BYTES`; the cap belongs to the file reader, which
// reads one byte past it so that `decode` can tell a file was too large.
pub use super::fsutil::MAX_FILE_BYTES;
use crate::account::AccountId;
use crate::credentials::Credentials;

/// Why stored bytes are not usable credentials. Never carries any of the bytes: a
/// truncated file may well hold half a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the JSON is truncated")]
    Truncated,
    #[error("JSON syntax error at line {line}, column {column}")]
    Syntax { line: usize, column: usize },
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the JSON is not an object")]
    NotAnObject,
    /// Qwen Code's own validation message is `Invalid credentials: missing <field>`; it
    /// also means "empty" or "wrong type".
    #[error("`{field}` is missing, empty or of the wrong type")]
    MissingField { field: &'static str },
}

impl DecodeError {
    /// Unparseable (as opposed to well-formed JSON that fails validation).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            Self::Truncated | Self::Syntax { .. } | Self::TooLarge { .. }
        )
    }
}

/// Field order of a written `oauth_creds.json`. Qwen Code builds the object in two places
/// with different key orders and serializes whatever it built, so an exact interop writer
/// has to know which of the two writes it is imitating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenLayout {
    /// Device-flow login (`cacheQwenCredentials`): access_token, refresh_token,
    /// token_type, resource_url, expiry_date.
    Login,
    /// Token refresh (`SharedTokenManager`): access_token, token_type, refresh_token,
    /// resource_url, expiry_date.
    Refresh,
}

#[derive(Serialize)]
struct LoginView<'a> {
    access_token: &'a str,
    refresh_token: &'a str,
    token_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_url: Option<&'a str>,
    expiry_date: i64,
}

#[derive(Serialize)]
struct RefreshView<'a> {
    access_token: &'a str,
    token_type: &'a str,
    refresh_token: &'a str,
    // JSON.stringify drops `undefined`, which is what a response without it yields.
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_url: Option<&'a str>,
    expiry_date: i64,
}

/// serde_json's pretty printer (2 spaces, `": "`, no trailing newline) and string escaping
/// coincide with `JSON.stringify(value, null, 2)` for strings and safe integers.
pub fn encode(creds: &Credentials, layout: QwenLayout) -> Zeroizing<Vec<u8>> {
    let access = creds.access_token.expose_secret();
    let refresh = creds.refresh_token.expose_secret();
    let resource = creds.resource_url.as_deref();
    // Sized up front so the buffer holding the tokens is never reallocated (a reallocation
    // would leave an unzeroized copy behind).
    let payload = access.len() + refresh.len() + creds.token_type.len();
    let mut out = Zeroizing::new(Vec::with_capacity(
        2 * (payload + resource.map_or(0, str::len)) + 256,
    ));
    let result = match layout {
        QwenLayout::Login => serde_json::to_writer_pretty(
            &mut *out,
            &LoginView {
                access_token: access,
                refresh_token: refresh,
                token_type: &creds.token_type,
                resource_url: resource,
                expiry_date: creds.expiry_date,
            },
        ),
        QwenLayout::Refresh => serde_json::to_writer_pretty(
            &mut *out,
            &RefreshView {
                access_token: access,
                token_type: &creds.token_type,
                refresh_token: refresh,
                resource_url: resource,
                expiry_date: creds.expiry_date,
            },
        ),
    };
    result.expect("serializing strings and an integer into a Vec cannot fail");
    out
}

/// Decodes and validates like Qwen Code's `validateCredentials(JSON.parse(text))`:
/// `access_token`, `refresh_token`, `token_type` must be non-empty strings, `expiry_date`
/// a non-zero number, checked in that order; other keys are ignored (and so dropped on the
/// next write); a non-string `resource_url` counts as absent.
pub fn decode(bytes: &[u8]) -> Result<Credentials, DecodeError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(DecodeError::TooLarge {
            limit: MAX_FILE_BYTES,
        });
    }
    // Node reads the file as UTF-8 with replacement characters, then parses; do the same so
    // a stray byte inside a token is judged exactly as Qwen Code judges it.
    let lossy;
    let text: &str = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => {
            lossy = Zeroizing::new(String::from_utf8_lossy(bytes).into_owned());
            &lossy
        }
    };
    // Parsed as a `Value` (not a derived struct) because JSON.parse lets the last duplicate
    // key win where a derived struct would reject the file.
    let mut value: Value = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => DecodeError::Truncated,
        _ => DecodeError::Syntax {
            line: e.line(),
            column: e.column(),
        },
    })?;
    let result = extract(&mut value);
    scrub(&mut value);
    result
}

fn extract(value: &mut Value) -> Result<Credentials, DecodeError> {
    // `typeof [] === 'object'` in Qwen Code, so an array passes the first check and then
    // fails on the first field; mirror that order of messages.
    let mut map = match value {
        Value::Object(map) => Some(map),
        Value::Array(_) => None,
        _ => return Err(DecodeError::NotAnObject),
    };
    let access_token = SecretString::from(take_string(map.as_deref_mut(), "access_token")?);
    let refresh_token = SecretString::from(take_string(map.as_deref_mut(), "refresh_token")?);
    let token_type = take_string(map.as_deref_mut(), "token_type")?;
    let missing_expiry = DecodeError::MissingField {
        field: "expiry_date",
    };
    let map = map.ok_or(missing_expiry)?;
    let expiry_date = match map.get("expiry_date") {
        Some(Value::Number(n)) => number_to_ms(n),
        _ => None,
    }
    .ok_or(missing_expiry)?;
    let resource_url = match map.get_mut("resource_url") {
        Some(Value::String(s)) => Some(std::mem::take(s)),
        _ => None,
    };
    Ok(Credentials {
        account: AccountId::from_jwt(access_token.expose_secret()),
        access_token,
        refresh_token,
        token_type,
        expiry_date,
        resource_url,
    })
}

/// Moves a required string out (so it is not left behind to be scrubbed twice).
fn take_string(
    map: Option<&mut serde_json::Map<String, Value>>,
    field: &'static str,
) -> Result<String, DecodeError> {
    match map.and_then(|m| m.get_mut(field)) {
        Some(Value::String(s)) if !s.is_empty() => Ok(std::mem::take(s)),
        _ => Err(DecodeError::MissingField { field }),
    }
}

/// The largest integer a JavaScript number holds exactly; no real date comes near it.
const MAX_SAFE_MS: i64 = (1 << 53) - 1;

/// JS truthiness of a number: anything but 0 (and -0) passes. Fractions are accepted by
/// Qwen Code; rounding them down moves expiry earlier by under a millisecond, except that a
/// truthy fraction that rounds to 0 becomes -1 (a 0 would be written back and then read as
/// missing). The result stays within JavaScript's safe integers, where Qwen Code compares
/// exactly: it orders against any real time as the file's value does, and the daemon's
/// arithmetic on it (`expiry_date - 30 s`) cannot overflow.
fn number_to_ms(n: &serde_json::Number) -> Option<i64> {
    let ms = if let Some(i) = n.as_i64() {
        i
    } else if n.as_u64().is_some() {
        MAX_SAFE_MS
    } else {
        let f = n.as_f64()?;
        if f.is_nan() || f == 0.0 {
            return None;
        }
        match f.floor().clamp(-(MAX_SAFE_MS as f64), MAX_SAFE_MS as f64) as i64 {
            0 => -1,
            ms => ms,
        }
    };
    (ms != 0).then(|| ms.clamp(-MAX_SAFE_MS, MAX_SAFE_MS))
}

/// Unknown keys (an `id_token`, say) may be secrets too; wipe every string left behind.
fn scrub(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(map) => map.values_mut().for_each(scrub),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(resource: Option<&str>) -> Credentials {
        Credentials {
            access_token: SecretString::from("at-1"),
            refresh_token: SecretString::from("rt-1"),
            token_type: "Bearer".into(),
            expiry_date: 1_700_000_000_123,
            resource_url: resource.map(String::from),
            account: None,
        }
    }

    fn text(layout: QwenLayout, c: &Credentials) -> String {
        String::from_utf8(encode(c, layout).to_vec()).unwrap()
    }

    #[test]
    fn layouts_follow_qwen_code_key_orders() {
        let c = creds(Some("portal.qwen.ai"));
        assert_eq!(
            text(QwenLayout::Refresh, &c),
            "{\n  \"access_token\": \"at-1\",\n  \"token_type\": \"Bearer\",\n  \"refresh_token\": \"rt-1\",\n  \"resource_url\": \"portal.qwen.ai\",\n  \"expiry_date\": 1700000000123\n}"
        );
        assert_eq!(
            text(QwenLayout::Login, &c),
            "{\n  \"access_token\": \"at-1\",\n  \"refresh_token\": \"rt-1\",\n  \"token_type\": \"Bearer\",\n  \"resource_url\": \"portal.qwen.ai\",\n  \"expiry_date\": 1700000000123\n}"
        );
    }

    #[test]
    fn absent_resource_url_is_omitted_like_undefined() {
        let s = text(QwenLayout::Refresh, &creds(None));
        assert!(!s.contains("resource_url"), "{s}");
    }

    #[test]
    fn escaping_matches_json_stringify() {
        let mut c = creds(None);
        c.token_type = "a\"b\\c\n\u{1}\u{7f}é\u{2028}\t\u{8}\u{c}\r\u{1f}".into();
        // What node prints for JSON.stringify of the same string: DEL, é and U+2028 raw.
        let want = "\"token_type\": \"a\\\"b\\\\c\\n\\u0001\u{7f}é\u{2028}\\t\\b\\f\\r\\u001f\"";
        let got = text(QwenLayout::Login, &c);
        assert!(got.contains(want), "{got}");
        let round = decode(&encode(&c, QwenLayout::Login)).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn validation_follows_qwen_code() {
        let ok =
            br#"{"access_token":"a","refresh_token":"r","token_type":"t","expiry_date":5,"x":1}"#;
        assert_eq!(decode(ok).unwrap().expiry_date, 5);
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::Truncated),
            (b"{\"access_token\":\"a", DecodeError::Truncated),
            (b"{not json", DecodeError::Syntax { line: 1, column: 2 }),
            (b"null", DecodeError::NotAnObject),
            (b"\"str\"", DecodeError::NotAnObject),
            (
                b"[]",
                DecodeError::MissingField {
                    field: "access_token",
                },
            ),
            (
                br#"{"access_token":"a","token_type":"t","expiry_date":1}"#,
                DecodeError::MissingField {
                    field: "refresh_token",
                },
            ),
            (
                br#"{"access_token":"","refresh_token":"r","token_type":"t","expiry_date":1}"#,
                DecodeError::MissingField {
                    field: "access_token",
                },
            ),
            (
                br#"{"access_token":"a","refresh_token":"r","token_type":7,"expiry_date":1}"#,
                DecodeError::MissingField {
                    field: "token_type",
                },
            ),
            (
                br#"{"access_token":"a","refresh_token":"r","token_type":"t","expiry_date":0}"#,
                DecodeError::MissingField {
                    field: "expiry_date",
                },
            ),
            (
                br#"{"access_token":"a","refresh_token":"r","token_type":"t","expiry_date":"5"}"#,
                DecodeError::MissingField {
                    field: "expiry_date",
                },
            ),
            (
                b"\xef\xbb\xbf{}",
                DecodeError::Syntax { line: 1, column: 1 },
            ),
        ];
        for (input, want) in cases {
            let got = decode(input).unwrap_err();
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn js_parse_quirks() {
        // The last duplicate key wins, as in JSON.parse.
        let dup = br#"{"access_token":"old","access_token":"new","refresh_token":"r","token_type":"t","expiry_date":1.9e3}"#;
        let c = decode(dup).unwrap();
        assert_eq!(c.access_token.expose_secret(), "new");
        assert_eq!(c.expiry_date, 1900);
        let neg = br#"{"access_token":"a","refresh_token":"r","token_type":"t","expiry_date":-1,"resource_url":5}"#;
        let c = decode(neg).unwrap();
        assert_eq!((c.expiry_date, c.resource_url), (-1, None));
        let big = vec![b' '; MAX_FILE_BYTES + 1];
        assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
    }

    /// Found by the `creds` fuzz target (fuzz/, docs/fuzzing.md): `0.5` was read as 0 and
    /// written back as 0, which reads as missing; `-9223372036854775808` made
    /// `expiry_date - 30 s` overflow.
    #[test]
    fn odd_expiry_numbers_survive_a_round_trip_and_arithmetic() {
        for (raw, want) in [
            ("0.5", -1),
            ("-0.5", -1),
            ("1700000000000.9", 1_700_000_000_000),
            ("1e300", MAX_SAFE_MS),
            ("-1e300", -MAX_SAFE_MS),
            ("18446744073709551615", MAX_SAFE_MS),
            ("-9223372036854775808", -MAX_SAFE_MS),
        ] {
            let text = format!(
                r#"{{"access_token":"a","refresh_token":"r","token_type":"t","expiry_date":{raw}}}"#
            );
            let c = decode(text.as_bytes()).unwrap();
            assert_eq!(c.expiry_date, want, "{raw}");
            for layout in [QwenLayout::Login, QwenLayout::Refresh] {
                assert_eq!(decode(&encode(&c, layout)).unwrap(), c, "{raw}");
            }
            assert_eq!(
                c.is_valid_at(1_700_000_000_000),
                want > 1_700_000_000_030,
                "{raw}"
            );
        }
    }

    #[test]
    fn a_jwt_access_token_names_the_account_and_nothing_else_is_written() {
        let token = crate::account::jwt(&serde_json::json!({"sub": "alice"}));
        let mut c = creds(None);
        c.access_token = SecretString::from(token.clone());
        c.account = None;
        let text = text(QwenLayout::Login, &c);
        let back = decode(text.as_bytes()).unwrap();
        assert_eq!(back.account, crate::account::AccountId::from_jwt(&token));
        assert!(back.account.is_some());
        assert_eq!(
            decode(&encode(&creds(None), QwenLayout::Login))
                .unwrap()
                .account,
            None
        );
        // Knowing the account adds nothing to Qwen Code's file.
        c.account = back.account.clone();
        assert_eq!(encode(&c, QwenLayout::Login).as_slice(), text.as_bytes());
    }

    #[test]
    fn errors_never_echo_content() {
        for input in [
            &br#"{"access_token":"SECRET-AT","refresh_token":"SECRET-RT""#[..],
            br#"{"access_token":"SECRET-AT","refresh_token":"SECRET-RT",}"#,
            br#"{"access_token":"SECRET-AT","refresh_token":"SECRET-RT","token_type":"t"}"#,
        ] {
            let e = decode(input).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("SECRET"), "{shown}");
        }
    }
}
