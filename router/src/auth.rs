//! Bearer-token authentication (DESIGN.md §6): who is calling.
//!
//! Every client request carries `authorization: Bearer <jwt>`. The caller is the
//! token's `sub` claim and nothing else: no request field can name a different
//! user, so the identity the cell acts for is always one a trusted issuer
//! signed. [`Authenticator::authenticate`] turns metadata into a [`UserId`] or an
//! `UNAUTHENTICATED` status.
//!
//! Invariants, and why they hold:
//! - **One algorithm per router, fixed by configuration.** The [`VerifierKey`]
//!   decides it (HS256 with a shared secret in dev, RS256 with the issuer's
//!   public key); the token's own `alg` header only has to agree. Trusting the
//!   header instead is the classic key-confusion attack: an HS256 token "signed"
//!   with the RS256 *public* key would verify. `alg: none` is not an algorithm
//!   jsonwebtoken knows, so such a token fails to parse before any claim is read.
//! - **The signature is checked before any claim is believed.** jsonwebtoken's
//!   `decode` verifies first, then deserializes and validates the claims.
//! - **Tokens expire.** `exp` is required and checked with [`LEEWAY_SECS`] of
//!   clock skew; `nbf` is honoured when present. A token carrying an `aud` claim
//!   is refused, since the router has no audience configured to match it against
//!   (accepting it would accept tokens the issuer minted for someone else).
//! - **Keys are checked at startup, not per request.** [`Authenticator::new`]
//!   refuses short HMAC secrets, PEMs that are not RSA public keys (including a
//!   private key by mistake: the router never signs) and RSA moduli under 2048
//!   bits, each with an error naming the problem. The RSA key is kept as its
//!   `(n, e)` components so requests do not re-parse DER.
//! - **Refusals are clear but say nothing about internals**: the status names
//!   the category ("token expired", "invalid token signature"), never the key,
//!   the library or the token text. The detailed reason goes to the debug log.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Shortest accepted HS256 secret (RFC 7518 §3.2): the same bound the
/// minting side ([`redcell_proto::token`]) holds to.
pub use redcell_proto::token::MIN_HS256_KEY_BYTES;

/// Smallest accepted RSA modulus (RFC 7518 §3.3: 2048 bits or larger).
pub const MIN_RSA_BITS: usize = 2048;

/// Longest bearer token we try to verify; anything longer is refused unparsed
/// (`UNAUTHENTICATED`) so a hostile client cannot make us base64-decode
/// megabytes. README documents it.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The key the router verifies tokens with; also fixes the only accepted
/// algorithm.
pub enum VerifierKey {
    /// A shared HMAC secret (dev): tokens must be HS256.
    Hs256(Vec<u8>),
    /// The issuer's RSA public key as PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`):
    /// tokens must be RS256.
    Rs256Pem(Vec<u8>),
}

impl fmt::Debug for VerifierKey {
    /// Names the algorithm only: the HMAC secret must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifierKey::Hs256(_) => f.write_str("VerifierKey::Hs256([redacted])"),
            VerifierKey::Rs256Pem(_) => f.write_str("VerifierKey::Rs256Pem(..)"),
        }
    }
}

/// Why a [`VerifierKey`] cannot be used. Raised at startup, before the router
/// binds its port.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("HS256 key is {len} bytes; at least {MIN_HS256_KEY_BYTES} are required")]
    HmacKeyTooShort { len: usize },
    #[error(
        "RS256 key is a private key; configure the issuer's public key \
         (`openssl rsa -in key.pem -pubout`): the router only verifies"
    )]
    RsaKeyIsPrivate,
    #[error("RS256 key is not a PEM-encoded RSA public key")]
    RsaKeyNotPem,
    #[error("RS256 key is not a valid RSA public key: {0}")]
    RsaKeyInvalid(String),
    #[error("RS256 key has a {bits}-bit modulus; at least {MIN_RSA_BITS} bits are required")]
    RsaKeyTooSmall { bits: usize },
}

