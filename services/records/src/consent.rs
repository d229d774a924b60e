//! Asking the consent service: the kit's policy-decision client ([`sharedcare_kit::pdp`]),
//! which every service serving patient data shares.

pub use sharedcare_kit::pdp::{GrpcPdp, Pdp, PdpError, ask};
