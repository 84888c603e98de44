//! Bearer JWTs: verification with the algorithm pinned by configuration, and minting for
//! the `token` subcommand and the development start-up token.
//!
//! Claims: `sub`, `role` (`admin` | `brand` | `service`), `brands` (exactly one for
//! `brand`, one or more for `service`, none for `admin`), `exp` (required), `iat`, and
//! `iss` / `aud`, checked when configured and stamped when minting. The algorithm is
//! never taken from the token: a token whose header names another one, `none` included,
//! is refused before any signature check (RFC 8725 §3.1).

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ledger_aggregates::BrandId;
use serde::{Deserialize, Serialize};

use super::{AuthError, Principal, Role};
use crate::secret::Secret;

/// Tokens live at most this long. A leaked token must stop working within days, not
/// billing periods; callers that need lasting access use API keys, which can be revoked.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// The `token` subcommand's default: a working session of scripted calls, short enough
/// that a token pasted into a chat soon stops working.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
pub const JWT_SECRET_BYTES_MIN: usize = 32;
/// Brands one token may carry. Tokens travel in a header on every request and proxies
/// commonly cap headers at 8 KiB; more brands than this belong to an admin.
pub const TOKEN_BRANDS_MAX: usize = 100;
/// A subject is an identifier for the audit trail, not a document.
pub const SUBJECT_CHARS_MAX: usize = 256;
/// Tokens remembered as verified. A caller sends the same token on every request until
/// it expires; decoding and checking it again each time costs more than the request.
pub const JWT_VERIFIED_CACHE_MAX: usize = 4_096;
/// Longer tokens are verified every time, so the cache holds at most 8 MiB of them.
pub const JWT_CACHED_TOKEN_BYTES_MAX: usize = 2 * 1024;

/// The signature algorithms the ledger can be configured with (one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// A shared secret: simplest, the default; whoever verifies can also mint.
    #[serde(rename = "HS256", alias = "hs256")]
    Hs256,
    /// RSA: an identity provider signs, the ledger only needs the public key.
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
    /// Ed25519: as RS256, with small keys and fast verification.
    #[serde(rename = "EdDSA", alias = "eddsa", alias = "EDDSA")]
    EdDsa,
}

impl JwtAlgorithm {
    /// The JWS name, as in a token header.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    fn jws(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "EDDSA" => Ok(JwtAlgorithm::EdDsa),
            _ => Err(format!(
                "unknown JWT algorithm {s:?}: use HS256, RS256 or EdDSA"
            )),
        }
    }
}

/// A token lifetime: `90s`, `15m`, `1h`, `7d` or bare seconds, from 1 s to
/// [`TOKEN_TTL_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTtl(Duration);

