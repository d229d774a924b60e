//! Passkeys and security keys (WebAuthn) as a second factor: added on the account page, used
//! on the sign-in page. The browser side is `/oauth2/webauthn.js` (the pages allow no inline
//! script); the server keeps each ceremony's challenge and takes it once.

use webauthn_rs::prelude::RegisterPublicKeyCredential;
use webauthn_rs::prelude::{Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential};

use super::*;
use crate::store::SecurityKey;
use crate::webauthn::{CEREMONY_SECS, amr_for, user_handle};

/// The browser half of the ceremonies, served at [`SCRIPT_PATH`].
const SCRIPT: &str = include_str!("webauthn.js");
/// Where [`SCRIPT`] is served.
pub(super) const SCRIPT_PATH: &str = "/oauth2/webauthn.js";

/// The longest name a key may be given.
const NAME_MAX: usize = 60;

pub(super) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// A refusal for the page's script: JSON `{"error": "field: reason"}`, shown as it is.
struct Refusal {
    status: StatusCode,
    error: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_response(self.status.as_u16(), json!({"error": self.error}))
    }
}

fn refusal(status: StatusCode, field: &str, why: &str) -> Refusal {
    Refusal {
        status,
        error: format!("{field}: {why}"),
    }
}

fn refused(status: StatusCode, field: &str, why: &str) -> Response {
    refusal(status, field, why).into_response()
}

fn unavailable(e: impl Into<OAuthError>) -> Response {
    refused(StatusCode::SERVICE_UNAVAILABLE, "server", &e.into().description)
}

/// A JSON body, or a `body:` error naming what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| refusal(StatusCode::BAD_REQUEST, "body", &format!("not the expected JSON ({e})")))
}

impl Http {
    /// Whether the sign-in page offers member of staff `uid` a passkey or security key.
    pub(super) async fn offers_keys(&self, uid: &str) -> bool {
        self.webauthn.is_some()
            && matches!(self.provider.store.person("uid", uid).await, Ok(Some((p, _, _))) if p.security_keys > 0)
    }

    /// The relying party, or the answer saying security keys are off on this deployment.
    fn relying_party(&self) -> Result<&webauthn_rs::Webauthn, Refusal> {
        self.webauthn.as_deref().ok_or_else(|| {
            refusal(
                StatusCode::NOT_FOUND,
                "issuer",
                "passkeys and security keys need identity's issuer to be a domain name (such as https://id.example.nhs.uk or http://localhost:8080), not an IP address",
            )
        })
    }

    /// The member of staff's credentials, parsed.
    async fn passkeys(&self, uid: &str) -> Result<Vec<(SecurityKey, Passkey)>, Refusal> {
        let unreadable = |why: String| refusal(StatusCode::SERVICE_UNAVAILABLE, "server", &why);
        let keys = self
            .provider
            .store
            .security_keys(uid)
            .await
            .map_err(|e| unreadable(OAuthError::from(e).description))?;
        keys.into_iter()
            .map(|k| match serde_json::from_str::<Passkey>(&k.passkey) {
                Ok(p) => Ok((k, p)),
                Err(e) => Err(unreadable(format!("stored security key {}: {e}", k.cred_id))),
            })
            .collect()
    }
}

/// Takes this session's `kind` ceremony (once) and reads its state: `Ok(None)` when there is
/// none in progress (used already, or expired).
async fn take_state<T: serde::de::DeserializeOwned>(
    h: &Http,
    session: &Session,
    kind: &str,
) -> Result<Option<T>, Response> {
    let state = h
        .provider
        .store
        .take_ceremony(&ceremony(session, kind), &session.subject, now())
        .await
        .map_err(unavailable)?;
    match state.map(|s| serde_json::from_str::<T>(&s)) {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t)),
        Some(Err(_)) => Err(unavailable(OAuthError::new(
            OAuthErrorCode::ServerError,
            "webauthn: unreadable ceremony state",
        ))),
    }
}

/// The ceremony id: one per session and kind, so a new start replaces the last.
fn ceremony(session: &Session, kind: &str) -> String {
    format!("{}:{kind}", session.id)
}

// ---- sign-in ---------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct SignInStart {
    req: String,
    csrf: String,
}

/// Starts a sign-in with a key: the challenge and the account's credentials, for
/// `navigator.credentials.get`.
pub(super) async fn sign_in_options(State(h): State<Http>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: SignInStart = match parse(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let wa = match h.relying_party() {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = posted_request(&h, &headers, &form.csrf, &form.req).await {
        return r;
    }
    let session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff => s,
        _ => return refused(StatusCode::UNAUTHORIZED, "session", "sign in with your password first"),
    };
    let keys = match h.passkeys(&session.subject).await {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    if keys.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            "credential",
            "this account has no passkey or security key: enter a code instead",
        );
    }
    let passkeys: Vec<Passkey> = keys.into_iter().map(|(_, p)| p).collect();
    let (options, state) = match wa.start_passkey_authentication(&passkeys) {
        Ok(x) => x,
        Err(e) => return unavailable(OAuthError::new(OAuthErrorCode::ServerError, format!("webauthn: {e}"))),
    };
    let state = serde_json::to_string(&state).unwrap_or_default();
    if let Err(e) = h
        .provider
        .store
        .put_ceremony(
            &ceremony(&session, "sign-in"),
            &session.subject,
            &state,
            now() + CEREMONY_SECS,
        )
        .await
    {
        return unavailable(e);
    }
    json_response(200, serde_json::to_value(options).unwrap_or_default())
}

