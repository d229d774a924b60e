//! JSON Web Signatures as Sharedcare uses them: compact-serialised JWTs signed with ES256
//! ([RFC 7515], [RFC 7518 §3.4]) and the public keys as a JWK Set ([RFC 7517]).
//!
//! Signing and verification use `ring` (BoringSSL's constant-time P-256 assembly), the
//! serialisation is this small module: a JOSE crate would bring a second copy of primitives
//! already in the tree, and the verifier's policy is deliberately narrow — only `ES256`, only
//! keys found by `kid` — so `alg=none`, HMAC with a public key and algorithm confusion are
//! refused before any signature is checked.
//!
//! [RFC 7515]: https://www.rfc-editor.org/rfc/rfc7515
//! [RFC 7518 §3.4]: https://www.rfc-editor.org/rfc/rfc7518#section-3.4
//! [RFC 7517]: https://www.rfc-editor.org/rfc/rfc7517

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a token or key was refused. Messages never contain the token itself.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    /// A token could not be signed: its claims are not a JSON object, or the system's random
    /// number generator failed.
    #[error("token could not be signed: {0}")]
    Sign(String),
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

/// A P-256 public key (uncompressed SEC1 point, 65 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl JwkSet {
    /// The P-256 verifying key published under `kid`, if any.
    pub fn find(&self, kid: &str) -> Option<PublicKey> {
        self.keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .find(|k| k.kid == kid)
            .and_then(|k| k.verifying_key().ok())
    }
}

impl Jwk {
    /// The JWK of `key`, published under `kid`.
    pub fn from_key(key: &PublicKey, kid: &str) -> Jwk {
        let bytes = &key.0;
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: B64.encode(bytes.get(1..33).unwrap_or_default()),
            y: B64.encode(bytes.get(33..65).unwrap_or_default()),
            kid: kid.into(),
            use_: "sig".into(),
            alg: "ES256".into(),
        }
    }

    /// The verifying key this JWK describes.
    pub fn verifying_key(&self) -> Result<PublicKey, JoseError> {
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
        // ring checks that the point is on the curve each time it verifies with it; a key that
        // is not fails every verification.
        Ok(PublicKey(sec1))
    }
}

/// An ES256 signing key with its key id.
pub struct Signer256 {
    key: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer256")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer256 {
    /// A fresh random key; its `kid` is its RFC 7638 thumbprint.
    pub fn generate() -> Result<Signer256, JoseError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JoseError::Sign("the system's random number generator failed".into()))?;
        Signer256::from_secret(pkcs8.as_ref())
    }

    /// Restores a key from its PKCS#8 document (as stored by [`Signer256::secret_bytes`]).
    pub fn from_secret(pkcs8: &[u8]) -> Result<Signer256, JoseError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| JoseError::Key("not a P-256 PKCS#8 private key"))?;
        let public = PublicKey(key.public_key().as_ref().to_vec());
        let kid = thumbprint(&Jwk::from_key(&public, ""));
        Ok(Signer256 {
            key,
            pkcs8: pkcs8.to_vec(),
            kid,
            rng,
        })
    }

    /// The private key as PKCS#8 DER, for storage.
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.pkcs8.clone()
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk::from_key(&PublicKey(self.key.public_key().as_ref().to_vec()), &self.kid)
    }

    /// Signs `claims` as a compact JWS with header `{"alg":"ES256","typ":typ,"kid":…}`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, JoseError> {
        compact("ES256", typ, &self.kid, claims, |input| {
            self.key
                .sign(&self.rng, input)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| JoseError::Sign("the system's random number generator failed".into()))
        })
    }
}

/// An RS256 signing key (RSASSA-PKCS1-v1_5 with SHA-256), for clients that can only verify
/// RSA ID tokens. Signing uses `ring`; the key pair is made and described by the caller.
pub struct SignerRs256 {
    key: ring::signature::RsaKeyPair,
    pkcs8: Vec<u8>,
    jwk: serde_json::Value,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SignerRs256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerRs256")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SignerRs256 {
    /// From a PKCS#8 RSA private key and its public modulus and exponent (big-endian).
    pub fn from_parts(pkcs8: &[u8], n: &[u8], e: &[u8]) -> Result<SignerRs256, JoseError> {
        let key =
            ring::signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| JoseError::Key("not an RSA PKCS#8 key"))?;
        let (n, e) = (B64.encode(n), B64.encode(e));
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = B64.encode(Sha256::digest(canonical.as_bytes()));
        let jwk = serde_json::json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "use": "sig", "alg": "RS256"});
        Ok(SignerRs256 {
            key,
            pkcs8: pkcs8.to_vec(),
            jwk,
            kid,
            rng: SystemRandom::new(),
        })
    }

    /// The private key as PKCS#8 DER.
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.pkcs8.clone()
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }

    /// Signs `claims` as a compact JWS with `alg: RS256`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, JoseError> {
        compact("RS256", typ, &self.kid, claims, |input| {
            let mut sig = vec![0u8; self.key.public().modulus_len()];
            self.key
                .sign(&ring::signature::RSA_PKCS1_SHA256, &self.rng, input, &mut sig)
                .map_err(|_| JoseError::Sign("RSA signing failed".into()))?;
            Ok(sig)
        })
    }
}

/// `base64url(header).base64url(claims).base64url(signature)` (RFC 7515 §7.1).
fn compact<T: Serialize>(
    alg: &str,
    typ: &str,
    kid: &str,
    claims: &T,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, JoseError>,
) -> Result<String, JoseError> {
    let header = serde_json::json!({"alg": alg, "typ": typ, "kid": kid});
    let mut out = B64.encode(header.to_string());
    out.push('.');
    let claims = serde_json::to_vec(claims).map_err(|e| JoseError::Sign(format!("claims: {e}")))?;
    out.push_str(&B64.encode(claims));
    let sig = sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&B64.encode(sig));
    Ok(out)
}

