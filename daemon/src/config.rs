//! Daemon configuration from the environment, with the real Qwen values as defaults.
//! Every endpoint, path and limit a test needs to move is here.
use std::path::PathBuf;

use crate::quota::{Limits, QuotaConfig};
use crate::store::StoreKind;

pub const ENV_STORE: &str = "QWEN_CREDENTIAL_STORE";
pub const ENV_PER_MINUTE: &str = "QWEND_QUOTA_PER_MINUTE";
pub const ENV_PER_DAY: &str = "QWEND_QUOTA_PER_DAY";
pub const ENV_DAY_OFFSET: &str = "QWEND_QUOTA_DAY_OFFSET";
pub const ENV_MAX_COOL_DOWN_MS: &str = "QWEND_QUOTA_MAX_COOL_DOWN_MS";
pub const ENV_OPENAI_PER_MINUTE: &str = "QWEND_OPENAI_QUOTA_PER_MINUTE";
pub const ENV_OPENAI_PER_DAY: &str = "QWEND_OPENAI_QUOTA_PER_DAY";
pub const ENV_OAUTH_BASE_URL: &str = "QWEN_OAUTH_BASE_URL";
pub const ENV_SYNC_QWEN_FILE: &str = "QWEND_SYNC_QWEN_FILE";
pub const ENV_OAUTH_TIME_UNIT_MS: &str = "QWEND_OAUTH_TIME_UNIT_MS";

/// Quota account of the OpenAI-compatible method (one per user). Qwen OAuth's are the
/// account module's (`QWEN_OAUTH_ACCOUNT`, `qwen-oauth:<id>`).
pub const OPENAI_ACCOUNT: &str = "openai";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?}: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("cannot find the home directory; set HOME or QWEN_HOME")]
    NoHome,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub qwen_home: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub store: Option<StoreKind>,
    pub quota: QuotaConfig,
    /// `QWEN_OAUTH_BASE_URL`, default `https://chat.qwen.ai`.
    pub oauth_base_url: String,
    /// Keep Qwen Code's `oauth_creds.json` in step (`QWEND_SYNC_QWEN_FILE=0` turns it off).
    pub sync_qwen_file: bool,
    /// Length of one second of the device-flow protocol (`interval`, `expires_in`): tests
    /// shrink it to play a whole login in milliseconds.
    pub oauth_time_unit: std::time::Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let store = match get(ENV_STORE) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ConfigError::Invalid {
                var: ENV_STORE,
                value: v,
                why: "expected keyring or file",
            })?),
        };
        let limit = |name: &'static str,
                     default: Option<u64>|
         -> Result<Option<u64>, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| ConfigError::Invalid {
                        var: name,
                        value: v,
                        why: "expected a whole number of requests",
                    }),
            }
        };
        let mut quota = QuotaConfig {
            default_limits: Limits {
                per_minute: limit(ENV_PER_MINUTE, Limits::QWEN_OAUTH.per_minute)?,
                per_day: limit(ENV_PER_DAY, Limits::QWEN_OAUTH.per_day)?,
            },
            ..QuotaConfig::default()
        };
        quota.account_limits.insert(
            OPENAI_ACCOUNT.to_string(),
            Limits {
                per_minute: limit(ENV_OPENAI_PER_MINUTE, None)?,
                per_day: limit(ENV_OPENAI_PER_DAY, None)?,
            },
        );
        if let Some(v) = get(ENV_DAY_OFFSET) {
            quota.utc_offset_minutes = parse_offset(&v).ok_or(ConfigError::Invalid {
                var: ENV_DAY_OFFSET,
                value: v,
                why: "expected a UTC offset such as +08:00, -05:30 or minutes (480)",
            })?;
        }
        if let Some(v) = get(ENV_MAX_COOL_DOWN_MS) {
            quota.max_cooldown_ms = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| (1..=crate::quota::MAX_COOLDOWN_CAP_MS).contains(ms))
                .ok_or(ConfigError::Invalid {
                    var: ENV_MAX_COOL_DOWN_MS,
                    value: v,
                    why: "expected milliseconds between 1 and 86400000 (24 h)",
                })?;
        }
        let qwen_home = match get(qwend_shared::paths::ENV_QWEN_HOME) {
            Some(h) => PathBuf::from(h),
            None => qwend_shared::paths::qwen_home().ok_or(ConfigError::NoHome)?,
        };
        let sync_qwen_file = match get(ENV_SYNC_QWEN_FILE).map(|v| v.trim().to_ascii_lowercase()) {
            None => true,
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                return Err(ConfigError::Invalid {
                    var: ENV_SYNC_QWEN_FILE,
                    value: v,
                    why: "expected 1 or 0",
                });
            }
        };
        let oauth_time_unit = match get(ENV_OAUTH_TIME_UNIT_MS) {
            None => std::time::Duration::from_secs(1),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => std::time::Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::Invalid {
                        var: ENV_OAUTH_TIME_UNIT_MS,
                        value: v,
                        why: "expected a positive number of milliseconds",
                    });
                }
            },
        };
        let oauth_base_url = get(ENV_OAUTH_BASE_URL)
            .map(|v| v.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| crate::oauth::DEFAULT_BASE_URL.to_string());
        if !(oauth_base_url.starts_with("https://") || oauth_base_url.starts_with("http://")) {
            return Err(ConfigError::Invalid {
                var: ENV_OAUTH_BASE_URL,
                value: oauth_base_url,
                why: "expected an http:// or https:// URL",
            });
        }
        Ok(Self {
            qwen_home,
            state_dir: qwend_shared::paths::state_dir(),
            store,
            quota,
            oauth_base_url,
            sync_qwen_file,
            oauth_time_unit,
        })
    }
}

