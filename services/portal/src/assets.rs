//! Static files: the vendored NHS.UK frontend (`sharedcare_kit::nhsuk`) under `/assets/`, and
//! the site's own stylesheet and script. Embedded in the binary.

use axum::Router;
use axum::routing::get;
use sharedcare_kit::nhsuk;

/// The pinned NHS.UK frontend version.
pub const NHSUK_FRONTEND_VERSION: &str = nhsuk::VERSION;

/// The site's stylesheet.
pub const SITE_CSS: &str = "/assets/site-1.css";
/// The site's script (a module: starts NHS.UK frontend's components).
pub const SITE_JS: &str = "/assets/site-1.js";

/// The URL path of a vendored NHS.UK frontend file.
pub fn path(file: &str) -> String {
    nhsuk::path("/assets/", file)
}

/// The routes under `/assets`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    nhsuk::router("/assets/")
        .route(
            SITE_CSS,
            get(|| async { nhsuk::immutable("text/css; charset=utf-8", &include_bytes!("../assets/site.css")[..]) }),
        )
        .route(
            SITE_JS,
            get(|| async {
                nhsuk::immutable(
                    "text/javascript; charset=utf-8",
                    &include_bytes!("../assets/site.js")[..],
                )
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_script_imports_the_pinned_version() {
        let js = include_str!("../assets/site.js");
        assert!(
            js.contains(&format!("nhsuk-frontend-{NHSUK_FRONTEND_VERSION}/")),
            "site.js imports the pinned version"
        );
    }
}
