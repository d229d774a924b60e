//! The records service's settings (`[records]`, `SHAREDCARE_RECORDS__*`).

use serde::{Deserialize, Serialize};

/// How records reaches the services it depends on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    /// The consent service's gRPC endpoint, e.g. `http://consent:50051`. Empty = the consent
    /// service in the same process (`up`); required by `serve records`.
    pub consent_url: String,
    /// How long a consent decision may take before the access is refused as undecidable.
    pub consent_timeout_ms: u64,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            consent_url: String::new(),
            consent_timeout_ms: 2_000,
        }
    }
}

impl RecordsConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let url = &self.consent_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err((
                "records.consent_url".into(),
                "expected the consent service's gRPC URL, e.g. http://consent:50051".into(),
            ));
        }
        if self.consent_timeout_ms == 0 {
            return Err(("records.consent_timeout_ms".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}
