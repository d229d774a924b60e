//! The connectors' settings (`[connectors]` in the configuration file,
//! `SHAREDCARE_CONNECTORS__*`): where the MLLP listener listens, which systems may send and
//! whom each speaks for.

use serde::{Deserialize, Serialize};
use sharedcare_kit::config::Invalid;

use crate::hl7::LocalTime;

/// What the connectors service is told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorsConfig {
    /// Where the HL7 v2 MLLP listener listens (`host:port`; 2575 is HL7's registered port).
    /// Empty = no listener.
    pub mllp_listen: String,
    /// TLS on the MLLP listener: the PEM certificate chain it presents. Empty = plain TCP (a
    /// private network, or TLS terminated in front).
    pub mllp_tls_cert: String,
    /// The PEM private key of `mllp_tls_cert`.
    pub mllp_tls_key: String,
    /// Records' gRPC endpoint, e.g. `http://records:50051`. Empty = records in this process.
    pub records_url: String,
    /// The systems that may send, each with the organisation it speaks for and its own
    /// client credentials (`[[connectors.senders]]`). `up` adds the demo acute trust's PAS
    /// when it seeds the demo.
    pub senders: Vec<SenderConfig>,
    /// How long a received message (raw text and ACK) is kept, and so how long a resend of
    /// the same control id is answered from the record of it (days).
    pub retention_days: u32,
    /// The largest message accepted (bytes); a bigger frame gets AR and is not read further.
    pub max_message_bytes: usize,
    /// Most MLLP connections at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long one message may take to be written to records before it gets AE (ms).
    pub write_timeout_ms: u64,
    /// Consent's gRPC endpoint (a GP Connect fetch is decided first). Empty = in this process.
    pub consent_url: String,
    /// GP Connect Access Record: Structured, as a consumer (`[connectors.gp_connect]`); off
    /// until its `endpoint` is set.
    pub gp_connect: GpConnectConfig,
}

impl Default for ConnectorsConfig {
    fn default() -> Self {
        ConnectorsConfig {
            mllp_listen: "127.0.0.1:2575".into(),
            mllp_tls_cert: String::new(),
            mllp_tls_key: String::new(),
            records_url: String::new(),
            senders: Vec::new(),
            retention_days: 90,
            max_message_bytes: 4 * 1024 * 1024,
            max_connections: 64,
            write_timeout_ms: 10_000,
            consent_url: String::new(),
            gp_connect: GpConnectConfig {
                timeout_ms: 10_000,
                ..Default::default()
            },
        }
    }
}

/// One system that may send HL7 v2 (a hospital's PAS or laboratory system).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// MSH-3, the sending application's namespace id; empty = any application at the
    /// facility.
    #[serde(default)]
    pub application: String,
    /// MSH-4, the sending facility's namespace id (usually the trust's ODS code).
    pub facility: String,
    /// The ODS code of the organisation that authors what this sender sends.
    pub ods_code: String,
    /// The OAuth client this sender writes to records as (client credentials, scope
    /// `records.write`); list it in `records.feeds` so its admissions start care
    /// relationships.
    pub client_id: String,
    /// Its secret; or give `client_secret_file`.
    #[serde(default)]
    pub client_secret: String,
    /// A file holding its secret (a mounted Kubernetes Secret), read at start.
    #[serde(default)]
    pub client_secret_file: String,
    /// How timestamps without an offset are read: `uk` (GMT/BST, the default) or `utc`.
    #[serde(default = "uk")]
    pub local_time: String,
}

fn uk() -> String {
    "uk".into()
}

impl SenderConfig {
    /// The sender's name in logs and the message store: `application@facility`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.application, self.facility)
    }

    /// Its client secret: `client_secret`, else the trimmed contents of `client_secret_file`.
    pub fn secret(&self) -> Result<String, Invalid> {
        if !self.client_secret.is_empty() {
            return Ok(self.client_secret.clone());
        }
        std::fs::read_to_string(&self.client_secret_file)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                Invalid::new(
                    "connectors.senders.client_secret_file",
                    format!("{}: {e}", self.client_secret_file),
                )
            })
    }

    /// How its timestamps without an offset are read.
    pub fn local_time(&self) -> LocalTime {
        if self.local_time == "utc" {
            LocalTime::Utc
        } else {
            LocalTime::UkCivil
        }
    }
}

