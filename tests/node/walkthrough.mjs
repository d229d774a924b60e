// The README's "Run it" walk-through, followed literally in headless Chromium against `up` as
// it ships (the demo ICS and its clinical record). Everything a person would type or expect to
// see comes from the README itself: the user names and passwords after "sign in as", the GP's
// TOTP secret, the NHS numbers after "NHS number", the patient's name after "Find", and every
// *italic* item of a step, which must be on the page that step reaches. Change the README and
// this follows it, or fails where the README is no longer true.
//
// Environment: BASE (up's HTTP base URL), README (path to README.md), STAFF_TOTP (the demo
// staff's TOTP secrets, as `sharedcare demo` prints them), CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { chromium } from 'playwright-core';
import { signIn } from './signin.mjs';
import { staffSecret } from './totp.mjs';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env('BASE');
const step = (s) => console.log(`ok - ${s}`);

// ---- reading the README ----------------------------------------------------------------------
const readme = fs.readFileSync(env('README'), 'utf8');
const runIt = readme.slice(readme.indexOf('## Run it'), readme.indexOf('\n## ', readme.indexOf('## Run it') + 5));
assert.ok(runIt.length > 100, 'the README has a "Run it" section');
const squash = (s) => s.replace(/\s+/g, ' ').trim();
// Top-level bullets of the section, one string each (continuation lines joined).
const bullets = runIt.split(/\n(?=- )/).map(squash);
function bullet(marker) {
  const b = bullets.find((x) => x.startsWith(`- ${marker}`));
  assert.ok(b, `the README's walk-through has a step starting ${marker}`);
  return b;
}
const signIns = (b) => [...b.matchAll(/`([a-z0-9]+)` \/ `([^`]+)`/g)].map((m) => ({ user: m[1], password: m[2] }));
const nhsNumber = (b) => {
  const m = b.match(/NHS number `([\d ]{10,12})`/);
  assert.ok(m, `an NHS number in: ${b}`);
  return m[1].replace(/ /g, '');
};
// *italic* items (not **bold**).
const italics = (b) => [...b.matchAll(/(?<![*\w])\*(?!\*)([^*]+?)\*(?![*\w])/g)].map((m) => squash(m[1]));

// ---- the browser -----------------------------------------------------------------------------
const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});

// The page's text, normalised as the README's is.
const bodyText = async (page) => squash(await page.textContent('body'));

// Reloads `page` until it shows every item (the passport's read model follows the record by
// events, within a second or two of a write), then says which are missing.
async function shows(page, items, what) {
  let missing = items;
  for (let i = 0; i < 20; i++) {
    const text = await bodyText(page);
    missing = items.filter((x) => !text.includes(x));
    if (missing.length === 0) return;
    await new Promise((r) => setTimeout(r, 500));
    await page.reload();
  }
  assert.deepEqual(missing, [], `${what} should show ${JSON.stringify(missing)}: ${await bodyText(page)}`);
}

let failed = false;
try {
  // 1. The GP finds the patient the README names, by the NHS number it gives.
  const portal = bullet('**`/portal/`**');
  const [gpLogin] = signIns(portal);
  const gpSecret = portal.match(/TOTP secret \(`([A-Z2-7]+)`/)?.[1];
  assert.equal(gpSecret, staffSecret(gpLogin.user), "the README's TOTP secret is the GP's");
  const name = portal.match(/Find ([A-Z][a-z]+ [A-Z][a-z]+) by NHS number/)?.[1];
  assert.ok(name, 'the README names the patient to find');
  const gp = await (await browser.newContext()).newPage();
  await gp.goto(`${base}/portal/`);
  await gp.click('#sign-in');
  await signIn(gp, gpLogin.user, gpLogin.password, gpSecret);
  await gp.waitForSelector('#nhs_number');
  await gp.fill('#nhs_number', nhsNumber(portal));
  await gp.click('#search');
  await gp.waitForSelector('#patient-name');
  assert.equal(squash(await gp.textContent('#patient-name')), name);
  const gpSees = italics(portal);
  assert.ok(gpSees.length >= 5, `the README says what the GP sees: ${gpSees}`);
  await shows(gp, gpSees, `the GP's summary of ${name}`);
  assert.ok(await gp.isVisible('strong.nhsuk-tag >> text=Withheld'), 'a section is marked Withheld');
  step(`${gpLogin.user} finds ${name} and sees ${gpSees.length} things the README promises`);

  // 2. Break-glass: refused, a reason, the record; then the review queue.
  const glass = bullet('Break-glass:');
  const [careLogin, igLogin] = signIns(glass);
  const [careSees, ...igSees] = italics(glass);
  const cw = await (await browser.newContext()).newPage();
  await cw.goto(`${base}/portal/`);
  await cw.click('#sign-in');
  await signIn(cw, careLogin.user, careLogin.password);
  await cw.waitForSelector('#nhs_number');
  await cw.fill('#nhs_number', nhsNumber(glass));
  await cw.click('#search');
  await cw.waitForSelector('#refusal');
  await cw.check('#reason-0');
  await cw.fill('#reason_text', 'Found short of breath on a first visit; no records at hand');
  await cw.click('#break-glass');
  await cw.waitForSelector('#patient-name');
  await shows(cw, [careSees], 'the record opened under break-glass');
  step(`${careLogin.user} is refused, breaks the glass with a reason and sees the record`);
  const ig = await (await browser.newContext()).newPage();
  const queue = glass.match(/review queue at `([^`]+)`/)?.[1];
  assert.ok(queue, 'the README says where the review queue is');
  await ig.goto(`${base}${queue}`);
  await signIn(ig, igLogin.user, igLogin.password);
  await ig.waitForSelector('h1');
  await shows(ig, igSees, 'the review queue');
  const card = ig.locator('.nhsuk-card', { hasText: igSees[0] });
  // What she opened, from the audit log: at least the record she opened under the grant.
  const opened = await card.locator('.sc-opened li').allTextContents();
  assert.ok(opened.some((o) => / – (read|search) – .* – success$/.test(squash(o))), `what she opened: ${JSON.stringify(opened)}`);
  assert.ok((await card.textContent('dl')).includes('The patient is unconscious or cannot communicate'), 'the reason in words');
  await card.locator('textarea').fill('Appropriate: first visit before the care relationship was recorded');
  await card.locator('button').click();
  await ig.waitForSelector('h1');
  assert.ok(!(await bodyText(ig)).includes(igSees[0]), 'a reviewed grant leaves the queue');
  step(`${igLogin.user} finds the grant naming ${igSees.join(', ')} and reviews it`);

  // 3. The patient's own pages.
  const passport = bullet('**`/passport/`**');
  const [patientLogin] = signIns(passport);
  const own = await (await browser.newContext()).newPage();
  await own.goto(`${base}/passport/`);
  await own.click('#sign-in');
  await signIn(own, patientLogin.user, patientLogin.password);
  await own.waitForSelector('#link-record');
  await own.click('#link-record');
  await own.waitForSelector('h1');
  const sections = await own.$$eval('main a[href^="/passport/record/"]', (as) => as.map((a) => a.getAttribute('href')));
  assert.ok(sections.length >= 5, `her record by section: ${sections}`);
  const seen = [];
  for (const href of sections) {
    await own.goto(`${base}${href}`);
    seen.push(await bodyText(own));
  }
  for (const item of italics(passport)) {
    assert.ok(seen.some((t) => t.includes(item)), `${patientLogin.user} sees ${item} in a section of her record`);
  }
  step(`${patientLogin.user} sees her record by section, including ${italics(passport).join(', ')}`);
  console.log('walkthrough: all checks passed');
} catch (e) {
  failed = true;
  console.error(e.stack || e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
