//! The sign-in page (password, lockout, throttling) and the role choice for staff with several
//! role profiles.

use super::*;

pub(super) async fn client_name(h: &Http, req: &AuthRequest) -> String {
    match h.provider.client(&req.client_id).await {
        Ok(Some(c)) => c.name,
        _ => req.client_id.clone(),
    }
}

pub(super) async fn login_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    let req = match load_request(&h, &q.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = client_name(&h, &req).await;
    let upstreams = upstream_buttons(&h);
    h.page_with_csrf(&headers, |csrf| {
        pages::login(&q.req, csrf, &name, &req.login_hint, "", &upstreams)
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LoginForm {
    req: String,
    csrf: String,
    username: String,
    password: String,
}

/// Who a username belongs to, with their password hash and TOTP enrolment.
pub(super) struct Account {
    pub(super) kind: SubjectKind,
    pub(super) subject: String,
    pub(super) hash: String,
    pub(super) second_factor: bool,
}

/// Records a sign-in event about `a` (failures and lockouts carry no factors).
async fn account_event(h: &Http, kind: EventKind, a: &Account, client_id: &str, source: &str, detail: &str) {
    h.provider
        .event(kind, a.kind.as_str(), &a.subject, client_id, source, detail, &[], "")
        .await;
}

pub(super) async fn find_account(h: &Http, username: &str) -> Result<Option<Account>, OAuthError> {
    if let Some((p, hash, _)) = h.provider.store.person("username", username).await? {
        return Ok(Some(Account {
            kind: SubjectKind::Staff,
            second_factor: p.has_second_factor(),
            subject: p.uid,
            hash,
        }));
    }
    if let Some((p, hash, _)) = h.provider.store.patient("username", username).await? {
        return Ok(Some(Account {
            kind: SubjectKind::Patient,
            subject: p.nhs_number,
            hash,
            second_factor: false,
        }));
    }
    Ok(None)
}

pub(super) async fn login_submit(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let req = match posted_request(&h, &headers, &form.csrf, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = client_name(&h, &req).await;
    let upstreams = upstream_buttons(&h);
    let again = |h: &Http, msg: &str, status: StatusCode| {
        let mut r = h.page_with_csrf(&headers, |csrf| {
            pages::login(&form.req, csrf, &name, &form.username, msg, &upstreams)
        });
        *r.status_mut() = status;
        r
    };
    let ip = h.client(addr, &headers);
    let source = ip.to_string();
    let unavailable = |h: &Http, e: OAuthError| again(h, &e.description, StatusCode::SERVICE_UNAVAILABLE);
    // Every attempt is counted before anything is checked, in the database every replica
    // shares, so parallel guesses cannot slip in between a check and its count.
    match h.count_address(ip).await {
        Ok(AddressCheck::Counted) => {}
        Ok(AddressCheck::Throttled) => {
            return again(
                &h,
                "Too many failed sign-in attempts from your network. Wait a minute and try again.",
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
        Err(e) => return unavailable(&h, e),
    }
    let username = form.username.trim().to_string();
    let account = match find_account(&h, &username).await {
        Ok(a) => a,
        Err(e) => return unavailable(&h, e),
    };
    let now = now();
    let policy = h.provider.config.lock_policy();
    let mut counted = None;
    if let Some(a) = &account {
        match h.provider.store.count_attempt(a.kind, &a.subject, now, &policy).await {
            Ok(Some(lock)) => counted = Some(lock),
            Ok(None) => {
                account_event(&h, EventKind::LoginFailed, a, &req.client_id, &source, "account locked").await;
                // The same work and the same answer as for a wrong password or an unknown
                // username, unless the password is right: only the owner learns of the lock.
                let right = h.provider.hasher.verify(form.password.clone(), a.hash.clone()).await;
                if !right {
                    return again(&h, "Incorrect username or password.", StatusCode::UNAUTHORIZED);
                }
                return again(
                    &h,
                    "This account is locked after too many failed sign-in attempts. Try again later or contact your administrator.",
                    StatusCode::FORBIDDEN,
                );
            }
            // Lockout must not silently stop counting: refuse this attempt as unavailable.
            Err(e) => return unavailable(&h, e.into()),
        }
    }
    // Unknown usernames still cost one Argon2 verification, so timing does not reveal accounts.
    let hash = account.as_ref().map(|a| a.hash.clone()).unwrap_or_default();
    let ok = h.provider.hasher.verify(form.password.clone(), hash).await;
    let account = match (account, counted) {
        (Some(a), Some(_)) if ok => a,
        (Some(a), Some(lock)) => {
            account_event(
                &h,
                EventKind::LoginFailed,
                &a,
                &req.client_id,
                &source,
                "wrong password",
            )
            .await;
            if lock.until > 0 {
                let detail = format!("locked until {}", lock.until);
                account_event(&h, EventKind::AccountLocked, &a, &req.client_id, &source, &detail).await;
            }
            return again(&h, "Incorrect username or password.", StatusCode::UNAUTHORIZED);
        }
        _ => {
            // Recorded without the name typed (it may be a password typed in the wrong box).
            h.provider
                .event(
                    EventKind::LoginFailed,
                    "unknown",
                    "",
                    &req.client_id,
                    &source,
                    "unknown username",
                    &[],
                    "",
                )
                .await;
            return again(&h, "Incorrect username or password.", StatusCode::UNAUTHORIZED);
        }
    };
    h.address_succeeded(ip).await;
    // With a second factor still owed, the count stands until that is right too: otherwise
    // someone holding the password could clear it between guesses at the code.
    if !account.second_factor
        && let Err(e) = h.provider.store.clear_failures(account.kind, &account.subject).await
    {
        return unavailable(&h, e.into());
    }
    let signed_in = h
        .sign_in(
            account.kind,
            &account.subject,
            vec!["pwd".into()],
            account.second_factor,
            &req.client_id,
            &source,
            "",
        )
        .await;
    match signed_in {
        Ok(cookie) => h.resume_with_cookie(&form.req, &cookie),
        Err(e) => unavailable(&h, e),
    }
}

impl Http {
    /// Starts a session for a subject who has just authenticated; returns the cookie value.
    /// The login event is written now unless a second factor is still owed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sign_in(
        &self,
        kind: SubjectKind,
        subject: &str,
        amr: Vec<String>,
        mfa_pending: bool,
        client_id: &str,
        source: &str,
        detail: &str,
    ) -> Result<String, OAuthError> {
        let now = now();
        let cookie_value = jose::random_token(32);
        let session = Session {
            id: jose::random_token(16),
            subject_kind: kind,
            subject: subject.to_string(),
            auth_time: now,
            last_seen: now,
            expires_at: now + self.provider.config.session_absolute_secs,
            amr,
            mfa_pending,
            selected_role: String::new(),
            revoked: false,
        };
        self.provider
            .store
            .insert_session(&session, &jose::sha256_b64(&cookie_value))
            .await?;
        if !mfa_pending {
            self.provider
                .event(
                    EventKind::LoginSucceeded,
                    kind.as_str(),
                    subject,
                    client_id,
                    source,
                    detail,
                    &session.amr,
                    acr_for(&session.amr),
                )
                .await;
        }
        Ok(cookie_value)
    }

    /// Sets the session cookie and continues the parked request.
    pub(super) fn resume_with_cookie(&self, req: &str, cookie: &str) -> Response {
        let mut r = see_other(&format!("/oauth2/resume?req={req}"));
        set_cookie(
            &mut r,
            &self.session_cookie,
            cookie,
            self.provider.config.session_absolute_secs,
            self.secure(),
        );
        r
    }
}

pub(super) fn upstream_buttons(h: &Http) -> Vec<(String, String)> {
    h.provider
        .broker
        .upstreams()
        .iter()
        .map(|u| (u.name.clone(), u.display_name.clone()))
        .collect()
}

pub(super) async fn role_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    if let Err(r) = load_request(&h, &q.req).await {
        return r;
    }
    let session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff => s,
        _ => return see_other(&format!("/oauth2/login?req={}", q.req)),
    };
    let Ok(Some((person, _, _))) = h.provider.store.person("uid", &session.subject).await else {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Sign-in is unavailable", "Try again shortly."),
        );
    };
    let codes: Vec<&str> = person.roles.iter().map(|r| r.org_code.as_str()).collect();
    let names = h.provider.store.organisation_names(&codes).await.unwrap_or_default();
    h.page_with_csrf(&headers, |csrf| pages::select_role(&q.req, csrf, &person.roles, &names))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RoleForm {
    req: String,
    csrf: String,
    role: String,
}

pub(super) async fn role_submit(State(h): State<Http>, headers: HeaderMap, Form(form): Form<RoleForm>) -> Response {
    let req = match posted_request(&h, &headers, &form.csrf, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff && !s.mfa_pending => s,
        _ => return see_other(&format!("/oauth2/login?req={}", form.req)),
    };
    let Ok(Some((person, _, _))) = h.provider.store.person("uid", &session.subject).await else {
        return see_other(&format!("/oauth2/login?req={}", form.req));
    };
    if !person.roles.iter().any(|r| r.person_roleid == form.role) {
        return html(
            StatusCode::BAD_REQUEST,
            pages::error("Choose a role", "role: not one of your role profiles."),
        );
    }
    session.selected_role = form.role.clone();
    if let Err(e) = h.provider.store.update_session(&session).await {
        return error_back(
            &h,
            &req,
            OAuthErrorCode::TemporarilyUnavailable,
            &OAuthError::from(e).description,
        );
    }
    h.provider
        .event(
            EventKind::RoleSelected,
            "staff",
            &person.uid,
            &req.client_id,
            "",
            &form.role,
            &[],
            "",
        )
        .await;
    // Not "fresh": prompt=select_account has been answered.
    proceed(&h, &headers, &form.req, &req, false).await
}