impl ConnectorsConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.mllp_listen.is_empty() && self.mllp_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new(
                "connectors.mllp_listen",
                "expected host:port, e.g. 0.0.0.0:2575, or empty for no listener",
            ));
        }
        if self.mllp_tls_cert.is_empty() != self.mllp_tls_key.is_empty() {
            let missing = if self.mllp_tls_cert.is_empty() {
                "connectors.mllp_tls_cert"
            } else {
                "connectors.mllp_tls_key"
            };
            return Err(Invalid::new(
                missing,
                "TLS needs both a certificate chain and its key (PEM files), or neither",
            ));
        }
        let url = &self.records_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new(
                "connectors.records_url",
                "expected records' gRPC URL, e.g. http://records:50051",
            ));
        }
        self.gp_connect.validate()?;
        if self.retention_days == 0 {
            return Err(Invalid::new("connectors.retention_days", "must be at least 1"));
        }
        if self.max_message_bytes < 1024 {
            return Err(Invalid::new("connectors.max_message_bytes", "must be at least 1024"));
        }
        if self.max_connections == 0 {
            return Err(Invalid::new("connectors.max_connections", "must be at least 1"));
        }
        if self.write_timeout_ms == 0 {
            return Err(Invalid::new("connectors.write_timeout_ms", "must be at least 1"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.senders.iter().enumerate() {
            let key = |field: &str| format!("connectors.senders[{i}].{field}");
            if s.facility.trim().is_empty() {
                return Err(Invalid::new(key("facility"), "expected the MSH-4 the sender sends"));
            }
            if let Err(e) = sharedcare_kit::nhs::OdsCode::parse(&s.ods_code) {
                return Err(Invalid::new(key("ods_code"), e.to_string()));
            }
            if s.client_id.is_empty() {
                return Err(Invalid::new(key("client_id"), "expected the sender's OAuth client id"));
            }
            if s.client_secret.is_empty() == s.client_secret_file.is_empty() {
                return Err(Invalid::new(
                    key("client_secret"),
                    "expected the client's secret, or client_secret_file naming a file that holds it (one of them)",
                ));
            }
            if !matches!(s.local_time.as_str(), "uk" | "utc") {
                return Err(Invalid::new(key("local_time"), "expected uk or utc"));
            }
            if !seen.insert((s.application.clone(), s.facility.clone())) {
                return Err(Invalid::new(
                    key("facility"),
                    format!("{} is configured twice", s.name()),
                ));
            }
        }
        Ok(())
    }

    /// The sender configured for MSH-3 `application` and MSH-4 `facility`: the one naming
    /// both, else the one for any application at the facility.
    pub fn sender(&self, application: &str, facility: &str) -> Option<&SenderConfig> {
        let at = |s: &&SenderConfig| s.facility.eq_ignore_ascii_case(facility);
        self.senders
            .iter()
            .filter(at)
            .find(|s| s.application.eq_ignore_ascii_case(application))
            .or_else(|| self.senders.iter().filter(at).find(|s| s.application.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(application: &str) -> SenderConfig {
        SenderConfig {
            application: application.into(),
            facility: "RX1".into(),
            ods_code: "RX1".into(),
            client_id: format!("rx1-{application}"),
            client_secret: "s".into(),
            client_secret_file: String::new(),
            local_time: uk(),
        }
    }

    #[test]
    fn a_sender_is_found_by_application_and_facility_or_by_facility_alone() {
        let c = ConnectorsConfig {
            senders: vec![sender("PAS"), sender("")],
            ..ConnectorsConfig::default()
        };
        assert_eq!(c.sender("pas", "rx1").map(|s| s.client_id.as_str()), Some("rx1-PAS"));
        assert_eq!(c.sender("LAB", "RX1").map(|s| s.client_id.as_str()), Some("rx1-"));
        assert!(c.sender("PAS", "RVC").is_none());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let mut c = ConnectorsConfig::default();
        c.senders.push(SenderConfig {
            ods_code: "not an ods code".into(),
            ..sender("PAS")
        });
        assert_eq!(
            c.validate().map_err(|e| e.key),
            Err("connectors.senders[0].ods_code".into())
        );
        c.senders = vec![SenderConfig {
            client_secret_file: "/etc/secret".into(),
            ..sender("PAS")
        }];
        assert_eq!(
            c.validate().map_err(|e| e.key),
            Err("connectors.senders[0].client_secret".into()),
            "a secret and a file are one too many"
        );
        c.senders = vec![sender("PAS"), sender("PAS")];
        assert_eq!(
            c.validate().map_err(|e| e.key),
            Err("connectors.senders[1].facility".into())
        );
        let c = ConnectorsConfig {
            mllp_listen: "nowhere".into(),
            ..ConnectorsConfig::default()
        };
        assert_eq!(c.validate().map_err(|e| e.key), Err("connectors.mllp_listen".into()));
        assert_eq!(ConnectorsConfig::default().validate(), Ok(()));
    }
}

/// Where the GP practice's GP Connect endpoint is, and who we are to it
/// (`[connectors.gp_connect]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GpConnectConfig {
    /// The practice's FHIR base URL (through the Spine Secure Proxy in production), e.g.
    /// `https://orange.testlab.nhs.uk/B82617/STU3/1/gpconnect/structured/fhir`. Empty = off.
    pub endpoint: String,
    /// The practice's ODS code: what is fetched is written as authored by it.
    pub ods_code: String,
    /// The practice's ASID (`Ssp-To`).
    #[serde(deserialize_with = "asid")]
    pub provider_asid: String,
    /// Our ASID (`Ssp-From`), issued when the ICS's system was assured.
    #[serde(deserialize_with = "asid")]
    pub consumer_asid: String,
    /// The requesting organisation (`requesting_organization`): ODS code and name.
    pub organisation_ods: String,
    /// Its name.
    pub organisation_name: String,
    /// The client Sharedcare writes to records as for this practice (client credentials,
    /// `records.write`, listed in `records.feeds`).
    pub client_id: String,
    /// Its secret; or `client_secret_file`.
    pub client_secret: String,
    /// A file holding the secret.
    pub client_secret_file: String,
    /// How long one fetch may take (ms).
    pub timeout_ms: u64,
}

/// An ASID (Accredited System ID) is twelve digits: written as a number (in TOML, or an
/// environment variable, which reads as one) or as a string.
fn asid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Asid {
        Text(String),
        Number(u64),
    }
    Ok(match Asid::deserialize(d)? {
        Asid::Text(s) => s,
        Asid::Number(n) => n.to_string(),
    })
}

impl GpConnectConfig {
    /// Checks what a fetch needs, naming the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.endpoint.is_empty() {
            return Ok(());
        }
        let need = |key: &str, v: &str| {
            if v.is_empty() {
                Err(Invalid::new(
                    format!("connectors.gp_connect.{key}"),
                    "is required when connectors.gp_connect.endpoint is set",
                ))
            } else {
                Ok(())
            }
        };
        need("ods_code", &self.ods_code)?;
        need("provider_asid", &self.provider_asid)?;
        need("consumer_asid", &self.consumer_asid)?;
        need("organisation_ods", &self.organisation_ods)?;
        need("organisation_name", &self.organisation_name)?;
        need("client_id", &self.client_id)?;
        Ok(())
    }

    /// The client secret, from `client_secret` or `client_secret_file`.
    pub fn secret(&self) -> Result<String, Invalid> {
        if !self.client_secret_file.is_empty() {
            return std::fs::read_to_string(&self.client_secret_file)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    Invalid::new(
                        "connectors.gp_connect.client_secret_file",
                        format!("cannot read {}: {e}", self.client_secret_file),
                    )
                });
        }
        Ok(self.client_secret.clone())
    }
}
