// NHS.UK frontend's components (header menu, error summary focus, …), started as its page
// template does. A file, not an inline script: the Content-Security-Policy allows no inline
// script. Pages work without it.
import { initAll } from './nhsuk-frontend-10.6.1/nhsuk-frontend.min.js';

document.body.classList.add('js-enabled', 'nhsuk-frontend-supported');
initAll();
