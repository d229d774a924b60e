//! RP-initiated logout (OIDC RP-Initiated Logout 1.0) and back-channel logout.

use super::*;
use sharedcare_kit::json::Fields;

/// RP-initiated logout (OIDC RP-Initiated Logout 1.0): ends the browser's session, tells every
/// app that shared it over the back channel, and returns to a registered address only.
pub(super) async fn logout(State(h): State<Http>, headers: HeaderMap, Params(q): Params) -> Response {
    let f = |k: &str| q.get(k).cloned().unwrap_or_default();
    // The hint is checked for signature and issuer, not expiry (it is usually expired).
    let hint = f("id_token_hint");
    let hinted = if hint.is_empty() {
        None
    } else {
        match jose::verify_with(&hint, &h.provider.keys.jwks()) {
            Ok(c) if c.at("iss").as_str() == Some(&*h.provider.issuer) => Some(c),
            _ => {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::error("Sign-out failed", "id_token_hint is not an ID token from this service."),
                );
            }
        }
    };
    let client_id = match (&hinted, f("client_id")) {
        (Some(c), _) => c["aud"].as_str().unwrap_or_default().to_string(),
        (None, id) => id,
    };
    let session = match h.session(&headers).await {
        Ok(Some(s)) => Some(s),
        _ => match hinted.as_ref().and_then(|c| c["sid"].as_str()) {
            Some(sid) => h.provider.store.session(sid).await.ok().flatten(),
            None => None,
        },
    };
    if let Some(s) = session
        && let Err(e) = h.provider.end_session(&s, EventKind::SessionEnded).await
    {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Sign-out failed", &e.description),
        );
    }
    let target = f("post_logout_redirect_uri");
    let allowed = if target.is_empty() || client_id.is_empty() {
        false
    } else {
        matches!(h.provider.client(&client_id).await, Ok(Some(c)) if c.settings.post_logout_redirect_uris.contains(&target))
    };
    let mut r = if allowed {
        see_other(&with_query(&target, &[("state", &f("state"))]))
    } else {
        html(StatusCode::OK, pages::signed_out())
    };
    set_cookie(&mut r, &h.session_cookie, "", 0, h.secure());
    r
}
