// Headless Chromium (Debian's, driven by playwright-core) through Sharedcare's web: the
// clinician portal, the patient's passport pages, the sample ICS app and the NHS App path.
// Every page visited is checked with axe-core (WCAG 2.0/2.1/2.2 A and AA rules: no serious or
// critical violation) and saved as a screenshot; a Content-Security-Policy violation reported
// by the browser fails the run.
//
// The journey (the eight):
//  1. the demo GP signs in and opens a patient;
//  2. the GP sees a withheld section marked as withheld;
//  3. the GP breaks the glass for another patient, giving a reason;
//  4. that patient signs in and sees both accesses in their log, each marked verified;
//  5. a patient withholds a category, sees it at once, a second patient withholds the same one
//     (her own choice, also seen at once) and the GP's next view no longer shows it;
//  6. the sample app opens without a password prompt;
//  7. logging out of the portal logs out of the sample app;
//  8. with the NHS App's user agent and assertedLoginIdentity, a patient lands signed in with no
//     site header.
//
// Environment: BASE, SAMPLE, UPSTREAM (the fake NHS login), MARGARET_NHS, NOOR_NHS, NOOR_USER,
// NOOR_PASS, PSY_TEXT, SEX_TEXT, SHOTS (screenshot directory), STAFF_TOTP (the demo staff's TOTP
// secrets), CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { cells, signIn } from './signin.mjs';

const require = createRequire(import.meta.url);
const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env('BASE');
const sample = env('SAMPLE');
const upstream = env('UPSTREAM');
const shots = env('SHOTS');
fs.mkdirSync(shots, { recursive: true });
const step = (s) => console.log(`ok - ${s}`);
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const cspViolations = [];
function watch(page) {
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(`${page.url()}: ${m.text()}`);
  });
  return page;
}

// axe-core on the page as it is (evaluated through the DevTools protocol, which the page's CSP
// does not govern), then a full-page screenshot. Fails on any serious or critical violation.
const checked = [];
async function check(page, name) {
  await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] },
      resultTypes: ['violations'],
    });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `${name} (${page.url()}): axe found ${JSON.stringify(bad, null, 1)}`);
  checked.push(name);
}

