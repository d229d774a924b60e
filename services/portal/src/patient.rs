//! The patient's passport pages (`/passport`), also inside the NHS App's web view: my record by
//! section (each section a deep link), my sharing choices (withhold a category, my
//! representatives, the national opt-out and GP dissent in plain words), and who has looked at
//! my record, each entry marked verified only when its inclusion proof checks against the audit
//! log's own key. A break-glass on my record is a notice at the top of every page until I say
//! I have seen it.

use sharedcare_kit::access::Outcome;
use sharedcare_kit::edge::{Refusal, Refuse};
use sharedcare_kit::json::Fields;
use std::collections::HashMap;

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use http::request::Parts;
use maud::{Markup, html};
use sharedcare_kit::nhs::ProofingLevel;
use sharedcare_proto::consent::v1::{Directive, ListDirectivesRequest, PutDirectiveRequest};
use sharedcare_proto::passport::v1::{
    GetPassportRequest, GetSharingChoicesRequest, ListAccessLogRequest, PassportView, SectionKind, SharingChoices,
};

use crate::error::PortalError;
use crate::forms;
use crate::page::{self, Area, Chrome};
use crate::peers::{as_user, name_of};
use crate::session::Who;
use crate::web::{App, Signed, html, return_path, see_other};

/// Categories a patient can withhold, as HL7 v3 ActCode sensitivity labels, in plain words.
pub const CATEGORIES: &[(&str, &str)] = &[
    ("SEX", "Sexual and reproductive health"),
    ("PSY", "Mental health"),
    ("ETH", "Drug and alcohol use"),
    ("HIV", "HIV"),
    ("SDV", "Sexual assault and domestic violence"),
    ("GDIS", "Genetic conditions"),
];

const LABELS: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// The passport pages' routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/passport", get(|| async { see_other("/passport/") }))
        .route("/passport/", get(home))
        .route("/passport/record", get(record))
        .route("/passport/record/{section}", get(section))
        .route("/passport/sharing", get(sharing))
        .route("/passport/sharing/withhold", post(withhold))
        .route("/passport/sharing/{id}/stop", post(stop_withholding))
        .route("/passport/access-log", get(access_log))
        .route("/passport/notices/seen", post(notice_seen))
}

/// A proofing level a page requires, as a type: `Patient<P9>` is a patient proven at P9.
pub(crate) trait Level {
    /// The level.
    const LEVEL: ProofingLevel;
}

/// NHS login's high level of proof: what seeing one's own record needs.
pub(crate) struct P9;

impl Level for P9 {
    const LEVEL: ProofingLevel = ProofingLevel::P9;
}

/// The signed-in patient, proven at level `L` at least, and their NHS number: a handler that
/// takes one cannot run for anyone else. Otherwise the request gets what it needs instead:
/// sign-in (silently when the NHS App sent `assertedLoginIdentity`), the start page, the page
/// explaining the proofing level, or a refusal for staff.
pub(crate) struct Patient<L: Level> {
    pub(crate) signed: Signed,
    pub(crate) nhs_number: String,
    level: PhantomData<L>,
}

impl<L: Level> FromRequestParts<App> for Patient<L> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let here = return_path(parts, form_page);
        let s = match app.signed(&parts.headers, &here).await {
            Ok(s) => s,
            Err(PortalError::SignIn(_)) => return Err(sign_in(parts, &here)),
            Err(e) => return Err(e.into_response()),
        };
        let Who::Patient {
            nhs_number, proofing, ..
        } = &s.session.who
        else {
            return Err(PortalError::forbidden(
                "These pages are for patients. Staff open records in the shared care record at /portal/.",
            )
            .into_response());
        };
        if *proofing < L::LEVEL {
            return Err(html(needs_level(&s, *proofing, L::LEVEL)));
        }
        let nhs_number = nhs_number.clone();
        Ok(Patient {
            signed: s,
            nhs_number,
            level: PhantomData,
        })
    }
}

