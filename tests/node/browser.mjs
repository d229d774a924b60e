// Headless Chromium (Debian's, driven by playwright-core) signs a member of staff in through
// Sharedcare's real login pages to two ICS apps. Each app is a small web server here that uses
// openid-client for the code flow and jose to verify back-channel logout tokens.
//
// The journey: app A → login page → password → choose one of two roles → signed in to A;
// enrol TOTP on the account page; app B → signed in without any prompt (SSO); log out of A →
// both apps receive back-channel logout tokens and show "not signed in"; signing in again now
// asks for the TOTP code.
//
// Environment: ISSUER, A_PORT, B_PORT, A_ID, A_SECRET, B_ID, B_SECRET, USERNAME, PASSWORD,
// ROLE_ID (the role to pick), ENROLMENT_CODE (an administrator's one-time code for the first
// authenticator), CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import * as oidc from 'openid-client';
import * as jose from 'jose';
import { chromium } from 'playwright-core';
import { totp } from './totp.mjs';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const issuer = env('ISSUER');
const step = (s) => console.log(`ok - ${s}`);

const jwks = jose.createRemoteJWKSet(new URL(`${issuer}/oauth2/jwks`));

// One ICS app: /login, /callback, /, /logout, /backchannel-logout.
async function app(name, port, clientId, secret) {
  const base = `http://127.0.0.1:${port}`;
  const config = await oidc.discovery(
    new URL(issuer),
    clientId,
    { id_token_signed_response_alg: 'ES256' },
    oidc.ClientSecretBasic(secret),
    { execute: [oidc.allowInsecureRequests] },
  );
  const pending = new Map(); // state -> { verifier, nonce }
  const sessions = new Map(); // app cookie -> { claims, idToken }
  const logouts = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, base);
    // Cookies are not per port: each app on 127.0.0.1 needs its own cookie name.
    const cookie = (req.headers.cookie || '').match(new RegExp(`app${port}=([^;]+)`))?.[1];
    try {
      if (url.pathname === '/login') {
        const verifier = oidc.randomPKCECodeVerifier();
        const nonce = oidc.randomNonce();
        const state = oidc.randomState();
        pending.set(state, { verifier, nonce });
        const to = oidc.buildAuthorizationUrl(config, {
          redirect_uri: `${base}/callback`,
          scope: 'openid profile nationalrbacaccess selectedrole',
          code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
          code_challenge_method: 'S256',
          nonce,
          state,
        });
        res.writeHead(302, { location: to.toString() }).end();
      } else if (url.pathname === '/callback') {
        const state = url.searchParams.get('state');
        const p = pending.get(state);
        pending.delete(state);
        const t = await oidc.authorizationCodeGrant(config, url, {
          pkceCodeVerifier: p.verifier,
          expectedNonce: p.nonce,
          expectedState: state,
        });
        const id = crypto.randomUUID();
        sessions.set(id, { claims: t.claims(), idToken: t.id_token });
        res.writeHead(302, { location: '/', 'set-cookie': `app${port}=${id}; Path=/; HttpOnly` }).end();
      } else if (url.pathname === '/logout') {
        const s = sessions.get(cookie);
        const to = oidc.buildEndSessionUrl(config, { id_token_hint: s.idToken, post_logout_redirect_uri: `${base}/` });
        res.writeHead(302, { location: to.toString() }).end();
      } else if (url.pathname === '/backchannel-logout' && req.method === 'POST') {
        let body = '';
        for await (const chunk of req) body += chunk;
        const token = new URLSearchParams(body).get('logout_token');
        // OIDC Back-Channel Logout 1.0 §2.6: signature, iss, aud, typ, events, sid; no nonce.
        const { payload } = await jose.jwtVerify(token, jwks, { issuer, audience: clientId, typ: 'logout+jwt' });
        assert.ok(payload.events['http://schemas.openid.net/event/backchannel-logout']);
        assert.equal(payload.nonce, undefined);
        logouts.push(payload);
        for (const [k, s] of sessions) if (s.claims.sid === payload.sid) sessions.delete(k);
        res.writeHead(200).end();
      } else if (url.pathname === '/') {
        const s = sessions.get(cookie);
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end(
          s
            ? `<h1 id="who">${name}: signed in as ${s.claims.name} (role ${s.claims.selected_roleid}, ${s.claims.acr})</h1>`
            : `<h1 id="who">${name}: not signed in</h1>`,
        );
      } else {
        res.writeHead(404).end();
      }
    } catch (e) {
      console.error(`${name}: ${e.stack || e}`);
      res.writeHead(500).end(String(e));
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { base, server, logouts };
}

