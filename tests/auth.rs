//! Authentication: bearer JWTs (HS256, RS256, EdDSA; every way a token can be wrong) and
//! API keys on both stores (create, authenticate, list, revoke, stored only hashed).

mod common;

use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use ledger_aggregates::BrandId;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use usage_ledger::auth::api_keys::{
    ApiKeyError, CreateApiKey, KeyLabel, API_KEYS_ACTIVE_PER_BRAND_MAX,
};
use usage_ledger::auth::{AuthError, Authenticator, Jwt, JwtKey, Principal, Role, TokenTtl};
use usage_ledger::secret::Secret;
use usage_ledger::store::{ApiKeyStore, PostgresLog, SqliteLog};

const SECRET: &str = "test-secret-test-secret-test-secret-0123";
const OTHER_SECRET: &str = "another-secret-another-secret-another-99";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hs256(issuer: Option<&str>, audience: Option<&str>) -> Jwt {
    Jwt::new(
        JwtKey::Hs256(Secret::new(SECRET)),
        issuer.map(str::to_owned),
        audience.map(str::to_owned),
    )
    .unwrap()
}

fn rs256(with_private: bool) -> Jwt {
    let key = JwtKey::Rs256 {
        public_pem: fixture("rsa_public.pem"),
        private_pem: with_private.then(|| Secret::new(fixture("rsa_private.pem"))),
    };
    Jwt::new(key, None, None).unwrap()
}

fn eddsa() -> Jwt {
    let key = JwtKey::EdDsa {
        public_pem: fixture("ed25519_public.pem"),
        private_pem: Some(Secret::new(fixture("ed25519_private.pem"))),
    };
    Jwt::new(key, None, None).unwrap()
}

