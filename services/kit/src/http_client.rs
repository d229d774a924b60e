//! The HTTP clients services make (token, keys, sign-in, upstream logins): each with its
//! timeout, or an error at start.

use std::time::Duration;

/// An HTTP client that gives up after `timeout` and follows redirects only when asked. An
/// error (the TLS roots or a proxy setting could not be loaded) stops the service at start,
/// rather than leaving a client without its timeout.
pub fn build(timeout: Duration, follow_redirects: bool) -> crate::Result<reqwest::Client> {
    let redirects = if follow_redirects {
        reqwest::redirect::Policy::default()
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(redirects)
        .build()
        .map_err(|e| {
            crate::Error::Config(format!(
                "an HTTP client could not be made (TLS roots or proxy settings): {e}"
            ))
        })
}