/// The page a passport form was posted from.
fn form_page(path: &str) -> String {
    if path.starts_with("/passport/sharing") {
        "/passport/sharing".into()
    } else {
        "/passport/".into()
    }
}

/// Where a signed-out person goes: NHS login (passing on the NHS App's
/// `assertedLoginIdentity`), or the start page when they opened it themselves.
fn sign_in(parts: &Parts, here: &str) -> Response {
    let q: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut to = url::form_urlencoded::Serializer::new(String::new());
    to.append_pair("return_to", here);
    if let Some(a) = q.get("assertedLoginIdentity").filter(|a| !a.is_empty()) {
        to.append_pair("assertedLoginIdentity", a);
    } else if here == "/passport/" {
        return html(signed_out(
            crate::web::in_nhs_app(&parts.headers),
            q.contains_key("signin"),
        ));
    }
    see_other(&format!("/passport/login?{}", to.finish()))
}

fn chrome(s: &Signed) -> Chrome<'_> {
    s.chrome(Area::Passport)
}

fn signed_out(nhs_app: bool, retry: bool) -> Markup {
    page::page(
        &Chrome {
            nhs_app,
            area: Area::Passport,
            signed_in: None,
        },
        "Your health and care record",
        html! {
            h1 { "Your health and care record" }
            @if retry { p class="nhsuk-inset-text" id="signin-needed" { "You need to sign in again to see your record." } }
            p class="nhsuk-lede-text" { "See what your GP, hospital, community and social care teams record about you, choose what is shared, and see who has looked at your record." }
            a class="nhsuk-button" href="/passport/login" id="sign-in" draggable="false" role="button" { "Continue with NHS login" }
            p { "You need to have proved who you are with NHS login (for example with photo ID) to see your record." }
        },
    )
}

fn needs_level(s: &Signed, level: ProofingLevel, needed: ProofingLevel) -> Markup {
    page::page(
        &chrome(s),
        "Prove who you are to see your record",
        html! {
            h1 { "Prove who you are to see your record" }
            p id="proofing-needed" { "Your NHS login is set up at level " (level) ". To see your health and care record you need the highest level, " (needed) ", which means proving who you are with photo ID and a video or face scan, or with your GP practice." }
            p { "Open the NHS App or your NHS login account and choose " strong { "Prove who you are" } ". Then come back here." }
        },
    )
}

/// The break-glass notices this patient has not yet seen, as a banner with a button to
/// dismiss each.
async fn notices(app: &App, s: &Signed, nhs: &str, choices: Option<&SharingChoices>) -> Result<Markup, PortalError> {
    let fetched;
    let choices = match choices {
        Some(c) => c,
        None => {
            let req = GetSharingChoicesRequest { nhs_number: nhs.into() };
            fetched = app
                .peers
                .passport()
                .get_sharing_choices(as_user(&s.session.tokens.access_token, req)?)
                .await?
                .into_inner();
            &fetched
        }
    };
    let seen = app.sessions.notices_seen(nhs).await?;
    let names = app.peers.organisation_names().await;
    let unseen: Vec<_> = choices
        .break_glass
        .iter()
        .filter(|n| !seen.contains(&notice_key(n)))
        .collect();
    Ok(html! {
        @for n in unseen {
            div class="nhsuk-notification-banner" role="region" aria-labelledby={ "notice-title-" (notice_key(n)) } data-module="nhsuk-notification-banner" id="break-glass-notice" {
                div class="nhsuk-notification-banner__header" {
                    h2 class="nhsuk-notification-banner__title" id={ "notice-title-" (notice_key(n)) } { "Important" }
                }
                div class="nhsuk-notification-banner__content" {
                    p class="nhsuk-notification-banner__heading" { "Someone used emergency access to see your record" }
                    p { "A member of staff at " (name_of(&names, &n.ods_code)) " opened your record on " (page::time(n.start.as_ref())) " without an existing care relationship, giving the reason: " (n.reason_text) ". Emergency access is reviewed by information governance. You can see it in " a href="/passport/access-log" { "who has looked at your record" } "." }
                    form method="post" action="/passport/notices/seen" {
                        input type="hidden" name="csrf" value=(s.session.csrf);
                        input type="hidden" name="notice" value=(notice_key(n));
                        button class="nhsuk-button nhsuk-button--secondary nhsuk-button--small" type="submit" id="notice-seen" { "I have seen this" }
                    }
                }
            }
        }
    })
}

