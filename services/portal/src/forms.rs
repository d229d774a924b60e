//! The site's forms and queries as types: each is read with `axum::Form` or `axum::Query`,
//! and a field that is missing or not text is refused with its name (axum's rejection). A form
//! that changes anything carries the session's CSRF token as `csrf`.

use std::collections::HashMap;

use serde::Deserialize;

/// A form posted from a signed-in page: its CSRF token.
pub trait Posted {
    /// The `csrf` field as sent.
    fn csrf(&self) -> &str;
}

macro_rules! posted {
    ($($form:ty),*) => {$(
        impl Posted for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    )*};
}

/// `POST /portal/search`: by NHS number, or by last name and date of birth.
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// An NHS number (spaces allowed).
    #[serde(default)]
    pub nhs_number: String,
    /// The patient's last name.
    #[serde(default)]
    pub family: String,
    /// Date of birth, as NHS.UK's date input sends it.
    #[serde(default, rename = "birthdate-day")]
    pub birthdate_day: String,
    /// Its month.
    #[serde(default, rename = "birthdate-month")]
    pub birthdate_month: String,
    /// Its year.
    #[serde(default, rename = "birthdate-year")]
    pub birthdate_year: String,
}

impl Search {
    /// The values sent, by field name, to show again beside the errors.
    pub fn values(&self) -> HashMap<String, String> {
        [
            ("nhs_number", &self.nhs_number),
            ("family", &self.family),
            ("birthdate-day", &self.birthdate_day),
            ("birthdate-month", &self.birthdate_month),
            ("birthdate-year", &self.birthdate_year),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
    }
}

/// `POST /portal/patients/{h}/break-glass`: why emergency access is needed.
#[derive(Debug, Default, Deserialize)]
pub struct BreakGlass {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// One of the listed reasons.
    #[serde(default)]
    pub reason_code: String,
    /// What is happening, in the person's words.
    #[serde(default)]
    pub reason_text: String,
}

/// `POST /portal/reviews/{id}`: a reviewer's note on a break-glass grant.
#[derive(Debug, Default, Deserialize)]
pub struct Review {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// The reviewer's note.
    #[serde(default)]
    pub note: String,
}

/// `POST /passport/sharing/withhold`: the kind of information to stop sharing.
#[derive(Debug, Default, Deserialize)]
pub struct Withhold {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// A sensitivity category code.
    #[serde(default)]
    pub category: String,
}

/// A form with nothing but its CSRF token (stop withholding, sign out).
#[derive(Debug, Default, Deserialize)]
pub struct Confirm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// `POST /passport/notices/seen`: the notice read.
#[derive(Debug, Default, Deserialize)]
pub struct NoticeSeen {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// The notice's id.
    #[serde(default)]
    pub notice: String,
}

posted!(Search, BreakGlass, Review, Withhold, Confirm, NoticeSeen);

/// `GET /passport/access-log?before=`: the page before an entry.
#[derive(Debug, Default, Deserialize)]
pub struct AccessLogPage {
    /// Entries before this sequence number (none: the newest).
    pub before: Option<u64>,
}

/// OIDC Back-Channel Logout 1.0 §2.5: the logout token identity posts.
#[derive(Debug, Default, Deserialize)]
pub struct BackChannelLogout {
    /// The logout token (a JWT).
    #[serde(default)]
    pub logout_token: String,
}

/// `GET /portal/login` and `/passport/login`.
#[derive(Debug, Default, Deserialize)]
pub struct Login {
    /// A path on this site to come back to.
    pub return_to: Option<String>,
    /// The NHS App's assertion of who is signed in to it (silent sign-in).
    #[serde(default, rename = "assertedLoginIdentity")]
    pub asserted_login_identity: String,
}

/// The redirect back from identity (OpenID Connect Core §3.1.2.5 and §3.1.2.6).
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The state the sign-in started with.
    #[serde(default)]
    pub state: String,
    /// The authorization code.
    #[serde(default)]
    pub code: String,
    /// An OAuth error code, when identity did not sign the person in.
    pub error: Option<String>,
    /// Its description.
    #[serde(default)]
    pub error_description: String,
}