/// `+HH:MM`, `-HH:MM`, `Z`/`UTC`, or whole minutes east of UTC.
pub fn parse_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") || s.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    if let Ok(m) = s.parse::<i32>() {
        return (-14 * 60..=14 * 60).contains(&m).then_some(m);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("QWEN_HOME".to_string(), "/q".to_string())])
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_qwen_free_tier() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.quota.default_limits.per_minute, Some(60));
        assert_eq!(c.quota.default_limits.per_day, Some(2000));
        assert_eq!(c.quota.utc_offset_minutes, 0);
        assert!(c.quota.account_limits[OPENAI_ACCOUNT].is_unlimited());
        assert_eq!(c.quota.max_cooldown_ms, 15 * 60 * 1000);
        assert_eq!(c.store, None);
    }

    #[test]
    fn overrides_and_errors() {
        let c = cfg(&[
            (ENV_PER_MINUTE, "5"),
            (ENV_DAY_OFFSET, "+08:00"),
            (ENV_STORE, "file"),
            (ENV_OPENAI_PER_DAY, "100"),
        ])
        .unwrap();
        assert_eq!(c.quota.default_limits.per_minute, Some(5));
        assert_eq!(c.quota.utc_offset_minutes, 480);
        assert_eq!(c.store, Some(StoreKind::File));
        assert_eq!(c.quota.account_limits[OPENAI_ACCOUNT].per_day, Some(100));
        let e = cfg(&[(ENV_PER_DAY, "lots")]).unwrap_err();
        assert!(e.to_string().contains("QWEND_QUOTA_PER_DAY"), "{e}");
        assert!(cfg(&[(ENV_STORE, "vault")]).is_err());
        assert_eq!(
            cfg(&[(ENV_MAX_COOL_DOWN_MS, "90000")])
                .unwrap()
                .quota
                .max_cooldown_ms,
            90_000
        );
        for bad in ["0", "-1", "86400001", "soon"] {
            let e = cfg(&[(ENV_MAX_COOL_DOWN_MS, bad)]).unwrap_err();
            assert!(e.to_string().contains(ENV_MAX_COOL_DOWN_MS), "{e}");
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("-05:30"), Some(-330));
        assert_eq!(parse_offset("Z"), Some(0));
        assert_eq!(parse_offset("480"), Some(480));
        assert_eq!(parse_offset("+25:00"), None);
        assert_eq!(parse_offset("8"), Some(8));
        assert_eq!(parse_offset("east"), None);
    }
}
