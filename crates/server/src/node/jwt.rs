//! Signed auth tokens, etcd's `--auth-token jwt,...`: `Authenticate` hands out a JSON Web Token
//! carrying the user name, the auth revision and an expiry, signed with a key every member has,
//! so any member can check it without replicated token state (simple tokens, the default, go
//! through the log instead; see [`rskv_storage::state_machine::auth`]).
//!
//! The spec is etcd's: `jwt,priv-key=PATH,sign-method=ES256[,ttl=5m][,pub-key=PATH]`, the key a
//! PKCS#8 PEM file of the method's kind: EC P-256 or P-384 for ES256 and ES384, RSA for RS256,
//! RS384, RS512, PS256, PS384 and PS512, Ed25519 for EdDSA (ES512 and the HMAC methods are not
//! offered: ring has no P-521, and a shared secret would be a second key to distribute). The
//! public key is derived from the private one; `pub-key` is accepted for etcd compatibility and
//! not read. Signing and checking use ring, which rustls already brings. A token checked once is
//! remembered until it expires, so a client's requests after the first cost a map lookup, not a
//! signature check.

use std::path::PathBuf;
use std::time::Duration;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::HashMap;
use std::sync::RwLock;

use ring::rand::SystemRandom;
use ring::signature;
use ring::signature::EcdsaKeyPair;
use ring::signature::Ed25519KeyPair;
use ring::signature::KeyPair;
use ring::signature::RsaKeyPair;
use ring::signature::UnparsedPublicKey;
use rustls::pki_types::PrivateKeyDer;

/// What `auth.token` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    /// Simple tokens, replicated through the log (etcd's default).
    Simple,
    /// Signed tokens.
    Jwt {
        /// The PKCS#8 PEM private key.
        key: PathBuf,
        /// One of [`METHODS`].
        method: String,
        /// How long a token is valid.
        ttl: Duration,
    },
}

impl TokenSpec {
    /// Parses etcd's `--auth-token` value.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(spec: &str) -> Result<TokenSpec, String> {
        let mut parts = spec.split(',').map(str::trim);
        match parts.next() {
            Some("simple") if parts.next().is_none() => return Ok(TokenSpec::Simple),
            Some("jwt") => {}
            _ => {
                return Err(format!(
                "`{spec}`: expected simple or jwt,priv-key=PATH,sign-method=METHOD[,ttl=DURATION]"
            ))
            }
        }
        let (mut key, mut method, mut ttl) = (None, None, Duration::from_secs(300));
        for part in parts {
            match part.split_once('=') {
                Some(("priv-key", path)) => key = Some(PathBuf::from(path)),
                Some(("pub-key", _)) => {}
                Some(("sign-method", m)) => method = Some(m.to_string()),
                Some(("ttl", t)) => ttl = parse_duration(t)?,
                _ => return Err(format!("`{part}`: unknown jwt option")),
            }
        }
        let key = key.ok_or("jwt needs priv-key=PATH")?;
        let method = method.ok_or_else(|| format!("jwt needs sign-method, one of {METHODS:?}"))?;
        if !METHODS.contains(&method.as_str()) {
            return Err(format!(
                "sign-method `{method}`: one of {METHODS:?} is supported"
            ));
        }
        Ok(TokenSpec::Jwt { key, method, ttl })
    }
}