fn notice_key(n: &sharedcare_proto::passport::v1::BreakGlassNotice) -> String {
    format!(
        "{}-{}",
        n.ods_code,
        n.start.as_ref().map(|t| t.seconds).unwrap_or_default()
    )
}

async fn home(State(app): State<App>, patient: Patient<P9>) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    let banner = notices(&app, &s, &nhs, None).await?;
    Ok(html(page::page(
        &chrome(&s),
        "Your health and care record",
        html! {
            (banner)
            h1 { "Your health and care record" }
            ul class="nhsuk-list" {
                li { a class="nhsuk-action-link__link" href="/passport/record" id="link-record" { "Your record" } " – what your care teams record about you, by section" }
                li { a href="/passport/sharing" id="link-sharing" { "Your sharing choices" } " – what is shared, and with whom" }
                li { a href="/passport/access-log" id="link-access-log" { "Who has looked at your record" } " – every access, checked against the audit log" }
            }
        },
    )))
}

fn slug(kind: i32) -> String {
    SectionKind::try_from(kind)
        .map(|k| k.as_str_name().to_ascii_lowercase().replace('_', "-"))
        .unwrap_or_default()
}

async fn view(app: &App, s: &Signed, nhs: &str) -> Result<PassportView, PortalError> {
    let req = GetPassportRequest {
        nhs_number: nhs.into(),
        purpose: String::new(),
    };
    Ok(app
        .peers
        .passport()
        .get_passport(as_user(&s.session.tokens.access_token, req)?)
        .await?
        .into_inner())
}

async fn record(State(app): State<App>, patient: Patient<P9>) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    let (v, banner) = tokio::try_join!(view(&app, &s, &nhs), notices(&app, &s, &nhs, None))?;
    let names = app.peers.organisation_names().await;
    let d = v.demographics.clone().unwrap_or_default();
    Ok(html(page::page(
        &chrome(&s),
        "Your record",
        html! {
            (banner)
            h1 { "Your record" }
            (page::summary_list(&[
                ("Name", format!("{} {}", d.given_name, d.family_name)),
                ("NHS number", page::nhs_number(&v.nhs_number)),
                ("Date of birth", page::date(&d.birth_date)),
            ]))
            nav class="nhsuk-contents-list" role="navigation" aria-label="Sections" {
                h2 class="nhsuk-u-visually-hidden" { "Sections" }
                ol class="nhsuk-contents-list__list" {
                    @for sec in &v.sections {
                        li class="nhsuk-contents-list__item" {
                            a class="nhsuk-contents-list__link" href={ "/passport/record/" (slug(sec.kind)) } { (sec.title) " (" (sec.entries.len()) ")" }
                        }
                    }
                }
            }
            h2 { "Your care team" }
            @if v.care_team.is_empty() { p { "No care team is recorded." } } @else {
                ul class="nhsuk-list nhsuk-list--bullet" id="care-team" {
                    @for m in &v.care_team { li { (if m.organisation_name.is_empty() { name_of(&names, &m.ods_code) } else { &m.organisation_name }) @if !m.role.is_empty() { " – " (m.role) } } }
                }
            }
        },
    )))
}

