//! What can go wrong serving a page, and the page each failure gets. A failure inside the
//! platform is logged once with its detail; the person gets a fixed sentence.

use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;

use sharedcare_kit::edge::Refusal;

use crate::oidc::RpError;
use crate::page;

/// A page that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// Bad input, nothing by that name, no credentials, or not allowed (the kit's shared refusals).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Signed out (or the session ended): go to sign in, then come back to `0`.
    #[error("sign in first")]
    SignIn(String),
    /// A form without this session's CSRF token.
    #[error("this form has expired or did not come from this site: go back, reload the page and try again")]
    Csrf,
    /// A platform service answered with an error.
    #[error("{0}")]
    Peer(#[from] tonic::Status),
    /// Identity refused or failed a sign-in.
    #[error("{0}")]
    Rp(#[from] RpError),
    /// The portal's own database failed.
    #[error("portal storage unavailable: {0}")]
    Storage(#[from] sqlx::Error),
    /// Something the portal should not have got wrong.
    #[error("{0}")]
    Internal(String),
}

impl PortalError {
    /// The HTTP status and what the person is told.
    fn public(&self) -> (StatusCode, String) {
        match self {
            PortalError::Refused(r) => (r.code().http(), r.to_string()),
            PortalError::Csrf => (StatusCode::FORBIDDEN, self.to_string()),
            PortalError::SignIn(_) => (StatusCode::UNAUTHORIZED, self.to_string()),
            PortalError::Peer(s) => match s.code() {
                tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, s.message().to_string()),
                tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, s.message().to_string()),
                // The services' own words ("no record is held for …") are for logs: people are
                // told what it means and what to do.
                tonic::Code::NotFound => (
                    StatusCode::NOT_FOUND,
                    "We could not find that record. If you typed an NHS number, check it; if you followed a link, it may be out of date.".into(),
                ),
                tonic::Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "sign in again".into()),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is not available at the moment. Nothing was shown or changed. Try again in a few minutes.".into(),
                ),
            },
            PortalError::Rp(RpError::Refused(m)) => (StatusCode::FORBIDDEN, format!("Sign-in was refused: {m}")),
            PortalError::Rp(_) | PortalError::Storage(_) | PortalError::Internal(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is not available at the moment. Nothing was shown or changed. Try again in a few minutes.".into(),
            ),
        }
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        if let PortalError::SignIn(back) = &self {
            let to = format!("{}login", crate::page::home_of(back));
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("return_to", back)
                .finish();
            return Redirect::to(&format!("{to}?{q}")).into_response();
        }
        let (status, message) = self.public();
        if status.is_server_error() {
            tracing::error!(error = %self, "page failed");
        }
        let title = match status {
            StatusCode::BAD_REQUEST => "There is a problem",
            StatusCode::FORBIDDEN => "You cannot see this page",
            StatusCode::NOT_FOUND => "Page not found",
            _ => "Sorry, there is a problem with the service",
        };
        (
            status,
            axum::response::Html(page::error_page(title, &message).into_string()),
        )
            .into_response()
    }
}
