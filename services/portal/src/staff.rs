//! The clinician portal (`/portal`): find a patient, their summary from the passport (each
//! section as consent allows this person, withheld sections marked), the care team, recent
//! visits, a resource's history, break-glass, and the break-glass review queue. Every read is
//! made with the signed-in person's own token, so records, consent and the passport decide and
//! audit it as that person.

use sharedcare_kit::edge::{Refusal, Refuse};
use sharedcare_kit::json::Fields;
use std::collections::HashMap;

use axum::Form;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::response::Response;
use axum::routing::get;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use maud::{Markup, html};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_proto::audit::v1::QueryRequest;
use sharedcare_proto::consent::v1::{
    BreakGlassGrant, BreakGlassRequest, ListBreakGlassRequest, ReviewBreakGlassRequest,
};
use sharedcare_proto::identity::v1::GetPersonRequest;
use sharedcare_proto::passport::v1::{GetPassportRequest, PassportView, SectionKind};
use sharedcare_proto::records::v1::{FindPatientsRequest, HistoryRequest, SearchParameter};

use crate::error::PortalError;
use crate::forms;
use crate::page::{self, Area, Chrome};
use crate::peers::{as_user, name_of};
use crate::session::Who;
use crate::web::{App, Signed, html, return_path, see_other};

/// Why a member of staff may break the glass (the codes consent records with the grant).
pub const REASONS: &[(&str, &str)] = &[
    (
        "unconscious-patient",
        "The patient is unconscious or cannot communicate",
    ),
    ("emergency-treatment", "Emergency treatment is needed now"),
    ("urgent-safeguarding", "There is an urgent safeguarding concern"),
];

/// The portal's routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/portal", get(|| async { see_other("/portal/") }))
        .route("/portal/", get(home))
        .route("/portal/search", axum::routing::post(search))
        .route("/portal/patients/{h}", get(summary))
        .route("/portal/patients/{h}/break-glass", axum::routing::post(break_glass))
        .route("/portal/patients/{h}/history/{kind}/{id}", get(history))
        .route("/portal/reviews", get(reviews))
        .route("/portal/reviews/{id}", axum::routing::post(review))
}

/// The signed-in member of staff: a handler that takes one cannot run for anyone else (a
/// patient here is sent to their passport; someone signed out, to sign in and back).
pub(crate) struct Staff(pub(crate) Signed);

impl FromRequestParts<App> for Staff {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let here = return_path(parts, form_page);
        let s = app.signed(&parts.headers, &here).await?;
        match s.session.who {
            Who::Staff { .. } => Ok(Staff(s)),
            Who::Patient { .. } => Err(PortalError::forbidden(
                "The shared care record is for staff. Your own record is at /passport/.",
            )),
        }
    }
}

/// The page a portal form was posted from: its path without the action
/// (`/portal/patients/{h}/break-glass` → `/portal/patients/{h}`; `/portal/search` → `/portal/`).
fn form_page(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("/portal", _)) | None => "/portal/".into(),
        Some((page, _)) => page.into(),
    }
}

fn chrome(s: &Signed) -> Chrome<'_> {
    s.chrome(Area::Portal)
}

/// The NHS number behind handle `h` in this session.
fn patient_of(s: &Signed, h: &str) -> Result<String, PortalError> {
    s.session.patients.get(h).cloned().ok_or_else(|| {
        PortalError::from(Refusal::NotFound(
            "No patient was opened with this link in this session: search again.".into(),
        ))
    })
}

async fn home(
    State(app): State<App>,
    headers: HeaderMap,
    staff: Result<Staff, PortalError>,
) -> Result<Response, PortalError> {
    let s = match staff {
        Ok(Staff(s)) => s,
        Err(PortalError::SignIn(_)) => return Ok(html(signed_out(crate::web::in_nhs_app(&headers)))),
        Err(e) => return Err(e),
    };
    let names = app.peers.organisation_names().await;
    Ok(html(search_page(&s, &names, &[], &HashMap::new())))
}

