//! The authorization endpoint: validates a request, parks it, and decides the next step
//! (sign in, second factor, role choice, or the code) from the request and the session.

use super::*;

/// Validates the client and redirect URI first (errors there are shown, never redirected: no
/// open redirects), then every other parameter (errors go back to the client).
pub(super) async fn authorize(State(h): State<Http>, headers: HeaderMap, Params(q): Params) -> Response {
    let f = |k: &str| q.get(k).cloned().unwrap_or_default();
    let client_id = f("client_id");
    let client = match h.provider.client(&client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::error(
                    "Unknown app",
                    "client_id does not name a registered app (invalid_client).",
                ),
            );
        }
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::error("Sign-in is unavailable", &e.description),
            );
        }
    };
    let redirect_uri = f("redirect_uri");
    if !client.settings.redirect_uris.contains(&redirect_uri) {
        return html(
            StatusCode::BAD_REQUEST,
            pages::error(
                "Wrong return address",
                "redirect_uri does not exactly match an address registered for this app (invalid_request).",
            ),
        );
    }
    let state = f("state");
    let back = |code: OAuthErrorCode, why: &str| {
        see_other(&with_query(
            &redirect_uri,
            &[
                ("error", code.as_str()),
                ("error_description", why),
                ("state", &state),
                ("iss", &h.provider.issuer),
            ],
        ))
    };
    let checked = match check_authorization(
        &client,
        &AuthzParams {
            response_type: &f("response_type"),
            scope: &f("scope"),
            code_challenge: &f("code_challenge"),
            code_challenge_method: &f("code_challenge_method"),
            max_age: &f("max_age"),
            prompt: &f("prompt"),
        },
    ) {
        Ok(c) => c,
        Err(e) => return back(e.code, &e.description),
    };
    let asserted = f("assertedLoginIdentity");
    let mut idp_hint = f("kc_idp_hint");
    if !idp_hint.is_empty() && !h.provider.broker.upstreams().iter().any(|u| u.name == idp_hint) {
        return back(
            OAuthErrorCode::InvalidRequest,
            "kc_idp_hint names no configured identity provider",
        );
    }
    if !asserted.is_empty() && idp_hint.is_empty() {
        match h.provider.broker.upstreams().iter().find(|u| u.link_to == "patient") {
            Some(u) => idp_hint = u.name.clone(),
            None => {
                return back(
                    OAuthErrorCode::InvalidRequest,
                    "assertedLoginIdentity needs an NHS login upstream provider",
                );
            }
        }
    }
    let req = AuthRequest {
        idp_hint,
        asserted,
        client_id,
        redirect_uri: redirect_uri.clone(),
        scope: checked.scope,
        state: state.clone(),
        nonce: f("nonce"),
        code_challenge: checked.code_challenge,
        prompt: checked.prompt,
        max_age: checked.max_age,
        acr_values: f("acr_values"),
        login_hint: f("login_hint"),
        vtr: f("vtr"),
    };
    let id = jose::random_token(18);
    let params = match serde_json::to_string(&req) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "an authorization request could not be serialised");
            return back(OAuthErrorCode::ServerError, "the request could not be kept");
        }
    };
    if let Err(e) = h
        .provider
        .store
        .put_auth_request(&id, &params, now() + REQUEST_SECS)
        .await
    {
        return back(OAuthErrorCode::TemporarilyUnavailable, &OAuthError::from(e).description);
    }
    proceed(&h, &headers, &id, &req, true).await
}

pub(super) async fn load_request(h: &Http, id: &str) -> Result<AuthRequest, Response> {
    let expired = || {
        html(
            StatusCode::BAD_REQUEST,
            pages::error(
                "Your sign-in has expired",
                "Go back to the app and start signing in again.",
            ),
        )
    };
    match h.provider.store.auth_request(id, now()).await {
        Ok(Some(p)) => serde_json::from_str(&p).map_err(|_| expired()),
        Ok(None) => Err(expired()),
        Err(e) => Err(html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Sign-in is unavailable", &OAuthError::from(e).description),
        )),
    }
}

#[derive(Deserialize)]
pub(super) struct ReqQuery {
    #[serde(default)]
    pub(super) req: String,
}

pub(super) async fn resume(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    match load_request(&h, &q.req).await {
        Ok(req) => proceed(&h, &headers, &q.req, &req, false).await,
        Err(r) => r,
    }
}

pub(super) fn error_back(h: &Http, req: &AuthRequest, code: OAuthErrorCode, why: &str) -> Response {
    see_other(&with_query(
        &req.redirect_uri,
        &[
            ("error", code.as_str()),
            ("error_description", why),
            ("state", &req.state),
            ("iss", &h.provider.issuer),
        ],
    ))
}

pub(super) fn wants(req: &AuthRequest, prompt: &str) -> bool {
    req.prompt.split_whitespace().any(|p| p == prompt)
}

