//! The page frame every page shares (NHS.UK frontend's header, footer, skip link and width
//! container) and small components, as maud templates: checked at compile time, every value
//! escaped. No inline script or style, so the Content-Security-Policy allows neither.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::assets;

/// What frames a page.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chrome<'a> {
    /// Inside the NHS App's web view: no site header or footer (the app has its own).
    pub nhs_app: bool,
    /// The part of the site: its name in the header and where its name links.
    pub area: Area,
    /// The signed-in person's name, and this session's CSRF token for the sign-out form.
    pub signed_in: Option<(&'a str, &'a str)>,
}

/// The service's name, in every header and page title.
pub const SERVICE_NAME: &str = "Shared care record";

/// A part of the site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Area {
    /// The start page.
    #[default]
    Start,
    /// The clinician portal.
    Portal,
    /// The patient's passport.
    Passport,
    /// The sample ICS app (`sharedcare sample-app`), on its own origin.
    Handover,
}

impl Area {
    fn name(self) -> &'static str {
        match self {
            // One service name in every header (the passport's pages say "your record" in
            // their own words below it).
            Area::Start | Area::Portal | Area::Passport => SERVICE_NAME,
            Area::Handover => "Care home handover",
        }
    }

    fn home(self) -> &'static str {
        match self {
            Area::Start | Area::Handover => "/",
            Area::Portal => "/portal/",
            Area::Passport => "/passport/",
        }
    }

    fn logout(self) -> &'static str {
        match self {
            Area::Passport => "/passport/logout",
            Area::Handover => "/logout",
            _ => "/portal/logout",
        }
    }
}

/// The page that carries the browser on to identity to end the single sign-on session: a form
/// posted at once by `site.js` (`data-autosubmit`), with a button for when scripts do not run.
pub fn signing_out(chrome: &Chrome<'_>, action: &str, fields: &[(&'static str, String)]) -> Markup {
    page(
        chrome,
        "Signing you out",
        html! {
            h1 { "Signing you out" }
            form method="post" action=(action) data-autosubmit id="sign-out-form" {
                @for (name, value) in fields {
                    input type="hidden" name=(name) value=(value);
                }
                p { "You have been signed out here. Continue to sign out of every care record app." }
                button class="nhsuk-button" type="submit" id="continue-sign-out" { "Continue signing out" }
            }
        },
    )
}