/// An authenticated caller: the verified token's `sub`, 1-64 of
/// `[A-Za-z0-9_-]` (the same rule the cell applies to user ids, since it is
/// also the ledger account name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// `None` unless `text` is 1-64 of `[A-Za-z0-9_-]`.
    pub fn parse(text: &str) -> Option<UserId> {
        redcell_proto::internal::is_user_id(text).then(|| UserId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Verifies bearer tokens against one configured key. Cheap to clone (the key
/// and validation rules sit behind an `Arc`); share one per router.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Verifier>,
}

struct Verifier {
    key: DecodingKey,
    /// Pins the algorithm, the leeway and the required claims.
    validation: Validation,
}

impl fmt::Debug for Authenticator {
    /// Shows the accepted algorithm, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.inner.validation.algorithms)
            .field("leeway_secs", &self.inner.validation.leeway)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Checks the key and fixes the accepted algorithm.
    pub fn new(key: VerifierKey) -> Result<Authenticator, AuthConfigError> {
        let (key, algorithm) = match key {
            VerifierKey::Hs256(secret) => {
                if secret.len() < MIN_HS256_KEY_BYTES {
                    return Err(AuthConfigError::HmacKeyTooShort { len: secret.len() });
                }
                (DecodingKey::from_secret(&secret), Algorithm::HS256)
            }
            VerifierKey::Rs256Pem(pem) => (rsa_public_key(&pem)?, Algorithm::RS256),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        Ok(Authenticator {
            inner: Arc::new(Verifier { key, validation }),
        })
    }

    /// Verifies `authorization: Bearer <jwt>` from the metadata; returns the
    /// user id. Every refusal is `UNAUTHENTICATED`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<UserId, Status> {
        let token = bearer_token(metadata)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.inner.key, &self.inner.validation)
            .map_err(|err| refusal(err.kind()))?
            .claims;
        match claims.sub {
            Some(Subject::Text(sub)) => UserId::parse(&sub),
            Some(Subject::Other(_)) | None => None,
        }
        .ok_or_else(|| Status::unauthenticated("token subject is not a valid user id"))
    }
}

/// The claims we read ourselves; `exp`/`nbf`/`aud` are checked by
/// jsonwebtoken's [`Validation`].
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Subject>,
}

/// A `sub` that is not a string (a number, an object) must still deserialize so
/// the caller gets "not a valid user id" rather than "malformed".
#[derive(Deserialize)]
#[serde(untagged)]
enum Subject {
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// The token text of the single `authorization: Bearer <token>` entry.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let mut values = metadata.get_all("authorization").iter();
    let value = values
        .next()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
    // Two credentials are ambiguous: which one would a proxy have checked?
    if values.next().is_some() {
        return Err(malformed());
    }
    let value = value.to_str().map_err(|_| malformed())?;
    // The auth scheme is case-insensitive (RFC 9110 §11.1).
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(malformed());
    }
    Ok(token)
}

fn malformed() -> Status {
    Status::unauthenticated("malformed bearer token")
}

/// The status for a token jsonwebtoken refused. `ErrorKind` is non-exhaustive,
/// hence the final arm; it stays `UNAUTHENTICATED` with a generic message.
fn refusal(kind: &ErrorKind) -> Status {
    tracing::debug!(reason = ?kind, "bearer token refused");
    match kind {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_) => malformed(),
        ErrorKind::InvalidSignature => Status::unauthenticated("invalid token signature"),
        ErrorKind::InvalidAlgorithm => Status::unauthenticated("token algorithm not accepted"),
        ErrorKind::ExpiredSignature => Status::unauthenticated("token expired"),
        ErrorKind::ImmatureSignature => Status::unauthenticated("token not yet valid"),
        ErrorKind::MissingRequiredClaim(_) => Status::unauthenticated("token has no expiry"),
        ErrorKind::InvalidAudience => Status::unauthenticated("token audience not accepted"),
        _ => Status::unauthenticated("invalid bearer token"),
    }
}

