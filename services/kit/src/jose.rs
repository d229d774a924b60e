//! JSON Web Signatures as Sharedcare uses them: compact-serialised JWTs signed with ES256
//! ([RFC 7515], [RFC 7518 §3.4]) and the public keys as a JWK Set ([RFC 7517]).
//!
//! Written on the RustCrypto `p256` crate that `openidconnect` already brings, rather than a
//! JOSE crate that would add a second generation of the same primitives. The verifier's policy
//! is deliberately narrow: only `ES256`, only keys found by `kid`, so `alg=none`, HMAC with a
//! public key and algorithm confusion are refused before any signature is checked.
//!
//! [RFC 7515]: https://www.rfc-editor.org/rfc/rfc7515
//! [RFC 7518 §3.4]: https://www.rfc-editor.org/rfc/rfc7518#section-3.4
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a token or key was refused. Messages never contain the token itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    /// Not three base64url parts of JSON.
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    /// `alg` is not ES256 (this includes `none` and every HMAC algorithm).
    #[error("token alg {0:?} is not accepted (only ES256)")]
    Algorithm(String),
    /// No published key has the token's `kid`.
    #[error("token kid {0:?} is not a published key")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("token signature does not verify")]
    Signature,
    /// A JWK that is not a P-256 public key.
    #[error("key is not a usable P-256 JWK: {0}")]
    Key(&'static str),
}

/// A public key in JWK form (RFC 7517 §4, EC members from RFC 7518 §6.2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    /// Key type: "EC".
    pub kty: String,
    /// Curve: "P-256".
    #[serde(default)]
    pub crv: String,
    /// Base64url x coordinate.
    #[serde(default)]
    pub x: String,
    /// Base64url y coordinate.
    #[serde(default)]
    pub y: String,
    /// Key id, as in the JWS header.
    #[serde(default)]
    pub kid: String,
    /// Intended use: "sig".
    #[serde(rename = "use", default, skip_serializing_if = "String::is_empty")]
    pub use_: String,
    /// Algorithm: "ES256".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alg: String,
}

/// A JWK Set document (`{"keys": [...]}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys; members this module cannot use are skipped when verifying.
    pub keys: Vec<serde_json::Value>,
}

impl JwkSet {
    /// The P-256 verifying key published under `kid`, if any.
    pub fn find(&self, kid: &str) -> Option<VerifyingKey> {
        self.keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .find(|k| k.kid == kid)
            .and_then(|k| k.verifying_key().ok())
    }
}

impl Jwk {
    /// The JWK of `key`, published under `kid`.
    pub fn from_key(key: &VerifyingKey, kid: &str) -> Jwk {
        let point = key.to_sec1_point(false);
        let bytes = point.as_bytes();
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: B64.encode(&bytes[1..33]),
            y: B64.encode(&bytes[33..65]),
            kid: kid.into(),
            use_: "sig".into(),
            alg: "ES256".into(),
        }
    }

    /// The verifying key this JWK describes.
    pub fn verifying_key(&self) -> Result<VerifyingKey, JoseError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(JoseError::Key("kty must be EC and crv P-256"));
        }
        let x = B64.decode(&self.x).map_err(|_| JoseError::Key("x is not base64url"))?;
        let y = B64.decode(&self.y).map_err(|_| JoseError::Key("y is not base64url"))?;
        if x.len() != 32 || y.len() != 32 {
            return Err(JoseError::Key("x and y must be 32 bytes"));
        }
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(4);
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| JoseError::Key("point is not on P-256"))
    }
}

/// An ES256 signing key with its key id.
#[derive(Clone)]
pub struct Signer256 {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for Signer256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer256").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer256 {
    /// A fresh random key; its `kid` is its RFC 7638 thumbprint.
    pub fn generate() -> Signer256 {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the operating system provides randomness");
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return Signer256::from_key(key);
            }
        }
    }

    /// Restores a key from its 32-byte scalar (as stored by [`Signer256::secret_bytes`]).
    pub fn from_secret(bytes: &[u8]) -> Result<Signer256, JoseError> {
        let key = SigningKey::from_slice(bytes).map_err(|_| JoseError::Key("not a P-256 private scalar"))?;
        Ok(Signer256::from_key(key))
    }

    fn from_key(key: SigningKey) -> Signer256 {
        let kid = thumbprint(&Jwk::from_key(key.verifying_key(), ""));
        Signer256 { key, kid }
    }

    /// The private scalar, for storage.
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.key.to_bytes().to_vec()
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk::from_key(self.key.verifying_key(), &self.kid)
    }

    /// Signs `claims` as a compact JWS with header `{"alg":"ES256","typ":typ,"kid":…}`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": typ, "kid": self.kid});
        let mut out = B64.encode(header.to_string());
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims).expect("claims serialise to JSON")));
        let sig: Signature = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&B64.encode(sig.to_bytes()));
        out
    }
}