/// `5m`, `300s`, `1h` (etcd's Go durations, the common units).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("ttl `{text}`: not a duration"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("ttl `{text}`: use s, m or h")),
    };
    if secs == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The signing methods offered (etcd's names).
pub const METHODS: [&str; 9] = [
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// A loaded key with what signs and checks with it.
enum Key {
    Ecdsa(EcdsaKeyPair, &'static signature::EcdsaVerificationAlgorithm),
    Rsa(
        RsaKeyPair,
        &'static dyn signature::RsaEncoding,
        &'static signature::RsaParameters,
    ),
    Ed25519(Ed25519KeyPair),
}

/// How many checked tokens are remembered; past it the memory starts afresh.
const CHECKED_CAPACITY: usize = 4096;

/// Signs and checks tokens with one key.
pub struct JwtKeys {
    key: Key,
    /// The method's name, the `alg` of the tokens' header.
    alg: &'static str,
    ttl: Duration,
    rng: SystemRandom,
    /// Tokens whose signature checked: the user and the expiry (seconds since the epoch).
    checked: RwLock<HashMap<String, (String, u64)>>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKeys {
    /// Loads the key a [`TokenSpec::Jwt`] names.
    ///
    /// # Errors
    /// An unreadable key, or one that does not fit the method.
    pub fn load(key: &std::path::Path, method: &str, ttl: Duration) -> Result<JwtKeys, String> {
        let der = match rskv_client::tls::read_key(key)? {
            PrivateKeyDer::Pkcs8(der) => der,
            _ => return Err(format!("{}: the jwt key must be PKCS#8", key.display())),
        };
        let rng = SystemRandom::new();
        let bad = |e: &dyn std::fmt::Display| format!("{}: not a {method} key: {e}", key.display());
        let pkcs8 = der.secret_pkcs8_der();
        let ecdsa = |signing, verifying| {
            EcdsaKeyPair::from_pkcs8(signing, pkcs8, &rng)
                .map(|pair| Key::Ecdsa(pair, verifying))
                .map_err(|e| bad(&e))
        };
        let rsa = |encoding, verifying| {
            RsaKeyPair::from_pkcs8(pkcs8)
                .map(|pair| Key::Rsa(pair, encoding, verifying))
                .map_err(|e| bad(&e))
        };
        use ring::signature as s;
        let (alg, key) = match method {
            "ES256" => (
                "ES256",
                ecdsa(
                    &s::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &s::ECDSA_P256_SHA256_FIXED,
                )?,
            ),
            "ES384" => (
                "ES384",
                ecdsa(
                    &s::ECDSA_P384_SHA384_FIXED_SIGNING,
                    &s::ECDSA_P384_SHA384_FIXED,
                )?,
            ),
            "RS256" => (
                "RS256",
                rsa(&s::RSA_PKCS1_SHA256, &s::RSA_PKCS1_2048_8192_SHA256)?,
            ),
            "RS384" => (
                "RS384",
                rsa(&s::RSA_PKCS1_SHA384, &s::RSA_PKCS1_2048_8192_SHA384)?,
            ),
            "RS512" => (
                "RS512",
                rsa(&s::RSA_PKCS1_SHA512, &s::RSA_PKCS1_2048_8192_SHA512)?,
            ),
            "PS256" => (
                "PS256",
                rsa(&s::RSA_PSS_SHA256, &s::RSA_PSS_2048_8192_SHA256)?,
            ),
            "PS384" => (
                "PS384",
                rsa(&s::RSA_PSS_SHA384, &s::RSA_PSS_2048_8192_SHA384)?,
            ),
            "PS512" => (
                "PS512",
                rsa(&s::RSA_PSS_SHA512, &s::RSA_PSS_2048_8192_SHA512)?,
            ),
            "EdDSA" => (
                "EdDSA",
                Key::Ed25519(
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|e| bad(&e))?,
                ),
            ),
            other => return Err(format!("sign-method `{other}` is not supported")),
        };
        Ok(JwtKeys {
            key,
            alg,
            ttl,
            rng,
            checked: RwLock::new(HashMap::new()),
        })
    }

    /// A token for `user` as of auth `revision`, valid for the configured TTL.
    ///
    /// # Errors
    /// When signing fails (it does not with a loaded key).
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let header = serde_json::json!({"alg": self.alg, "typ": "JWT"});
        let claims = serde_json::json!({
            "username": user,
            "revision": revision,
            "exp": now_secs() + self.ttl.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let message = signing_input.as_bytes();
        let signature = match &self.key {
            Key::Ecdsa(k, _) => k
                .sign(&self.rng, message)
                .map_err(|e| format!("signing failed: {e}"))?
                .as_ref()
                .to_vec(),
            Key::Rsa(k, encoding, _) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(*encoding, &self.rng, message, &mut sig)
                    .map_err(|e| format!("signing failed: {e}"))?;
                sig
            }
            Key::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// The user a token names, if it carries this key's signature and has not expired.
    pub fn verify(&self, token: &str) -> Option<String> {
        let now = now_secs();
        if let Some((user, exp)) = self
            .checked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
        {
            return (*exp > now).then(|| user.clone());
        }
        let (user, exp) = self.check_signature(token)?;
        if exp <= now {
            return None;
        }
        let mut checked = self.checked.write().unwrap_or_else(|p| p.into_inner());
        if checked.len() >= CHECKED_CAPACITY {
            checked.retain(|_, (_, exp)| *exp > now);
            if checked.len() >= CHECKED_CAPACITY {
                checked.clear();
            }
        }
        checked.insert(token.to_string(), (user.clone(), exp));
        Some(user)
    }

    /// The user and expiry a token names, if it carries this key's signature.
    fn check_signature(&self, token: &str) -> Option<(String, u64)> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, claims) = signing_input.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.alg {
            return None;
        }
        let message = signing_input.as_bytes();
        let checked = match &self.key {
            Key::Ecdsa(k, verifying) => UnparsedPublicKey::new(*verifying, k.public_key().as_ref())
                .verify(message, &signature),
            Key::Rsa(k, _, verifying) => {
                UnparsedPublicKey::new(*verifying, k.public().as_ref()).verify(message, &signature)
            }
            Key::Ed25519(k) => UnparsedPublicKey::new(&signature::ED25519, k.public_key().as_ref())
                .verify(message, &signature),
        };
        checked.ok()?;
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let exp = claims.get("exp")?.as_u64()?;
        Some((claims.get("username")?.as_str()?.to_string(), exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_should_be_read_as_etcd_writes_them() {
        assert_eq!(TokenSpec::parse("simple"), Ok(TokenSpec::Simple));
        assert_eq!(
            TokenSpec::parse("jwt,pub-key=p.pub,priv-key=k.pem,sign-method=ES256,ttl=10m"),
            Ok(TokenSpec::Jwt {
                key: "k.pem".into(),
                method: "ES256".into(),
                ttl: Duration::from_secs(600),
            })
        );
        for bad in [
            "jwt",
            "jwt,priv-key=k",
            "jwt,priv-key=k,sign-method=HS256",
            "jwt,priv-key=k,sign-method=ES256,ttl=0s",
            "jwt,priv-key=k,sign-method=ES256,colour=red",
            "opaque",
        ] {
            assert!(TokenSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_should_verify_with_its_key_only_and_until_it_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = |name: &str| {
            let path = dir.path().join(name);
            let key = rcgen::KeyPair::generate().expect("key");
            std::fs::write(&path, key.serialize_pem()).expect("write");
            path
        };
        let (a, b) = (pem("a.pem"), pem("b.pem"));
        let keys = JwtKeys::load(&a, "ES256", Duration::from_secs(60)).expect("load");
        let other = JwtKeys::load(&b, "ES256", Duration::from_secs(60)).expect("load");
        let token = keys.sign("alice", 7).expect("sign");
        assert_eq!(keys.verify(&token).as_deref(), Some("alice"));
        assert_eq!(other.verify(&token), None, "another key's signature");
        let mut forged = token.clone();
        forged.insert(token.find('.').expect("dot") + 2, 'x');
        assert_eq!(keys.verify(&forged), None, "a changed token");
        let expired = JwtKeys::load(&a, "ES256", Duration::ZERO).expect("load");
        let token = expired.sign("alice", 7).expect("sign");
        assert_eq!(keys.verify(&token), None, "expired");
        assert_eq!(keys.verify(&token), None, "expired, asked again");
        for method in ["RS256", "PS512", "ES384", "EdDSA"] {
            assert!(
                JwtKeys::load(&a, method, Duration::from_secs(1)).is_err(),
                "{method}"
            );
        }
    }

    #[test]
    fn other_methods_should_sign_and_verify_with_their_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (method, alg) in [
            ("ES384", &rcgen::PKCS_ECDSA_P384_SHA384),
            ("EdDSA", &rcgen::PKCS_ED25519),
        ] {
            let path = dir.path().join(format!("{method}.pem"));
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            std::fs::write(&path, key.serialize_pem()).expect("write");
            let keys = JwtKeys::load(&path, method, Duration::from_secs(60)).expect("load");
            let token = keys.sign("bob", 1).expect("sign");
            assert_eq!(keys.verify(&token).as_deref(), Some("bob"), "{method}");
            assert!(JwtKeys::load(&path, "ES256", Duration::from_secs(1)).is_err());
        }
    }
}