async fn section(
    State(app): State<App>,
    patient: Patient<P9>,
    Path(name): Path<String>,
) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    let (v, banner) = tokio::try_join!(view(&app, &s, &nhs), notices(&app, &s, &nhs, None))?;
    let names = app.peers.organisation_names().await;
    let Some(sec) = v.sections.iter().find(|x| slug(x.kind) == name) else {
        return Err(PortalError::from(Refusal::NotFound(format!(
            "There is no section called {name:?} in your record."
        ))));
    };
    Ok(html(page::page(
        &chrome(&s),
        &sec.title,
        html! {
            (banner)
            span class="nhsuk-caption-l" { "Your record" }
            h1 { (sec.title) }
            @if sec.entries.is_empty() { p { "Nothing is recorded." } } @else {
                ul class="nhsuk-list" id="entries" {
                    @for e in &sec.entries {
                        li {
                            (e.summary) br;
                            span class="sc-entry-meta" { (page::meta(&[page::date(&e.date), e.status.clone(), format!("recorded by {}", name_of(&names, &e.source_organisation))])) }
                        }
                    }
                }
            }
            p { a href="/passport/record" { "Back to your record" } }
        },
    )))
}

async fn choices(app: &App, s: &Signed, nhs: &str) -> Result<SharingChoices, PortalError> {
    let req = GetSharingChoicesRequest { nhs_number: nhs.into() };
    Ok(app
        .peers
        .passport()
        .get_sharing_choices(as_user(&s.session.tokens.access_token, req)?)
        .await?
        .into_inner())
}

/// The category a directive withholds when it is one these pages make: a deny of exactly one
/// of [`CATEGORIES`]' labels (`provision_json` as consent's policy reads it).
fn withheld_category(provision_json: &str) -> Option<&'static (&'static str, &'static str)> {
    let p: serde_json::Value = serde_json::from_str(provision_json).ok()?;
    if p.get("type").and_then(serde_json::Value::as_str) != Some("deny") {
        return None;
    }
    let labels = p.get("securityLabel")?.as_array()?;
    let [label] = labels.as_slice() else { return None };
    let code = label.as_str()?;
    let others = p
        .as_object()?
        .iter()
        .any(|(k, v)| !matches!(k.as_str(), "type" | "securityLabel") && !v.is_null() && v != &serde_json::json!([]));
    (!others).then(|| CATEGORIES.iter().find(|(c, _)| *c == code)).flatten()
}

async fn sharing(State(app): State<App>, patient: Patient<P9>) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    let c = choices(&app, &s, &nhs).await?;
    Ok(html(sharing_page(&app, &s, &nhs, &c, &[]).await?))
}

