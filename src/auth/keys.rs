//! Key material of the token verifier: the configured secret or PEM keys, or in
//! development the secret created once under the data directory. Kept out of the
//! configuration schema, which only says where the keys are.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::auth::{Jwt, JwtAlgorithm, JwtError, JwtKey};
use crate::config::{AuthConfig, Mode, Settings};
use crate::secret::Secret;

/// The development signing secret, created once under the data directory.
pub const DEV_SECRET_FILE: &str = "jwt-secret";
/// 256 bits, the HS256 key size (RFC 7518 §3.2).
pub const DEV_SECRET_BYTES: usize = 32;

/// Why no verifier could be made from the configured keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key configuration: {0}")]
    Bad(String),
    #[error("production mode refuses to start without a signing key: {0}")]
    MissingKey(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("development signing secret {path}: {source}")]
    DevSecret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

/// The token verifier (and minter) of these settings, and where its key came from.
pub fn verifier(settings: &Settings) -> Result<(Jwt, KeySource), KeyError> {
    let (key, source) = jwt_key(&settings.auth, &settings.store.data_dir)?;
    let jwt = Jwt::new(
        key,
        settings.auth.issuer.clone(),
        settings.auth.audience.clone(),
    )?;
    Ok((jwt, source))
}

/// Where the signing key came from, so start-up can say so (and print a development
/// token only when the key is the development one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    Development { path: PathBuf, created: bool },
}

/// The key material for the configured algorithm. In development mode with nothing
/// configured, the secret in `<data_dir>/jwt-secret` (created on first use); in
/// production mode, a missing key is an error.
pub fn jwt_key(auth: &AuthConfig, data_dir: &Path) -> Result<(JwtKey, KeySource), KeyError> {
    let alg = auth.jwt_algorithm.0;
    let has_paths = auth.jwt_public_key_path.is_some() || auth.jwt_private_key_path.is_some();
    match alg {
        JwtAlgorithm::Hs256 if has_paths => Err(KeyError::Bad(
            "jwt_public_key_path / jwt_private_key_path are for RS256 or EdDSA; \
                 set jwt_algorithm or remove them"
                .to_owned(),
        )),
        JwtAlgorithm::Hs256 => match (&auth.jwt_secret, auth.mode) {
            (Some(secret), _) => Ok((JwtKey::Hs256(secret.clone()), KeySource::Configured)),
            (None, Mode::Production) => Err(KeyError::MissingKey(
                "set LEDGER_JWT_SECRET (HS256), or jwt_algorithm RS256/EdDSA with \
                     LEDGER_JWT_PUBLIC_KEY_PATH"
                    .to_owned(),
            )),
            (None, Mode::Development) => {
                let (secret, created) = dev_secret(data_dir)?;
                let path = data_dir.join(DEV_SECRET_FILE);
                Ok((
                    JwtKey::Hs256(secret),
                    KeySource::Development { path, created },
                ))
            }
        },
        _ if auth.jwt_secret.is_some() => Err(KeyError::Bad(format!(
            "jwt_secret is for HS256 but jwt_algorithm is {alg}"
        ))),
        _ => pem_keys(auth, alg),
    }
}

