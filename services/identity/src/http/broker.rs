//! Brokering to upstream providers (NHS login, CIS2): the redirect out, the callback, and the
//! relying-party keys.

use super::*;

pub(super) async fn broker_start(
    State(h): State<Http>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    Query(q): Query<ReqQuery>,
) -> Response {
    let req = match load_request(&h, &q.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    // The sign-in is bound to this browser by a cookie the callback must carry; a browser
    // signing in twice at once keeps the one it has.
    let (binding, fresh) = match cookie(&headers, &h.broker_cookie()) {
        Some(v) if v.len() >= 22 => (v.to_string(), false),
        _ => (jose::random_token(24), true),
    };
    match h
        .provider
        .broker
        .start(&name, &q.req, &req.asserted, &req.login_hint, &binding)
        .await
    {
        Ok(url) => {
            let mut r = see_other(&url);
            if fresh {
                set_cookie(&mut r, &h.broker_cookie(), &binding, 900, h.secure());
            }
            r
        }
        Err(e) => {
            tracing::warn!(upstream = %name, error = %e, "brokered sign-in could not start");
            if req.asserted.is_empty() {
                html(
                    StatusCode::BAD_GATEWAY,
                    pages::error("Sign-in is unavailable", &e.to_string()),
                )
            } else {
                error_back(
                    &h,
                    &req,
                    OAuthErrorCode::TemporarilyUnavailable,
                    "the NHS login provider is unavailable",
                )
            }
        }
    }
}

pub(super) async fn broker_callback(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let binding = cookie(&headers, &h.broker_cookie());
    match h.provider.broker.finish(&q, binding).await {
        Ok(linked) => {
            let Ok(req) = load_request(&h, &linked.req).await else {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::error(
                        "Your sign-in has expired",
                        "Go back to the app and start signing in again.",
                    ),
                );
            };
            let detail = format!("via upstream provider {}", req.idp_hint);
            let source = h.client(addr, &headers).to_string();
            match h
                .sign_in(
                    linked.kind,
                    &linked.subject,
                    linked.amr,
                    false,
                    &req.client_id,
                    &source,
                    &detail,
                )
                .await
            {
                Ok(cookie) => h.resume_with_cookie(&linked.req, &cookie),
                Err(e) => error_back(&h, &req, OAuthErrorCode::TemporarilyUnavailable, &e.description),
            }
        }
        Err(crate::broker::BrokerError::Upstream { req, code }) => match load_request(&h, &req).await {
            Ok(r) => {
                let code = OAuthErrorCode::from_upstream(&code);
                error_back(&h, &r, code, "the upstream identity provider did not sign the user in")
            }
            Err(resp) => resp,
        },
        Err(crate::broker::BrokerError::OtherBrowser) => {
            tracing::warn!("brokered sign-in refused: its callback came to another browser");
            html(
                StatusCode::BAD_REQUEST,
                pages::error(
                    "Sign-in was not started in this browser",
                    "state: this sign-in was not started in this browser. Go back to the app and start signing in again.",
                ),
            )
        }
        Err(crate::broker::BrokerError::Failed(why)) => {
            tracing::warn!(error = %why, "brokered sign-in failed");
            html(
                StatusCode::BAD_GATEWAY,
                pages::error("Sign-in with the other provider failed", &why),
            )
        }
    }
}

pub(super) async fn rp_jwks(State(h): State<Http>) -> Response {
    match h.provider.broker.rp_jwks().await {
        Ok(set) => axum::Json(set).into_response(),
        Err(e) => oauth_error(OAuthError::from(e)),
    }
}