fn signed_out(nhs_app: bool) -> Markup {
    page::page(
        &Chrome {
            nhs_app,
            area: Area::Portal,
            signed_in: None,
        },
        "Sign in",
        html! {
            h1 { "Shared care record" }
            p { "See a person's whole record across GP, hospital, community and social care, as your role and their sharing choices allow." }
            a class="nhsuk-button" href="/portal/login" id="sign-in" draggable="false" role="button" { "Sign in" }
        },
    )
}

fn search_page(
    s: &Signed,
    names: &HashMap<String, String>,
    errors: &[(&str, String)],
    values: &HashMap<String, String>,
) -> Markup {
    let v = |k: &str| values.get(k).cloned().unwrap_or_default();
    let err = |k: &str| errors.iter().find(|(f, _)| *f == k).map(|(_, m)| m.clone());
    let (role, org, reviewer) = match &s.session.who {
        Who::Staff {
            role_name,
            org,
            activities,
            ..
        } => (
            role_name.clone(),
            org.clone(),
            activities
                .iter()
                .any(|a| a == sharedcare_kit::auth::BREAK_GLASS_REVIEW_ACTIVITY),
        ),
        Who::Patient { .. } => Default::default(),
    };
    let field = |id: &'static str, label: &str, hint: &str, width: &str, autocomplete: &str| {
        let e = err(id);
        html! {
            div class={ "nhsuk-form-group" @if e.is_some() { " nhsuk-form-group--error" } } {
                label class="nhsuk-label" for=(id) { (label) }
                @if !hint.is_empty() { div class="nhsuk-hint" id={ (id) "-hint" } { (hint) } }
                @if let Some(m) = &e { span class="nhsuk-error-message" id={ (id) "-error" } { span class="nhsuk-u-visually-hidden" { "Error: " } (m) } }
                input class={ "nhsuk-input " (width) @if e.is_some() { " nhsuk-input--error" } } id=(id) name=(id) type="text"
                    value=(v(id)) autocomplete=(autocomplete) spellcheck="false"
                    aria-describedby=[(!hint.is_empty()).then(|| format!("{id}-hint"))];
            }
        }
    };
    page::page(
        &chrome(s),
        "Find a patient",
        html! {
            (page::error_summary(errors))
            span class="nhsuk-caption-l" { (role) " at " (name_of(names, &org)) }
            h1 { "Find a patient" }
            form method="post" action="/portal/search" novalidate {
                input type="hidden" name="csrf" value=(s.session.csrf);
                (field("nhs_number", "NHS number", "10 digits, for example 943 476 5919", "nhsuk-input--width-10", "off"))
                p class="nhsuk-body" { "Or search by name and date of birth" }
                (field("family", "Last name", "", "nhsuk-input--width-20", "off"))
                (page::date_input("birthdate", "Date of birth", "For example, 12 3 1941", err("birthdate").as_deref(), values))
                button class="nhsuk-button" type="submit" id="search" { "Search" }
            }
            @if reviewer {
                p { a href="/portal/reviews" id="reviews-link" { "Break-glass review queue" } }
            }
        },
    )
}

fn new_handle(s: &mut Signed, nhs: &str) -> String {
    if let Some((h, _)) = s.session.patients.iter().find(|(_, n)| n.as_str() == nhs) {
        return h.clone();
    }
    let h = sharedcare_kit::jose::random_token(12);
    s.session.patients.insert(h.clone(), nhs.to_string());
    h
}

