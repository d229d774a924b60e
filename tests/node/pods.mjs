// A GP signs in, in headless Chromium (Debian's, through playwright-core), on identity's login
// pages served by identity's pod, for a relying party that is panva's openid-client; then reads
// a demo patient's record from the records pod with the token it got. Run by
// tests/python/install_checks.py against the chart installed on the single-node cluster.
//
// Environment: ISSUER (identity's external NodePort Service: the issuer the chart was installed
// with), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI (a client of the demo and one of its redirect
// URIs), USERNAME, PASSWORD (the demo GP), STAFF_TOTP (the demo staff's TOTP secrets), RECORDS
// (records' FHIR base through its Service), NHS (a demo patient's NHS number), CHROMIUM.
// Prints "pods: GP read <n> resources" and exits non-zero on the first failed check.
import assert from 'node:assert/strict';
import * as oidc from 'openid-client';
import { chromium } from 'playwright-core';
import { codesNow, staffSecret } from './totp.mjs';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const issuer = env('ISSUER');
const redirect = env('REDIRECT_URI');
const step = (s) => console.log(`ok - ${s}`);

const config = await oidc.discovery(
  new URL(issuer),
  env('CLIENT_ID'),
  { id_token_signed_response_alg: 'ES256' },
  oidc.ClientSecretBasic(env('CLIENT_SECRET')),
  { execute: [oidc.allowInsecureRequests] },
);
assert.equal(config.serverMetadata().issuer, issuer);
step('discovery from the identity pod');

const verifier = oidc.randomPKCECodeVerifier();
const nonce = oidc.randomNonce();
const state = oidc.randomState();
const authUrl = oidc.buildAuthorizationUrl(config, {
  redirect_uri: redirect,
  scope: 'openid profile nationalrbacaccess selectedrole',
  code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  nonce,
  state,
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
let back;
try {
  const page = await browser.newPage();
  // Back at the relying party's redirect URI with the code: this script is that relying party,
  // so it takes the URL from the browser's request (the address serves no page of ours).
  const arrived = page.waitForRequest((r) => r.url().startsWith(redirect), { timeout: 30_000 });
  arrived.catch(() => {});
  await page.goto(authUrl.toString());
  await page.fill('#username', env('USERNAME'));
  await page.fill('#password', env('PASSWORD'));
  await page.click('#sign-in');
  // The security code from the GP's authenticator app (identity takes each 30 s step once per
  // person, so the next step's code is tried if this one was used).
  for (const code of codesNow(staffSecret(env('USERNAME')))) {
    await page.waitForSelector('#code');
    await page.fill('#code', code);
    const answered = page.waitForResponse((r) => r.url().includes('/oauth2/login/otp') && r.request().method() === 'POST');
    await page.click('#verify');
    const r = await answered;
    if (r.status() === 303) break;
  }
  back = new URL((await arrived).url());
} finally {
  await browser.close();
}
step('the GP signed in through the login pages (password and security code)');

const tokens = await oidc.authorizationCodeGrant(config, back, {
  pkceCodeVerifier: verifier,
  expectedNonce: nonce,
  expectedState: state,
});
const claims = tokens.claims();
assert.equal(claims.sub.length > 0, true);
assert.ok(claims.acr === 'AAL2' || claims.acr === undefined, `staff sign in at AAL2: ${claims.acr}`);
step(`tokens for ${claims.name ?? claims.sub}`);

const read = async (path) => {
  const r = await fetch(`${env('RECORDS')}/${path}`, { headers: { authorization: `Bearer ${tokens.access_token}` } });
  const body = await r.text();
  assert.equal(r.status, 200, `${path}: ${r.status} ${body.slice(0, 300)}`);
  return JSON.parse(body);
};
const found = await read(`Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|${env('NHS')}`);
const patients = (found.entry || []).filter((e) => e.resource.resourceType === 'Patient');
assert.equal(patients.length, 1, `one Patient for ${env('NHS')}: ${JSON.stringify(found).slice(0, 300)}`);
const everything = await read(`Patient/${patients[0].resource.id}/$everything`);
const resources = (everything.entry || []).map((e) => e.resource);
const types = new Set(resources.map((r) => r.resourceType));
assert.ok(resources.length > 5 && types.size > 3, `the demo record: ${[...types].join(', ')}`);
step(`the GP read the patient's record from the records pod: ${[...types].sort().join(', ')}`);
console.log(`pods: GP read ${resources.length} resources`);
