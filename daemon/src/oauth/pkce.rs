//! PKCE (RFC 7636) as Qwen Code does it: a 32-byte random verifier in base64url without
//! padding (43 characters) and its S256 challenge.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::OAuthError;

/// The PKCE code verifier. It only ever leaves the process inside the token poll's form.
pub struct PkceVerifier(SecretString);

impl PkceVerifier {
    pub fn generate() -> Result<Self, OAuthError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| OAuthError::Random(e.to_string()))?;
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        // The stack copy of the raw bytes is overwritten so only the SecretString holds them.
        bytes.fill(0);
        Ok(Self(SecretString::from(verifier)))
    }

    /// For callers (and tests) that must reproduce a known verifier.
    pub fn from_secret(verifier: SecretString) -> Self {
        Self(verifier)
    }

    pub fn challenge(&self) -> String {
        s256_challenge(self.0.expose_secret())
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

impl std::fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PkceVerifier([redacted])")
    }
}

/// `BASE64URL(SHA256(ASCII(verifier)))`, RFC 7636 §4.2.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}