impl TokenTtl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let unit_s = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("bad duration {raw:?}: use e.g. 90s, 15m, 1h or 7d")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("bad duration {raw:?}: use e.g. 90s, 15m, 1h or 7d"))?;
        Self::from_secs(n.saturating_mul(unit_s))
    }

    pub fn from_secs(secs: u64) -> Result<Self, String> {
        let d = Duration::from_secs(secs);
        if secs == 0 || d > TOKEN_TTL_MAX {
            return Err(format!(
                "a token lifetime must be 1 s to {} days",
                TOKEN_TTL_MAX.as_secs() / 86_400
            ));
        }
        Ok(Self(d))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl Default for TokenTtl {
    fn default() -> Self {
        Self(TOKEN_TTL_DEFAULT)
    }
}

impl FromStr for TokenTtl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for TokenTtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            _ if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            _ if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            _ if s % 60 == 0 => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for TokenTtl {
    /// A string (`"1h"`) or a number of seconds, so both a TOML file and an environment
    /// variable read naturally.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Self::from_secs(n),
            Raw::Text(t) => Self::parse(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// The key material for the configured algorithm.
pub enum JwtKey {
    /// One shared secret both verifies and signs.
    Hs256(Secret),
    /// The public key (PEM) verifies; the private key (PEM), if given, signs.
    Rs256 {
        public_pem: String,
        private_pem: Option<Secret>,
    },
    /// As RS256, with Ed25519 keys.
    EdDsa {
        public_pem: String,
        private_pem: Option<Secret>,
    },
}

impl JwtKey {
    pub fn algorithm(&self) -> JwtAlgorithm {
        match self {
            JwtKey::Hs256(_) => JwtAlgorithm::Hs256,
            JwtKey::Rs256 { .. } => JwtAlgorithm::Rs256,
            JwtKey::EdDsa { .. } => JwtAlgorithm::EdDsa,
        }
    }
}

/// Why keys could not be set up or a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// A key that does not parse, or a secret too short to be safe.
    #[error("JWT key: {0}")]
    Key(String),
    /// Minting without a signing key, or for a principal that could never authenticate.
    #[error("cannot mint a token: {0}")]
    Mint(String),
}

/// The claims as minted.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    role: Role,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    brands: &'a [BrandId],
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The claims as read. `role` and `brands` are read as text and parsed here, so a bad
/// value gets a precise reason instead of a serde message. `exp`, `iss` and `aud` are
/// checked by `jsonwebtoken`'s validation and need no field.
#[derive(Debug, Deserialize)]
struct ReceivedClaims {
    sub: String,
    role: String,
    #[serde(default)]
    brands: Vec<String>,
    /// Checked here as well as by the validation: a token may not outlive what this
    /// service would mint ([`TOKEN_TTL_MAX`]).
    exp: u64,
    iat: Option<u64>,
}

/// Verifies (and, with a signing key, mints) the ledger's bearer tokens.
pub struct Jwt {
    algorithm: JwtAlgorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    /// Tokens that passed every check, with their principal and `exp`. Only expiry can
    /// turn a verified token invalid (every other check depends on the token's bytes
    /// alone, or only gets easier as time passes), so a hit checks only that.
    verified: Mutex<lru::LruCache<Box<str>, (Principal, u64)>>,
}

impl Jwt {
    /// Keys and the claims checks. `issuer` and `audience`, when set, are required in
    /// every token and stamped in every minted one.
    pub fn new(
        key: JwtKey,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, JwtError> {
        let algorithm = key.algorithm();
        let bad = |what: &str, e: jsonwebtoken::errors::Error| {
            JwtError::Key(format!("{algorithm} {what} does not parse: {e}"))
        };
        let (decoding, encoding) = match &key {
            JwtKey::Hs256(secret) => {
                let bytes = secret.expose().as_bytes();
                if bytes.len() < JWT_SECRET_BYTES_MIN {
                    return Err(JwtError::Key(format!(
                        "the HS256 secret must be at least {JWT_SECRET_BYTES_MIN} bytes"
                    )));
                }
                (
                    DecodingKey::from_secret(bytes),
                    Some(EncodingKey::from_secret(bytes)),
                )
            }
            JwtKey::Rs256 {
                public_pem,
                private_pem,
            } => (
                DecodingKey::from_rsa_pem(public_pem.as_bytes())
                    .map_err(|e| bad("public key", e))?,
                private_pem
                    .as_ref()
                    .map(|p| EncodingKey::from_rsa_pem(p.expose().as_bytes()))
                    .transpose()
                    .map_err(|e| bad("private key", e))?,
            ),
            JwtKey::EdDsa {
                public_pem,
                private_pem,
            } => (
                DecodingKey::from_ed_pem(public_pem.as_bytes())
                    .map_err(|e| bad("public key", e))?,
                private_pem
                    .as_ref()
                    .map(|p| EncodingKey::from_ed_pem(p.expose().as_bytes()))
                    .transpose()
                    .map_err(|e| bad("private key", e))?,
            ),
        };
        let validation = validation(algorithm, issuer.as_deref(), audience.as_deref());
        let jwt = Self {
            algorithm,
            decoding,
            encoding,
            validation,
            issuer,
            audience,
            verified: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(JWT_VERIFIED_CACHE_MAX).expect("the limit is not zero"),
            )),
        };
        jwt.check_key_pair()?;
        Ok(jwt)
    }

    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Can this process mint tokens (HS256, or a private key configured)?
    pub fn can_mint(&self) -> bool {
        self.encoding.is_some()
    }

    /// A signed token for `role` over `brands`, valid for `ttl` from now.
    pub fn mint(
        &self,
        role: Role,
        brands: &[BrandId],
        subject: &str,
        ttl: TokenTtl,
    ) -> Result<String, JwtError> {
        let names: Vec<String> = brands.iter().map(|b| b.to_string()).collect();
        principal(subject.to_owned(), role, &names).map_err(JwtError::Mint)?;
        let encoding = self.encoding.as_ref().ok_or_else(|| {
            JwtError::Mint(format!(
                "{} verifies with a public key only: configure jwt_private_key_path to mint",
                self.algorithm
            ))
        })?;
        let iat = jsonwebtoken::get_current_timestamp();
        let claims = MintedClaims {
            sub: subject,
            role,
            brands,
            exp: iat + ttl.as_duration().as_secs(),
            iat,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm.jws()), &claims, encoding)
            .map_err(|e| JwtError::Mint(e.to_string()))
    }

    /// The principal of a bearer token, or the precise reason it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`Jwt::verify`] at `now` (seconds since the epoch).
    fn verify_at(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((principal, exp)) = verified.get(token) {
            if now <= exp + TOKEN_LEEWAY.as_secs() {
                return Ok(principal.clone());
            }
            verified.pop(token);
            return Err(invalid(refusal(&ErrorKind::ExpiredSignature)));
        }
        drop(verified);
        let (principal, exp) = self.decode(token, now)?;
        if token.len() <= JWT_CACHED_TOKEN_BYTES_MAX {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(token.into(), (principal.clone(), exp));
        }
        Ok(principal)
    }

    /// Every check of a token, and its `exp`.
    fn decode(&self, token: &str, now: u64) -> Result<(Principal, u64), AuthError> {
        let alg = header_alg(token)?;
        if alg != self.algorithm.name() {
            return Err(invalid(format!(
                "wrong algorithm: the token is signed with `{alg}`, this service accepts only `{}`",
                self.algorithm
            )));
        }
        let data = jsonwebtoken::decode::<ReceivedClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| invalid(refusal(e.kind())))?;
        let c = data.claims;
        check_lifetime(c.iat, c.exp, now).map_err(invalid)?;
        let role = match c.role.as_str() {
            "admin" => Role::Admin,
            "brand" => Role::Brand,
            "service" => Role::Service,
            other => return Err(invalid(format!("unknown role {other:?} in the token"))),
        };
        Ok((principal(c.sub, role, &c.brands).map_err(invalid)?, c.exp))
    }

    /// A private key that does not match the public key would mint tokens this process
    /// itself refuses; better to say so at start-up.
    fn check_key_pair(&self) -> Result<(), JwtError> {
        if self.encoding.is_none() {
            return Ok(());
        }
        let probe = self
            .mint(Role::Admin, &[], "key-pair-check", TokenTtl::default())
            .map_err(|e| JwtError::Key(e.to_string()))?;
        // Decoded, not verified: the probe is nobody's token and takes no cache entry.
        let now = jsonwebtoken::get_current_timestamp();
        self.decode(&probe, now).map(|_| ()).map_err(|_| {
            JwtError::Key(format!(
                "the {} private key does not match the public key",
                self.algorithm
            ))
        })
    }
}

