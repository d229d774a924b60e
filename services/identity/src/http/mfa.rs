//! The second factor: the code page during sign-in (TOTP or a recovery code, with a button for
//! a passkey or security key when the account has one), TOTP enrolment with recovery codes,
//! and what every second factor shares: counting attempts and signing the session in.

use super::*;
pub(super) async fn otp_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    if let Err(r) = load_request(&h, &q.req).await {
        return r;
    }
    let keys = match h.session(&headers).await {
        Ok(Some(s)) => h.offers_keys(&s.subject).await,
        _ => false,
    };
    h.page_with_csrf(&headers, |csrf| pages::otp(&q.req, csrf, "", keys))
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
    let keys = h.offers_keys(&session.subject).await;
    let again = |msg: &str| {
        let mut r = h.page_with_csrf(&headers, |csrf| pages::otp(&form.req, csrf, msg, keys));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    let attempt = match count_second_factor(&h, ip, &session, &req.client_id).await {
        Ok(a) => a,
        Err(msg) => return again(&msg.0),
    };
    let code = form.code.trim();
    let step_ok = match secrets::totp_step(&attempt.person.totp_secret, code, now()) {
        Some(step) => h
            .provider
            .store
            .use_totp_step(&attempt.person.uid, step)
            .await
            .unwrap_or(false),
        None => false,
    };
    let ok = step_ok
        || (code.len() > 6
            && h.provider
                .store
                .use_recovery_code(&attempt.person.uid, &jose::sha256_b64(code))
                .await
                .unwrap_or(false));
    if !ok {
        attempt.failed(&h, "wrong security code").await;
        return again("The security code is not right. Check your authenticator app and try again.");
    }
    if let Err(msg) = second_factor_passed(&h, ip, &mut session, "otp", &req.client_id).await {
        return again(&msg.0);
    }
    see_other(&format!("/oauth2/resume?req={}", form.req))
}

/// Why a second factor cannot be checked or completed now, in words for the page.
pub(super) struct Refusal(pub(super) String);

impl From<&str> for Refusal {
    fn from(words: &str) -> Self {
        Refusal(words.into())
    }
}

/// A second-factor attempt, counted against the address and the account before it is checked.
pub(super) struct Attempt {
    pub(super) person: crate::model::Person,
    lock: crate::store::Lock,
    client_id: String,
    source: String,
    amr: Vec<String>,
}

/// Counts a second-factor attempt by `session`'s member of staff, in the database every replica
/// shares, before anything is checked; `Err` is the message for the page (throttled, locked,
/// unavailable).
pub(super) async fn count_second_factor(
    h: &Http,
    ip: IpAddr,
    session: &Session,
    client_id: &str,
) -> Result<Attempt, Refusal> {
    match h.count_address(ip).await {
        Ok(AddressCheck::Counted) => {}
        Ok(AddressCheck::Throttled) => {
            return Err("Too many failed attempts from your network. Wait a minute and try again.".into());
        }
        Err(e) => return Err(Refusal(e.description)),
    }
    let person = match h.provider.store.person("uid", &session.subject).await {
        Ok(Some((p, _, _))) => p,
        Ok(None) => return Err("Your account was not found. Sign in again.".into()),
        Err(e) => return Err(Refusal(OAuthError::from(e).description)),
    };
    let source = ip.to_string();
    // A wrong code or key counts towards the account's lock as a wrong password does.
    let lock = match h
        .provider
        .store
        .count_attempt(SubjectKind::Staff, &person.uid, now(), &h.provider.config.lock_policy())
        .await
    {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            failed(h, &person.uid, client_id, &source, "account locked", &session.amr).await;
            return Err(
                "This account is locked after too many failed sign-in attempts. Try again later or contact your administrator."
                    .into(),
            );
        }
        Err(e) => return Err(Refusal(OAuthError::from(e).description)),
    };
    Ok(Attempt {
        person,
        lock,
        client_id: client_id.to_string(),
        source,
        amr: session.amr.clone(),
    })
}

