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
    /// Codes that set a sensitivity label on write (`[[records.sensitive_codes]]` with
    /// `system`, `code`, `label`); the default is a short SNOMED CT sample.
    pub sensitive_codes: Vec<crate::labels::LabelCode>,
    /// Where Bulk Data `$export` writes its NDJSON files (one directory per export). Empty =
    /// `sharedcare-exports` in the system's temporary directory. In Kubernetes, a volume
    /// (an `emptyDir` is enough: an export interrupted by a restart is marked failed).
    pub export_dir: String,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            consent_url: String::new(),
            consent_timeout_ms: 2_000,
            sensitive_codes: crate::labels::defaults(),
            export_dir: String::new(),
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
        for (i, c) in self.sensitive_codes.iter().enumerate() {
            if c.system.is_empty() || c.code.is_empty() || c.label.is_empty() {
                return Err((
                    format!("records.sensitive_codes[{i}]"),
                    "needs system, code and label".into(),
                ));
            }
        }
        if self.consent_timeout_ms == 0 {
            return Err(("records.consent_timeout_ms".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}