/// Clock skew forgiven on `exp`, `nbf` and `iat`: the services minting tokens keep
/// their clocks in sync (NTP); a minute past expiry, jsonwebtoken's default, is a
/// minute of a revoked-by-expiry credential.
pub const TOKEN_LEEWAY: Duration = Duration::from_secs(5);

/// A token issued in the future, or living longer than a minted one may, is refused:
/// a ten-year token is a leaked credential that never expires.
fn check_lifetime(iat: Option<u64>, exp: u64, now: u64) -> Result<(), String> {
    let leeway = TOKEN_LEEWAY.as_secs();
    let ttl_max = TOKEN_TTL_MAX.as_secs();
    if let Some(iat) = iat {
        if iat > now + leeway {
            return Err(format!(
                "the token is issued in the future (iat {iat}, now {now})"
            ));
        }
        if exp.saturating_sub(iat) > ttl_max {
            return Err(format!(
                "the token lives longer than {} days (iat {iat}, exp {exp})",
                ttl_max / 86_400
            ));
        }
    }
    if exp > now + ttl_max + leeway {
        return Err(format!(
            "the token expires more than {} days from now (exp {exp})",
            ttl_max / 86_400
        ));
    }
    Ok(())
}

fn validation(alg: JwtAlgorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut v = Validation::new(alg.jws());
    let mut required = vec!["exp"];
    v.validate_exp = true;
    v.leeway = TOKEN_LEEWAY.as_secs();
    // A token that says it is not valid yet is refused too.
    v.validate_nbf = true;
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // Without a configured audience, one in the token is not ours to judge.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn invalid(reason: impl Into<String>) -> AuthError {
    AuthError::Invalid(reason.into())
}

