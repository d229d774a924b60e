//! End-to-end tests live in `e2e/`; this library is intentionally empty.
// Test code: a panic is a failed test, so expect, indexing and Row::get are fine here.
#![allow(clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]
#![forbid(unsafe_code)]