/// Parses an RSA public key PEM and checks it is usable, returning it as
/// `(n, e)` components.
fn rsa_public_key(pem: &[u8]) -> Result<DecodingKey, AuthConfigError> {
    // Caught by label first for the clearer message; the component check below
    // would refuse a private key too.
    if pem
        .windows(b"PRIVATE KEY".len())
        .any(|w| w == b"PRIVATE KEY")
    {
        return Err(AuthConfigError::RsaKeyIsPrivate);
    }
    let parsed = DecodingKey::from_rsa_pem(pem).map_err(|_| AuthConfigError::RsaKeyNotPem)?;
    let jsonwebtoken::DecodingKeyKind::SecretOrDer(der) = parsed.kind() else {
        return Err(AuthConfigError::RsaKeyNotPem);
    };
    // jsonwebtoken only parses the DER when verifying; do it now, with the
    // backend the workspace selects (`rust_crypto`).
    let (n, e) = (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
        .key_utils
        .rsa_pub_components_from_public_key)(der)
    .map_err(|err| AuthConfigError::RsaKeyInvalid(err.to_string()))?;
    let bits = modulus_bits(&n);
    if bits < MIN_RSA_BITS {
        return Err(AuthConfigError::RsaKeyTooSmall { bits });
    }
    Ok(DecodingKey::from_rsa_raw_components(&n, &e))
}

