//! Signed auth tokens, etcd's `--auth-token jwt,...`: `Authenticate` hands out a JSON Web Token
//! carrying the user name, the auth revision and an expiry, signed with a key every member has,
//! so any member can check it without replicated token state (simple tokens, the default, go
//! through the log instead; see [`rskv_storage::state_machine::auth`]).
//!
//! The spec is etcd's: `jwt,priv-key=PATH,sign-method=ES256[,ttl=5m][,pub-key=PATH]`, the key a
//! PKCS#8 PEM file (an EC P-256 key for ES256, an RSA key for RS256). The public key is derived
//! from the private one; `pub-key` is accepted for etcd compatibility and not read. Signing and
//! checking use ring, which rustls already brings.

use std::path::PathBuf;
use std::time::Duration;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
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
        /// `ES256` or `RS256`.
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
            _ => return Err(format!("`{spec}`: expected simple or jwt,priv-key=PATH,sign-method=ES256|RS256[,ttl=DURATION]")),
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
        let method = method.ok_or("jwt needs sign-method=ES256 or RS256")?;
        if !["ES256", "RS256"].contains(&method.as_str()) {
            return Err(format!(
                "sign-method `{method}`: ES256 and RS256 are supported"
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

enum Key {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

/// Signs and checks tokens with one key.
pub struct JwtKeys {
    key: Key,
    ttl: Duration,
    rng: SystemRandom,
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
        let bad = |e: String| format!("{}: not a {method} key: {e}", key.display());
        let key = match method {
            "ES256" => Key::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der.secret_pkcs8_der(),
                    &rng,
                )
                .map_err(|e| bad(e.to_string()))?,
            ),
            "RS256" => Key::Rs256(
                RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| bad(e.to_string()))?,
            ),
            other => return Err(format!("sign-method `{other}` is not supported")),
        };
        Ok(JwtKeys { key, ttl, rng })
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::Rs256(_) => "RS256",
        }
    }

    /// A token for `user` as of auth `revision`, valid for the configured TTL.
    ///
    /// # Errors
    /// When signing fails (it does not with a loaded key).
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let header = serde_json::json!({"alg": self.alg(), "typ": "JWT"});
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
        let signature = match &self.key {
            Key::Es256(k) => k
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|e| format!("signing failed: {e}"))?
                .as_ref()
                .to_vec(),
            Key::Rs256(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| format!("signing failed: {e}"))?;
                sig
            }
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// The user a token names, if it carries this key's signature and has not expired.
    pub fn verify(&self, token: &str) -> Option<String> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, claims) = signing_input.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.alg() {
            return None;
        }
        let checked = match &self.key {
            Key::Es256(k) => UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                k.public_key().as_ref(),
            )
            .verify(signing_input.as_bytes(), &signature),
            Key::Rs256(k) => UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                k.public().as_ref(),
            )
            .verify(signing_input.as_bytes(), &signature),
        };
        checked.ok()?;
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        if claims.get("exp")?.as_u64()? <= now_secs() {
            return None;
        }
        Some(claims.get("username")?.as_str()?.to_string())
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
        assert!(JwtKeys::load(&a, "RS256", Duration::from_secs(1)).is_err());
    }
}