const a = await app('App A', env('A_PORT'), env('A_ID'), env('A_SECRET'));
const b = await app('App B', env('B_PORT'), env('B_ID'), env('B_SECRET'));
const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${a.base}/login`);
  assert.match(page.url(), /\/oauth2\/login\?req=/);
  assert.equal(await page.getAttribute('#username', 'autocomplete'), 'username');
  await page.fill('#username', env('USERNAME'));
  await page.fill('#password', 'not-the-password');
  await page.click('#sign-in');
  await page.waitForSelector('#error-summary');
  assert.match(await page.textContent('#error-summary'), /Incorrect username or password/);
  await page.fill('#password', env('PASSWORD'));
  await page.click('#sign-in');
  await page.waitForURL(/\/oauth2\/select-role/);
  await page.check(`input[value="${env('ROLE_ID')}"]`);
  await page.click('#continue');
  await page.waitForURL(`${a.base}/`);
  assert.match(await page.textContent('#who'), new RegExp(`signed in as .* \\(role ${env('ROLE_ID')}, AAL1\\)`));
  step('signed in to app A through the login page and chose a role');

  await page.goto(`${issuer}/account/totp`);
  const secret = (await page.textContent('#totp-secret')).trim();
  await page.fill('#code', totp(secret));
  // A first authenticator needs the administrator's one-time enrolment code: without it, the
  // page says so and nothing is enrolled.
  await page.fill('#enrolment_code', 'not-the-code');
  await page.click('#enrol');
  assert.match(await page.textContent('body'), /enrolment_code: not a current enrolment code/);
  await page.fill('#enrolment_code', env('ENROLMENT_CODE'));
  await page.fill('#code', totp(secret));
  await page.click('#enrol');
  await page.waitForSelector('#recovery-codes');
  const savedCodes = (await page.locator('#recovery-codes li').allTextContents()).map((c) => c.trim());
  assert.equal(savedCodes.length, 8);
  step('enrolled TOTP and was shown 8 recovery codes');

  await page.goto(`${b.base}/login`);
  assert.equal(page.url(), `${b.base}/`, 'no prompt: single sign-on');
  assert.match(await page.textContent('#who'), new RegExp(`App B: signed in as .* \\(role ${env('ROLE_ID')}`));
  step('app B signed in without a prompt');

  await page.goto(`${a.base}/logout`);
  await page.waitForURL(`${a.base}/`);
  assert.match(await page.textContent('#who'), /App A: not signed in/);
  assert.equal(a.logouts.length, 1);
  assert.equal(b.logouts.length, 1);
  await page.goto(`${b.base}/`);
  assert.match(await page.textContent('#who'), /App B: not signed in/, 'back-channel logout reached app B');
  step('logout of app A logged out of both apps over the back channel');

  await page.goto(`${b.base}/login`);
  assert.match(page.url(), /\/oauth2\/login\?req=/, 'a fresh sign-in is needed');
  await page.fill('#username', env('USERNAME'));
  await page.fill('#password', env('PASSWORD'));
  await page.click('#sign-in');
  await page.waitForURL(/\/oauth2\/login\/otp/);
  // The enrolment used this time step's code; a code is accepted once, so use the next
  // step's (accepted within the ±1 step drift window).
  await page.fill('#code', totp(secret, Date.now() + 30_000));
  await page.click('#verify');
  await page.waitForURL(/\/oauth2\/select-role/);
  await page.click('#continue');
  await page.waitForURL(`${b.base}/`);
  assert.match(await page.textContent('#who'), /App B: signed in as .*AAL2\)/);
  step('the next sign-in asked for the TOTP code and reached the higher assurance level');

  // A recovery code works once in place of the TOTP code.
  const signInWith = async (code) => {
    await page.goto(`${b.base}/logout`);
    await page.waitForURL(`${b.base}/`);
    await page.goto(`${b.base}/login`);
    await page.fill('#username', env('USERNAME'));
    await page.fill('#password', env('PASSWORD'));
    await page.click('#sign-in');
    await page.waitForURL(/\/oauth2\/login\/otp/);
    await page.fill('#code', code);
    await page.click('#verify');
    await page.waitForLoadState();
  };
  await signInWith(savedCodes[0]);
  await page.waitForURL(/\/oauth2\/select-role/);
  await page.click('#continue');
  await page.waitForURL(`${b.base}/`);
  assert.match(await page.textContent('#who'), /App B: signed in as/);
  await signInWith(savedCodes[0]);
  assert.match(await page.textContent('#error-summary'), /security code is not right/);
  step('a recovery code signs in once, and only once');
  console.log('browser: all checks passed');
} catch (e) {
  failed = true;
  console.error(e.stack || e);
} finally {
  await browser.close();
  a.server.close();
  b.server.close();
}
process.exit(failed ? 1 : 0);
