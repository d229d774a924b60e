//! Calling another Sharedcare service over gRPC with this process's own credentials: a lazily
//! connected, time-bounded channel, and requests carrying the service token and the caller's
//! trace context.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::auth::{AuthError, ServiceToken};

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
    if let Ok(v) = crate::nested::mark().parse() {
        req.metadata_mut().insert(crate::nested::HEADER, v);
    }
    if let Ok(v) = crate::telemetry::current_traceparent().parse() {
        req.metadata_mut().insert("traceparent", v);
    }
    Ok(req)
}