/// A token with arbitrary claims, signed with `SECRET` (or `key`) in HS256.
fn signed(claims: Value) -> String {
    signed_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn signed_with(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn in_an_hour() -> u64 {
    get_current_timestamp() + 3600
}

fn brand(s: &str) -> BrandId {
    BrandId::parse(s).unwrap()
}

fn reason(result: Result<Principal, AuthError>) -> String {
    match result {
        Err(AuthError::Invalid(reason)) => reason,
        other => panic!("expected an invalid credential, got {other:?}"),
    }
}

/// An authenticator over a key store that is never asked (JWT-only tests).
async fn jwt_only(jwt: Jwt) -> (Authenticator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(SqliteLog::open_in(dir.path()).await.unwrap());
    (Authenticator::new(jwt, keys), dir)
}

#[tokio::test]
async fn a_valid_hs256_token_authenticates_its_principal() {
    // Proves minted tokens of every role come back as the principal they were minted for.
    let (auth, _dir) = jwt_only(hs256(None, None)).await;
    let ttl = TokenTtl::default();
    let admin = auth.jwt().mint(Role::Admin, &[], "ops", ttl).unwrap();
    let p = auth
        .authenticate(Some(&format!("Bearer {admin}")), None)
        .await
        .unwrap();
    assert_eq!(
        p,
        Principal {
            subject: "ops".into(),
            role: Role::Admin,
            brands: vec![]
        }
    );

    let tenant = auth
        .jwt()
        .mint(Role::Brand, &[brand("acme")], "alice", ttl)
        .unwrap();
    // The scheme is case-insensitive.
    let p = auth
        .authenticate(Some(&format!("bearer {tenant}")), None)
        .await
        .unwrap();
    assert_eq!((p.role, p.brands), (Role::Brand, vec![brand("acme")]));

    let service = auth
        .jwt()
        .mint(Role::Service, &[brand("b2"), brand("b1")], "ingest", ttl)
        .unwrap();
    let p = auth
        .authenticate(Some(&format!("Bearer {service}")), None)
        .await
        .unwrap();
    assert_eq!(p.role, Role::Service);
    assert_eq!(p.brands, vec![brand("b1"), brand("b2")]);
}

#[tokio::test]
async fn an_expired_token_is_refused_as_expired() {
    // Proves `exp` in the past beyond the few seconds of clock leeway is refused, by name:
    // 30 s past expiry already is (the library's default leeway would accept a minute).
    let jwt = hs256(None, None);
    let now = get_current_timestamp();
    for exp in [now - 3600, now - 30] {
        let token = signed(json!({"sub": "x", "role": "admin", "exp": exp}));
        assert_eq!(reason(jwt.verify(&token)), "token expired");
    }
}

#[tokio::test]
async fn tokens_living_longer_than_minted_ones_or_issued_in_the_future_are_refused() {
    // Proves a token valid for ten years, or with `iat` a year ahead, is refused although
    // its signature is good: minted tokens live at most 30 days, and a forged far
    // future `exp` is a credential that never expires.
    let jwt = hs256(None, None);
    let now = get_current_timestamp();
    let (day, year) = (86_400, 365 * 86_400);
    for (claims, why) in [
        (
            json!({"sub": "x", "role": "admin", "iat": now, "exp": now + 10 * year}),
            "lives longer",
        ),
        (
            json!({"sub": "x", "role": "admin", "exp": now + 10 * year}),
            "expires more than",
        ),
        (
            json!({"sub": "x", "role": "admin", "iat": now + year, "exp": now + year + day}),
            "in the future",
        ),
    ] {
        let token = signed(claims);
        let refused = reason(jwt.verify(&token));
        assert!(refused.contains(why), "{refused}");
    }
    let fine = signed(json!({"sub": "x", "role": "admin", "iat": now, "exp": now + 30 * day}));
    assert!(jwt.verify(&fine).is_ok());
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    // Proves a token that never expires is never accepted.
    let jwt = hs256(None, None);
    let token = signed(json!({"sub": "x", "role": "admin"}));
    assert!(reason(jwt.verify(&token)).contains("`exp`"));
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused_as_a_wrong_signature() {
    // Proves the signature is checked against the configured secret.
    let jwt = hs256(None, None);
    let token = signed_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(OTHER_SECRET.as_bytes()),
        json!({"sub": "x", "role": "admin", "exp": in_an_hour()}),
    );
    assert_eq!(reason(jwt.verify(&token)), "wrong signature");
}

#[tokio::test]
async fn an_hs256_token_is_refused_when_rs256_is_configured() {
    // Proves the algorithm is pinned, including the classic confusion attack that signs
    // HS256 with the RSA public key as the shared secret.
    let jwt = rs256(false);
    let claims = json!({"sub": "x", "role": "admin", "exp": in_an_hour()});
    let plain = signed(claims.clone());
    assert!(reason(jwt.verify(&plain)).contains("wrong algorithm"));
    let confused = signed_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes()),
        claims,
    );
    let why = reason(jwt.verify(&confused));
    assert!(why.contains("`HS256`") && why.contains("`RS256`"), "{why}");
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    // Proves `alg: none` is refused by name, whatever the claims.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64.encode(
        json!({"sub": "x", "role": "admin", "exp": in_an_hour()})
            .to_string()
            .as_bytes(),
    );
    let token = format!("{header}.{claims}.");
    let (auth, _dir) = jwt_only(hs256(None, None)).await;
    let why = reason(
        auth.authenticate(Some(&format!("Bearer {token}")), None)
            .await,
    );
    assert!(why.contains("`none`"), "{why}");
}

#[tokio::test]
async fn rs256_and_eddsa_tokens_verify_with_the_public_key_only() {
    // Proves both asymmetric algorithms mint with the private key and verify with the
    // public one, that a public-key-only setup verifies but cannot mint, and that a
    // token from another key pair is refused.
    let ttl = TokenTtl::default();
    let minted = rs256(true)
        .mint(Role::Brand, &[brand("acme")], "idp-user", ttl)
        .unwrap();
    let verify_only = rs256(false);
    assert!(!verify_only.can_mint());
    assert!(verify_only.mint(Role::Admin, &[], "x", ttl).is_err());
    let p = verify_only.verify(&minted).unwrap();
    assert_eq!((p.role, p.subject.as_str()), (Role::Brand, "idp-user"));

    let ed = eddsa();
    let token = ed.mint(Role::Admin, &[], "ed", ttl).unwrap();
    assert_eq!(ed.verify(&token).unwrap().role, Role::Admin);
    let foreign = signed_with(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(fixture("ed25519_other_private.pem").as_bytes()).unwrap(),
        json!({"sub": "x", "role": "admin", "exp": in_an_hour()}),
    );
    assert_eq!(reason(ed.verify(&foreign)), "wrong signature");
    // An RS256 token against an EdDSA configuration is refused before any key is tried.
    assert!(reason(ed.verify(&minted)).contains("wrong algorithm"));
}