/// `POST /portal/search`: an NHS number opens the patient; a name and date of birth list the
/// matches records (and consent) let this person find.
async fn search(
    State(app): State<App>,
    Staff(mut s): Staff,
    Form(form): Form<forms::Search>,
) -> Result<Response, PortalError> {
    s.check_csrf(&form)?;
    let (nhs, family) = (form.nhs_number.trim().replace(' ', ""), form.family.trim().to_string());
    let birthdate = page::date_from_parts(
        form.birthdate_day.trim(),
        form.birthdate_month.trim(),
        form.birthdate_year.trim(),
    );
    let mut errors: Vec<(&str, String)> = Vec::new();
    if !nhs.is_empty() {
        match NhsNumber::parse(&nhs) {
            Ok(n) => {
                let h = new_handle(&mut s, n.as_str());
                app.sessions.save(&s.token, &s.session).await?;
                return Ok(see_other(&format!("/portal/patients/{h}")));
            }
            Err(e) => errors.push(("nhs_number", format!("Enter a valid NHS number: {e}"))),
        }
    } else {
        if family.is_empty() {
            errors.push((
                "family",
                "Enter the patient's last name, or search by NHS number".into(),
            ));
        }
        if let Err(why) = &birthdate {
            errors.push(("birthdate", why.0.clone()));
        }
    }
    let birthdate = birthdate.unwrap_or_default();
    if !errors.is_empty() {
        let names = app.peers.organisation_names().await;
        let mut r = html(search_page(&s, &names, &errors, &form.values()));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    }
    let req = FindPatientsRequest {
        parameters: vec![
            SearchParameter {
                name: "family".into(),
                value: family.clone(),
            },
            SearchParameter {
                name: "birthdate".into(),
                value: birthdate.clone(),
            },
        ],
        page_size: 20,
        cursor: String::new(),
        purpose: "TREAT".into(),
    };
    let found = app
        .peers
        .records()
        .find_patients(as_user(&s.session.tokens.access_token, req)?)
        .await?
        .into_inner();
    let mut rows = Vec::new();
    // One row per person: the practice and a hospital (through its HL7 feed) may each hold a
    // Patient for the same NHS number.
    let mut seen = std::collections::HashSet::new();
    for r in &found.resources {
        let p: serde_json::Value = serde_json::from_str(&r.resource_json).unwrap_or_default();
        let nhs = p
            .at("identifier")
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .find(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number")
                    .and_then(|i| i["value"].as_str())
            })
            .unwrap_or_default()
            .to_string();
        if nhs.is_empty() || !seen.insert(nhs.clone()) {
            continue;
        }
        let name = &p.at("name")[0];
        let given: Vec<&str> = name["given"]
            .as_array()
            .map(|g| g.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let full = format!("{} {}", given.join(" "), name["family"].as_str().unwrap_or_default());
        let born = page::date(p.at("birthDate").as_str().unwrap_or_default());
        let h = new_handle(&mut s, &nhs);
        rows.push((h, full, born, page::nhs_number(&nhs)));
    }
    app.sessions.save(&s.token, &s.session).await?;
    Ok(html(page::page(
        &chrome(&s),
        "Search results",
        html! {
            h1 { "Search results" }
            @if rows.is_empty() {
                p id="no-results" { "No patient you can see matches that name and date of birth. Check them, or search by NHS number." }
            } @else {
                (page::responsive_table(
                    "results",
                    html! { (rows.len()) " matching " @if rows.len() == 1 { "patient" } @else { "patients" } },
                    &["Name", "Date of birth", "NHS number"],
                    &rows.iter().map(|(h, name, born, nhs)| ("", vec![
                        html! { a href={ "/portal/patients/" (h) } { (name) } },
                        html! { (born) },
                        html! { (nhs) },
                    ])).collect::<Vec<_>>(),
                ))
            }
            p { a href="/portal/" { "Search again" } }
        },
    )))
}

fn purpose(s: &Signed, nhs: &str) -> &'static str {
    if s.session.glass.iter().any(|n| n == nhs) {
        "ETREAT"
    } else {
        "TREAT"
    }
}

/// `GET /portal/patients/{h}`: the patient's summary, or the break-glass form when this person
/// has no care relationship.
async fn summary(State(app): State<App>, Staff(s): Staff, Path(h): Path<String>) -> Result<Response, PortalError> {
    let nhs = patient_of(&s, &h)?;
    let req = GetPassportRequest {
        nhs_number: nhs.clone(),
        purpose: purpose(&s, &nhs).into(),
    };
    match app
        .peers
        .passport()
        .get_passport(as_user(&s.session.tokens.access_token, req)?)
        .await
    {
        Ok(view) => {
            let names = app.peers.organisation_names().await;
            Ok(html(summary_page(&s, &names, &h, &view.into_inner())))
        }
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            let mut r = html(refused_page(
                &s,
                &h,
                &nhs,
                status.message(),
                &[],
                &forms::BreakGlass::default(),
            ));
            *r.status_mut() = StatusCode::FORBIDDEN;
            Ok(r)
        }
        Err(status) => Err(status.into()),
    }
}

