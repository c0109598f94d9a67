//! The OpenAI-compatible configuration of a caller: the environment, its `.env`, then the
//! settings, then the defaults.
use secrecy::SecretString;

use super::Caller;

pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_OPENAI_MODEL: &str = "qwen3.5-plus";

/// The OpenAI-compatible configuration for a client. The key is a secret: `Debug` hides it.
#[derive(Clone, Default)]
pub struct OpenAiConfig {
    pub api_key: Option<SecretString>,
    pub base_url: String,
    pub model: String,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish()
    }
}

impl Caller<'_> {
    /// Environment, `.env`, then settings; the defaults last.
    pub fn openai_config(&self) -> OpenAiConfig {
        let var = |k: &str| self.var(k).map(String::from);
        OpenAiConfig {
            api_key: var("OPENAI_API_KEY")
                .map(SecretString::from)
                .or_else(|| self.settings.api_key().cloned()),
            base_url: var("OPENAI_BASE_URL")
                .or_else(|| self.settings.base_url().map(String::from))
                .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_string()),
            model: var("OPENAI_MODEL")
                .or_else(|| var("QWEN_MODEL"))
                .or_else(|| self.settings.model().map(String::from))
                .unwrap_or_else(|| DEFAULT_OPENAI_MODEL.to_string()),
        }
    }
}