/// Bit length of a big-endian unsigned integer.
fn modulus_bits(n: &[u8]) -> usize {
    let Some(first) = n.iter().position(|&b| b != 0) else {
        return 0;
    };
    (n.len() - first) * 8 - n[first].leading_zeros() as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use redcell_proto::token::mint_hs256;
    use serde::Serialize;
    use tonic::Code;

    const HS_KEY: &[u8] = b"dev-only-hs256-key-of-32-bytes!!";
    const OTHER_HS_KEY: &[u8] = b"another-hs256-key-also-32-bytes!";
    const RS_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/jwt-rs256-private.pem");
    const RS_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/jwt-rs256-public.pem");
    const OTHER_RS_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/jwt-rs256-other-private.pem");
    const RS1024_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/jwt-rs1024-public.pem");

    /// Claims as a test wants them, each optional; `sub` is any JSON-able value.
    #[derive(Serialize)]
    struct TestClaims<S: Serialize> {
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<S>,
        #[serde(skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'static str>,
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(sub: &str) -> TestClaims<&str> {
        TestClaims {
            sub: Some(sub),
            exp: Some(now() + 600),
            nbf: None,
            aud: None,
        }
    }

    fn hs_token<S: Serialize>(key: &[u8], claims: &TestClaims<S>) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    }

    fn rs_token<S: Serialize>(private_pem: &[u8], claims: &TestClaims<S>) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(private_pem).unwrap(),
        )
        .unwrap()
    }

    fn hs_auth() -> Authenticator {
        Authenticator::new(VerifierKey::Hs256(HS_KEY.to_vec())).unwrap()
    }

    fn rs_auth() -> Authenticator {
        Authenticator::new(VerifierKey::Rs256Pem(RS_PUBLIC.to_vec())).unwrap()
    }

    fn with_authorization(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    fn bearer(token: &str) -> MetadataMap {
        with_authorization(&format!("Bearer {token}"))
    }

    /// Asserts an UNAUTHENTICATED refusal with exactly `message`.
    fn assert_refused(result: Result<UserId, Status>, message: &str) {
        let status = result.expect_err("token should have been refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), message);
    }

    /// RFC 4648 §5 base64url without padding, for hand-built tokens.
    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            }
        }
        out
    }

    #[test]
    fn b64url_matches_rfc_4648_vectors() {
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn valid_hs256_token_yields_its_subject() {
        let token = hs_token(HS_KEY, &claims("alice"));
        let user = hs_auth().authenticate(&bearer(&token)).unwrap();
        assert_eq!(user.as_str(), "alice");
    }

    #[test]
    fn valid_rs256_token_yields_its_subject() {
        let token = rs_token(RS_PRIVATE, &claims("bob_42-x"));
        let user = rs_auth().authenticate(&bearer(&token)).unwrap();
        assert_eq!(user.as_str(), "bob_42-x");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        let token = hs_token(HS_KEY, &claims("alice"));
        let metadata = with_authorization(&format!("bearer {token}"));
        assert_eq!(hs_auth().authenticate(&metadata).unwrap().as_str(), "alice");
    }

    /// What dev tooling mints (`redcell_proto::token`, cellctl dev-token)
    /// is what the router accepts: the two sides of the claims contract.
    #[test]
    fn minted_token_is_accepted() {
        let token = mint_hs256(HS_KEY, "carol", 60).unwrap();
        let user = hs_auth().authenticate(&bearer(&token)).unwrap();
        assert_eq!(user.as_str(), "carol");
    }

    #[test]
    fn missing_header_is_refused() {
        assert_refused(
            hs_auth().authenticate(&MetadataMap::new()),
            "missing bearer token",
        );
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        let token = hs_token(HS_KEY, &claims("alice"));
        let auth = hs_auth();
        for value in [
            format!("Basic {token}"),
            format!("Bearer{token}"),
            token.clone(),
            "Bearer ".to_owned(),
            "Bearer    ".to_owned(),
        ] {
            assert_refused(
                auth.authenticate(&with_authorization(&value)),
                "malformed bearer token",
            );
        }
    }

    #[test]
    fn two_authorization_entries_are_refused() {
        let token = hs_token(HS_KEY, &claims("alice"));
        let mut metadata = bearer(&token);
        metadata.append("authorization", format!("Bearer {token}").parse().unwrap());
        assert_refused(hs_auth().authenticate(&metadata), "malformed bearer token");
    }

    #[test]
    fn garbage_tokens_are_refused() {
        let auth = hs_auth();
        for garbage in ["garbage", "a.b.c", "a.b", "....", "eyJhbGciOi.x.y"] {
            assert_refused(
                auth.authenticate(&bearer(garbage)),
                "malformed bearer token",
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_refused(auth.authenticate(&bearer(&huge)), "malformed bearer token");
    }

    #[test]
    fn token_signed_with_another_hs_key_is_refused() {
        let token = hs_token(OTHER_HS_KEY, &claims("alice"));
        assert_refused(
            hs_auth().authenticate(&bearer(&token)),
            "invalid token signature",
        );
    }

    #[test]
    fn token_signed_with_another_rsa_key_is_refused() {
        let token = rs_token(OTHER_RS_PRIVATE, &claims("alice"));
        assert_refused(
            rs_auth().authenticate(&bearer(&token)),
            "invalid token signature",
        );
    }

    #[test]
    fn tampered_claims_are_refused() {
        let token = hs_token(HS_KEY, &claims("alice"));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 600).as_bytes());
        parts[1] = &forged;
        assert_refused(
            hs_auth().authenticate(&bearer(&parts.join("."))),
            "invalid token signature",
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600).as_bytes());
        let unsigned = format!("{header}.{payload}.");
        // `none` is not an algorithm jsonwebtoken can even parse.
        for auth in [hs_auth(), rs_auth()] {
            assert_refused(
                auth.authenticate(&bearer(&unsigned)),
                "malformed bearer token",
            );
        }
        // Same payload, a real algorithm claimed but the signature stripped.
        let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let stripped = format!("{header}.{payload}.");
        assert_refused(
            hs_auth().authenticate(&bearer(&stripped)),
            "invalid token signature",
        );
    }

    #[test]
    fn expired_token_is_refused() {
        let mut expired = claims("alice");
        expired.exp = Some(now() - 120);
        let token = hs_token(HS_KEY, &expired);
        assert_refused(hs_auth().authenticate(&bearer(&token)), "token expired");
    }

    #[test]
    fn expiry_allows_small_clock_skew() {
        // 5 s past `exp` is well inside the 30 s leeway, so no timing flake.
        let mut just_expired = claims("alice");
        just_expired.exp = Some(now() - 5);
        let token = hs_token(HS_KEY, &just_expired);
        assert!(hs_auth().authenticate(&bearer(&token)).is_ok());
    }

    #[test]
    fn token_without_exp_is_refused() {
        let mut no_exp = claims("alice");
        no_exp.exp = None;
        let token = hs_token(HS_KEY, &no_exp);
        assert_refused(
            hs_auth().authenticate(&bearer(&token)),
            "token has no expiry",
        );
    }

    #[test]
    fn token_not_yet_valid_is_refused() {
        let mut future = claims("alice");
        future.nbf = Some(now() + 3600);
        let token = hs_token(HS_KEY, &future);
        assert_refused(
            hs_auth().authenticate(&bearer(&token)),
            "token not yet valid",
        );
    }

    #[test]
    fn token_for_an_audience_is_refused() {
        let mut for_someone = claims("alice");
        for_someone.aud = Some("some-other-service");
        let token = hs_token(HS_KEY, &for_someone);
        assert_refused(
            hs_auth().authenticate(&bearer(&token)),
            "token audience not accepted",
        );
    }

    #[test]
    fn hs256_token_against_rs256_verifier_is_refused() {
        // Key confusion: the attacker HMACs with the issuer's *public* key,
        // which a verifier trusting the header's `alg` would accept.
        let token = hs_token(RS_PUBLIC, &claims("alice"));
        assert_refused(
            rs_auth().authenticate(&bearer(&token)),
            "token algorithm not accepted",
        );
    }

    #[test]
    fn rs256_token_against_hs256_verifier_is_refused() {
        let token = rs_token(RS_PRIVATE, &claims("alice"));
        assert_refused(
            hs_auth().authenticate(&bearer(&token)),
            "token algorithm not accepted",
        );
    }

    #[test]
    fn subject_with_bad_characters_is_refused() {
        let too_long = "a".repeat(65);
        for sub in [
            "alice smith",
            "a/b",
            "",
            "ålice",
            "alice\n",
            too_long.as_str(),
        ] {
            let token = hs_token(HS_KEY, &claims(sub));
            assert_refused(
                hs_auth().authenticate(&bearer(&token)),
                "token subject is not a valid user id",
            );
        }
        let longest = "a".repeat(64);
        let token = hs_token(HS_KEY, &claims(&longest));
        assert!(hs_auth().authenticate(&bearer(&token)).is_ok());
    }

    #[test]
    fn missing_or_non_string_subject_is_refused() {
        let no_sub: TestClaims<&str> = TestClaims {
            sub: None,
            exp: Some(now() + 600),
            nbf: None,
            aud: None,
        };
        let numeric_sub = TestClaims {
            sub: Some(42),
            exp: Some(now() + 600),
            nbf: None,
            aud: None,
        };
        for token in [hs_token(HS_KEY, &no_sub), hs_token(HS_KEY, &numeric_sub)] {
            assert_refused(
                hs_auth().authenticate(&bearer(&token)),
                "token subject is not a valid user id",
            );
        }
    }

    #[test]
    fn bad_keys_are_refused_at_startup() {
        assert!(matches!(
            Authenticator::new(VerifierKey::Hs256(vec![7; 31])),
            Err(AuthConfigError::HmacKeyTooShort { len: 31 })
        ));
        assert!(matches!(
            Authenticator::new(VerifierKey::Rs256Pem(b"not a pem".to_vec())),
            Err(AuthConfigError::RsaKeyNotPem)
        ));
        assert!(matches!(
            Authenticator::new(VerifierKey::Rs256Pem(RS_PRIVATE.to_vec())),
            Err(AuthConfigError::RsaKeyIsPrivate)
        ));
        assert!(matches!(
            Authenticator::new(VerifierKey::Rs256Pem(RS1024_PUBLIC.to_vec())),
            Err(AuthConfigError::RsaKeyTooSmall { bits: 1024 })
        ));
        let message = Authenticator::new(VerifierKey::Hs256(vec![7; 3]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("at least 32"), "{message}");
    }

    #[test]
    fn debug_output_holds_no_key_material() {
        let secret = "dev-only-hs256-key-of-32-bytes!!";
        let shown = format!(
            "{:?} {:?}",
            hs_auth(),
            VerifierKey::Hs256(secret.as_bytes().to_vec())
        );
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("HS256"), "{shown}");
    }

    #[test]
    fn modulus_bits_counts_from_the_first_set_bit() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[0, 1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0, 0x7f, 0xff]), 15);
    }
}
