//! The consent service (to be built by the shared care record issue): the one policy decision
//! point for every access to patient data. Its contract is drafted in
//! `proto/sharedcare/consent/v1/consent.proto`.
#![forbid(unsafe_code)]

pub mod policy;

/// The service's name: its schema, its topic (`sharedcare.consent.v1`).
pub const NAME: &str = "consent";

/// The generated gRPC contract this service will implement.
pub use sharedcare_proto::consent::v1 as api;