#[derive(Deserialize)]
pub(super) struct SignInFinish {
    #[serde(default)]
    req: String,
    #[serde(default)]
    csrf: String,
    credential: Value,
}

/// Finishes a sign-in with a key: checks the authenticator's signature over this session's
/// challenge (taken once), counts a failure as a wrong code is counted, and on success signs
/// the session in with `hwk` or `swk`. Answers `{"redirect": …}`.
pub(super) async fn sign_in(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: SignInFinish = match parse(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let wa = match h.relying_party() {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let req = match posted_request(&h, &headers, &form.csrf, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff => s,
        _ => return refused(StatusCode::UNAUTHORIZED, "session", "sign in with your password first"),
    };
    let ip = h.client(addr, &headers);
    let attempt = match count_second_factor(&h, ip, &session, &req.client_id).await {
        Ok(a) => a,
        Err(msg) => return refused(StatusCode::UNAUTHORIZED, "credential", &msg.0),
    };
    let state: PasskeyAuthentication = match take_state(&h, &session, "sign-in").await {
        Ok(Some(s)) => s,
        Ok(None) => {
            attempt.failed(&h, "security key: no challenge in progress").await;
            return refused(
                StatusCode::UNAUTHORIZED,
                "credential",
                "no sign-in with a key is in progress (each answer works once, within 5 minutes): try again",
            );
        }
        Err(r) => return r,
    };
    let checked = serde_json::from_value::<PublicKeyCredential>(form.credential)
        .map_err(|e| format!("not a WebAuthn assertion ({e})"))
        .and_then(|c| {
            wa.finish_passkey_authentication(&c, &state)
                .map_err(|e| format!("the key's answer is not valid ({e})"))
        });
    let result = match checked {
        Ok(r) => r,
        Err(why) => {
            attempt.failed(&h, "security key refused").await;
            return refused(StatusCode::UNAUTHORIZED, "credential", &why);
        }
    };
    // The signature counter (a cloned key shows up as one that goes backwards) and last use.
    let keys = match h.passkeys(&session.subject).await {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let Some((key, mut passkey)) = keys.into_iter().find(|(_, p)| p.cred_id() == result.cred_id()) else {
        attempt.failed(&h, "security key removed").await;
        return refused(
            StatusCode::UNAUTHORIZED,
            "credential",
            "this key is no longer registered",
        );
    };
    passkey.update_credential(&result);
    let stored = serde_json::to_string(&passkey).unwrap_or(key.passkey);
    if let Err(e) = h
        .provider
        .store
        .used_security_key(&session.subject, &key.cred_id, &stored, now())
        .await
    {
        return unavailable(e);
    }
    if let Err(msg) = second_factor_passed(&h, ip, &mut session, amr_for(&stored), &req.client_id).await {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "server", &msg.0);
    }
    json_response(200, json!({"redirect": format!("/oauth2/resume?req={}", form.req)}))
}

// ---- the account page ------------------------------------------------------------------------

/// The member of staff's session for the account page, or the page saying why not.
async fn account_session(h: &Http, headers: &HeaderMap) -> Result<Session, (StatusCode, &'static str, &'static str)> {
    match h.session(headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff && !s.mfa_pending => Ok(s),
        Ok(Some(_)) => Err((
            StatusCode::FORBIDDEN,
            "Not available",
            "Passkeys and security keys are for staff accounts, once signed in.",
        )),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "Sign in to an app, then come back to add a passkey or security key.",
        )),
    }
}

/// The account's keys and the form to add one.
pub(super) async fn keys_page(State(h): State<Http>, headers: HeaderMap) -> Response {
    let session = match account_session(&h, &headers).await {
        Ok(s) => s,
        Err((status, title, why)) => return html(status, pages::error(title, why)),
    };
    if h.webauthn.is_none() {
        return html(
            StatusCode::NOT_FOUND,
            pages::error(
                "Not available here",
                "Passkeys and security keys need this sign-in service to be reached by a domain name, not an IP address. Use an authenticator app instead.",
            ),
        );
    }
    let first = match may_enrol(&h, &session).await {
        Ok(first) => first,
        Err(r) => return r,
    };
    let keys = match h.provider.store.security_keys(&session.subject).await {
        Ok(k) => k,
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::error("Try again", &OAuthError::from(e).description),
            );
        }
    };
    h.page_with_csrf(&headers, |csrf| pages::security_keys(csrf, &keys, first))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AddStart {
    csrf: String,
}

