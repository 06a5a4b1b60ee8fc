//! Bearer tokens as a client of the router presents them (DESIGN §6): the
//! `authorization: Bearer <jwt>` entry ([`BearerToken`]) and, with the `mint`
//! feature, HS256 dev tokens ([`mint_hs256`]) for cellctl, loadgen and tests.
//!
//! The router verifies (`redcell_router::auth`) and never mints: a server
//! that could mint with the key it verifies with could vouch for anyone. So
//! the minting lives here, below both, and the router's own tests check that
//! it accepts what this mints. The claims written are `sub` (a user id,
//! [`crate::internal::is_user_id`]), `iat` and `exp`.

use tonic::{Request, Status, metadata::AsciiMetadataValue};

/// Shortest accepted HS256 secret: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output (256 bits). The router refuses shorter keys at
/// start; [`mint_hs256`] refuses them too.
pub const MIN_HS256_KEY_BYTES: usize = 32;

/// The metadata entry holding the bearer token.
pub const AUTHORIZATION_METADATA: &str = "authorization";

/// An interceptor that sends `authorization: Bearer <token>` with every call
/// (Rust clients of the router: loadgen, cellctl demo, tests).
#[derive(Debug, Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl BearerToken {
    /// `None` if the token cannot be metadata (not visible ASCII).
    pub fn new(token: &str) -> Option<BearerToken> {
        format!("Bearer {token}").parse().ok().map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(AUTHORIZATION_METADATA, self.0.clone());
        Ok(request)
    }
}

/// Why [`mint_hs256`] could not make a token.
#[cfg(feature = "mint")]
#[derive(Debug)]
pub enum MintError {
    KeyTooShort { len: usize },
    InvalidSubject(String),
    Encode(jsonwebtoken::errors::Error),
}

#[cfg(feature = "mint")]
impl std::fmt::Display for MintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MintError::KeyTooShort { len } => write!(
                f,
                "HS256 key is {len} bytes; at least {MIN_HS256_KEY_BYTES} are required"
            ),
            MintError::InvalidSubject(sub) => write!(
                f,
                "subject {sub:?} is not a valid user id (1-64 of A-Z a-z 0-9 _ -)"
            ),
            MintError::Encode(error) => write!(f, "encoding the token failed: {error}"),
        }
    }
}

#[cfg(feature = "mint")]
impl std::error::Error for MintError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MintError::Encode(error) => Some(error),
            MintError::KeyTooShort { .. } | MintError::InvalidSubject(_) => None,
        }
    }
}

/// Mints an HS256 token for `sub` valid for `ttl_secs` from now. For dev
/// tooling and tests only; production tokens come from the identity provider
/// (RS256).
#[cfg(feature = "mint")]
pub fn mint_hs256(key: &[u8], sub: &str, ttl_secs: u64) -> Result<String, MintError> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    #[derive(serde::Serialize)]
    struct MintedClaims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }

    if key.len() < MIN_HS256_KEY_BYTES {
        return Err(MintError::KeyTooShort { len: key.len() });
    }
    if !crate::internal::is_user_id(sub) {
        return Err(MintError::InvalidSubject(sub.to_owned()));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        sub,
        iat: now,
        exp: now.saturating_add(ttl_secs),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(MintError::Encode)
}

#[cfg(all(test, feature = "mint"))]
mod tests {
    use super::*;

    #[test]
    fn mint_refuses_short_keys_and_bad_subjects() {
        assert!(matches!(
            mint_hs256(b"short", "carol", 60),
            Err(MintError::KeyTooShort { len: 5 })
        ));
        assert!(matches!(
            mint_hs256(b"dev-only-hs256-key-of-32-bytes!!", "carol smith", 60),
            Err(MintError::InvalidSubject(_))
        ));
    }
}