/// The `alg` of a token's header, read before anything else so that an unexpected
/// algorithm (including `none`, which `jsonwebtoken` cannot even represent) is named in
/// the refusal.
fn header_alg(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Head {
        alg: String,
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(invalid(
            "malformed token: a JWT has three dot-separated parts",
        ));
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| invalid("malformed token: the header is not base64url"))?;
    serde_json::from_slice::<Head>(&json)
        .map(|h| h.alg)
        .map_err(|_| invalid("malformed token: the header has no `alg`"))
}

/// A refusal from `jsonwebtoken`, said in the caller's terms.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".to_owned(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "wrong signature".to_owned(),
        ErrorKind::InvalidAlgorithm => "wrong algorithm for the configured key".to_owned(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".to_owned(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".to_owned(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the `{c}` claim is malformed"),
        ErrorKind::Json(e) => format!("malformed claims: {e}"),
        _ => "malformed token".to_owned(),
    }
}

/// The principal a role and brand list stand for, or why they never could: one brand for
/// `brand`, 1 to [`TOKEN_BRANDS_MAX`] for `service`, none for `admin`.
fn principal(subject: String, role: Role, brands: &[String]) -> Result<Principal, String> {
    if subject.trim().is_empty() || subject.chars().count() > SUBJECT_CHARS_MAX {
        return Err(format!(
            "the subject (sub) must be 1 to {SUBJECT_CHARS_MAX} characters"
        ));
    }
    let mut parsed = brands
        .iter()
        .map(|b| BrandId::parse(b).map_err(|e| format!("malformed brand {b:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    parsed.dedup();
    match (role, parsed.len()) {
        (Role::Admin, 0) | (Role::Brand, 1) => {}
        (Role::Service, n) if (1..=TOKEN_BRANDS_MAX).contains(&n) => {}
        (Role::Admin, _) => return Err("an admin token carries no brands".to_owned()),
        (Role::Brand, n) => {
            return Err(format!(
                "a brand token carries exactly one brand, this one has {n}"
            ))
        }
        (Role::Service, n) => {
            return Err(format!(
                "a service token carries 1 to {TOKEN_BRANDS_MAX} brands, this one has {n}"
            ))
        }
    }
    Ok(Principal {
        subject,
        role,
        brands: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_in_units_and_stay_within_the_maximum() {
        // Proves the lifetime newtype reads the documented units and enforces its bounds.
        assert_eq!(TokenTtl::parse("90s").unwrap().as_duration().as_secs(), 90);
        assert_eq!(TokenTtl::parse("15m").unwrap().as_duration().as_secs(), 900);
        assert_eq!(TokenTtl::parse("1h").unwrap().to_string(), "1h");
        assert_eq!(TokenTtl::parse("7d").unwrap().to_string(), "7d");
        assert_eq!(TokenTtl::parse("120").unwrap().to_string(), "2m");
        assert!(TokenTtl::parse("0s").is_err());
        assert!(TokenTtl::parse("31d").is_err());
        assert!(TokenTtl::parse("1w").is_err());
        assert!(TokenTtl::parse("h").is_err());
        assert!(TokenTtl::parse("99999999999999999999d").is_err());
    }

    #[test]
    fn role_and_brand_counts_must_agree() {
        // Proves the brand-count rules of each role, shared by minting and verifying.
        let one = vec!["acme".to_owned()];
        assert!(principal("s".into(), Role::Admin, &[]).is_ok());
        assert!(principal("s".into(), Role::Admin, &one).is_err());
        assert!(principal("s".into(), Role::Brand, &one).is_ok());
        assert!(principal("s".into(), Role::Brand, &[]).is_err());
        assert!(principal("s".into(), Role::Service, &[]).is_err());
        let (now, day) = (1_800_000_000, 86_400);
        assert!(check_lifetime(Some(now), now + 30 * day, now).is_ok());
        assert!(check_lifetime(None, now + 30 * day, now).is_ok());
        assert!(check_lifetime(Some(now), now + 30 * day + 1, now).is_err());
        assert!(check_lifetime(Some(now - 365 * day), now + 3_650 * day, now).is_err());
        assert!(check_lifetime(None, now + 3_650 * day, now).is_err());
        assert!(check_lifetime(Some(now + 365 * day), now + 366 * day, now).is_err());
        assert!(check_lifetime(Some(now + 5), now + day, now).is_ok());
        let many: Vec<String> = (0..=TOKEN_BRANDS_MAX).map(|i| format!("b{i}")).collect();
        assert!(principal("s".into(), Role::Service, &many).is_err());
        assert!(principal("".into(), Role::Admin, &[]).is_err());
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_and_only_byte_for_byte() {
        // Proves the cache of verified tokens answers only the exact token, refuses it
        // once expired, and keeps long tokens out.
        let jwt = Jwt::new(
            JwtKey::Hs256(Secret::new("a-secret-of-at-least-thirty-two-bytes")),
            None,
            None,
        )
        .unwrap();
        let cached = |jwt: &Jwt| jwt.verified.lock().unwrap().len();
        let token = jwt
            .mint(Role::Admin, &[], "ops", TokenTtl::parse("90s").unwrap())
            .unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let first = jwt.verify_at(&token, now).unwrap();
        assert_eq!(cached(&jwt), 1);
        assert_eq!(jwt.verify_at(&token, now + 60).unwrap(), first);
        // One signature character changed (not the last, whose low bits are padding).
        let at = token.len() - 10;
        let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
        assert!(jwt.verify_at(&forged, now).is_err());
        assert_eq!(cached(&jwt), 1, "a refused token is never remembered");
        let late = now + 90 + TOKEN_LEEWAY.as_secs() + 1;
        match jwt.verify_at(&token, late) {
            Err(AuthError::Invalid(reason)) => assert_eq!(reason, "token expired"),
            other => panic!("an expired cached token must be refused, got {other:?}"),
        }
        assert_eq!(cached(&jwt), 0, "an expired token is forgotten");

        let brands: Vec<BrandId> = (0..TOKEN_BRANDS_MAX)
            .map(|i| BrandId::parse(&format!("a-rather-long-brand-name-{i:03}")).unwrap())
            .collect();
        let long = jwt
            .mint(
                Role::Service,
                &brands,
                "svc",
                TokenTtl::parse("90s").unwrap(),
            )
            .unwrap();
        assert!(long.len() > JWT_CACHED_TOKEN_BYTES_MAX);
        assert_eq!(
            jwt.verify_at(&long, now).unwrap().brands.len(),
            TOKEN_BRANDS_MAX
        );
        assert_eq!(cached(&jwt), 0, "a long token is verified every time");
    }
}
