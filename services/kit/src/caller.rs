//! Who is calling, verified once per request and asked for in the signature.
//!
//! - gRPC: [`verify`] runs on the process's gRPC server (one layer for every service). It
//!   verifies the `authorization: Bearer` token of each call once and puts the outcome in the
//!   request's extensions; a method asks for its caller with [`of`], which answers
//!   UNAUTHENTICATED when there was no token or it did not verify.
//! - HTTP: [`Caller`] is an axum extractor (its state gives the [`Verifier`]): a handler that
//!   takes one cannot run without a verified caller, and the refusal is the kit's
//!   OperationOutcome.

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;
use http::request::Parts;

use crate::auth::{AuthError, Principal, Verifier, bearer};

/// The outcome of verifying a call's bearer token, in its extensions.
#[derive(Clone, Debug)]
struct Verified(Result<Principal, AuthError>);

/// The bearer token of `headers`, if any.
fn token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// Middleware for the gRPC server: verifies each call's bearer token once (calls without one,
/// health checks and reflection, pass untouched) and records the outcome for [`of`].
pub async fn verify(State(verifier): State<Verifier>, mut req: Request, next: Next) -> Response {
    if let Some(t) = token(req.headers()) {
        let who = verifier.principal(t).await;
        req.extensions_mut().insert(Verified(who));
    }
    next.run(req).await
}

/// The verified caller of a gRPC call (see [`verify`]).
pub fn of<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    match req.extensions().get::<Verified>() {
        Some(Verified(Ok(p))) => Ok(p.clone()),
        Some(Verified(Err(e))) => Err(e.clone().into()),
        None => Err(AuthError::Missing.into()),
    }
}

/// The verified caller of an HTTP request, from `Authorization: Bearer`.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

/// An HTTP request refused for want of a verified caller: an OperationOutcome (401).
#[derive(Debug)]
pub struct Refused(pub AuthError);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, body) = crate::edge::operation_outcome(&self.0);
        (status, axum::Json(body)).into_response()
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Verifier: FromRef<S>,
{
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let t = token(&parts.headers).ok_or(Refused(AuthError::Missing))?;
        Verifier::from_ref(state)
            .principal(t)
            .await
            .map(Caller)
            .map_err(Refused)
    }
}
