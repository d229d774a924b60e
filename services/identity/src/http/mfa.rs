//! The second factor: the TOTP page during sign-in, and TOTP enrolment with recovery codes.

use super::*;
pub(super) async fn otp_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    if let Err(r) = load_request(&h, &q.req).await {
        return r;
    }
    h.page_with_csrf(&headers, |csrf| pages::otp(&q.req, csrf, ""))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OtpForm {
    req: String,
    csrf: String,
    code: String,
}

pub(super) async fn otp_submit(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<OtpForm>,
) -> Response {
    let req = match posted_request(&h, &headers, &form.csrf, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff => s,
        _ => return see_other(&format!("/oauth2/login?req={}", form.req)),
    };
    let ip = h.client(addr, &headers);
    let source = ip.to_string();
    let again = |msg: &str| {
        let mut r = h.page_with_csrf(&headers, |csrf| pages::otp(&form.req, csrf, msg));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    match h.count_address(ip).await {
        Ok(AddressCheck::Counted) => {}
        Ok(AddressCheck::Throttled) => {
            return again("Too many failed attempts from your network. Wait a minute and try again.");
        }
        Err(e) => return again(&e.description),
    }
    let Ok(Some((person, _, _))) = h.provider.store.person("uid", &session.subject).await else {
        return see_other(&format!("/oauth2/login?req={}", form.req));
    };
    // A wrong code counts towards the account's lock as a wrong password does.
    let lock = match h
        .provider
        .store
        .count_attempt(SubjectKind::Staff, &person.uid, now(), &h.provider.config.lock_policy())
        .await
    {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            failed(&h, &person.uid, &req.client_id, &source, "account locked", &session.amr).await;
            return again(
                "This account is locked after too many failed sign-in attempts. Try again later or contact your administrator.",
            );
        }
        Err(e) => return again(&OAuthError::from(e).description),
    };
    let code = form.code.trim();
    let step_ok = match secrets::totp_step(&person.totp_secret, code, now()) {
        Some(step) => h.provider.store.use_totp_step(&person.uid, step).await.unwrap_or(false),
        None => false,
    };
    let ok = step_ok
        || (code.len() > 6
            && h.provider
                .store
                .use_recovery_code(&person.uid, &jose::sha256_b64(code))
                .await
                .unwrap_or(false));
    if !ok {
        failed(
            &h,
            &person.uid,
            &req.client_id,
            &source,
            "wrong security code",
            &session.amr,
        )
        .await;
        if lock.until > 0 {
            let detail = format!("locked until {}", lock.until);
            h.provider
                .event(
                    EventKind::AccountLocked,
                    "staff",
                    &person.uid,
                    &req.client_id,
                    &source,
                    &detail,
                    &[],
                    "",
                )
                .await;
        }
        return again("The security code is not right. Check your authenticator app and try again.");
    }
    h.address_succeeded(ip).await;
    if let Err(e) = h.provider.store.clear_failures(SubjectKind::Staff, &person.uid).await {
        return again(&OAuthError::from(e).description);
    }
    session.mfa_pending = false;
    if !session.amr.iter().any(|m| m == "otp") {
        session.amr.push("otp".into());
    }
    if let Err(e) = h.provider.store.update_session(&session).await {
        return again(&OAuthError::from(e).description);
    }
    h.provider
        .event(
            EventKind::LoginSucceeded,
            "staff",
            &person.uid,
            &req.client_id,
            &source,
            "",
            &session.amr,
            acr_for(&session.amr),
        )
        .await;
    see_other(&format!("/oauth2/resume?req={}", form.req))
}

/// Records a failed second-factor step for member of staff `uid`.
async fn failed(h: &Http, uid: &str, client_id: &str, source: &str, detail: &str, amr: &[String]) {
    h.provider
        .event(EventKind::LoginFailed, "staff", uid, client_id, source, detail, amr, "")
        .await;
}

// ---- TOTP enrolment --------------------------------------------------------------------------