fn summary_page(s: &Signed, names: &HashMap<String, String>, h: &str, v: &PassportView) -> Markup {
    let d = v.demographics.clone().unwrap_or_default();
    let name = format!("{} {}", d.given_name, d.family_name);
    let visits = v
        .sections
        .iter()
        .find(|x| x.kind == SectionKind::Encounters as i32)
        .map(|x| {
            let mut e = x.entries.clone();
            e.sort_by(|a, b| b.date.cmp(&a.date));
            e.truncate(5);
            e
        })
        .unwrap_or_default();
    page::page(
        &chrome(s),
        &name,
        html! {
            span class="nhsuk-caption-l" { "Shared care record" }
            h1 id="patient-name" { (name) }
            (page::summary_list(&[
                ("NHS number", page::nhs_number(&v.nhs_number)),
                ("Date of birth", page::date(&d.birth_date)),
                ("Gender", d.gender.clone()),
                ("Postcode", d.postcode.clone()),
            ]))
            @if s.session.glass.contains(&v.nhs_number) {
                div class="nhsuk-warning-callout" id="break-glass-active" {
                    h3 class="nhsuk-warning-callout__label" { span role="text" { span class="nhsuk-u-visually-hidden" { "Important: " } "Emergency access" } }
                    p { "You are viewing this record under break-glass. Every page you open is logged and will be reviewed by information governance." }
                }
            }
            @if v.some_withheld {
                div class="nhsuk-inset-text" id="some-withheld" {
                    span class="nhsuk-u-visually-hidden" { "Information: " }
                    p { "Some information is withheld from you at the patient's request. Sections marked " strong { "Withheld" } " may hold more than you can see." }
                }
            }
            h2 { "Recent appointments and visits" }
            @if visits.is_empty() { p { "None recorded." } } @else {
                ul class="nhsuk-list nhsuk-list--bullet" id="recent-visits" {
                    @for e in &visits { li { (e.summary) " – " (page::date(&e.date)) " (" (name_of(names, &e.source_organisation)) ")" } }
                }
            }
            h2 { "Care team" }
            @if v.care_team.is_empty() { p { "No care team is recorded." } } @else {
                (page::responsive_table(
                    "care-team",
                    html! { span class="nhsuk-u-visually-hidden" { "Care team" } },
                    &["Organisation", "Role", "Since"],
                    &v.care_team.iter().map(|m| ("", vec![
                        html! { (if m.organisation_name.is_empty() { name_of(names, &m.ods_code) } else { &m.organisation_name }) },
                        html! { (m.role) },
                        html! { (page::time(m.since.as_ref())) },
                    ])).collect::<Vec<_>>(),
                ))
            }
            @for sec in &v.sections {
                section id={ "section-" (sec.kind) } class="sc-section" {
                    h2 {
                        (sec.title)
                        @if sec.withheld { " " strong class="nhsuk-tag nhsuk-tag--grey" { "Withheld" } }
                    }
                    @if sec.entries.is_empty() {
                        p { "Nothing you can see is recorded." @if sec.withheld { " Some information may be withheld at the patient's request." } }
                    } @else {
                        ul class="nhsuk-list" {
                            @for e in &sec.entries {
                                li {
                                    (e.summary)
                                    br;
                                    span class="sc-entry-meta" {
                                        (page::meta(&[page::date(&e.date), e.status.clone(), name_of(names, &e.source_organisation).to_string()]))
                                        " · "
                                        a href={ "/portal/patients/" (h) "/history/" (e.resource_type) "/" (e.id) } { "History" span class="nhsuk-u-visually-hidden" { " of " (e.summary) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p { a href="/portal/" { "Find another patient" } }
        },
    )
}

fn refused_page(
    s: &Signed,
    h: &str,
    nhs: &str,
    why: &str,
    errors: &[(&str, String)],
    values: &forms::BreakGlass,
) -> Markup {
    let chosen = values.reason_code.clone();
    let text = values.reason_text.clone();
    let err = |k: &str| errors.iter().find(|(f, _)| *f == k).map(|(_, m)| m.clone());
    page::page(
        &chrome(s),
        "You do not have access to this record",
        html! {
            (page::error_summary(errors))
            h1 { "You do not have access to this record" }
            p id="refusal" { (why) }
            p { "NHS number " (page::nhs_number(nhs)) }
            div class="nhsuk-warning-callout" {
                h2 class="nhsuk-warning-callout__label" { span role="text" { span class="nhsuk-u-visually-hidden" { "Important: " } "Emergency access is logged and reviewed" } }
                p { "Only use emergency access (break-glass) if the patient needs care now and you cannot get consent. Your name, your organisation, your reason and every page you open are logged, the patient is told, and information governance reviews every use." }
            }
            form method="post" action={ "/portal/patients/" (h) "/break-glass" } novalidate {
                input type="hidden" name="csrf" value=(s.session.csrf);
                div class={ "nhsuk-form-group" @if err("reason_code").is_some() { " nhsuk-form-group--error" } } {
                    fieldset class="nhsuk-fieldset" aria-describedby="reason_code-hint" {
                        legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--m" { h2 class="nhsuk-fieldset__heading" { "Why do you need emergency access?" } }
                        div class="nhsuk-hint" id="reason_code-hint" { "Choose one" }
                        @if let Some(m) = err("reason_code") { span class="nhsuk-error-message" id="reason_code-error" { span class="nhsuk-u-visually-hidden" { "Error: " } (m) } }
                        div class="nhsuk-radios" id="reason_code" {
                            @for (i, (code, words)) in REASONS.iter().enumerate() {
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id={ "reason-" (i) } name="reason_code" type="radio" value=(code) checked[chosen == *code];
                                    label class="nhsuk-label nhsuk-radios__label" for={ "reason-" (i) } { (words) }
                                }
                            }
                        }
                    }
                }
                div class={ "nhsuk-form-group" @if err("reason_text").is_some() { " nhsuk-form-group--error" } } {
                    label class="nhsuk-label" for="reason_text" { "Say what is happening" }
                    div class="nhsuk-hint" id="reason_text-hint" { "At least 10 characters. Do not include clinical details you do not need to." }
                    @if let Some(m) = err("reason_text") { span class="nhsuk-error-message" id="reason_text-error" { span class="nhsuk-u-visually-hidden" { "Error: " } (m) } }
                    textarea class="nhsuk-textarea" id="reason_text" name="reason_text" rows="3" aria-describedby="reason_text-hint" { (text) }
                }
                button class="nhsuk-button nhsuk-button--warning" type="submit" id="break-glass" { "Break glass and open the record" }
            }
            p { a href="/portal/" { "Cancel and find another patient" } }
        },
    )
}

/// `POST /portal/patients/{h}/break-glass`: the grant asked of consent (as this person, with
/// the reason), then the record under ETREAT.
async fn break_glass(
    State(app): State<App>,
    Staff(mut s): Staff,
    Path(h): Path<String>,
    Form(form): Form<forms::BreakGlass>,
) -> Result<Response, PortalError> {
    s.check_csrf(&form)?;
    let nhs = patient_of(&s, &h)?;
    let code = form.reason_code.clone();
    let text = form.reason_text.trim().to_string();
    let mut errors: Vec<(&str, String)> = Vec::new();
    if !REASONS.iter().any(|(c, _)| *c == code) {
        errors.push(("reason_code", "Choose why you need emergency access".into()));
    }
    if text.chars().count() < 10 {
        errors.push(("reason_text", "Say what is happening, in at least 10 characters".into()));
    }
    if !errors.is_empty() {
        let why = "You have no care relationship with this patient.";
        let mut r = html(refused_page(&s, &h, &nhs, why, &errors, &form));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    }
    let req = BreakGlassRequest {
        nhs_number: nhs.clone(),
        reason_code: code,
        reason_text: text,
    };
    app.peers
        .consent()
        .break_glass(as_user(&s.session.tokens.access_token, req)?)
        .await?;
    if !s.session.glass.contains(&nhs) {
        s.session.glass.push(nhs);
    }
    app.sessions.save(&s.token, &s.session).await?;
    Ok(see_other(&format!("/portal/patients/{h}")))
}

/// `GET /portal/patients/{h}/history/{type}/{id}`: every version of one resource.
async fn history(
    State(app): State<App>,
    Staff(s): Staff,
    Path((h, kind, id)): Path<(String, String, String)>,
) -> Result<Response, PortalError> {
    let nhs = patient_of(&s, &h)?;
    let req = HistoryRequest {
        resource_type: kind.clone(),
        id: id.clone(),
        page_size: 50,
        cursor: String::new(),
        purpose: purpose(&s, &nhs).into(),
    };
    let versions = app
        .peers
        .records()
        .history(as_user(&s.session.tokens.access_token, req)?)
        .await?
        .into_inner();
    Ok(html(page::page(
        &chrome(&s),
        "History",
        html! {
            span class="nhsuk-caption-l" { (kind) }
            h1 { "History" }
            @if versions.some_withheld { p class="nhsuk-inset-text" { "Some versions may be withheld at the patient's request." } }
            ol class="nhsuk-list" id="versions" {
                @for v in &versions.versions {
                    li {
                        h2 class="nhsuk-heading-s" { "Version " (v.version) ", " (page::time(v.last_updated.as_ref())) }
                        details class="nhsuk-details" {
                            summary class="nhsuk-details__summary" { span class="nhsuk-details__summary-text" { "The resource as stored" } }
                            div class="nhsuk-details__text" { pre { code { (pretty(&v.resource_json)) } } }
                        }
                    }
                }
            }
            p { a href={ "/portal/patients/" (h) } { "Back to the summary" } }
        },
    )))
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_string())
}

/// `GET /portal/reviews`: break-glass grants waiting for review (consent allows it to staff
/// in a role with the review activity only), each naming the member of staff and their role
/// (identity's staff directory), the reason in words, and what they opened while the grant
/// lasted (the audit log), all read with the reviewer's own token.
async fn reviews(State(app): State<App>, Staff(s): Staff) -> Result<Response, PortalError> {
    let token = &s.session.tokens.access_token;
    let grants = app
        .peers
        .consent()
        .list_break_glass(as_user(token, ListBreakGlassRequest {})?)
        .await?
        .into_inner()
        .grants;
    let at = |t: i64| page::time(Some(&prost_types::Timestamp { seconds: t, nanos: 0 }));
    let names = app.peers.organisation_names().await;
    let mut cards = Vec::with_capacity(grants.len());
    for g in &grants {
        cards.push((
            g,
            who_broke_the_glass(&app, token, g).await,
            opened_under(&app, token, g).await,
        ));
    }
    Ok(html(page::page(
        &chrome(&s),
        "Break-glass review queue",
        html! {
            h1 { "Break-glass review queue" }
            @if grants.is_empty() { p id="queue-empty" { "Nothing is waiting for review." } }
            @for (g, who, opened) in &cards {
                div class="nhsuk-card sc-grant" {
                    div class="nhsuk-card__content" {
                        h2 class="nhsuk-card__heading nhsuk-heading-s" { (who.0) " – NHS number " (page::nhs_number(&g.nhs_number)) }
                        (page::summary_list(&[
                            ("Who", format!("{}, {} at {}", who.0, who.1, name_of(&names, &g.ods_code))),
                            ("When", format!("{} to {}", at(g.start), at(g.end))),
                            ("Reason", reason_words(&g.reason_code).to_string()),
                            ("In their words", g.reason_text.clone()),
                        ]))
                        h3 class="nhsuk-heading-xs" { "What they opened" }
                        @match opened {
                            Ok(list) if list.is_empty() => p { "Nothing was opened under this grant." },
                            Ok(list) => ul class="nhsuk-list nhsuk-list--bullet sc-opened" { @for o in list { li { (o) } } },
                            Err(why) => p class="nhsuk-error-message" { (why) },
                        }
                        form method="post" action={ "/portal/reviews/" (g.id) } novalidate {
                            input type="hidden" name="csrf" value=(s.session.csrf);
                            div class="nhsuk-form-group" {
                                label class="nhsuk-label" for={ "note-" (g.id) } { "What did the review find?" }
                                textarea class="nhsuk-textarea" id={ "note-" (g.id) } name="note" rows="2" {}
                            }
                            button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Mark as reviewed" }
                        }
                    }
                }
            }
        },
    )))
}

/// A break-glass reason code in words.
fn reason_words(code: &str) -> &str {
    REASONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, w)| *w)
        .unwrap_or(code)
}

/// The member of staff behind grant `g`: (name, role at the grant's organisation), from
/// identity's staff directory; their user id and "role not known" when it cannot say.
async fn who_broke_the_glass(app: &App, token: &str, g: &BreakGlassGrant) -> (String, String) {
    let req = match as_user(
        token,
        GetPersonRequest {
            uid: g.person_id.clone(),
        },
    ) {
        Ok(r) => r,
        Err(_) => return (g.person_id.clone(), "role not known".into()),
    };
    match app.peers.identity().get_person(req).await {
        Ok(p) => {
            let p = p.into_inner();
            let role = p
                .role_profiles
                .iter()
                .find(|r| r.ods_code.eq_ignore_ascii_case(&g.ods_code))
                .map(|r| {
                    if r.role_name.is_empty() {
                        r.role_code.clone()
                    } else {
                        r.role_name.clone()
                    }
                })
                .unwrap_or_else(|| "role not known".into());
            (format!("{} {}", p.given_name, p.family_name), role)
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), "the staff directory could not name a break-glass user");
            (format!("Staff member {}", g.person_id), "role not known".into())
        }
    }
}

/// What grant `g`'s holder did to its patient's record while it lasted, oldest first, from the
/// audit log ("time – action – resources – outcome"); `Err` says why it cannot be shown.
async fn opened_under(app: &App, token: &str, g: &BreakGlassGrant) -> Result<Vec<String>, String> {
    let ts = |t: i64| prost_types::Timestamp { seconds: t, nanos: 0 };
    let q = QueryRequest {
        nhs_number: g.nhs_number.clone(),
        actor: g.person_id.clone(),
        actor_organisation: g.ods_code.clone(),
        from: Some(ts(g.start)),
        to: Some(ts(g.end)),
        page_size: 200,
        ..Default::default()
    };
    let req = as_user(token, q).map_err(|e| e.to_string())?;
    let entries = match app.peers.audit().query(req).await {
        Ok(r) => r.into_inner().entries,
        Err(status) => return Err(format!("The audit log could not be read: {}", status.message())),
    };
    Ok(entries
        .iter()
        .rev()
        .map(|e| {
            let mut kinds: Vec<&str> = e.resources.iter().filter_map(|r| r.split('/').next()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            let what = if kinds.is_empty() {
                String::new()
            } else {
                format!(
                    " – {} ({} item{})",
                    kinds.join(", "),
                    e.resources.len(),
                    if e.resources.len() == 1 { "" } else { "s" }
                )
            };
            format!("{} – {}{} – {}", page::time(e.time.as_ref()), e.action, what, e.outcome)
        })
        .collect())
}

/// `POST /portal/reviews/{id}`.
async fn review(
    State(app): State<App>,
    Staff(s): Staff,
    Path(id): Path<String>,
    Form(form): Form<forms::Review>,
) -> Result<Response, PortalError> {
    s.check_csrf(&form)?;
    let req = ReviewBreakGlassRequest {
        id,
        reviewer: String::new(),
        note: form.note,
    };
    app.peers
        .consent()
        .review_break_glass(as_user(&s.session.tokens.access_token, req)?)
        .await?;
    Ok(see_other("/portal/reviews"))
}