#[tokio::test]
async fn mismatched_or_unreadable_keys_are_refused_at_start_up() {
    // Proves a private key that does not match the public one, a key of the wrong kind
    // and a too-short secret never become a running configuration.
    let mismatched = JwtKey::EdDsa {
        public_pem: fixture("ed25519_public.pem"),
        private_pem: Some(Secret::new(fixture("ed25519_other_private.pem"))),
    };
    assert!(Jwt::new(mismatched, None, None).is_err());
    let wrong_kind = JwtKey::Rs256 {
        public_pem: fixture("ed25519_public.pem"),
        private_pem: None,
    };
    assert!(Jwt::new(wrong_kind, None, None).is_err());
    assert!(Jwt::new(JwtKey::Hs256(Secret::new("short")), None, None).is_err());
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_checked_when_configured() {
    // Proves a configured iss/aud must be present and equal, and is stamped when minting.
    let jwt = hs256(Some("https://idp.example"), Some("usage-ledger"));
    let minted = jwt
        .mint(Role::Admin, &[], "ops", TokenTtl::default())
        .unwrap();
    assert!(jwt.verify(&minted).is_ok());

    let base = json!({"sub": "x", "role": "admin", "exp": in_an_hour()});
    let with = |extra: Value| {
        let mut c = base.clone();
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(c)
    };
    let wrong_iss = with(json!({"iss": "https://evil.example", "aud": "usage-ledger"}));
    assert_eq!(reason(jwt.verify(&wrong_iss)), "wrong issuer (iss)");
    let wrong_aud = with(json!({"iss": "https://idp.example", "aud": "billing"}));
    assert_eq!(reason(jwt.verify(&wrong_aud)), "wrong audience (aud)");
    let no_iss = with(json!({"aud": "usage-ledger"}));
    assert!(reason(jwt.verify(&no_iss)).contains("`iss`"));
    let no_aud = with(json!({"iss": "https://idp.example"}));
    assert!(reason(jwt.verify(&no_aud)).contains("`aud`"));

    // Without configuration, neither is checked.
    assert!(hs256(None, None).verify(&wrong_aud).is_ok());
}

#[tokio::test]
async fn a_malformed_brand_or_role_makes_the_token_invalid() {
    // Proves claims are parsed, not trusted: bad brand ids, unknown roles and brand
    // counts that do not fit the role are all refused.
    let jwt = hs256(None, None);
    let exp = in_an_hour();
    let cases = [
        (
            json!({"sub": "x", "role": "brand", "brands": ["bad brand!"], "exp": exp}),
            "malformed brand",
        ),
        (
            json!({"sub": "x", "role": "root", "exp": exp}),
            "unknown role",
        ),
        (
            json!({"sub": "x", "role": "brand", "brands": ["a", "b"], "exp": exp}),
            "exactly one brand",
        ),
        (
            json!({"sub": "x", "role": "brand", "exp": exp}),
            "exactly one brand",
        ),
        (
            json!({"sub": "x", "role": "service", "brands": [], "exp": exp}),
            "1 to",
        ),
        (
            json!({"sub": "x", "role": "admin", "brands": ["a"], "exp": exp}),
            "no brands",
        ),
        (json!({"role": "admin", "exp": exp}), "malformed claims"),
    ];
    for (claims, expected) in cases {
        let why = reason(jwt.verify(&signed(claims.clone())));
        assert!(why.contains(expected), "{claims}: {why}");
    }
}

#[tokio::test]
async fn missing_malformed_or_ambiguous_credentials_are_refused_precisely() {
    // Proves the header handling: no credentials is `Missing`, everything else that is
    // wrong is `Invalid` with its reason.
    let (auth, _dir) = jwt_only(hs256(None, None)).await;
    assert!(matches!(
        auth.authenticate(None, None).await,
        Err(AuthError::Missing)
    ));
    let token = auth
        .jwt()
        .mint(Role::Admin, &[], "ops", TokenTtl::default())
        .unwrap();
    let cases: [(Option<String>, Option<&str>, &str); 6] = [
        (Some("Basic dXNlcjpwdw==".into()), None, "scheme `Basic`"),
        (Some("Bearer".into()), None, "empty credentials"),
        (Some("Bearer abc".into()), None, "three dot-separated parts"),
        (
            Some(format!("Bearer {}", "a".repeat(9000))),
            None,
            "longer than",
        ),
        (Some(format!("Bearer {token}")), Some("ulk_x"), "not both"),
        (None, Some("not-a-key"), "malformed API key"),
    ];
    for (authorization, key, expected) in cases {
        let why = reason(auth.authenticate(authorization.as_deref(), key).await);
        assert!(why.contains(expected), "{expected}: {why}");
    }
}

/// The raw stores of a test database: the key store as the service sees it, and the
/// concrete log for reading the table directly.
enum Raw {
    Pg(Arc<PostgresLog>),
    Lite(Arc<SqliteLog>),
}

async fn open(db: &common::TestDb) -> (Arc<dyn ApiKeyStore>, Raw) {
    match (db.pg_url(), db.sqlite_path()) {
        (Some(url), _) => {
            let log = Arc::new(PostgresLog::connect(url).await.unwrap());
            (log.clone(), Raw::Pg(log))
        }
        (None, Some(path)) => {
            let log = Arc::new(SqliteLog::open(&path.to_string_lossy()).await.unwrap());
            (log.clone(), Raw::Lite(log))
        }
        (None, None) => unreachable!("a test database is PostgreSQL or SQLite"),
    }
}

/// Every stored value of every key row, as text.
async fn stored_rows(raw: &Raw) -> Vec<Vec<String>> {
    const SELECT: &str = "SELECT CAST(id AS text), brand_id, label, secret_sha256, \
                          CAST(created_at AS text), created_by FROM api_keys";
    use sqlx::Row;
    let text = |r: &dyn Fn(usize) -> String| (0..6).map(r).collect::<Vec<_>>();
    match raw {
        Raw::Pg(log) => sqlx::query(SELECT)
            .fetch_all(log.pool())
            .await
            .unwrap()
            .iter()
            .map(|row| text(&|i| row.get::<String, _>(i)))
            .collect(),
        Raw::Lite(log) => sqlx::query(SELECT)
            .fetch_all(log.pool())
            .await
            .unwrap()
            .iter()
            .map(|row| text(&|i| row.get::<String, _>(i)))
            .collect(),
    }
}

async fn api_key_lifecycle(db: &common::TestDb) {
    // Proves a key authenticates as `service` for its brand in either header, is listed
    // without its secret or hash, and is refused as soon as it is revoked.
    let (store, _raw) = open(db).await;
    let auth = Authenticator::new(hs256(None, None), store);
    let acme = brand("acme");
    let label = KeyLabel::parse("checkout service").unwrap();
    let (info, key) = auth.keys().create(&acme, &label, "admin-1").await.unwrap();
    assert!(key.expose().starts_with("ulk_"));
    assert_eq!(info.label, "checkout service");
    assert_eq!(info.created_by, "admin-1");
    assert!(info.revoked_at.is_none());

    let expected = Principal {
        subject: format!("api-key:{}", info.id),
        role: Role::Service,
        brands: vec![acme.clone()],
    };
    let by_header = auth.authenticate(None, Some(key.expose())).await.unwrap();
    assert_eq!(by_header, expected);
    let by_bearer = auth
        .authenticate(Some(&format!("Bearer {}", key.expose())), None)
        .await
        .unwrap();
    assert_eq!(by_bearer, expected);

    let listed = auth.keys().list(&acme).await.unwrap();
    assert_eq!(listed, vec![info.clone()]);
    let json = serde_json::to_string(&listed).unwrap();
    let hash = hex::encode(Sha256::digest(key.expose().as_bytes()));
    assert!(
        !json.contains(key.expose()) && !json.contains(&hash),
        "{json}"
    );
    let fields: Vec<String> = serde_json::from_str::<Vec<Value>>(&json).unwrap()[0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        fields,
        [
            "brandId",
            "createdAt",
            "createdBy",
            "id",
            "label",
            "revokedAt"
        ]
    );
    assert!(auth.keys().list(&brand("other")).await.unwrap().is_empty());

    // Another brand cannot revoke it; its own brand can, once.
    assert!(!auth.keys().revoke(&brand("other"), info.id).await.unwrap());
    assert!(auth.keys().revoke(&acme, info.id).await.unwrap());
    assert!(!auth.keys().revoke(&acme, info.id).await.unwrap());
    assert_eq!(
        reason(auth.authenticate(None, Some(key.expose())).await),
        "unknown or revoked API key"
    );
    let listed = auth.keys().list(&acme).await.unwrap();
    assert!(listed[0].revoked_at.is_some());
}
on_both_stores!(an_api_key_authenticates_until_revoked, api_key_lifecycle);

async fn unknown_key(db: &common::TestDb) {
    // Proves a well-formed key that was never issued is refused, like a malformed one.
    let (store, _raw) = open(db).await;
    let auth = Authenticator::new(hs256(None, None), store);
    let never_issued = format!("ulk_{}", "A".repeat(43));
    assert_eq!(
        reason(auth.authenticate(None, Some(&never_issued)).await),
        "unknown or revoked API key"
    );
    assert!(reason(auth.authenticate(None, Some("ulk_short")).await).contains("malformed"));
}
on_both_stores!(an_unknown_api_key_is_refused, unknown_key);

async fn stored_hashed(db: &common::TestDb) {
    // Proves the table holds the key's SHA-256 and nowhere the key itself.
    let (store, raw) = open(db).await;
    let label = KeyLabel::parse("ci").unwrap();
    let (_, key) = store.create(&brand("acme"), &label, "ops").await.unwrap();
    let rows = stored_rows(&raw).await;
    assert_eq!(rows.len(), 1);
    let secret_part = key.expose().trim_start_matches("ulk_");
    for value in &rows[0] {
        assert!(!value.contains(secret_part), "key stored in clear: {value}");
    }
    assert_eq!(
        rows[0][3],
        hex::encode(Sha256::digest(key.expose().as_bytes()))
    );
}
on_both_stores!(api_keys_are_stored_only_hashed, stored_hashed);

async fn store_down(db: &common::TestDb) {
    // Proves a key store that cannot be asked answers `Unavailable`, never a 401 or a
    // silent accept: the database is closed under the authenticator on purpose.
    let (store, raw) = open(db).await;
    let auth = Authenticator::new(hs256(None, None), store);
    auth.keys()
        .create(&brand("acme"), &KeyLabel::parse("ci").unwrap(), "ops")
        .await
        .unwrap();
    match &raw {
        Raw::Pg(log) => log.pool().close().await,
        Raw::Lite(log) => log.pool().close().await,
    }
    let other = format!("ulk_{}", "B".repeat(43));
    assert!(matches!(
        auth.authenticate(None, Some(&other)).await,
        Err(AuthError::Unavailable(_))
    ));
    // Tokens do not need the store and keep working.
    let token = auth
        .jwt()
        .mint(Role::Admin, &[], "ops", TokenTtl::default())
        .unwrap();
    assert!(auth
        .authenticate(Some(&format!("Bearer {token}")), None)
        .await
        .is_ok());
}
on_both_stores!(a_key_store_outage_is_unavailable, store_down);

async fn key_limit(db: &common::TestDb) {
    // Proves a brand is refused a key beyond its active limit with `TooManyKeys`, that
    // another brand is not, and that revoking one of its keys makes room again.
    let (store, _raw) = open(db).await;
    let auth = Authenticator::new(hs256(None, None), store);
    let (acme, label) = (brand("acme"), KeyLabel::parse("ci").unwrap());
    let mut first = None;
    for _ in 0..API_KEYS_ACTIVE_PER_BRAND_MAX {
        let (info, _) = auth.keys().create(&acme, &label, "ops").await.unwrap();
        first.get_or_insert(info.id);
    }
    let refused = auth.keys().create(&acme, &label, "ops").await;
    assert!(
        matches!(&refused, Err(ApiKeyError::TooManyKeys(b)) if *b == acme),
        "{refused:?}"
    );
    assert!(auth
        .keys()
        .create(&brand("beta"), &label, "ops")
        .await
        .is_ok());
    assert!(auth.keys().revoke(&acme, first.unwrap()).await.unwrap());
    assert!(auth.keys().create(&acme, &label, "ops").await.is_ok());
}
on_both_stores!(a_brand_is_refused_keys_beyond_its_active_limit, key_limit);
