// NHS.UK frontend's components (header menu, error summary focus, …), started as its page
// template does. A file, not an inline script: the Content-Security-Policy allows no inline
// script. Pages work without it.
import { initAll } from './nhsuk-frontend-10.6.1/nhsuk-frontend.min.js';

document.body.classList.add('js-enabled', 'nhsuk-frontend-supported');
initAll();

// A form that only carries the browser on (signing out of identity by POST) goes at once; its
// button is there for when scripts do not run.
for (const form of document.querySelectorAll('form[data-autosubmit]')) form.submit();
