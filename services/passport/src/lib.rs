//! The passport service (to be built by the passport issue): a person's own view of their
//! record, their sharing choices and who has looked at it, ready for the NHS App. Its contract
//! is drafted in `proto/sharedcare/passport/v1/passport.proto`.
#![forbid(unsafe_code)]

/// The service's name: its schema, its topic (`sharedcare.passport.v1`).
pub const NAME: &str = "passport";

/// The generated gRPC contract this service will implement.
pub use sharedcare_proto::passport::v1 as api;