/// Decides the next step for a parked request: sign in, second factor, role choice, or the
/// code. `fresh` is true on the request's first pass (where `prompt=login` forces a login).
pub(super) async fn proceed(h: &Http, headers: &HeaderMap, id: &str, req: &AuthRequest, fresh: bool) -> Response {
    let none = wants(req, "none");
    let session = match h.session(headers).await {
        Ok(s) => s,
        Err(e) => return error_back(h, req, OAuthErrorCode::TemporarilyUnavailable, &e.description),
    };
    let now = now();
    let mut session = match session {
        Some(s) if !(fresh && wants(req, "login")) && session_fresh_enough(req.max_age, s.auth_time, now) => s,
        // To the upstream provider: with prompt=none only for the NHS App's asserted identity.
        _ if !req.idp_hint.is_empty() && (!none || !req.asserted.is_empty()) => {
            return see_other(&format!("/oauth2/broker/{}?req={id}", req.idp_hint));
        }
        _ if none => return error_back(h, req, OAuthErrorCode::LoginRequired, "the user is not signed in"),
        _ => return see_other(&format!("/oauth2/login?req={id}")),
    };
    let needs_mfa = needs_second_factor(&req.acr_values, &session.amr);
    if needs_mfa && !session.mfa_pending {
        let has_factor = match session.subject_kind {
            SubjectKind::Staff => {
                matches!(h.provider.store.person("uid", &session.subject).await, Ok(Some((p, _, _))) if p.has_second_factor())
            }
            SubjectKind::Patient => false,
        };
        if !has_factor {
            return error_back(
                h,
                req,
                OAuthErrorCode::UnmetAuthenticationRequirements,
                "the requested acr_values need a second factor this account has not enrolled",
            );
        }
        session.mfa_pending = true;
        if let Err(e) = h.provider.store.update_session(&session).await {
            return error_back(
                h,
                req,
                OAuthErrorCode::TemporarilyUnavailable,
                &OAuthError::from(e).description,
            );
        }
    }
    if session.mfa_pending {
        if none {
            return error_back(h, req, OAuthErrorCode::InteractionRequired, "a second factor is needed");
        }
        return see_other(&format!("/oauth2/login/otp?req={id}"));
    }
    let scoped_role = req.scope.split(' ').any(|s| s == "selectedrole");
    if session.subject_kind == SubjectKind::Staff && scoped_role {
        let roles = match h.provider.store.person("uid", &session.subject).await {
            Ok(Some((p, _, _))) => p.roles,
            _ => return error_back(h, req, OAuthErrorCode::AccessDenied, "the account no longer exists"),
        };
        let valid = roles.iter().any(|r| r.person_roleid == session.selected_role);
        let choose = (fresh && wants(req, "select_account")) || !valid;
        if choose && roles.len() > 1 {
            if none {
                return error_back(
                    h,
                    req,
                    OAuthErrorCode::InteractionRequired,
                    "the user must select a role",
                );
            }
            return see_other(&format!("/oauth2/select-role?req={id}"));
        }
        if !valid && let Some(r) = roles.first() {
            session.selected_role = r.person_roleid.clone();
        }
    }
    if session.subject_kind == SubjectKind::Patient && !req.vtr.is_empty() {
        let have = match h.provider.store.patient("nhs_number", &session.subject).await {
            Ok(Some((p, _, _))) => p.proofing_level,
            _ => ProofingLevel::P0,
        };
        if !vtr_satisfied(&req.vtr, have) {
            return error_back(
                h,
                req,
                OAuthErrorCode::AccessDenied,
                "the identity proofing level does not satisfy vtr",
            );
        }
    }
    session.last_seen = now;
    let grant = Grant {
        client_id: req.client_id.clone(),
        session_id: session.id.clone(),
        subject_kind: session.subject_kind,
        subject: session.subject.clone(),
        scope: req.scope.clone(),
        nonce: req.nonce.clone(),
        redirect_uri: req.redirect_uri.clone(),
        code_challenge: req.code_challenge.clone(),
        auth_time: session.auth_time,
        amr: session.amr.clone(),
        selected_role: session.selected_role.clone(),
    };
    let code = jose::random_token(32);
    let stored = async {
        h.provider.store.update_session(&session).await?;
        h.provider
            .store
            .put_code(&jose::sha256_b64(&code), &grant, now + h.provider.config.code_secs)
            .await?;
        h.provider.store.delete_auth_request(id, now).await
    };
    if let Err(e) = stored.await {
        return error_back(
            h,
            req,
            OAuthErrorCode::TemporarilyUnavailable,
            &OAuthError::from(e).description,
        );
    }
    see_other(&with_query(
        &req.redirect_uri,
        &[("code", &code), ("state", &req.state), ("iss", &h.provider.issuer)],
    ))
}
