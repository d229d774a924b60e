// RFC 6238 TOTP (SHA-1, 30 s, 6 digits) from a base32 secret, as an authenticator app does, and
// the demo staff's secrets (every demo staff account has a second factor: the platform's
// services accept staff only at AAL2). STAFF_TOTP is a JSON object {username: secret}, set by
// the Rust test that runs the script from the demo's own table.
import crypto from 'node:crypto';

export function totp(secret, t = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/[\s=]/g, '').toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(t / 1000 / 30)));
  const h = crypto.createHmac('sha1', key).update(counter).digest();
  const o = h[19] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1e6).padStart(6, '0');
}

// The demo staff member's secret, or undefined for anyone else (patients have none).
export function staffSecret(user) {
  return JSON.parse(process.env.STAFF_TOTP || '{}')[user];
}

// The codes to try for `secret` now: the current 30 s step's, then the next one's (identity
// takes each step once per person, so a sign-in soon after another uses the next).
export function codesNow(secret) {
  return [totp(secret), totp(secret, Date.now() + 30_000)];
}