/// A whole page titled `title` around `body`.
pub fn page(chrome: &Chrome<'_>, title: &str, body: Markup) -> Markup {
    let area = chrome.area;
    // A page whose form came back with errors says so first in its title (NHS.UK's error
    // summary pattern), so a screen reader hears it before anything else.
    let error = if body.0.contains("nhsuk-error-summary") {
        "Error: "
    } else {
        ""
    };
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                title { (error) (title) " – " (area.name()) }
                meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover";
                meta name="theme-color" content="#005eb8";
                link rel="icon" href=(assets::path("images/favicon.ico")) sizes="48x48";
                link rel="icon" href=(assets::path("images/favicon.svg")) sizes="any" type="image/svg+xml";
                link rel="apple-touch-icon" href=(assets::path("images/nhsuk-icon-180.png"));
                link rel="stylesheet" href=(assets::path("nhsuk-frontend.min.css"));
                link rel="stylesheet" href=(assets::SITE_CSS);
                script type="module" src=(assets::SITE_JS) {}
            }
            body {
                a class="nhsuk-skip-link" href="#maincontent" { "Skip to main content" }
                @if !chrome.nhs_app {
                    header class="nhsuk-header" role="banner" {
                        div class="nhsuk-header__container nhsuk-width-container" {
                            div class="nhsuk-header__service" {
                                a class="nhsuk-header__service-logo" href=(area.home()) aria-label={ "NHS " (area.name()) " homepage" } {
                                    (PreEscaped(sharedcare_kit::nhsuk::LOGO))
                                    span class="nhsuk-header__service-name" { (area.name()) }
                                }
                            }
                            @if let Some((name, csrf)) = chrome.signed_in {
                                nav class="nhsuk-header__account" aria-label="Account" {
                                    ul class="nhsuk-header__account-list" {
                                        li class="nhsuk-header__account-item" id="signed-in-as" { (name) }
                                        li class="nhsuk-header__account-item" {
                                            form method="post" action=(area.logout()) class="sc-inline-form" {
                                                input type="hidden" name="csrf" value=(csrf);
                                                button type="submit" class="nhsuk-header__account-button" id="sign-out" { "Log out" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                div class="nhsuk-width-container" {
                    main class="nhsuk-main-wrapper" id="maincontent" {
                        (body)
                    }
                }
                @if !chrome.nhs_app {
                    footer role="contentinfo" {
                        div class="nhsuk-footer" {
                            div class="nhsuk-width-container" {
                                h2 class="nhsuk-u-visually-hidden" { "Support links" }
                                div class="nhsuk-footer__meta" {
                                    ul class="nhsuk-footer__list" {
                                        @if area != Area::Handover {
                                        li class="nhsuk-footer__list-item" { a class="nhsuk-footer__list-item-link" href="/" { (SERVICE_NAME) } }
                                        li class="nhsuk-footer__list-item" { a class="nhsuk-footer__list-item-link" href="/passport/" { "Your record" } }
                                        li class="nhsuk-footer__list-item" { a class="nhsuk-footer__list-item-link" href="/portal/" { "For staff" } }
                                        }
                                    }
                                    p class="nhsuk-footer__copyright" { "Your integrated care system" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An error page (no session needed).
pub fn error_page(title: &str, message: &str) -> Markup {
    page(
        &Chrome::default(),
        title,
        html! {
            h1 { (title) }
            p id="error-message" { (message) }
            p { a href="/" { "Go to the start page" } }
        },
    )
}

/// NHS.UK's error summary: shown at the top of a form that failed, naming the field.
pub fn error_summary(errors: &[(&str, String)]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="nhsuk-error-summary" aria-labelledby="error-summary-title" role="alert" tabindex="-1" {
                h2 class="nhsuk-error-summary__title" id="error-summary-title" { "There is a problem" }
                div class="nhsuk-error-summary__body" {
                    ul class="nhsuk-list nhsuk-error-summary__list" {
                        @for (field, message) in errors {
                            li { a href={ "#" (first_input(field)) } { (message) } }
                        }
                    }
                }
            }
        }
    }
}

/// The first input of the field named `field`, which its error summary entry links to: the day
/// of a date, the first choice of a set of radios.
fn first_input(field: &str) -> String {
    match field {
        "birthdate" => "birthdate-day".into(),
        "reason_code" => "reason-0".into(),
        f => f.into(),
    }
}

/// NHS.UK's date input (day, month and year, each its own box), named `<id>-day`, `<id>-month`
/// and `<id>-year`, with the values sent last time and the error for the whole date.
pub fn date_input(
    id: &str,
    legend: &str,
    hint: &str,
    error: Option<&str>,
    values: &std::collections::HashMap<String, String>,
) -> Markup {
    let part = |name: &str| values.get(&format!("{id}-{name}")).cloned().unwrap_or_default();
    let boxes = [
        ("day", "Day", "nhsuk-input--width-2"),
        ("month", "Month", "nhsuk-input--width-2"),
        ("year", "Year", "nhsuk-input--width-4"),
    ];
    html! {
        div class={ "nhsuk-form-group" @if error.is_some() { " nhsuk-form-group--error" } } {
            fieldset class="nhsuk-fieldset" role="group" aria-describedby={ (id) "-hint" @if error.is_some() { " " (id) "-error" } } {
                legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--s" { (legend) }
                div class="nhsuk-hint" id={ (id) "-hint" } { (hint) }
                @if let Some(m) = error { span class="nhsuk-error-message" id={ (id) "-error" } { span class="nhsuk-u-visually-hidden" { "Error: " } (m) } }
                div class="nhsuk-date-input" id=(id) {
                    @for (name, label, width) in boxes {
                        div class="nhsuk-date-input__item" {
                            div class="nhsuk-form-group" {
                                label class="nhsuk-label nhsuk-date-input__label" for={ (id) "-" (name) } { (label) }
                                input class={ "nhsuk-input nhsuk-date-input__input " (width) @if error.is_some() { " nhsuk-input--error" } }
                                    id={ (id) "-" (name) } name={ (id) "-" (name) } type="text" inputmode="numeric" value=(part(name));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What is wrong with what a person entered, in plain words for the page beside the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fix(pub String);

impl From<&str> for Fix {
    fn from(words: &str) -> Self {
        Fix(words.into())
    }
}

impl From<String> for Fix {
    fn from(words: String) -> Self {
        Fix(words)
    }
}

/// A date from NHS.UK's date input, as `YYYY-MM-DD`; `Err` says what is wrong in plain words.
pub fn date_from_parts(day: &str, month: &str, year: &str) -> Result<String, Fix> {
    if day.is_empty() && month.is_empty() && year.is_empty() {
        return Err("Enter the date of birth, for example 12 3 1941".into());
    }
    let missing: Vec<&str> = [("a day", day), ("a month", month), ("a year", year)]
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!("Date of birth must include {}", missing.join(" and ")).into());
    }
    let (Ok(d), Ok(m), Ok(y)) = (day.parse::<u32>(), month.parse::<u32>(), year.parse::<i32>()) else {
        return Err("Date of birth must be numbers, for example 12 3 1941".into());
    };
    if y < 1000 {
        return Err("Year must include 4 numbers".into());
    }
    let date =
        chrono::NaiveDate::from_ymd_opt(y, m, d).ok_or_else(|| "Date of birth must be a real date".to_string())?;
    if date > chrono::Utc::now().date_naive() {
        return Err("Date of birth must be in the past".into());
    }
    Ok(date.format("%Y-%m-%d").to_string())
}

/// A row list (NHS.UK summary list) of label and value.
pub fn summary_list(rows: &[(&str, String)]) -> Markup {
    html! {
        dl class="nhsuk-summary-list" {
            @for (k, v) in rows {
                div class="nhsuk-summary-list__row" {
                    dt class="nhsuk-summary-list__key" { (k) }
                    dd class="nhsuk-summary-list__value" { (v) }
                }
            }
        }
    }
}

/// A table in NHS.UK's responsive pattern: on a narrow screen (a phone, the NHS App) each row
/// becomes a block of "heading: value" lines, so the page never scrolls sideways. `rows` are
/// (row class, cells), one cell per heading.
pub fn responsive_table(id: &str, caption: Markup, headings: &[&str], rows: &[(&str, Vec<Markup>)]) -> Markup {
    html! {
        table role="table" class="nhsuk-table-responsive" id=(id) {
            caption class="nhsuk-table__caption" { (caption) }
            thead role="rowgroup" class="nhsuk-table__head" {
                tr role="row" { @for h in headings { th role="columnheader" scope="col" { (h) } } }
            }
            tbody class="nhsuk-table__body" {
                @for (class, cells) in rows {
                    tr role="row" class={ "nhsuk-table__row " (class) } {
                        @for (h, cell) in headings.iter().zip(cells) {
                            td role="cell" class="nhsuk-table__cell" {
                                span class="nhsuk-table-responsive__heading" aria-hidden="true" { (h) " " }
                                (cell)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The start page: who each part of the site is for.
pub fn start(nhs_app: bool) -> Markup {
    page(
        &Chrome {
            nhs_app,
            ..Chrome::default()
        },
        "Welcome",
        html! {
            h1 { "One record for everyone who cares for you" }
            p class="nhsuk-lede-text" { "The shared care record joins up the records your GP, hospital, community and social care teams keep, so the people looking after you see the same picture, and you can see it too." }
            div class="nhsuk-card-group" {
                div class="nhsuk-card-group__item nhsuk-grid-column-one-half" {
                    div class="nhsuk-card nhsuk-card--clickable" {
                        div class="nhsuk-card__content" {
                            h2 class="nhsuk-card__heading nhsuk-heading-m" { a class="nhsuk-card__link" href="/passport/" id="start-passport" { "See your record" } }
                            p class="nhsuk-card__description" { "Your health and care record, who can see it, and who has looked at it. Also in the NHS App." }
                        }
                    }
                }
                div class="nhsuk-card-group__item nhsuk-grid-column-one-half" {
                    div class="nhsuk-card nhsuk-card--clickable" {
                        div class="nhsuk-card__content" {
                            h2 class="nhsuk-card__heading nhsuk-heading-m" { a class="nhsuk-card__link" href="/portal/" id="start-portal" { "Staff: open the shared care record" } }
                            p class="nhsuk-card__description" { "For clinicians and care workers in the integrated care system. Sign in once with your care record login." }
                        }
                    }
                }
            }
        },
    )
}

/// Plain words for an ISO date or date-time ("12 March 1941"), or the text as it is.
pub fn date(iso: &str) -> String {
    let day = iso.get(..10).unwrap_or(iso);
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.format("%-d %B %Y").to_string())
        .unwrap_or_else(|_| iso.to_string())
}

/// Plain words for a protobuf timestamp ("3 May 2026 at 14:05").
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|d| d.format("%-d %B %Y at %H:%M").to_string())
        .unwrap_or_default()
}

/// The non-empty parts joined with " · " (an entry's date, status, organisation).
pub fn meta(parts: &[String]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" · ")
}

/// An NHS number spaced 3-3-4, as people read it.
pub fn nhs_number(n: &str) -> String {
    if n.len() == 10 {
        format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
    } else {
        n.to_string()
    }
}

/// The home page of the part of the site `path` is in: the passport's or the portal's.
pub fn home_of(path: &str) -> &'static str {
    if path.starts_with("/passport") {
        "/passport/"
    } else {
        "/portal/"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_of_birth_comes_from_its_three_boxes_or_says_what_is_wrong() {
        assert_eq!(date_from_parts("12", "3", "1941").as_deref(), Ok("1941-03-12"));
        assert_eq!(
            date_from_parts("", "", ""),
            Err("Enter the date of birth, for example 12 3 1941".into())
        );
        assert_eq!(
            date_from_parts("12", "", ""),
            Err("Date of birth must include a month and a year".into())
        );
        assert_eq!(
            date_from_parts("31", "2", "1941"),
            Err("Date of birth must be a real date".into())
        );
        assert_eq!(
            date_from_parts("1", "1", "41"),
            Err("Year must include 4 numbers".into())
        );
        assert_eq!(
            date_from_parts("a", "1", "1941"),
            Err("Date of birth must be numbers, for example 12 3 1941".into())
        );
        assert_eq!(
            date_from_parts("1", "1", "2999"),
            Err("Date of birth must be in the past".into())
        );
    }

    #[test]
    fn a_page_with_form_errors_says_so_first_in_its_title() {
        let errors = [("birthdate", "Date of birth must be a real date".to_string())];
        let with = page(&Chrome::default(), "Find a patient", error_summary(&errors)).into_string();
        assert!(
            with.contains("<title>Error: Find a patient – Shared care record</title>"),
            "{with}"
        );
        assert!(
            with.contains("href=\"#birthdate-day\""),
            "the summary links to the first box"
        );
        let without = page(&Chrome::default(), "Find a patient", html! { p { "x" } }).into_string();
        assert!(without.contains("<title>Find a patient – Shared care record</title>"));
    }
}