impl Attempt {
    /// Records that this attempt failed (`detail` says how) and, when it locked the account,
    /// that too.
    pub(super) async fn failed(&self, h: &Http, detail: &str) {
        failed(h, &self.person.uid, &self.client_id, &self.source, detail, &self.amr).await;
        if self.lock.until > 0 {
            let detail = format!("locked until {}", self.lock.until);
            h.provider
                .event(
                    EventKind::AccountLocked,
                    "staff",
                    &self.person.uid,
                    &self.client_id,
                    &self.source,
                    &detail,
                    &[],
                    "",
                )
                .await;
        }
    }
}

/// A right second factor (`method`, an RFC 8176 `amr` value): the counters are cleared, the
/// session is signed in with it and the sign-in is recorded. `Err` is the message for the page.
pub(super) async fn second_factor_passed(
    h: &Http,
    ip: IpAddr,
    session: &mut Session,
    method: &str,
    client_id: &str,
) -> Result<(), Refusal> {
    h.address_succeeded(ip).await;
    if let Err(e) = h
        .provider
        .store
        .clear_failures(SubjectKind::Staff, &session.subject)
        .await
    {
        return Err(Refusal(OAuthError::from(e).description));
    }
    session.mfa_pending = false;
    if !session.amr.iter().any(|m| m == method) {
        session.amr.push(method.into());
    }
    if let Err(e) = h.provider.store.update_session(session).await {
        return Err(Refusal(OAuthError::from(e).description));
    }
    h.provider
        .event(
            EventKind::LoginSucceeded,
            "staff",
            &session.subject,
            client_id,
            &ip.to_string(),
            "",
            &session.amr,
            acr_for(&session.amr),
        )
        .await;
    Ok(())
}

/// Eight new single-use recovery codes, and their hashes (only those are kept).
pub(super) fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..8).map(|_| jose::random_token(9)).collect();
    let hashes = codes.iter().map(|c| jose::sha256_b64(c)).collect();
    (codes, hashes)
}

/// A second factor (`method`, an RFC 8176 `amr` value) was just enrolled with a proof of it:
/// the session now has it, and `kind` is recorded. The enrolment has happened (its recovery
/// codes must be shown now, once), so a failure to update the session is logged, not
/// returned: the session keeps its old `amr` and the next sign-in asks for the factor.
pub(super) async fn factor_enrolled(h: &Http, session: &mut Session, method: &str, kind: EventKind) {
    if !session.amr.iter().any(|m| m == method) {
        session.amr.push(method.into());
        if let Err(e) = h.provider.store.update_session(session).await {
            h.provider.unreported("session_update");
            tracing::error!(error = %e, "the session could not record the enrolled second factor");
        }
    }
    h.provider
        .event(kind, "staff", &session.subject, "", "", "", &session.amr, "")
        .await;
}

/// Records a failed second-factor step for member of staff `uid`.
async fn failed(h: &Http, uid: &str, client_id: &str, source: &str, detail: &str, amr: &[String]) {
    h.provider
        .event(EventKind::LoginFailed, "staff", uid, client_id, source, detail, amr, "")
        .await;
}

// ---- TOTP enrolment --------------------------------------------------------------------------

/// Whether this session may set an authenticator app or add a security key: with a factor
/// already, the session must have proved one (a code or a key), so a password alone cannot
/// lock the real owner out or add an attacker's key; a first one needs an enrolment code an
/// administrator issued. `Ok(true)` = a first one.
pub(super) async fn may_enrol(h: &Http, session: &Session) -> Result<bool, Response> {
    let has_factor = match h.provider.store.person("uid", &session.subject).await {
        Ok(Some((p, _, _))) => p.has_second_factor(),
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
    if has_factor && !crate::model::has_second_factor(&session.amr) {
        return Err(html(
            StatusCode::FORBIDDEN,
            pages::error(
                "Sign in with your second factor first",
                "You already have an authenticator app or a security key. To change them, sign in with a code, a recovery code or your key first; if you have lost them, ask your administrator.",
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
    let (codes, hashes) = new_recovery_codes();
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
    factor_enrolled(&h, &mut session, "otp", EventKind::TotpEnrolled).await;
    html(StatusCode::OK, pages::recovery_codes(&codes))
}
