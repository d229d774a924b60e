//! Consent's settings (`[consent]` in the configuration file, `SHAREDCARE_CONSENT__*`).

use serde::{Deserialize, Serialize};
use sharedcare_kit::config::Invalid;

/// Where consent finds identity's organisation directory (which organisations a break-glass
/// reviewer covers).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// Identity's gRPC endpoint, e.g. `http://identity:50051`. Empty = identity in the same
    /// process (`up`); when identity runs elsewhere and this is empty, a staff reviewer covers
    /// only their own organisation.
    pub identity_url: String,
    /// How long an organisation's parent, read from the directory, is remembered (seconds).
    pub directory_cache_secs: u64,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            identity_url: String::new(),
            directory_cache_secs: 300,
        }
    }
}

impl ConsentConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = &self.identity_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new(
                "consent.identity_url",
                "expected identity's gRPC URL, e.g. http://identity:50051",
            ));
        }
        if self.directory_cache_secs == 0 {
            return Err(Invalid::new("consent.directory_cache_secs", "must be at least 1"));
        }
        Ok(())
    }
}
