//! The records service's settings (`[records]`, `SHAREDCARE_RECORDS__*`).

use serde::{Deserialize, Serialize};
use sharedcare_kit::config::Invalid;

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
    /// `sharedcare-exports` in the system's temporary directory. With more than one records
    /// replica, a volume every replica mounts (ReadWriteMany), so that any of them answers a
    /// status poll or a download; with one, an `emptyDir` is enough.
    pub export_dir: String,
    /// How long a finished export (its files and status) is kept before it is removed.
    pub export_retention_hours: u64,
    /// Client ids of system feeds (a hospital PAS through the HL7 v2 connector, the ICS's
    /// integration engine) whose Encounters, EpisodesOfCare and referrals start care
    /// relationships with the organisations they name. Staff writes start one only for the
    /// writer's own organisation; other writers start none. `up` adds the demo's
    /// `ics-integration` client when it seeds the demo.
    pub feeds: Vec<String>,
    /// How far before the write a relationship from a staff write may start (seconds).
    pub relationship_backdate_secs: i64,
    /// How long an open-ended relationship from a staff write lasts after the write (days);
    /// writing again renews it.
    pub staff_relationship_days: i64,
    /// How long a relationship a feed's Encounter or EpisodeOfCare started lasts after it ends
    /// (days): a discharge ends the trust's relationship this long after the discharge time,
    /// for the results and letters that follow. 0 = at the discharge.
    pub discharge_relationship_days: i64,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            consent_url: String::new(),
            consent_timeout_ms: 2_000,
            sensitive_codes: crate::labels::defaults(),
            export_dir: String::new(),
            export_retention_hours: 24,
            feeds: Vec::new(),
            relationship_backdate_secs: 72 * 3600,
            staff_relationship_days: 90,
            discharge_relationship_days: 0,
        }
    }
}

impl RecordsConfig {
    /// The care policy these settings give; `demo_feeds` are clients trusted as feeds besides
    /// the configured ones (the demo's integration engine and PAS in `up`).
    pub fn care_policy(&self, demo_feeds: &[&str]) -> crate::care::CarePolicy {
        const DAY_US: i64 = 86_400_000_000;
        crate::care::CarePolicy {
            feeds: self
                .feeds
                .iter()
                .cloned()
                .chain(demo_feeds.iter().map(|f| f.to_string()))
                .collect(),
            backdate_us: self.relationship_backdate_secs.saturating_mul(1_000_000),
            staff_period_us: self.staff_relationship_days.saturating_mul(DAY_US),
            after_end_us: self.discharge_relationship_days.saturating_mul(DAY_US),
        }
    }

    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = &self.consent_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new(
                "records.consent_url",
                "expected the consent service's gRPC URL, e.g. http://consent:50051",
            ));
        }
        for (i, c) in self.sensitive_codes.iter().enumerate() {
            if c.system.is_empty() || c.code.is_empty() || c.label.is_empty() {
                return Err(Invalid::new(
                    format!("records.sensitive_codes[{i}]"),
                    "needs system, code and label",
                ));
            }
        }
        if self.relationship_backdate_secs < 0 {
            return Err(Invalid::new(
                "records.relationship_backdate_secs",
                "must not be negative",
            ));
        }
        if self.staff_relationship_days < 1 {
            return Err(Invalid::new("records.staff_relationship_days", "must be at least 1"));
        }
        if self.discharge_relationship_days < 0 {
            return Err(Invalid::new(
                "records.discharge_relationship_days",
                "must not be negative",
            ));
        }
        if let Some(i) = self.feeds.iter().position(String::is_empty) {
            return Err(Invalid::new(format!("records.feeds[{i}]"), "expected a client id"));
        }
        if self.consent_timeout_ms == 0 {
            return Err(Invalid::new("records.consent_timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}