/// Whether this session may set an authenticator: replacing one needs the one there now (the
/// session proved it with a code), so a password alone cannot lock the real owner out; a first
/// one needs an enrolment code an administrator issued. `Ok(true)` = a first one.
async fn may_enrol(h: &Http, session: &Session) -> Result<bool, Response> {
    let has_factor = match h.provider.store.person("uid", &session.subject).await {
        Ok(Some((p, _, _))) => !p.totp_secret.is_empty(),
        Ok(None) => {
            return Err(html(
                StatusCode::UNAUTHORIZED,
                pages::error("Sign in first", "Your account was not found."),
            ));
        }
        Err(e) => {
            return Err(html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::error("Try again", &OAuthError::from(e).description),
            ));
        }
    };
    if has_factor && !session.amr.iter().any(|m| m == "otp") {
        return Err(html(
            StatusCode::FORBIDDEN,
            pages::error(
                "Sign in with your security code first",
                "You already have an authenticator app. To replace it, sign in with a code from it (or a recovery code) first; if you have lost it, ask your administrator.",
            ),
        ));
    }
    Ok(!has_factor)
}

pub(super) async fn totp_page(State(h): State<Http>, headers: HeaderMap) -> Response {
    let Ok(Some(session)) = h.session(&headers).await else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::error(
                "Sign in first",
                "Sign in to an app, then come back to set up two-step sign in.",
            ),
        );
    };
    if session.subject_kind != SubjectKind::Staff || session.mfa_pending {
        return html(
            StatusCode::FORBIDDEN,
            pages::error("Not available", "Two-step sign in is for staff accounts."),
        );
    }
    let first = match may_enrol(&h, &session).await {
        Ok(first) => first,
        Err(r) => return r,
    };
    let secret = secrets::new_totp_secret();
    let uri = secrets::otpauth_uri("Sharedcare", &session.subject, &secret);
    h.page_with_csrf(&headers, |csrf| pages::totp_enrol(csrf, &secret, &uri, "", first))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct TotpForm {
    csrf: String,
    secret: String,
    code: String,
    enrolment_code: String,
}

pub(super) async fn totp_submit(State(h): State<Http>, headers: HeaderMap, Form(form): Form<TotpForm>) -> Response {
    if !csrf_ok(&h, &headers, &form.csrf) {
        return csrf_refused();
    }
    let Ok(Some(mut session)) = h.session(&headers).await else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::error("Sign in first", "Your session has ended."),
        );
    };
    if session.subject_kind != SubjectKind::Staff
        || session.mfa_pending
        || secrets::unbase32(&form.secret).is_none_or(|b| b.len() < 16)
    {
        return html(
            StatusCode::BAD_REQUEST,
            pages::error("Not available", "secret: not a valid TOTP key."),
        );
    }
    let first = match may_enrol(&h, &session).await {
        Ok(first) => first,
        Err(r) => return r,
    };
    let uri = secrets::otpauth_uri("Sharedcare", &session.subject, &form.secret);
    let again = |msg: &str| {
        html(
            StatusCode::BAD_REQUEST,
            pages::totp_enrol(&form.csrf, &form.secret, &uri, msg, first),
        )
    };
    let Some(step) = secrets::totp_step(&form.secret, &form.code, now()) else {
        return again("code: the code is not right. Enter the code your app shows now.");
    };
    // A first authenticator: the administrator's one-time code, used up only now that the
    // app's code is right (so a mistyped app code does not cost it).
    if first {
        let code = form.enrolment_code.trim();
        match h
            .provider
            .store
            .take_enrolment(&session.subject, &jose::sha256_b64(code), now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return again(
                    "enrolment_code: not a current enrolment code for you. Ask your administrator for one (it works once, for 72 hours).",
                );
            }
            Err(e) => {
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::error("Try again", &OAuthError::from(e).description),
                );
            }
        }
    }
    let codes: Vec<String> = (0..8).map(|_| jose::random_token(9)).collect();
    let hashes: Vec<String> = codes.iter().map(|c| jose::sha256_b64(c)).collect();
    if let Err(e) = h
        .provider
        .store
        .set_totp(&session.subject, &form.secret, &hashes, step)
        .await
    {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Try again", &OAuthError::from(e).description),
        );
    }
    if !session.amr.iter().any(|m| m == "otp") {
        session.amr.push("otp".into());
        // The factor is enrolled and its recovery codes must be shown now (they are shown
        // once), so a failure here is logged, not returned: the session keeps its old `amr`
        // and the next sign-in asks for the code.
        if let Err(e) = h.provider.store.update_session(&session).await {
            h.provider.unreported("session_update");
            tracing::error!(error = %e, "the session could not record the enrolled second factor");
        }
    }
    h.provider
        .event(
            EventKind::TotpEnrolled,
            "staff",
            &session.subject,
            "",
            "",
            "",
            &session.amr,
            "",
        )
        .await;
    html(StatusCode::OK, pages::recovery_codes(&codes))
}