async fn sharing_page(
    app: &App,
    s: &Signed,
    nhs: &str,
    c: &SharingChoices,
    errors: &[(&str, String)],
) -> Result<Markup, PortalError> {
    let banner = notices(app, s, nhs, Some(c)).await?;
    let active: Vec<_> = c.directives.iter().filter(|d| d.status == "active").collect();
    Ok(page::page(
        &chrome(s),
        "Your sharing choices",
        html! {
            (page::error_summary(errors))
            (banner)
            h1 { "Your sharing choices" }
            h2 { "What you have chosen not to share" }
            @if active.is_empty() { p id="no-directives" { "You share your whole record with the people caring for you." } } @else {
                ul class="nhsuk-list" id="directives" {
                    @for d in &active {
                        li {
                            (d.summary)
                            @if withheld_category(&d.provision_json).is_some() {
                                form method="post" action={ "/passport/sharing/" (d.id) "/stop" } class="sc-inline-form" {
                                    input type="hidden" name="csrf" value=(s.session.csrf);
                                    " "
                                    button class="nhsuk-button nhsuk-button--secondary nhsuk-button--small" type="submit" { "Share this again" }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action="/passport/sharing/withhold" novalidate {
                input type="hidden" name="csrf" value=(s.session.csrf);
                div class={ "nhsuk-form-group" @if !errors.is_empty() { " nhsuk-form-group--error" } } {
                    fieldset class="nhsuk-fieldset" aria-describedby="category-hint" {
                        legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--m" { h2 class="nhsuk-fieldset__heading" { "Stop sharing a kind of information" } }
                        div class="nhsuk-hint" id="category-hint" { "Staff caring for you will not see it, except in an emergency, which is logged and reviewed. You will still see it." }
                        @for (field, m) in errors { span class="nhsuk-error-message" id={ (field) "-error" } { span class="nhsuk-u-visually-hidden" { "Error: " } (m) } }
                        div class="nhsuk-radios" id="category" {
                            @for (i, (code, words)) in CATEGORIES.iter().enumerate() {
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id={ "category-" (i) } name="category" type="radio" value=(code);
                                    label class="nhsuk-label nhsuk-radios__label" for={ "category-" (i) } { (words) }
                                }
                            }
                        }
                    }
                }
                button class="nhsuk-button" type="submit" id="withhold" { "Stop sharing this" }
            }
            h2 { "The national data opt-out" }
            p id="opt-out" { (c.national_opt_out_words) }
            h2 { "Your GP record" }
            p id="gp-dissent" { (c.gp_dissent_words) }
            h2 { "People who can act for you" }
            @if c.representatives.is_empty() { p id="no-representatives" { "Nobody is recorded as able to act for you." } } @else {
                ul class="nhsuk-list" id="representatives" {
                    @for r in &c.representatives {
                        li { (r.kind_words) ", NHS number " (page::nhs_number(&r.representative_nhs_number)) ", since " (page::time(r.start.as_ref()))
                            @if r.end.is_some() { ", until " (page::time(r.end.as_ref())) } }
                    }
                }
            }
            p { "To add or end a lasting power of attorney or a deputyship, contact your GP practice: they check the documents and record it." }
        },
    ))
}

/// The patient's directives as consent holds them now (the source of truth, so a change is
/// read back at once, whatever the passport's read model has reached).
async fn directives(app: &App, s: &Signed, nhs: &str) -> Result<Vec<Directive>, PortalError> {
    let req = ListDirectivesRequest { nhs_number: nhs.into() };
    Ok(app
        .peers
        .consent()
        .list_directives(as_user(&s.session.tokens.access_token, req)?)
        .await?
        .into_inner()
        .directives)
}

/// Sends a Consent resource to consent as the patient; returns the directive as stored (its
/// id is consent's when the resource had none).
async fn send_directive(app: &App, s: &Signed, resource: serde_json::Value) -> Result<Directive, PortalError> {
    let req = PutDirectiveRequest {
        directive: Some(Directive {
            resource_json: resource.to_string(),
            ..Default::default()
        }),
    };
    Ok(app
        .peers
        .consent()
        .put_directive(as_user(&s.session.tokens.access_token, req)?)
        .await?
        .into_inner())
}

/// A new Consent withholding `code` from everyone but the patient. It carries no id: consent
/// assigns one, so no two patients' choices can share it.
fn withholding_consent(nhs: &str, code: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "dateTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "deny", "securityLabel": [{"system": LABELS, "code": code}]},
    })
}

/// The stored Consent `d` with its status set to `status` (a change of an existing choice).
fn with_status(d: &Directive, status: &str) -> Result<serde_json::Value, PortalError> {
    let mut r: serde_json::Value = serde_json::from_str(&d.resource_json)
        .map_err(|e| PortalError::Internal(format!("consent sent a Consent that is not JSON: {e}")))?;
    r.put("status", status.into());
    r.put(
        "dateTime",
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into(),
    );
    Ok(r)
}

/// Waits (briefly) until the passport's sharing choices show directive `id` with `status`, so
/// the page the patient is sent to shows the change they just made.
async fn until_passport_shows(app: &App, s: &Signed, nhs: &str, id: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + READ_YOUR_WRITE;
    loop {
        if let Ok(c) = choices(app, s, nhs).await
            && c.directives.iter().any(|d| d.id == id && d.status == status)
        {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("the passport had not caught up with a sharing choice in time");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// How long a change of sharing choices waits for the passport to show it.
const READ_YOUR_WRITE: std::time::Duration = std::time::Duration::from_secs(5);

/// `POST /passport/sharing/withhold`: a directive that denies the category to everyone but the
/// patient, sent to consent (binding for the next read once it returns). Withholding what is
/// already withheld changes nothing; a choice made before and stopped is made active again.
async fn withhold(
    State(app): State<App>,
    patient: Patient<P9>,
    Form(form): Form<forms::Withhold>,
) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    s.check_csrf(&form)?;
    let code = form.category.clone();
    if !CATEGORIES.iter().any(|(c, _)| *c == code) {
        let c = choices(&app, &s, &nhs).await?;
        let errors = [("category", "Choose the kind of information to stop sharing".to_string())];
        let mut r = html(sharing_page(&app, &s, &nhs, &c, &errors).await?);
        *r.status_mut() = http::StatusCode::BAD_REQUEST;
        return Ok(r);
    }
    let mine = directives(&app, &s, &nhs).await?;
    let same = |d: &&Directive| withheld_category(&d.provision_json).is_some_and(|(c, _)| *c == code);
    let stored = match mine.iter().filter(same).min_by_key(|d| d.status != "active") {
        Some(d) if d.status == "active" => d.clone(),
        Some(stopped) => send_directive(&app, &s, with_status(stopped, "active")?).await?,
        None => send_directive(&app, &s, withholding_consent(&nhs, &code)).await?,
    };
    until_passport_shows(&app, &s, &nhs, &stored.id, "active").await;
    Ok(see_other("/passport/sharing"))
}

/// `POST /passport/sharing/{id}/stop`: shares a withheld category again.
async fn stop_withholding(
    State(app): State<App>,
    patient: Patient<P9>,
    Path(id): Path<String>,
    Form(form): Form<forms::Confirm>,
) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    s.check_csrf(&form)?;
    // Only the patient's own directives are listed, so another's id is simply not found.
    let mine = directives(&app, &s, &nhs).await?;
    let Some(d) = mine
        .iter()
        .find(|d| d.id == id && withheld_category(&d.provision_json).is_some())
    else {
        return Err(PortalError::invalid(
            "id",
            "is not one of your sharing choices made on these pages",
        ));
    };
    send_directive(&app, &s, with_status(d, "inactive")?).await?;
    until_passport_shows(&app, &s, &nhs, &d.id, "inactive").await;
    Ok(see_other("/passport/sharing"))
}

/// What happened, in plain words: the audit entry's action.
fn action_words(action: &str) -> &str {
    match action {
        "read" | "search" | "vread" | "history" => "Looked at your record",
        "export" => "Copied your record for your care",
        "create" | "update" | "delete" => "Recorded your care",
        "break-glass" => "Used emergency access",
        "directive_changed" => "Your sharing choices changed",
        "flags_changed" => "Your opt-out choices changed",
        "relationship_changed" => "Your care team changed",
        "break_glass_reviewed" => "Emergency access reviewed",
        other => other,
    }
}

/// How it ended, in plain words: the audit entry's outcome.
fn outcome_words(outcome: &str) -> &'static str {
    match Outcome::parse(outcome) {
        Some(Outcome::Success) => "Done",
        Some(Outcome::Granted) => "Granted",
        Some(Outcome::NotFound) => "Nothing found",
        Some(Outcome::Error) => "Failed",
        Some(Outcome::Denied | Outcome::Withheld) | None => "Refused",
    }
}

fn purpose_words(p: &str) -> &'static str {
    match p {
        "ETREAT" | "BTG" => "Emergency access (break-glass)",
        "TREAT" | "" => "Your care",
        "PATRQT" => "You, viewing your record",
        "HRESCH" => "Research",
        _ => "Other",
    }
}

async fn access_log(
    State(app): State<App>,
    patient: Patient<P9>,
    Query(page): Query<forms::AccessLogPage>,
) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    let before = page.before.unwrap_or(0);
    let req = ListAccessLogRequest {
        nhs_number: nhs.clone(),
        page_size: 25,
        before_sequence: before,
    };
    let (log, key, banner) = tokio::try_join!(
        async {
            Ok::<_, PortalError>(
                app.peers
                    .passport()
                    .list_access_log(as_user(&s.session.tokens.access_token, req)?)
                    .await?
                    .into_inner(),
            )
        },
        app.peers.audit_key(),
        notices(&app, &s, &nhs, None),
    )?;
    let verified = crate::proof::verify(&log, &key);
    let names = app.peers.organisation_names().await;
    Ok(html(page::page(
        &chrome(&s),
        "Who has looked at your record",
        html! {
            (banner)
            h1 { "Who has looked at your record" }
            p { "Every time someone opens your record it is written in an audit log that cannot be changed without it showing. Each entry below is checked against that log as this page is made." }
            @if log.entries.is_empty() { p id="no-access" { "Nobody has looked at your record yet." } } @else {
                (page::responsive_table(
                    "access-log",
                    html! { span class="nhsuk-u-visually-hidden" { "Who has looked at your record" } },
                    &["When", "Who", "What", "Why", "Outcome", "Checked"],
                    &log.entries.iter().zip(&verified).map(|(e, ok)| ("sc-access", vec![
                        html! { (page::time(e.time.as_ref())) },
                        html! { @if e.organisation.is_empty() { "You, or a system recording your care" } @else { (name_of(&names, &e.organisation)) } },
                        html! { (action_words(&e.action)) },
                        html! { span class="sc-purpose" { (purpose_words(&e.purpose)) } },
                        html! { (outcome_words(&e.outcome)) },
                        html! { @if *ok { span class="sc-verified" { "Verified in the audit log" } } @else { span class="sc-unverified" { "Not verified" } } },
                    ])).collect::<Vec<_>>(),
                ))
            }
            @if log.next_before_sequence > 0 {
                p { a href={ "/passport/access-log?before=" (log.next_before_sequence) } { "Older entries" } }
            }
        },
    )))
}

async fn notice_seen(
    State(app): State<App>,
    patient: Patient<P9>,
    Form(form): Form<forms::NoticeSeen>,
) -> Result<Response, PortalError> {
    let Patient {
        signed: s,
        nhs_number: nhs,
        ..
    } = patient;
    s.check_csrf(&form)?;
    let notice = form.notice.clone();
    if notice.is_empty() || notice.len() > 64 {
        return Err(PortalError::invalid("notice", "is required"));
    }
    app.sessions.notice_seen(&nhs, &notice).await?;
    Ok(see_other("/passport/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_made_on_these_pages_is_known_by_its_provision_not_its_id() {
        assert_eq!(
            withheld_category(r#"{"type":"deny","securityLabel":["PSY"]}"#).map(|c| c.0),
            Some("PSY")
        );
        assert_eq!(
            withheld_category(r#"{"type":"deny","securityLabel":["PSY"],"actors":[]}"#).map(|c| c.0),
            Some("PSY")
        );
        for other in [
            r#"{"type":"permit","securityLabel":["PSY"]}"#,
            r#"{"type":"deny","securityLabel":["PSY","SEX"]}"#,
            r#"{"type":"deny","securityLabel":["PSY"],"actors":["RX1"]}"#,
            r#"{"type":"deny","securityLabel":["SAFEGUARDING"]}"#,
            "not json",
        ] {
            assert_eq!(withheld_category(other), None, "{other}");
        }
    }
}
