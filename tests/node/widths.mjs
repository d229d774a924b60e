// Every page on a phone: at 320 px and 390 px wide (a small and a common phone), as staff and
// as a patient, with and without the NHS App's user agent, on `up` as it ships (the demo's full
// records and their long access logs), no page may scroll sideways. The check is the document's
// own: `scrollingElement.scrollWidth <= documentElement.clientWidth`. (Not `innerWidth`: an
// emulated phone grows its layout viewport to fit wide content, so a check against it cannot
// fail.)
//
// Environment: BASE (up's HTTP base URL), MARGARET_NHS, DAVID_NHS, STAFF_TOTP (the demo staff's
// TOTP secrets), CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { signIn } from './signin.mjs';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env('BASE');
const NHS_APP = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 nhsapp-ios/3.12.0';

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});

const wide = [];
let checked = 0;
// How far `page` scrolls sideways at its current URL (0 = not at all).
async function overflow(page) {
  return page.evaluate(() => document.scrollingElement.scrollWidth - document.documentElement.clientWidth);
}
async function check(page, label) {
  await page.waitForLoadState('load');
  const extra = await overflow(page);
  checked += 1;
  if (extra > 0) {
    // Name what sticks out, so the failure says where to look.
    const culprits = await page.evaluate((w) => [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > w + 1)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}${e.className && typeof e.className === 'string' ? `.${e.className.split(' ').join('.')}` : ''}`), await page.evaluate(() => document.documentElement.clientWidth));
    wide.push(`${label} ${page.url()}: ${extra}px too wide (${culprits.join(', ')})`);
  }
}

async function phone(width, nhsApp) {
  return browser.newContext({
    viewport: { width, height: 800 },
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
    ...(nhsApp ? { userAgent: NHS_APP } : {}),
  });
}

try {
  for (const width of [320, 390]) {
    // Staff: the GP's pages, the care worker's refusal and break-glass, the review queue.
    const staff = await (await phone(width, false)).newPage();
    await staff.goto(`${base}/`);
    await check(staff, `${width}px start page`);
    await staff.goto(`${base}/portal/`);
    await check(staff, `${width}px portal signed out`);
    await staff.click('#sign-in');
    await staff.waitForSelector('#username');
    await check(staff, `${width}px identity sign-in`);
    await signIn(staff, 'gp', 'demo-gp-password');
    await staff.waitForSelector('#nhs_number');
    await check(staff, `${width}px find a patient`);
    await staff.fill('#nhs_number', '9434765918');
    await staff.click('#search');
    await staff.waitForSelector('.nhsuk-error-summary');
    await check(staff, `${width}px find a patient, with an error`);
    await staff.fill('#nhs_number', env('MARGARET_NHS'));
    await staff.click('#search');
    await staff.waitForSelector('#patient-name');
    await check(staff, `${width}px full summary`);
    await staff.click('text=History >> nth=0');
    await staff.waitForSelector('#versions');
    await check(staff, `${width}px history`);
    await staff.goto(`${base}/portal/no-such-page`);
    await check(staff, `${width}px page not found`);

    const carer = await (await phone(width, false)).newPage();
    await carer.goto(`${base}/portal/`);
    await carer.click('#sign-in');
    await signIn(carer, 'careworker', 'demo-careworker-password');
    await carer.waitForSelector('#nhs_number');
    await carer.fill('#nhs_number', env('DAVID_NHS'));
    await carer.click('#search');
    await carer.waitForSelector('#refusal');
    await check(carer, `${width}px no care relationship`);
    await carer.click('#break-glass');
    await carer.waitForSelector('.nhsuk-error-summary');
    await check(carer, `${width}px break-glass, with errors`);
    await carer.check('#reason-0');
    await carer.fill('#reason_text', `A phone-width check at ${width}px`);
    await carer.click('#break-glass');
    await carer.waitForSelector('#patient-name');
    await check(carer, `${width}px summary under break-glass`);

    const ig = await (await phone(width, false)).newPage();
    await ig.goto(`${base}/portal/reviews`);
    await signIn(ig, 'icsadmin', 'demo-icsadmin-password');
    await ig.waitForSelector('h1');
    await check(ig, `${width}px review queue`);

    // The patient: every passport page, in a browser and in the NHS App.
    for (const nhsApp of [false, true]) {
      const who = `${width}px${nhsApp ? ' NHS App' : ''}`;
      const p = await (await phone(width, nhsApp)).newPage();
      await p.goto(`${base}/passport/`);
      await check(p, `${who} passport signed out`);
      await p.click('#sign-in');
      await signIn(p, 'patient1', 'demo-patient1-password');
      await p.waitForSelector('#link-record');
      await check(p, `${who} passport home`);
      await p.goto(`${base}/passport/record`);
      await check(p, `${who} record`);
      const sections = await p.$$eval('main a[href^="/passport/record/"]', (as) => as.map((a) => a.getAttribute('href')));
      assert.ok(sections.length >= 5, `sections: ${sections}`);
      for (const href of sections) {
        await p.goto(`${base}${href}`);
        await check(p, `${who} ${href}`);
      }
      await p.goto(`${base}/passport/sharing`);
      await check(p, `${who} sharing choices`);
      await p.goto(`${base}/passport/access-log`);
      const entries = await p.locator('tr.sc-access').count();
      assert.ok(entries >= 10, `a long access log: ${entries} entries`);
      await check(p, `${who} access log (${entries} entries)`);
    }
  }
  assert.deepEqual(wide, [], 'pages that scroll sideways on a phone');
  console.log(`widths: ${checked} page views at 320 and 390 px, none scrolls sideways`);
} finally {
  await browser.close();
}