const text = (page) => page.textContent('body');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
try {
  // 1. The demo GP signs in and opens a patient.
  const gpContext = await browser.newContext();
  const gp = watch(await gpContext.newPage());
  const gpUrls = [];
  // Every navigation request, redirect hops included.
  gp.on('request', (r) => r.isNavigationRequest() && gpUrls.push(r.url()));
  await gp.goto(`${base}/`);
  await check(gp, '00-start');
  await gp.goto(`${base}/portal/`);
  await check(gp, '01-portal-signed-out');
  await gp.click('#sign-in');
  await gp.waitForSelector('#username');
  await check(gp, '02-identity-login');
  await signIn(gp, 'gp', 'demo-gp-password');
  await gp.waitForSelector('#nhs_number');
  assert.equal(new URL(gp.url()).pathname, '/portal/');
  assert.match(await gp.textContent('#signed-in-as'), /Amara Okafor/);
  const cookies = await gpContext.cookies(base);
  const session = cookies.find((c) => c.name === '__Host-sc-portal');
  assert.ok(session, `the portal's session cookie: ${JSON.stringify(cookies.map((c) => c.name))}`);
  assert.ok(session.secure && session.httpOnly && session.sameSite === 'Lax', JSON.stringify(session));
  await check(gp, '03-find-patient');
  // Security: headers on every page, CSRF on every form, the callback single-use, logout
  // tokens checked, no open redirect.
  const home = await gp.goto(`${base}/portal/`);
  const h = home.headers();
  assert.match(h['content-security-policy'], /script-src 'self'/);
  assert.match(h['content-security-policy'], /frame-ancestors 'none'/);
  assert.ok(!/unsafe-inline/.test(h['content-security-policy']), h['content-security-policy']);
  assert.equal(h['x-content-type-options'], 'nosniff');
  assert.equal(h['referrer-policy'], 'no-referrer');
  assert.equal(h['cache-control'], 'no-store');
  assert.equal(h['strict-transport-security'], undefined, 'no HSTS over http');
  const forged = await gpContext.request.post(`${base}/portal/search`, { form: { nhs_number: env('MARGARET_NHS') }, maxRedirects: 0 });
  assert.equal(forged.status(), 403, 'a form without the CSRF token is refused');
  assert.match(await forged.text(), /did not come from this site/);
  const callback = gpUrls.find((u) => u.includes('/portal/callback'));
  const replay = await gpContext.request.get(callback, { maxRedirects: 0 });
  assert.equal(replay.status(), 400, 'a callback is used once');
  assert.match(await replay.text(), /state: this sign-in has expired or was already used/);
  const badLogout = await gpContext.request.post(`${base}/portal/backchannel-logout`, { form: { logout_token: 'e30.e30.c2ln' } });
  assert.equal(badLogout.status(), 400, 'a forged logout token is refused');
  await gp.goto(`${base}/portal/login?return_to=//evil.example/steal`);
  await gp.waitForSelector('#nhs_number');
  assert.equal(new URL(gp.url()).host, new URL(base).host, 'no open redirect');
  const wrongArea = await gp.goto(`${base}/passport/`);
  assert.equal(wrongArea.status(), 403, 'staff are sent to the portal, not shown the passport pages');
  await gp.goto(`${base}/portal/`);
  // Bad input: an NHS number that fails its check digit is named, nothing opened.
  await gp.fill('#nhs_number', '9434765918');
  await gp.click('#search');
  await gp.waitForSelector('.nhsuk-error-summary');
  assert.match(await gp.textContent('.nhsuk-error-summary'), /valid NHS number/);
  assert.equal(await gp.getAttribute('.nhsuk-error-summary a', 'href'), '#nhs_number');
  await check(gp, '04-find-patient-error');
  // By name and date of birth.
  await gp.fill('#nhs_number', '');
  await gp.fill('#family', 'Evans');
  // NHS.UK's date input: a wrong date is named, linked to its first box, and the title says Error.
  await gp.fill('#birthdate-day', '31');
  await gp.fill('#birthdate-month', '2');
  await gp.fill('#birthdate-year', '1941');
  await gp.click('#search');
  await gp.waitForSelector('.nhsuk-error-summary');
  assert.match(await gp.textContent('.nhsuk-error-summary'), /Date of birth must be a real date/);
  assert.equal(await gp.getAttribute('.nhsuk-error-summary a', 'href'), '#birthdate-day');
  assert.match(await gp.title(), /^Error: /);
  await gp.fill('#birthdate-day', '12');
  await gp.fill('#birthdate-month', '3');
  await gp.fill('#birthdate-year', '1941');
  await gp.click('#search');
  await gp.waitForSelector('#results');
  assert.equal(
    await gp.locator('#results tbody tr').count(),
    1,
    'one row for Margaret, though the practice and the hospital each hold a Patient for her',
  );
  await check(gp, '05-search-results');
  await gp.click('text=Margaret Evans');
  await gp.waitForSelector('#patient-name');
  assert.equal((await gp.textContent('#patient-name')).trim(), 'Margaret Evans');
  const margaretPage = gp.url();
  assert.ok(!margaretPage.includes(env('MARGARET_NHS')), `no NHS number in the URL: ${margaretPage}`);
  for (const u of gpUrls) assert.ok(!u.includes(env('MARGARET_NHS')), `no NHS number in any URL: ${u}`);
  step('the GP signs in once and opens a patient (by name and date of birth; no NHS number in any URL)');

  // 2. A withheld section is marked as withheld, and shows nothing of what is withheld.
  assert.ok(await gp.isVisible('#some-withheld'));
  assert.ok((await gp.locator('strong.nhsuk-tag', { hasText: 'Withheld' }).count()) >= 1);
  const gpView = await text(gp);
  assert.ok(!gpView.includes(env('SEX_TEXT')), 'the withheld entry is not shown');
  assert.ok(gpView.includes(env('PSY_TEXT')), 'the mental health entry is shown (for now)');
  assert.ok(await gp.isVisible('#care-team'));
  await check(gp, '06-summary-withheld');
  await gp.click('text=History >> nth=0');
  await gp.waitForSelector('#versions');
  await check(gp, '07-history');
  step('the GP sees a withheld section marked as withheld');

  // 3. Break glass for a patient with no care relationship to the GP's practice.
  await gp.goto(`${base}/portal/`);
  await gp.fill('#nhs_number', env('NOOR_NHS'));
  await gp.click('#search');
  await gp.waitForSelector('#refusal');
  assert.match(await text(gp), /logged and reviewed/);
  await check(gp, '08-no-relationship');
  await gp.click('#break-glass');
  await gp.waitForSelector('.nhsuk-error-summary');
  const errors = await gp.textContent('.nhsuk-error-summary');
  assert.match(errors, /Choose why/);
  assert.match(errors, /at least 10 characters/);
  await check(gp, '09-break-glass-errors');
  await gp.check('#reason-0');
  await gp.fill('#reason_text', 'Brought in unconscious after a fall at home');
  await gp.click('#break-glass');
  await gp.waitForSelector('#patient-name');
  assert.ok(await gp.isVisible('#break-glass-active'));
  await check(gp, '10-break-glass-view');
  step('the GP breaks the glass for another patient, giving a reason');

  // 4. That patient signs in and sees both accesses, each verified; the break-glass notice.
  const noorContext = await browser.newContext();
  const noor = watch(await noorContext.newPage());
  await noor.goto(`${base}/passport/`);
  await check(noor, '11-passport-signed-out');
  await noor.click('#sign-in');
  await signIn(noor, env('NOOR_USER'), env('NOOR_PASS'));
  await noor.waitForSelector('#link-record');
  assert.ok(await noor.isVisible('#break-glass-notice'), 'the break-glass notice is at the top');
  assert.match(await noor.textContent('#break-glass-notice'), /A member of staff at Riverside Medical Practice/);
  await check(noor, '12-passport-notice');
  let rows = [];
  for (let i = 0; i < 40; i++) {
    await noor.goto(`${base}/passport/access-log`);
    // Columns: when, who, what, why, outcome, checked.
    rows = await cells(noor, 'tr.sc-access');
    const gpRows = rows.filter((r) => r[1] === 'Riverside Medical Practice');
    if (gpRows.some((r) => r[2] === 'Looked at your record' && r[4] === 'Refused') && gpRows.some((r) => r[2] === 'Looked at your record' && r[3].startsWith('Emergency access') && r[4] === 'Done')) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  // Organisations by name, from identity's directory (A81001 is the GP practice).
  const gpRows = rows.filter((r) => r[1] === 'Riverside Medical Practice');
  assert.ok(gpRows.some((r) => r[2] === 'Looked at your record' && r[4] === 'Refused'), `the refused look: ${JSON.stringify(rows)}`);
  assert.ok(gpRows.some((r) => r[2] === 'Looked at your record' && r[3].startsWith('Emergency access') && r[4] === 'Done'), `the break-glass look: ${JSON.stringify(rows)}`);
  assert.ok(gpRows.some((r) => r[2] === 'Used emergency access' && r[4] === 'Granted'), `the grant itself: ${JSON.stringify(rows)}`);
  for (const r of rows) assert.equal(r[5], 'Verified in the audit log', JSON.stringify(r));
  await check(noor, '13-access-log');
  await noor.goto(`${base}/passport/`);
  await noor.click('#notice-seen');
  await noor.waitForSelector('#link-record');
  assert.ok(!(await noor.isVisible('#break-glass-notice')), 'the notice is gone once seen');
  step(`the patient sees both accesses (${rows.length} entries), each verified; the notice until seen`);

  // Information governance reviews the break-glass; the GP may not see the queue.
  const notIg = await gp.goto(`${base}/portal/reviews`);
  assert.equal(notIg.status(), 403, 'the review queue is for information governance');
  const igContext = await browser.newContext();
  const ig = watch(await igContext.newPage());
  await ig.goto(`${base}/portal/reviews`);
  await signIn(ig, 'icsadmin', 'demo-icsadmin-password');
  await ig.waitForSelector('h1');
  const spaced = env('NOOR_NHS').replace(/^(\d{3})(\d{3})(\d{4})$/, '$1 $2 $3');
  assert.ok((await text(ig)).includes(spaced), 'the grant is in the queue');
  assert.match(await text(ig), /Brought in unconscious/);
  await check(ig, '14-review-queue');
  const card = ig.locator('.nhsuk-card', { hasText: spaced });
  await card.locator('textarea').fill('Appropriate: the patient arrived unconscious in A&E');
  await card.locator('button').click();
  await ig.waitForSelector('h1');
  assert.ok(!(await text(ig)).includes(spaced), 'reviewed grants leave the queue');
  step('information governance reviews the break-glass; the GP cannot open the queue');

  // 5. Margaret stops sharing mental health; the GP's next view no longer shows it.
  const mContext = await browser.newContext();
  const margaret = watch(await mContext.newPage());
  await margaret.goto(`${base}/passport/sharing`);
  await signIn(margaret, 'patient1', 'demo-patient1-password');
  await margaret.waitForSelector('#withhold');
  assert.match(await margaret.textContent('#opt-out'), /opted out|not opted out/);
  await check(margaret, '15-sharing');
  await margaret.click('#withhold');
  await margaret.waitForSelector('.nhsuk-error-summary');
  assert.match(await margaret.textContent('.nhsuk-error-summary'), /Choose the kind/);
  await margaret.check('input[value=PSY]');
  await margaret.click('#withhold');
  await margaret.waitForSelector('#withhold');
  // The page she lands on already shows her choice: no reload, no waiting.
  assert.match(await margaret.textContent('#directives'), /psychiatry/i, 'her choice is shown at once');
  await check(margaret, '16-sharing-withheld');
  // A second patient withholding the same category gets her own choice, shown at once (ids
  // are consent's, never shared between patients).
  await noor.goto(`${base}/passport/sharing`);
  await noor.waitForSelector('#withhold');
  await noor.check('input[value=PSY]');
  await noor.click('#withhold');
  await noor.waitForSelector('#withhold');
  assert.ok(!(await noor.isVisible('.nhsuk-error-summary')), `no error for the second patient: ${await text(noor)}`);
  assert.match(await noor.textContent('#directives'), /psychiatry/i, "Noor's choice is shown at once");
  // And she can share it again, which leaves Margaret's choice alone.
  await noor.click('#directives button');
  await noor.waitForSelector('#withhold');
  assert.ok(await noor.isVisible('#no-directives'), `Noor shares it again: ${await text(noor)}`);
  await margaret.goto(`${base}/passport/sharing`);
  assert.match(await margaret.textContent('#directives'), /psychiatry/i, "Margaret's choice stands");
  await margaret.goto(`${base}/passport/record`);
  await check(margaret, '17-record');
  await margaret.goto(`${base}/passport/record/problems`);
  assert.ok((await text(margaret)).includes(env('PSY_TEXT')), 'she still sees it herself');
  await check(margaret, '18-record-section');
  await gp.goto(margaretPage);
  await gp.waitForSelector('#patient-name');
  assert.ok(!(await text(gp)).includes(env('PSY_TEXT')), "the GP's next view leaves it out");
  step("a patient withholds a category and the GP's next view no longer shows it");

  // A patient proved only to P5 is told what is needed.
  const tomContext = await browser.newContext();
  const tom = watch(await tomContext.newPage());
  await tom.goto(`${base}/passport/`);
  await tom.click('#sign-in');
  await signIn(tom, 'patient4', 'demo-patient4-password');
  await tom.waitForSelector('#proofing-needed');
  assert.match(await tom.textContent('#proofing-needed'), /P9/);
  await check(tom, '19-proofing-p5');
  const portalForPatient = await tom.goto(`${base}/portal/`);
  assert.equal(portalForPatient.status(), 403, 'patients are not shown the staff portal');
  step('a patient at P5 is told P9 is needed; patients and staff each kept to their own pages');

  // 6. The sample app: no password prompt for someone signed in to the portal.
  await gp.goto(`${sample}/`);
  await gp.waitForSelector('#signed-out');
  await check(gp, '20-sample-signed-out');
  const before = gpUrls.length;
  await gp.click('#sign-in');
  await gp.waitForSelector('#signed-in');
  assert.match(await gp.textContent('#signed-in'), /Amara Okafor/);
  const hops = gpUrls.slice(before);
  assert.ok(!hops.some((u) => u.includes('/oauth2/login')), `no login page on the way: ${hops.join(' → ')}`);
  await check(gp, '21-sample-signed-in');
  step('the sample app opens without a password prompt');

  // 7. Logging out of the portal logs out of the sample app (back-channel logout).
  await gp.goto(`${base}/portal/`);
  await gp.click('#sign-out');
  await gp.waitForSelector('#sign-in');
  assert.equal(new URL(gp.url()).pathname, '/portal/');
  await gp.goto(`${sample}/`);
  await gp.waitForSelector('#signed-out');
  await gp.goto(margaretPage);
  await gp.waitForSelector('#username');
  step('logging out of the portal logs out of the sample app and of identity');

  // 8. The NHS App: signed in to NHS login there, the passport opens signed in, no header.
  const appContext = await browser.newContext({
    userAgent: 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36 nhsapp-android/3.12.0',
    viewport: { width: 390, height: 844 },
    isMobile: true,
  });
  const app = watch(await appContext.newPage());
  await app.goto(`${upstream}/passport/login`);
  await signIn(app, 'patient1', 'demo-patient1-password');
  await app.waitForSelector('#link-record');
  const appUrls = [];
  app.on('request', (r) => r.isNavigationRequest() && appUrls.push(r.url()));
  await app.goto(`${base}/passport/record/medications?assertedLoginIdentity=eyJhbGciOiJSUzUxMiJ9.e30.c2ln`);
  await app.waitForSelector('h1');
  assert.equal(new URL(app.url()).pathname, '/passport/record/medications', appUrls.join(' → '));
  assert.equal((await app.textContent('h1')).trim(), 'Medicines');
  assert.equal(await app.locator('header.nhsuk-header').count(), 0, 'no site header in the NHS App');
  assert.equal(await app.locator('footer').count(), 0, 'no site footer in the NHS App');
  assert.ok(!appUrls.some((u) => u.includes('/oauth2/login')), `no login page: ${appUrls.join(' → ')}`);
  await check(app, '22-nhs-app-deep-link');
  step('with the NHS App user agent and assertedLoginIdentity the patient lands signed in, with no site header');

  assert.deepEqual(cspViolations, [], 'no Content-Security-Policy violations');
  console.log(`axe: ${checked.length} pages, no serious or critical violations`);
  console.log('portal: all checks passed');
} finally {
  await browser.close();
}
