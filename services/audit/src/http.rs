//! The log for monitors, per C2SP tlog-tiles: `GET /audit/v1/checkpoint` (the latest signed
//! checkpoint note) and `GET /audit/v1/tile/<L>/<N>[.p/<W>]` (hashes only). Entry bundles
//! (`tile/entries/…`) are not served: entries stay behind the authorised gRPC API. Served to
//! holders of a token with scope `audit.read`, or to anyone when `audit.public_tiles` is set.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sharedcare_kit::auth::{Verifier, bearer, has_scope};

use crate::log::Log;
use crate::tiles;

#[derive(Clone)]
struct Served {
    log: Log,
    verifier: Verifier,
    public: bool,
}

/// The routes.
pub fn router(log: Log, verifier: Verifier, public: bool) -> Router {
    Router::new()
        .route("/audit/v1/checkpoint", get(checkpoint))
        .route("/audit/v1/tile/{*path}", get(tile))
        .with_state(Served { log, verifier, public })
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body.into(),
    )
        .into_response()
}

/// Lets the caller through, or the response refusing them.
async fn allowed(s: &Served, headers: &HeaderMap) -> Result<(), Response> {
    if s.public {
        return Ok(());
    }
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
    else {
        return Err(text(
            StatusCode::UNAUTHORIZED,
            "Authorization: a bearer token with scope audit.read is required (or set audit.public_tiles)\n",
        ));
    };
    match s.verifier.principal(token).await {
        Ok(p) if has_scope(&p, "audit.read") => Ok(()),
        Ok(_) => Err(text(StatusCode::FORBIDDEN, "scope: the token lacks audit.read\n")),
        Err(e) => Err(text(StatusCode::UNAUTHORIZED, format!("Authorization: {e}\n"))),
    }
}

/// Cache headers: a signed checkpoint changes every few seconds while the log grows; a tile of
/// a given width never changes. Private unless the log is public.
fn cache(public: bool, max_age: u32) -> HeaderValue {
    let scope = if public { "public" } else { "private" };
    let immutable = if max_age > 60 { ", immutable" } else { "" };
    HeaderValue::from_str(&format!("{scope}, max-age={max_age}{immutable}"))
        .unwrap_or(HeaderValue::from_static("no-cache"))
}

async fn checkpoint(State(s): State<Served>, headers: HeaderMap) -> Response {
    if let Err(r) = allowed(&s, &headers).await {
        return r;
    }
    match s.log.checkpoint().await {
        Ok(note) => {
            let mut r = text(StatusCode::OK, note);
            r.headers_mut().insert(header::CACHE_CONTROL, cache(s.public, 5));
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "serving the checkpoint failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "the audit log could not be read\n")
        }
    }
}

async fn tile(State(s): State<Served>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = allowed(&s, &headers).await {
        return r;
    }
    if path.starts_with("entries/") || path == "entries" {
        return text(
            StatusCode::NOT_FOUND,
            "tile/entries: entry bundles are not served; entries are read through the audit API, by those allowed\n",
        );
    }
    let (id, width) = match tiles::parse_path(&path) {
        Ok(t) => t,
        Err((part, reason)) => return text(StatusCode::BAD_REQUEST, format!("{part}: {reason}\n")),
    };
    match s.log.tile(id, width).await {
        Ok(Some(bytes)) => {
            let mut r = (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                bytes,
            )
                .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, cache(s.public, 31_536_000));
            r
        }
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!(
                "index: tile {}/{} of width {width} is beyond the latest checkpoint\n",
                id.level, id.index
            ),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "serving a tile failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "the audit log could not be read\n")
        }
    }
}