/// Starts adding a key: the challenge for `navigator.credentials.create`, excluding the keys
/// the account has already.
pub(super) async fn add_options(State(h): State<Http>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: AddStart = match parse(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let wa = match h.relying_party() {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    if !csrf_ok(&h, &headers, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, "csrf", "the page has expired: reload it");
    }
    let session = match account_session(&h, &headers).await {
        Ok(s) => s,
        Err((status, _, why)) => return refused(status, "session", why),
    };
    if let Err(r) = may_enrol(&h, &session).await {
        return refused(r.status(), "session", "sign in with your existing second factor first");
    }
    let person = match h.provider.store.person("uid", &session.subject).await {
        Ok(Some((p, _, _))) => p,
        Ok(None) => return refused(StatusCode::UNAUTHORIZED, "session", "your account was not found"),
        Err(e) => return unavailable(e),
    };
    let keys = match h.passkeys(&person.uid).await {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let exclude = keys.iter().map(|(_, p)| p.cred_id().clone()).collect::<Vec<_>>();
    let display = format!("{} {}", person.given_name, person.family_name);
    let started = wa.start_passkey_registration(
        user_handle(&person.uid),
        &person.username,
        display.trim(),
        (!exclude.is_empty()).then_some(exclude),
    );
    let (options, state) = match started {
        Ok(x) => x,
        Err(e) => return unavailable(OAuthError::new(OAuthErrorCode::ServerError, format!("webauthn: {e}"))),
    };
    let state = serde_json::to_string(&state).unwrap_or_default();
    if let Err(e) = h
        .provider
        .store
        .put_ceremony(&ceremony(&session, "add"), &person.uid, &state, now() + CEREMONY_SECS)
        .await
    {
        return unavailable(e);
    }
    json_response(200, serde_json::to_value(options).unwrap_or_default())
}

#[derive(Deserialize)]
pub(super) struct AddFinish {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    enrolment_code: String,
    credential: Value,
}

/// Finishes adding a key: checks the authenticator's answer to this session's challenge, uses
/// up the administrator's enrolment code for a first factor (then issues recovery codes), and
/// stores the credential unless it is registered already. Answers `{"added": name,
/// "recovery_codes": […]}`.
pub(super) async fn add(State(h): State<Http>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: AddFinish = match parse(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let wa = match h.relying_party() {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    if !csrf_ok(&h, &headers, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, "csrf", "the page has expired: reload it");
    }
    let mut session = match account_session(&h, &headers).await {
        Ok(s) => s,
        Err((status, _, why)) => return refused(status, "session", why),
    };
    let first = match may_enrol(&h, &session).await {
        Ok(first) => first,
        Err(r) => return refused(r.status(), "session", "sign in with your existing second factor first"),
    };
    let name = form.name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX {
        return refused(
            StatusCode::BAD_REQUEST,
            "name",
            &format!("give the key a name of 1 to {NAME_MAX} characters, such as \"Work laptop\""),
        );
    }
    let state: PasskeyRegistration = match take_state(&h, &session, "add").await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "credential",
                "no key is being added (each answer works once, within 5 minutes): try again",
            );
        }
        Err(r) => return r,
    };
    let checked = serde_json::from_value::<RegisterPublicKeyCredential>(form.credential)
        .map_err(|e| format!("not a WebAuthn registration ({e})"))
        .and_then(|c| {
            wa.finish_passkey_registration(&c, &state)
                .map_err(|e| format!("the key's answer is not valid ({e})"))
        });
    let passkey = match checked {
        Ok(p) => p,
        Err(why) => return refused(StatusCode::BAD_REQUEST, "credential", &why),
    };
    // A first factor: the administrator's one-time code, used up only now that the key's
    // answer is right (so a cancelled prompt does not cost it).
    if first {
        match h
            .provider
            .store
            .take_enrolment(&session.subject, &jose::sha256_b64(form.enrolment_code.trim()), now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "enrolment_code",
                    "not a current enrolment code for you. Ask your administrator for one (it works once, for 72 hours)",
                );
            }
            Err(e) => return unavailable(e),
        }
    }
    let stored = serde_json::to_string(&passkey).unwrap_or_default();
    let key = SecurityKey {
        cred_id: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(passkey.cred_id().as_slice()),
        name: name.to_string(),
        passkey: stored.clone(),
        created_at: now(),
        last_used: 0,
    };
    match h.provider.store.add_security_key(&session.subject, &key).await {
        Ok(true) => {}
        Ok(false) => {
            return refused(StatusCode::CONFLICT, "credential", "this key is registered already");
        }
        Err(e) => return unavailable(e),
    }
    let mut recovery = Vec::new();
    if first {
        let hashes;
        (recovery, hashes) = new_recovery_codes();
        if let Err(e) = h.provider.store.set_recovery_codes(&session.subject, &hashes).await {
            return unavailable(e);
        }
    }
    // The key answered with user verification: the session has proved it.
    factor_enrolled(&h, &mut session, amr_for(&stored), EventKind::SecurityKeyAdded).await;
    json_response(200, json!({"added": name, "recovery_codes": recovery}))
}