fn pem_keys(auth: &AuthConfig, alg: JwtAlgorithm) -> Result<(JwtKey, KeySource), KeyError> {
    let public = auth.jwt_public_key_path.as_ref().ok_or_else(|| {
        let why = format!("{alg} needs LEDGER_JWT_PUBLIC_KEY_PATH (a PEM public key)");
        match auth.mode {
            Mode::Production => KeyError::MissingKey(why),
            Mode::Development => KeyError::Bad(why),
        }
    })?;
    let public_pem = read(public)?;
    let private_pem = auth
        .jwt_private_key_path
        .as_ref()
        .map(|p| read(p).map(Secret::new))
        .transpose()?;
    let key = match alg {
        JwtAlgorithm::Rs256 => JwtKey::Rs256 {
            public_pem,
            private_pem,
        },
        _ => JwtKey::EdDsa {
            public_pem,
            private_pem,
        },
    };
    Ok((key, KeySource::Configured))
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The development secret: read if it exists, else created with mode 0600. It is
/// written to a private temporary file and hard-linked into place, so two processes
/// starting together never see a half-written secret: one link wins, the other reads.
pub fn dev_secret(data_dir: &Path) -> Result<(Secret, bool), KeyError> {
    let path = data_dir.join(DEV_SECRET_FILE);
    let fail = |source| KeyError::DevSecret {
        path: path.clone(),
        source,
    };
    if path.exists() {
        return read_dev_secret(&path).map(|s| (s, false));
    }
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let mut bytes = [0u8; DEV_SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| fail(std::io::Error::other(e)))?;
    let secret = hex::encode(bytes);
    let tmp = data_dir.join(format!(
        ".{DEV_SECRET_FILE}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let written = write_private(&tmp, secret.as_bytes());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((Secret::new(secret), true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_dev_secret(&path).map(|s| (s, false))
        }
        Err(e) => Err(fail(e)),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn read_dev_secret(path: &Path) -> Result<Secret, KeyError> {
    let text = read(path)?;
    let secret = text.trim();
    if secret.len() < crate::auth::jwt::JWT_SECRET_BYTES_MIN {
        return Err(KeyError::Bad(format!(
            "{} is too short to be a signing secret: delete it to create a new one",
            path.display()
        )));
    }
    Ok(Secret::new(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenTtl;
    use crate::config::tests::env;
    use crate::config::{JwtAlgorithmSetting, Sources};

    #[test]
    fn production_mode_refuses_to_start_without_a_secret() {
        // Proves production never falls back to a generated secret, for either key kind.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::resolve(&Sources {
            env: env(&[("LEDGER_MODE", "production")]),
            ..Sources::default()
        })
        .unwrap();
        s.store.data_dir = dir.path().to_owned();
        assert!(matches!(verifier(&s), Err(KeyError::MissingKey(_))));
        assert!(
            !dir.path().join(DEV_SECRET_FILE).exists(),
            "no secret is created in production"
        );

        s.auth.jwt_algorithm = JwtAlgorithmSetting(JwtAlgorithm::Rs256);
        assert!(matches!(verifier(&s), Err(KeyError::MissingKey(_))));

        s.auth.jwt_algorithm = JwtAlgorithmSetting(JwtAlgorithm::Hs256);
        s.auth.jwt_secret = Some(Secret::new("p".repeat(40)));
        let (_, source) = verifier(&s).unwrap();
        assert_eq!(source, KeySource::Configured);
    }

    #[test]
    fn a_short_hs256_secret_is_refused() {
        // Proves a secret below 256 bits never becomes a signing key.
        let mut s = Settings::default();
        s.auth.jwt_secret = Some(Secret::new("short"));
        assert!(matches!(verifier(&s), Err(KeyError::Jwt(_))));
    }

    #[test]
    fn the_development_secret_is_created_once_private_and_reused() {
        // Proves the dev secret survives restarts and is readable by its owner only.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (first, created) = dev_secret(&data).unwrap();
        assert!(created);
        assert_eq!(first.expose().len(), DEV_SECRET_BYTES * 2);
        let (again, created_again) = dev_secret(&data).unwrap();
        assert!(!created_again);
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(DEV_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(&data).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");

        // Tokens minted with it before a restart verify after it.
        let mut s = Settings::default();
        s.store.data_dir = data;
        let (jwt, source) = verifier(&s).unwrap();
        assert!(matches!(
            source,
            KeySource::Development { created: false, .. }
        ));
        let token = jwt
            .mint(crate::auth::Role::Admin, &[], "dev", TokenTtl::default())
            .unwrap();
        let (after_restart, _) = verifier(&s).unwrap();
        assert!(after_restart.verify(&token).is_ok());
    }
}
