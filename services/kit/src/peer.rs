//! Calling another Sharedcare service over gRPC with this process's own credentials: a lazily
//! connected, time-bounded channel, and requests carrying the service token and the caller's
//! trace context.

use std::sync::OnceLock;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::auth::{AuthError, ServiceToken};

/// The header on every call a process makes to the platform (gRPC peers, the token endpoint,
/// the token keys), carrying [`mark`].
pub const NESTED: &str = "sharedcare-nested";

/// A random mark, one per process. A request that carries this process's own mark is one it
/// made to itself while answering another (in `up`, every service is in one process): it is
/// not counted against `max_in_flight`, so an admitted request never fails on its own inner
/// call. Another process's mark means nothing here, so each pod still limits what reaches it.
pub fn mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| {
        let mut bytes = [0u8; 16];
        // No randomness at all is not a reason to stop: the mark only spares self-calls.
        let _ = getrandom::fill(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Whether `headers` carry this process's own [`mark`].
pub fn is_nested(headers: &http::HeaderMap) -> bool {
    headers.get(NESTED).is_some_and(|v| v.as_bytes() == mark().as_bytes())
}

/// A channel to `endpoint` (e.g. `http://audit:50051`, from the setting `setting`, named in
/// the error), each call bounded by `timeout`. Connects lazily: the peer may start later.
pub fn channel(endpoint: &str, setting: &str, timeout: Duration) -> crate::Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| crate::Error::Config(format!("`{setting}`: {endpoint:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy())
}

/// `message` as a request with `token`'s bearer token and the current trace context.
pub async fn request<T>(token: &ServiceToken, message: T) -> Result<tonic::Request<T>, AuthError> {
    let token = token.get().await?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| AuthError::ServiceToken("the service token is not a valid header value".into()))?;
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", bearer);
    if let Ok(v) = mark().parse() {
        req.metadata_mut().insert(NESTED, v);
    }
    if let Ok(v) = crate::telemetry::current_traceparent().parse() {
        req.metadata_mut().insert("traceparent", v);
    }
    Ok(req)
}