/// RFC 7638 thumbprint of an EC key, base64url SHA-256 of its required members in order.
pub fn thumbprint(jwk: &Jwk) -> String {
    let canonical = format!(r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#, jwk.crv, jwk.kty, jwk.x, jwk.y);
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// The decoded JOSE header members the verifier looks at.
#[derive(Debug, Deserialize)]
pub struct Header {
    /// Algorithm.
    pub alg: String,
    /// Key id.
    #[serde(default)]
    pub kid: String,
    /// Media type, e.g. "JWT", "at+jwt", "logout+jwt".
    #[serde(default)]
    pub typ: String,
}

/// Splits a compact JWS and decodes its header, without verifying anything.
pub fn header(token: &str) -> Result<Header, JoseError> {
    let head = token.split('.').next().ok_or(JoseError::Malformed("no header"))?;
    let bytes = B64.decode(head).map_err(|_| JoseError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| JoseError::Malformed("header is not a JOSE header"))
}

/// Verifies an ES256 compact JWS against `key` and returns its decoded payload.
pub fn verify(token: &str, key: &VerifyingKey) -> Result<serde_json::Value, JoseError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JoseError::Malformed("expected three parts"));
    };
    let head = header(token)?;
    if head.alg != "ES256" {
        return Err(JoseError::Algorithm(head.alg));
    }
    let sig = B64.decode(s).map_err(|_| JoseError::Malformed("signature is not base64url"))?;
    let sig = Signature::from_slice(&sig).map_err(|_| JoseError::Signature)?;
    let signed_len = h.len() + 1 + p.len();
    key.verify(&token.as_bytes()[..signed_len], &sig)
        .map_err(|_| JoseError::Signature)?;
    let payload = B64.decode(p).map_err(|_| JoseError::Malformed("payload is not base64url"))?;
    serde_json::from_slice(&payload).map_err(|_| JoseError::Malformed("payload is not JSON"))
}

/// Verifies a token against a key set: the header's `kid` picks the key.
pub fn verify_with(token: &str, keys: &JwkSet) -> Result<serde_json::Value, JoseError> {
    let head = header(token)?;
    if head.alg != "ES256" {
        return Err(JoseError::Algorithm(head.alg));
    }
    let key = keys.find(&head.kid).ok_or(JoseError::UnknownKey(head.kid))?;
    verify(token, &key)
}

/// base64url(left half of SHA-256(value)): `at_hash` / `c_hash` for ES256 (OIDC Core §3.1.3.6).
pub fn half_hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    B64.encode(&digest[..16])
}

/// base64url SHA-256, e.g. a PKCE S256 challenge (RFC 7636 §4.2).
pub fn sha256_b64(value: &str) -> String {
    B64.encode(Sha256::digest(value.as_bytes()))
}

/// `n` random bytes, base64url: opaque tokens, codes, secrets.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_token_verifies_with_the_published_key() {
        let signer = Signer256::generate();
        let token = signer.sign("JWT", &serde_json::json!({"sub": "a"}));
        let set = JwkSet {
            keys: vec![serde_json::to_value(signer.jwk()).expect("jwk")],
        };
        assert_eq!(verify_with(&token, &set).expect("verifies")["sub"], "a");
        let restored = Signer256::from_secret(&signer.secret_bytes()).expect("restores");
        assert_eq!(restored.kid(), signer.kid());
    }

    #[test]
    fn alg_none_hmac_and_tampering_are_refused() {
        let signer = Signer256::generate();
        let set = JwkSet {
            keys: vec![serde_json::to_value(signer.jwk()).expect("jwk")],
        };
        let token = signer.sign("JWT", &serde_json::json!({"sub": "a"}));
        let parts: Vec<&str> = token.split('.').collect();
        for alg in ["none", "HS256"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, signer.kid()));
            let forged = format!("{h}.{}.{}", parts[1], parts[2]);
            assert_eq!(verify_with(&forged, &set), Err(JoseError::Algorithm(alg.into())));
        }
        let other = B64.encode(r#"{"sub":"admin"}"#);
        let tampered = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(verify_with(&tampered, &set), Err(JoseError::Signature));
        let stranger = Signer256::generate().sign("JWT", &serde_json::json!({}));
        assert!(matches!(verify_with(&stranger, &set), Err(JoseError::UnknownKey(_))));
    }

    #[test]
    fn thumbprint_matches_rfc7638_shape() {
        let jwk = Signer256::generate().jwk();
        assert_eq!(thumbprint(&jwk).len(), 43);
    }
}
