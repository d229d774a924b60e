//! The vendored NHS.UK frontend (`assets/nhsuk-frontend`, refreshed by
//! `tools/nhsuk-frontend.sh`): its compiled CSS and JavaScript and the images the CSS names,
//! embedded in the binary and served under a versioned path (browsers may cache them for a
//! year). The portal serves them at `/assets/`, identity's sign-in pages at `/oauth2/assets/`
//! (identity runs in its own pod in production), each with the CSS's image URLs under its own
//! prefix.

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};

/// The pinned NHS.UK frontend version (`assets/nhsuk-frontend/VERSION`).
pub const VERSION: &str = "10.6.1";

/// The prefix the vendored CSS names its images under (as `tools/nhsuk-frontend.sh` writes it).
const CSS_PREFIX: &str = "/assets/";

/// The URL path of vendored file `file` under `prefix` (e.g. `/assets/`).
pub fn path(prefix: &str, file: &str) -> String {
    format!("{prefix}nhsuk-frontend-{VERSION}/{file}")
}

/// The NHS logo, as NHS.UK frontend's header draws it.
pub const LOGO: &str = r#"<svg class="nhsuk-header__logo" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 80" height="40" width="100" focusable="false" role="img" aria-label="NHS"><title>NHS</title><path fill="currentcolor" d="M200 0v80H0V0h200Zm-27.5 5.5c-14.5 0-29 5-29 22 0 10.2 7.7 13.5 14.7 16.3l.7.3c5.4 2 10.1 3.9 10.1 8.4 0 6.5-8.5 7.5-14 7.5s-12.5-1.5-16-3.5L135 70c5.5 2 13.5 3.5 20 3.5 15.5 0 32-4.5 32-22.5 0-19.5-25.5-16.5-25.5-25.5 0-5.5 5.5-6.5 12.5-6.5a35 35 0 0 1 14.5 3l4-13.5c-4.5-2-12-3-20-3Zm-131 2h-22l-14 65H22l9-45h.5l13.5 45h21.5l14-65H64l-9 45h-.5l-13-45Zm63 0h-18l-13 65h17l6-28H117l-5.5 28H129l13.5-65H125L119.5 32h-20l5-24.5Z"/></svg>"#;

/// The vendored files: name, content type, bytes.
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "nhsuk-frontend.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/nhsuk-frontend/nhsuk-frontend.min.css"),
    ),
    (
        "nhsuk-frontend.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/nhsuk-frontend/nhsuk-frontend.min.js"),
    ),
    (
        "images/favicon.ico",
        "image/x-icon",
        include_bytes!("../assets/nhsuk-frontend/images/favicon.ico"),
    ),
    (
        "images/favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/nhsuk-frontend/images/favicon.svg"),
    ),
    (
        "images/nhsuk-icon-180.png",
        "image/png",
        include_bytes!("../assets/nhsuk-frontend/images/nhsuk-icon-180.png"),
    ),
    (
        "images/nhsuk-icon-arrow-down.svg",
        "image/svg+xml",
        include_bytes!("../assets/nhsuk-frontend/images/nhsuk-icon-arrow-down.svg"),
    ),
    (
        "images/nhsuk-icon-arrow-up-down.svg",
        "image/svg+xml",
        include_bytes!("../assets/nhsuk-frontend/images/nhsuk-icon-arrow-up-down.svg"),
    ),
    (
        "images/nhsuk-icon-arrow-up.svg",
        "image/svg+xml",
        include_bytes!("../assets/nhsuk-frontend/images/nhsuk-icon-arrow-up.svg"),
    ),
    (
        "images/nhsuk-icon-cross.svg",
        "image/svg+xml",
        include_bytes!("../assets/nhsuk-frontend/images/nhsuk-icon-cross.svg"),
    ),
];

/// A static file, cacheable for a year (its path names its version).
pub fn immutable(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body.into(),
    )
        .into_response()
}

/// The routes serving the vendored files under `prefix` (which starts and ends with `/`).
pub fn router<S: Clone + Send + Sync + 'static>(prefix: &'static str) -> Router<S> {
    // The stylesheet names its images under the portal's prefix; elsewhere, under this one.
    let (css_name, _, css_bytes) = FILES.first().copied().unwrap_or_default();
    let css = std::str::from_utf8(css_bytes)
        .unwrap_or_default()
        .replace(&path(CSS_PREFIX, ""), &path(prefix, ""));
    let css: &'static str = Box::leak(css.into_boxed_str());
    Router::new().route(
        &format!("{prefix}nhsuk-frontend-{VERSION}/{{*file}}"),
        get(move |Path(name): Path<String>| async move {
            match FILES.iter().find(|(n, _, _)| *n == name) {
                Some((n, ct, _)) if *n == css_name => immutable(ct, css),
                Some((_, ct, body)) => immutable(ct, *body),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_version_is_the_vendored_one_and_every_image_the_css_names_is_served() {
        let vendored = include_str!("../assets/nhsuk-frontend/VERSION").trim();
        assert_eq!(vendored, VERSION, "run tools/nhsuk-frontend.sh {VERSION}");
        let css = std::str::from_utf8(FILES[0].2).expect("utf-8 CSS");
        let prefix = path(CSS_PREFIX, "");
        let mut named = 0;
        for part in css.split(prefix.as_str()).skip(1) {
            let name = part.split(')').next().unwrap_or_default();
            assert!(
                FILES.iter().any(|(n, _, _)| *n == name),
                "{name} is named by the CSS but not served"
            );
            named += 1;
        }
        assert!(named >= 4, "the CSS names its icons under the versioned path");
    }
}
