//! The identity service (to be built by the identity/SSO issue): an OpenID Connect provider
//! with CIS2-style staff role profiles and NHS login-style patients. Its administration
//! contract is drafted in `proto/sharedcare/identity/v1/identity.proto`.
#![forbid(unsafe_code)]

/// The service's name: its schema, its topic (`sharedcare.identity.v1`).
pub const NAME: &str = "identity";

/// The generated gRPC contract this service will implement.
pub use sharedcare_proto::identity::v1 as api;
