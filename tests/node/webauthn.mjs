// Headless Chromium (Debian's, driven by playwright-core) adds a passkey on identity's account
// page and signs in with it, through Chromium's virtual authenticator over the DevTools
// protocol (the same WebAuthn code path a platform authenticator or a USB key takes).
//
// The journey: a new member of staff signs in with a password; adds a key — refused without a
// name, refused without the administrator's enrolment code, then added with it and shown 8
// recovery codes; signs in again asking for AAL2: the code page offers the key; a tampered
// answer is refused and named; the real one signs in, and replaying it is refused.
//
// Environment: ISSUER (a domain name: http://localhost:PORT), USERNAME, PASSWORD,
// ENROLMENT_CODE, AUTH_URL_PASSWORD (an authorization URL without acr_values), AUTH_URL_AAL2
// (one with acr_values=AAL2 and prompt=login), REDIRECT (the app's redirect URI, answered here),
// CHROMIUM (default /usr/bin/chromium). Prints `redirect <url>` for the test to redeem.
import assert from 'node:assert/strict';
import http from 'node:http';
import { chromium } from 'playwright-core';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const issuer = env('ISSUER');
const redirect = env('REDIRECT');
const step = (s) => console.log(`ok - ${s}`);

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
// The app: its redirect URI answers, and keeps the URL it was given (the test redeems the code).
const arrivals = [];
const app = http.createServer((req, res) => {
  const url = new URL(req.url, redirect);
  if (url.pathname === new URL(redirect).pathname) arrivals.push(url.href); // not /favicon.ico
  res.writeHead(200, { 'content-type': 'text/plain' }).end('signed in');
});
await new Promise((r) => app.listen(Number(new URL(redirect).port), '127.0.0.1', r));
let failed = false;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });

  const password = async (authUrl) => {
    await page.goto(authUrl);
    assert.match(page.url(), /\/oauth2\/login\?req=/);
    await page.fill('#username', env('USERNAME'));
    await page.fill('#password', env('PASSWORD'));
    await page.click('#sign-in');
  };
  await password(env('AUTH_URL_PASSWORD'));
  await page.waitForURL((u) => u.href.startsWith(redirect));
  step('signed in with a password (no second factor yet)');

  await page.goto(`${issuer}/account/security-keys`);
  assert.match(await page.textContent('#no-keys'), /not added a passkey/);
  const addKey = async (name, enrolment) => {
    await page.fill('#key-name', name);
    await page.fill('#enrolment_code', enrolment);
    await page.click('#add-key-button');
  };
  await addKey('', env('ENROLMENT_CODE'));
  await page.waitForSelector('#key-error:not([hidden])');
  assert.match(await page.textContent('#key-error'), /^name: give the key a name/);
  await addKey('Work laptop', 'not-the-code');
  await page.waitForFunction(() => /enrolment_code/.test(document.getElementById('key-error').textContent));
  assert.match(await page.textContent('#key-error'), /^enrolment_code: not a current enrolment code for you/);
  let stored = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  await page.reload();
  assert.ok(await page.isVisible('#no-keys'), 'a refused key is not stored');
  await addKey('Work laptop', env('ENROLMENT_CODE'));
  await page.waitForSelector('#recovery:not([hidden])');
  const codes = (await page.locator('#recovery-codes li').allTextContents()).map((c) => c.trim());
  assert.equal(codes.length, 8, 'a first factor comes with recovery codes');
  stored = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  assert.ok(stored.length >= 1 && stored.every((c) => c.rpId === 'localhost'), JSON.stringify(stored));
  await page.reload();
  assert.match(await page.textContent('#keys'), /Work laptop.*added .*not used yet/);
  step('added a passkey (after a missing name and a wrong enrolment code were refused, by field) and saw 8 recovery codes');

  // AAL2 and a fresh login: password, then the key.
  await password(env('AUTH_URL_AAL2'));
  await page.waitForURL(/\/oauth2\/login\/otp/);
  assert.ok(await page.isVisible('#use-key'), 'the code page offers the key');
  // First answer tampered with (one bit of its signature): refused, named, and nothing signed in.
  let tamper = true;
  let replay;
  await page.route('**/oauth2/login/key', async (route) => {
    const body = JSON.parse(route.request().postData());
    if (tamper) {
      tamper = false;
      const sig = body.credential.response.signature;
      body.credential.response.signature = sig.slice(0, 10) + (sig[10] === 'A' ? 'B' : 'A') + sig.slice(11);
      return route.continue({ postData: JSON.stringify(body) });
    }
    // The real answer goes through; then the same answer is sent again.
    const first = await route.fetch();
    const again = await route.fetch();
    replay = { status: again.status(), body: await again.json() };
    return route.fulfill({ response: first });
  });
  await page.click('#use-key');
  await page.waitForSelector('#key-error:not([hidden])');
  assert.match(await page.textContent('#key-error'), /^credential: the key's answer is not valid/);
  assert.equal(arrivals.length, 1, 'a tampered answer signs nobody in');
  step('a tampered answer was refused with a reason');
  await page.click('#use-key');
  await page.waitForURL((u) => u.href.startsWith(redirect));
  assert.equal(arrivals.length, 2);
  assert.equal(replay.status, 401, JSON.stringify(replay));
  assert.match(replay.body.error, /^credential: no sign-in with a key is in progress/);
  step('signed in with the passkey; the same answer sent again was refused');
  await page.goto(`${issuer}/account/security-keys`);
  assert.match(await page.textContent('#keys'), /Work laptop.*last used/);
  console.log(`redirect ${arrivals[1]}`);
  console.log('webauthn: all checks passed');
} catch (e) {
  failed = true;
  console.error(e.stack || e);
} finally {
  await browser.close();
  app.close();
}
process.exit(failed ? 1 : 0);
