//! Passwords (Argon2id), TOTP second factors (RFC 6238) and high-entropy client secrets.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sharedcare_kit::edge::Refuse;

use crate::error::{IdentityError, Result};

/// Argon2id with the configured cost.
#[derive(Clone, Copy, Debug)]
pub struct PasswordCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
}

fn params(cost: PasswordCost) -> Result<Params> {
    Params::new(cost.memory_kib, cost.iterations, 1, Some(32))
        .map_err(|e| IdentityError::invalid("identity.argon2_memory_kib", e.to_string()))
}

/// Argon2id hashing with bounded memory: at most one hash per CPU at a time, each in a
/// reused memory buffer. (Allocating Argon2's 19 MiB per call lets the allocator keep every
/// thread's copy: the process grew by 150 MiB after seeding eight demo passwords.)
pub struct Hasher {
    cost: PasswordCost,
    permits: tokio::sync::Semaphore,
    buffers: std::sync::Mutex<Vec<Vec<Block>>>,
}

/// A valid Argon2id hash of a random password, verified against when a username is unknown
/// so that the answer takes as long as for a real account.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hhcmVkY2FyZWR1bW15$TnNP1fEmiNxmn5fNU8ZJRNm2YHBkMqoTxvFyyxm6W3U";

impl Hasher {
    /// A hasher for new passwords at `cost`.
    pub fn new(cost: PasswordCost) -> Hasher {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Hasher {
            cost,
            permits: tokio::sync::Semaphore::new(cpus),
            buffers: std::sync::Mutex::new(Vec::new()),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static) -> Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| IdentityError::forbidden("password hashing has stopped"))?;
        let mut buf = self.buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default();
        let (out, buf) = tokio::task::spawn_blocking(move || {
            let out = f(&mut buf);
            (out, buf)
        })
        .await
        .map_err(|e| IdentityError::invalid("password", e.to_string()))?;
        if let Ok(mut b) = self.buffers.lock() {
            b.push(buf);
        }
        Ok(out)
    }

    /// Hashes a password as a PHC string (`$argon2id$v=19$m=…,t=…,p=1$salt$hash`).
    pub async fn hash(&self, password: String) -> Result<String> {
        let params = params(self.cost)?;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| IdentityError::invalid("salt", e.to_string()))?;
        let out = self
            .run(move |buf| compute(&params, password.as_bytes(), &salt, buf))
            .await??;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(b);
        Ok(format!(
            "$argon2id$v=19$m={},t={},p=1${}${}",
            self.cost.memory_kib,
            self.cost.iterations,
            b64(&salt),
            b64(&out)
        ))
    }

    /// Checks a password against a PHC hash (whatever cost it was made with); an empty `phc`
    /// checks against a dummy hash and fails, taking the same time.
    pub async fn verify(&self, password: String, phc: String) -> bool {
        let phc = if phc.is_empty() { DUMMY_HASH.to_string() } else { phc };
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        let (Ok(params), Some(salt), Some(expected)) = (Params::try_from(&parsed), parsed.salt, parsed.hash) else {
            return false;
        };
        if parsed.algorithm.as_str() != "argon2id" {
            return false;
        }
        let salt = salt.as_ref().to_vec();
        let expected = expected.as_bytes().to_vec();
        let params = match Params::new(params.m_cost(), params.t_cost(), params.p_cost(), Some(expected.len())) {
            Ok(p) => p,
            Err(_) => return false,
        };
        let got = self
            .run(move |buf| compute(&params, password.as_bytes(), &salt, buf))
            .await;
        match got {
            Ok(Ok(out)) => {
                out.len() == expected.len() && out.iter().zip(&expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
            }
            _ => false,
        }
    }
}

