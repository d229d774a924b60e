// Sharedcare sign-in: passkeys and security keys (WebAuthn). The server sends each ceremony's
// options as JSON with base64url binary fields; this turns them into what the browser's
// navigator.credentials takes, and the browser's answer back into JSON. Served as a file: the
// pages' Content-Security-Policy allows no inline script.
(() => {
  'use strict';
  const dec = (s) => {
    const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
    return Uint8Array.from(b, (c) => c.charCodeAt(0)).buffer;
  };
  const enc = (buf) =>
    btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const $ = (id) => document.getElementById(id);
  const csrf = () => document.querySelector('input[name=csrf]').value;

  function show(message) {
    const box = $('key-error');
    box.textContent = message;
    box.hidden = false;
    box.focus();
  }

  async function post(url, body) {
    const r = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    let answer = {};
    try {
      answer = await r.json();
    } catch {
      answer = { error: `the sign-in service answered ${r.status}` };
    }
    if (!r.ok) throw new Error(answer.error || `the sign-in service answered ${r.status}`);
    return answer;
  }

  // A credential as the server reads it: binary fields base64url, `response` as given.
  const asJson = (cred, response) => ({
    id: cred.id,
    rawId: enc(cred.rawId),
    type: cred.type,
    extensions: cred.getClientExtensionResults(),
    response,
  });

  // The browser refused or the person cancelled: say so plainly.
  const browserError = (e) =>
    e.name === 'NotAllowedError'
      ? 'The key was not used (cancelled, timed out or not recognised). Try again, or enter a code instead.'
      : e.message;

  const signIn = $('use-key');
  if (signIn) {
    signIn.addEventListener('click', async () => {
      const req = signIn.dataset.req;
      signIn.disabled = true;
      try {
        const { publicKey } = await post('/oauth2/login/key/options', { req, csrf: csrf() });
        publicKey.challenge = dec(publicKey.challenge);
        for (const c of publicKey.allowCredentials || []) c.id = dec(c.id);
        const cred = await navigator.credentials.get({ publicKey });
        const r = cred.response;
        const done = await post('/oauth2/login/key', {
          req,
          csrf: csrf(),
          credential: asJson(cred, {
            authenticatorData: enc(r.authenticatorData),
            clientDataJSON: enc(r.clientDataJSON),
            signature: enc(r.signature),
            userHandle: r.userHandle ? enc(r.userHandle) : null,
          }),
        });
        location.assign(done.redirect);
      } catch (e) {
        show(browserError(e));
        signIn.disabled = false;
      }
    });
  }

  const add = $('add-key');
  if (add) {
    add.addEventListener('submit', async (event) => {
      event.preventDefault();
      const button = $('add-key-button');
      button.disabled = true;
      try {
        const { publicKey } = await post('/account/security-keys/options', { csrf: csrf() });
        publicKey.challenge = dec(publicKey.challenge);
        publicKey.user.id = dec(publicKey.user.id);
        for (const c of publicKey.excludeCredentials || []) c.id = dec(c.id);
        const cred = await navigator.credentials.create({ publicKey });
        const r = cred.response;
        const enrolment = $('enrolment_code');
        const done = await post('/account/security-keys', {
          csrf: csrf(),
          name: $('key-name').value,
          enrolment_code: enrolment ? enrolment.value : '',
          credential: asJson(cred, {
            attestationObject: enc(r.attestationObject),
            clientDataJSON: enc(r.clientDataJSON),
            transports: r.getTransports ? r.getTransports() : undefined,
          }),
        });
        const codes = done.recovery_codes || [];
        if (codes.length) {
          // Shown once: the account's first factor comes with recovery codes.
          const list = $('recovery-codes');
          for (const c of codes) {
            const li = document.createElement('li');
            li.className = 'sc-code';
            li.textContent = c;
            list.append(li);
          }
          $('recovery').hidden = false;
          add.hidden = true;
        } else {
          location.reload();
        }
      } catch (e) {
        show(browserError(e));
        button.disabled = false;
      }
    });
  }
})();
