// Signing in through Sharedcare's login pages in a playwright page: the password, then for
// staff (all of whom have a second factor) the security code from their authenticator app,
// computed from their TOTP secret (`secret`, else the demo's from STAFF_TOTP).
import { codesNow, staffSecret } from './totp.mjs';

export async function signIn(page, user, password, secret = staffSecret(user)) {
  await page.waitForSelector('#username');
  await page.fill('#username', user);
  await page.fill('#password', password);
  await page.click('#sign-in');
  if (!secret) return;
  for (const code of codesNow(secret)) {
    await page.waitForSelector('#code');
    await page.fill('#code', code);
    // Right or wrong, the form's answer is a navigation (onwards, or the page again).
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#verify')]);
    if (!/\/oauth2\/login\/otp/.test(page.url())) return;
  }
  throw new Error(`${user}: the security code was refused`);
}

// The cells of the table rows matching `selector`, as text, without the headings NHS.UK's
// responsive tables repeat in each cell for narrow screens.
export async function cells(page, selector) {
  return page.$$eval(selector, (trs) =>
    trs.map((tr) =>
      [...tr.querySelectorAll('td')].map((td) => {
        const c = td.cloneNode(true);
        c.querySelectorAll('.nhsuk-table-responsive__heading').forEach((h) => h.remove());
        return c.textContent.trim();
      }),
    ),
  );
}