fn compute(params: &Params, password: &[u8], salt: &[u8], buf: &mut Vec<Block>) -> Result<Vec<u8>> {
    let blocks = params.block_count();
    if buf.len() < blocks {
        buf.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; params.output_len().unwrap_or(32)];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt, &mut out, buf.get_mut(..blocks).unwrap_or_default())
        .map_err(|e| IdentityError::invalid("password", e.to_string()))?;
    Ok(out)
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (how authenticator apps take TOTP secrets).
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for b in bytes {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(b32((buf >> bits) & 31));
        }
    }
    if bits > 0 {
        out.push(b32((buf << (5 - bits)) & 31));
    }
    out
}

/// The base32 digit for the five bits `v`.
fn b32(v: u32) -> char {
    B32.get(v as usize).map_or('A', |b| char::from(*b))
}

/// Decodes [`base32`] (case-insensitive, padding and spaces ignored).
pub fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.chars().filter(|c| *c != '=' && *c != ' ') {
        let v = B32.iter().position(|b| char::from(*b) == c.to_ascii_uppercase())?;
        buf = (buf << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buf >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// A new 160-bit TOTP secret, base32.
pub fn new_totp_secret() -> String {
    base32(&sharedcare_kit::jose::random_bytes(20))
}

/// The 6-digit TOTP code for `secret` at unix time `t` (RFC 6238: HMAC-SHA1, 30 s steps).
pub fn totp(secret: &str, t: i64) -> Option<String> {
    let key = unbase32(secret)?;
    let counter = (t / 30) as u64;
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).ok()?;
    mac.update(&counter.to_be_bytes());
    let h: [u8; 20] = mac.finalize().into_bytes().into();
    // RFC 4226 §5.3 dynamic truncation: four bytes at the offset the last nibble names.
    let off = usize::from(h[19] & 0x0f);
    let [a, b, c, d] = *h.get(off..off + 4)?.first_chunk::<4>()?;
    let bin = (u32::from(a & 0x7f) << 24) | (u32::from(b) << 16) | (u32::from(c) << 8) | u32::from(d);
    Some(format!("{:06}", bin % 1_000_000))
}

/// The 30-second time step `code` belongs to, if it is valid now (±1 step of drift). Callers
/// accept a step only once per person, so a code seen over someone's shoulder cannot be replayed.
pub fn totp_step(secret: &str, code: &str, now: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 {
        return None;
    }
    [-30, 0, 30]
        .iter()
        .find(|d| totp(secret, now + **d).is_some_and(|c| c == code))
        .map(|d| (now + d) / 30)
}

/// An `otpauth://` URI an authenticator app can import.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_matches_rfc6238_test_vector() {
        // RFC 6238 Appendix B, SHA-1 secret "12345678901234567890", T = 59 → 94287082 (8 digits).
        let secret = base32(b"12345678901234567890");
        assert_eq!(totp(&secret, 59).as_deref(), Some("287082"));
        assert_eq!(totp(&secret, 1111111109).as_deref(), Some("081804"));
        assert_eq!(totp_step(&secret, "287082", 59), Some(1), "59 s is in step 1");
        assert_eq!(
            totp_step(&secret, "287082", 80),
            Some(1),
            "one step of drift is allowed"
        );
        assert_eq!(totp_step(&secret, "287083", 59), None);
    }

    #[test]
    fn base32_round_trips() {
        for n in 0..25 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(unbase32(&base32(&b)).as_deref(), Some(&b[..]));
        }
    }

    #[tokio::test]
    async fn password_hash_verifies_only_the_same_password_and_matches_argon2s_own_format() {
        use argon2::password_hash::PasswordVerifier;
        let h = Hasher::new(PasswordCost {
            memory_kib: 8192,
            iterations: 1,
        });
        let phc = h.hash("correct horse".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        assert!(h.verify("correct horse".into(), phc.clone()).await);
        assert!(!h.verify("correct horsf".into(), phc.clone()).await);
        // The argon2 crate's own verifier accepts our PHC strings.
        let parsed = PasswordHash::new(&phc).expect("phc");
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(
            !h.verify("anything".into(), String::new()).await,
            "dummy hash never matches"
        );
    }
}
