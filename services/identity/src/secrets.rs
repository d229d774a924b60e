//! Passwords (Argon2id), TOTP second factors (RFC 6238) and high-entropy client secrets.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::error::{IdentityError, Result};

/// Argon2id with the configured cost.
#[derive(Clone, Copy, Debug)]
pub struct PasswordCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
}

fn argon(cost: PasswordCost) -> Result<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| IdentityError::invalid("identity.argon2_memory_kib", e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password (PHC string). CPU-heavy: call from `spawn_blocking`.
pub fn hash_password(password: &str, cost: PasswordCost) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| IdentityError::invalid("salt", e.to_string()))?;
    let hash: PasswordHash = argon(cost)?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| IdentityError::invalid("password", e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks a password against a PHC hash (whatever cost it was made with).
/// CPU-heavy: call from `spawn_blocking`.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
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
            out.push(char::from(B32[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(B32[((buf << (5 - bits)) & 31) as usize]));
    }
    out
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
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).expect("the operating system provides randomness");
    base32(&b)
}

/// The 6-digit TOTP code for `secret` at unix time `t` (RFC 6238: HMAC-SHA1, 30 s steps).
pub fn totp(secret: &str, t: i64) -> Option<String> {
    let key = unbase32(secret)?;
    let counter = (t / 30) as u64;
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).ok()?;
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = usize::from(h[19] & 0x0f);
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    Some(format!("{:06}", bin % 1_000_000))
}

/// Whether `code` is the TOTP for `secret` now, allowing one step of clock drift either way.
pub fn check_totp(secret: &str, code: &str, now: i64) -> bool {
    let code = code.trim();
    code.len() == 6 && [-30, 0, 30].iter().any(|d| totp(secret, now + d).is_some_and(|c| c == code))
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
        assert!(check_totp(&secret, "287082", 59));
        assert!(!check_totp(&secret, "287083", 59));
    }

    #[test]
    fn base32_round_trips() {
        for n in 0..25 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(unbase32(&base32(&b)).as_deref(), Some(&b[..]));
        }
    }

    #[test]
    fn password_hash_verifies_only_the_same_password() {
        let cost = PasswordCost {
            memory_kib: 8192,
            iterations: 1,
        };
        let h = hash_password("correct horse", cost).expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
    }
}
