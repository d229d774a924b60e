//! End-to-end tests: they start the `sharedcare` binary (built by the test command) and use
//! it over gRPC and HTTP as an app or an operator would.
//!
//! One test binary with modules (each file under `tests/` would be another binary to link).
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]

mod audit_log;
mod bulk;
mod chaos;
mod connectors;
mod consent;
mod demo;
mod distributed;
mod enforcement;
mod fhir_client;
mod fhir_types;
mod hapi;
mod harness;
mod identity;
mod image;
mod import;
mod keys;
mod kubernetes;
mod layers;
mod oidc_node;
mod operator;
mod overload;
mod passport;
mod patient_search;
mod portal;
mod startup;
mod up;
