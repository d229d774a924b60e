//! Static files: the vendored NHS.UK frontend (`assets/nhsuk-frontend`, refreshed by
//! `tools/nhsuk-frontend.sh`) under a versioned path, so browsers may cache them for a year,
//! and the site's own stylesheet and script. Embedded in the binary.

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};

/// The pinned NHS.UK frontend version (`assets/nhsuk-frontend/VERSION`).
pub const NHSUK_FRONTEND_VERSION: &str = "10.6.1";

/// The site's stylesheet.
pub const SITE_CSS: &str = "/assets/site-1.css";
/// The site's script (a module: starts NHS.UK frontend's components).
pub const SITE_JS: &str = "/assets/site-1.js";

/// The URL path of a vendored NHS.UK frontend file.
pub fn path(file: &str) -> String {
    format!("/assets/nhsuk-frontend-{NHSUK_FRONTEND_VERSION}/{file}")
}

const FILES: &[(&str, &str, &[u8])] = &[
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

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// The routes under `/assets`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let vendored = format!("/assets/nhsuk-frontend-{NHSUK_FRONTEND_VERSION}/{{*file}}");
    Router::new()
        .route(
            &vendored,
            get(|Path(name): Path<String>| async move {
                match FILES.iter().find(|(n, _, _)| *n == name) {
                    Some((_, ct, body)) => file(ct, body),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .route(
            SITE_CSS,
            get(|| async { file("text/css; charset=utf-8", include_bytes!("../assets/site.css")) }),
        )
        .route(
            SITE_JS,
            get(|| async { file("text/javascript; charset=utf-8", include_bytes!("../assets/site.js")) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_version_is_the_vendored_one_and_every_image_the_css_names_is_served() {
        let vendored = include_str!("../assets/nhsuk-frontend/VERSION").trim();
        assert_eq!(
            vendored, NHSUK_FRONTEND_VERSION,
            "run tools/nhsuk-frontend.sh {NHSUK_FRONTEND_VERSION}"
        );
        let css = std::str::from_utf8(FILES[0].2).expect("utf-8 CSS");
        let prefix = format!("/assets/nhsuk-frontend-{NHSUK_FRONTEND_VERSION}/");
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
        let js = include_str!("../assets/site.js");
        assert!(
            js.contains(&format!("nhsuk-frontend-{NHSUK_FRONTEND_VERSION}/")),
            "site.js imports the pinned version"
        );
    }
}
