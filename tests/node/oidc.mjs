// panva's certified openid-client (v6) against a running Sharedcare identity service:
// discovery, authorization code + PKCE, ID token validation, userinfo, refresh, introspection,
// revocation, client_credentials and RP-initiated logout. The login pages are driven with
// plain HTTP (fetch with a cookie jar): this script is the relying party, not the browser.
//
// Environment: ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, LOGOUT_URI, USERNAME, PASSWORD,
// SERVICE_ID, SERVICE_SECRET, STAFF_TOTP (the demo staff's TOTP secrets). Exits non-zero with a message on the first failed check.
import assert from 'node:assert/strict';
import * as oidc from 'openid-client';
import { codesNow, staffSecret } from './totp.mjs';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const issuer = env('ISSUER');
const insecure = { execute: [oidc.allowInsecureRequests] };
const step = (s) => console.log(`ok - ${s}`);

// A cookie jar for the login pages.
const jar = new Map();
async function get(url, init = {}) {
  const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const r = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie } });
  for (const c of r.headers.getSetCookie()) {
    const [kv] = c.split(';');
    const i = kv.indexOf('=');
    jar.set(kv.slice(0, i), kv.slice(i + 1));
  }
  return r;
}
const field = (html, name) => (html.match(new RegExp(`name="${name}" value="([^"]*)"`)) || [])[1] || '';
async function follow(url) {
  for (let i = 0; i < 10; i++) {
    if (!url.startsWith(issuer)) return { url };
    const r = await get(url);
    if (r.status >= 300 && r.status < 400) {
      url = new URL(r.headers.get('location'), url).toString();
      continue;
    }
    return { url, html: await r.text(), status: r.status };
  }
  throw new Error('redirect loop');
}

const config = await oidc.discovery(
  new URL(issuer),
  env('CLIENT_ID'),
  { id_token_signed_response_alg: 'ES256' },
  oidc.ClientSecretBasic(env('CLIENT_SECRET')),
  insecure,
);
assert.equal(config.serverMetadata().issuer, issuer);
assert.ok(config.serverMetadata().code_challenge_methods_supported.includes('S256'));
step('discovery');

const verifier = oidc.randomPKCECodeVerifier();
const nonce = oidc.randomNonce();
const state = oidc.randomState();
const authUrl = oidc.buildAuthorizationUrl(config, {
  redirect_uri: env('REDIRECT_URI'),
  scope: 'openid profile email nationalrbacaccess selectedrole',
  code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  nonce,
  state,
});
let page = await follow(authUrl.toString());
assert.match(page.url, /\/oauth2\/login\?req=/);
const login = await get(`${issuer}/oauth2/login`, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({
    req: field(page.html, 'req'),
    csrf: field(page.html, 'csrf'),
    username: env('USERNAME'),
    password: env('PASSWORD'),
  }),
});
assert.equal(login.status, 303);
page = await follow(new URL(login.headers.get('location'), issuer).toString());
// Staff have a second factor: the security code page, then back to the app at AAL2.
const secret = staffSecret(env('USERNAME'));
for (const code of secret ? codesNow(secret) : []) {
  if (!/\/oauth2\/login\/otp/.test(page.url)) break;
  const otp = await get(`${issuer}/oauth2/login/otp`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ req: field(page.html, 'req'), csrf: field(page.html, 'csrf'), code }),
  });
  page = otp.status === 303
    ? await follow(new URL(otp.headers.get('location'), issuer).toString())
    : { url: page.url, html: await otp.text(), status: otp.status };
}
assert.ok(page.url.startsWith(env('REDIRECT_URI')), `back at the app: ${page.url}`);
step('login through the pages (password and security code)');

const tokens = await oidc.authorizationCodeGrant(config, new URL(page.url), {
  pkceCodeVerifier: verifier,
  expectedNonce: nonce,
  expectedState: state,
  idTokenExpected: true,
});
const claims = tokens.claims();
assert.equal(claims.iss, issuer);
assert.equal(claims.nonce, nonce);
assert.ok(claims.nhsid_useruid, 'CIS2 nhsid_useruid claim');
assert.ok(claims.selected_roleid, 'CIS2 selected_roleid claim');
assert.ok(Array.isArray(claims.nhsid_nrbac_roles), 'CIS2 nhsid_nrbac_roles claim');
step('code + PKCE exchange, ID token validated (signature, iss, aud, nonce, at_hash)');

const info = await oidc.fetchUserInfo(config, tokens.access_token, claims.sub);
assert.equal(info.sub, claims.sub);
assert.ok(info.family_name);
step('userinfo');

const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token);
assert.notEqual(refreshed.refresh_token, tokens.refresh_token, 'refresh tokens rotate');
await assert.rejects(oidc.refreshTokenGrant(config, tokens.refresh_token), (e) => e.error === 'invalid_grant');
await assert.rejects(oidc.refreshTokenGrant(config, refreshed.refresh_token), (e) => e.error === 'invalid_grant');
step('refresh with rotation; replay revokes the family');

const introspected = await oidc.tokenIntrospection(config, refreshed.access_token);
assert.equal(introspected.active, true);
assert.equal(introspected.client_id, env('CLIENT_ID'));
await oidc.tokenRevocation(config, refreshed.access_token);
assert.equal((await oidc.tokenIntrospection(config, refreshed.access_token)).active, false);
step('introspection and revocation');

const service = await oidc.discovery(
  new URL(issuer),
  env('SERVICE_ID'),
  {},
  oidc.ClientSecretBasic(env('SERVICE_SECRET')),
  insecure,
);
const cc = await oidc.clientCredentialsGrant(service, { scope: 'records.read' });
assert.equal(cc.token_type.toLowerCase(), 'bearer');
assert.equal(cc.scope, 'records.read');
await assert.rejects(
  oidc.clientCredentialsGrant(
    await oidc.discovery(new URL(issuer), env('SERVICE_ID'), {}, oidc.ClientSecretBasic('wrong'), insecure),
    {},
  ),
  // A 401 with a Basic challenge (RFC 6749 §5.2 invalid_client).
  (e) => e.status === 401 && e.cause?.[0]?.scheme === 'basic',
);
step('client_credentials (and invalid_client for a wrong secret)');

const end = oidc.buildEndSessionUrl(config, {
  id_token_hint: tokens.id_token,
  post_logout_redirect_uri: env('LOGOUT_URI'),
  state: 'bye',
});
const out = await get(end.toString());
assert.equal(out.status, 303);
assert.equal(out.headers.get('location'), `${env('LOGOUT_URI')}?state=bye`);
const silent = oidc.buildAuthorizationUrl(config, {
  redirect_uri: env('REDIRECT_URI'),
  scope: 'openid',
  prompt: 'none',
  state: 's2',
  code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
  code_challenge_method: 'S256',
});
const after = await follow(silent.toString());
assert.equal(new URL(after.url).searchParams.get('error'), 'login_required');
step('RP-initiated logout ends the session (prompt=none then needs a login)');
console.log('openid-client: all checks passed');