/// RFC 7638 thumbprint of an EC key, base64url SHA-256 of its required members in order.
pub fn thumbprint(jwk: &Jwk) -> String {
    let canonical = format!(
        r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
        jwk.crv, jwk.kty, jwk.x, jwk.y
    );
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
    let bytes = B64
        .decode(head)
        .map_err(|_| JoseError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| JoseError::Malformed("header is not a JOSE header"))
}

/// Verifies an ES256 compact JWS against `key` and returns its decoded payload.
pub fn verify(token: &str, key: &PublicKey) -> Result<serde_json::Value, JoseError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JoseError::Malformed("expected three parts"));
    };
    let head = header(token)?;
    if head.alg != "ES256" {
        return Err(JoseError::Algorithm(head.alg));
    }
    verify_signed(token, h, p, s, key)
}

/// Verifies the signature over `header.payload` (the start of `token`) once the header's `alg`
/// has been checked, and decodes the payload.
fn verify_signed(token: &str, h: &str, p: &str, s: &str, key: &PublicKey) -> Result<serde_json::Value, JoseError> {
    let signed = token
        .as_bytes()
        .get(..h.len() + 1 + p.len())
        .ok_or(JoseError::Malformed("the parts do not make up the token"))?;
    let sig = B64
        .decode(s)
        .map_err(|_| JoseError::Malformed("signature is not base64url"))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.0)
        .verify(signed, &sig)
        .map_err(|_| JoseError::Signature)?;
    let payload = B64
        .decode(p)
        .map_err(|_| JoseError::Malformed("payload is not base64url"))?;
    serde_json::from_slice(&payload).map_err(|_| JoseError::Malformed("payload is not JSON"))
}

/// Verifies an ES256 token whose header the caller has already decoded and checked (alg).
pub fn verify_checked(token: &str, key: &PublicKey) -> Result<serde_json::Value, JoseError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JoseError::Malformed("expected three parts"));
    };
    verify_signed(token, h, p, s, key)
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
    B64.encode(digest.get(..16).unwrap_or_default())
}

/// base64url SHA-256, e.g. a PKCE S256 challenge (RFC 7636 §4.2).
pub fn sha256_b64(value: &str) -> String {
    B64.encode(Sha256::digest(value.as_bytes()))
}

/// `n` random bytes, base64url: opaque tokens, codes, secrets.
pub fn random_token(n: usize) -> String {
    B64.encode(random_bytes(n))
}

/// `n` bytes from the operating system's random number generator (every secret, code and
/// token starts here).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // Without the OS's randomness no token, code or secret can be made safely: stop.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_token_verifies_with_the_published_key() {
        let signer = Signer256::generate().expect("key");
        let token = signer.sign("JWT", &serde_json::json!({"sub": "a"})).expect("sign");
        let set = JwkSet {
            keys: vec![serde_json::to_value(signer.jwk()).expect("jwk")],
        };
        assert_eq!(verify_with(&token, &set).expect("verifies")["sub"], "a");
        let restored = Signer256::from_secret(&signer.secret_bytes()).expect("restores");
        assert_eq!(restored.kid(), signer.kid());
    }

    #[test]
    fn alg_none_hmac_and_tampering_are_refused() {
        let signer = Signer256::generate().expect("key");
        let set = JwkSet {
            keys: vec![serde_json::to_value(signer.jwk()).expect("jwk")],
        };
        let token = signer.sign("JWT", &serde_json::json!({"sub": "a"})).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();
        for alg in ["none", "HS256"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, signer.kid()));
            let forged = format!("{h}.{}.{}", parts[1], parts[2]);
            assert_eq!(verify_with(&forged, &set), Err(JoseError::Algorithm(alg.into())));
        }
        let other = B64.encode(r#"{"sub":"admin"}"#);
        let tampered = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(verify_with(&tampered, &set), Err(JoseError::Signature));
        let stranger = Signer256::generate()
            .expect("key")
            .sign("JWT", &serde_json::json!({}))
            .expect("sign");
        assert!(matches!(verify_with(&stranger, &set), Err(JoseError::UnknownKey(_))));
    }

    #[test]
    fn thumbprint_matches_rfc7638_shape() {
        let jwk = Signer256::generate().expect("key").jwk();
        assert_eq!(thumbprint(&jwk).len(), 43);
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    #[test]
    #[ignore = "measurement, run by hand with --release"]
    fn verification_cost() {
        let s = Signer256::generate().expect("key");
        let token = s.sign("at+jwt", &serde_json::json!({"iss": "x", "aud": ["sharedcare"], "exp": 1, "scope": "a b c", "client_id": "c", "sub": "c", "jti": "abcdefghijklmnop"})).expect("sign");
        let key = s.jwk().verifying_key().expect("key");
        let n = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            verify_checked(&token, &key).expect("ok");
        }
        println!("verify_checked: {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
        let parts: Vec<&str> = token.rsplitn(2, '.').collect();
        let sig = B64.decode(parts[0]).expect("sig");
        let t = std::time::Instant::now();
        for _ in 0..n {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.0)
                .verify(parts[1].as_bytes(), &sig)
                .expect("ok");
        }
        println!("ring verify only: {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.sign("at+jwt", &serde_json::json!({"iss": "x"})).expect("sign");
        }
        println!("sign: {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
    }
}
