//! The token endpoint, userinfo, introspection (RFC 7662) and revocation (RFC 7009).

use super::*;

pub(super) fn presented(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Presented, OAuthError> {
    let f = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut p = Presented {
        basic: None,
        client_id: f("client_id"),
        client_secret: f("client_secret"),
        assertion_type: f("client_assertion_type"),
        assertion: f("client_assertion"),
    };
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, b64)) = v.split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
    {
        let bad = || {
            OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "Authorization: Basic is not base64 of id:secret",
            )
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded.
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = (dec(id), dec(secret));
        if !p.client_id.is_empty() && p.client_id != id {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "client_id in the body differs from HTTP Basic",
            ));
        }
        p.basic = Some((id, secret));
    }
    Ok(p)
}

pub(super) async fn authenticated(
    h: &Http,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<crate::model::Client, Response> {
    let p = presented(headers, form).map_err(oauth_error)?;
    h.provider.authenticate(&p).await.map_err(oauth_error)
}

pub(super) async fn token(
    State(h): State<Http>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let client = match authenticated(&h, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match h.provider.token(&client, &form).await {
        Ok(body) => json_response(200, body),
        Err(e) => oauth_error(e),
    }
}

pub(super) async fn userinfo(State(h): State<Http>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(sharedcare_kit::auth::bearer);
    let Some(token) = token else {
        return oauth_error(OAuthError::new(OAuthErrorCode::InvalidToken, "missing bearer token"));
    };
    match h.provider.userinfo(token).await {
        Ok(body) => json_response(200, body),
        Err(e) => oauth_error(e),
    }
}

/// Introspection (RFC 7662) for an authenticated confidential client.
pub(super) async fn introspect(
    State(h): State<Http>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let answer = async {
        let client = authenticated(&h, &headers, &form).await?;
        if client.settings.auth_method == AuthMethod::None {
            let public = OAuthError::new(OAuthErrorCode::InvalidClient, "public clients may not introspect");
            return Err(oauth_error(public));
        }
        h.provider
            .introspect(&client.id, token_param(&form))
            .await
            .map_err(oauth_error)
    };
    answer.await.map_or_else(|r| r, |body| json_response(200, body))
}

/// Revocation (RFC 7009) by an authenticated client of a token issued to it.
pub(super) async fn revoke(
    State(h): State<Http>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let answer = async {
        let client = authenticated(&h, &headers, &form).await?;
        h.provider
            .revoke(&client, token_param(&form))
            .await
            .map_err(oauth_error)
    };
    answer.await.map_or_else(|r| r, |()| json_response(200, json!({})))
}

/// The `token` parameter of introspection and revocation ("" when missing).
fn token_param(form: &HashMap<String, String>) -> &str {
    form.get("token").map(String::as_str).unwrap_or_default()
}
