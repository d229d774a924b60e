//! Writing to the shared care record: one `PutMany` per message (all of it or none of it),
//! as the sender's own client, naming the sender's organisation as the source, so consent
//! decides the write, audit records who wrote it and provenance names the organisation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use sharedcare_kit::auth::ServiceToken;
use sharedcare_proto::records::v1::PutManyRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use tonic::transport::Channel;

use crate::config::SenderConfig;

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Records refused the content (resource `index`, in the order given): it will be refused
    /// again if resent unchanged.
    #[error("{message}")]
    Refused {
        /// Which resource, when records said.
        index: Option<usize>,
        /// Records' words.
        message: String,
    },
    /// Records, consent, audit or identity could not be reached or did not answer in time;
    /// nothing was written, and a resend may succeed.
    #[error("{0}")]
    Unavailable(String),
}

/// Records' client, with one token source per sender.
#[derive(Clone)]
pub struct Writer {
    records: RecordsClient<Channel>,
    tokens: HashMap<String, ServiceToken>,
    timeout: Duration,
}

impl Writer {
    /// A writer to records at `channel`, with `tokens` by sender client id; each write is
    /// retried until `timeout` while records is unavailable.
    pub fn new(channel: Channel, tokens: HashMap<String, ServiceToken>, timeout: Duration) -> Writer {
        Writer {
            records: RecordsClient::new(channel),
            tokens,
            timeout,
        }
    }

    /// Writes `resources` as `sender`, all or none, naming `document` (the message they came
    /// from) in their Provenance; returns once they are durably stored.
    pub async fn put_many(&self, sender: &SenderConfig, resources: &[Value], document: &str) -> Result<(), WriteError> {
        self.put_many_keeping(sender, resources, &[], document).await.map(drop)
    }

    /// [`Writer::put_many`], writing the resources at `only_if_absent` only when the record
    /// holds none of their ids; returns, for each resource, whether it was left unchanged.
    pub async fn put_many_keeping(
        &self,
        sender: &SenderConfig,
        resources: &[Value],
        only_if_absent: &[u32],
        document: &str,
    ) -> Result<Vec<bool>, WriteError> {
        let Some(token) = self.tokens.get(&sender.client_id) else {
            return Err(WriteError::Unavailable(format!(
                "no client for sender {}",
                sender.name()
            )));
        };
        let message = PutManyRequest {
            resources_json: resources.iter().map(Value::to_string).collect(),
            source_organisation: sender.ods_code.clone(),
            purpose: String::new(),
            source_document: document.to_string(),
            only_if_absent: only_if_absent.to_vec(),
        };
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let request = sharedcare_kit::peer::request(token, message.clone())
                .await
                .map_err(|e| WriteError::Unavailable(format!("no token for {}: {e}", sender.client_id)));
            let outcome = match request {
                Ok(r) => match self.records.clone().put_many(r).await {
                    Ok(r) => return Ok(r.into_inner().stored.iter().map(|s| s.unchanged).collect()),
                    Err(status) => classify(&status),
                },
                Err(e) => e,
            };
            match outcome {
                WriteError::Unavailable(why) if Instant::now() + pause < deadline => {
                    tracing::warn!(sender = %sender.name(), %why, "records unavailable; the ACK waits and the write is retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return Err(other),
            }
        }
    }
}

/// What a status from records means for the sender.
fn classify(status: &tonic::Status) -> WriteError {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition | Code::NotFound => {
            let message = status.message().to_string();
            // Records names the resource as `resources[i].…`.
            let index = message
                .strip_prefix("resources[")
                .and_then(|rest| rest.split(']').next())
                .and_then(|i| i.parse().ok());
            WriteError::Refused { index, message }
        }
        _ => WriteError::Unavailable(format!("records answered {:?}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_resource_and_an_outage_is_retryable() {
        let e = classify(&tonic::Status::invalid_argument(
            "resources[1].period.start: is not a dateTime",
        ));
        assert_eq!(
            e,
            WriteError::Refused {
                index: Some(1),
                message: "resources[1].period.start: is not a dateTime".into()
            }
        );
        assert!(matches!(
            classify(&tonic::Status::unavailable("consent decision unavailable")),
            WriteError::Unavailable(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::permission_denied("access denied")),
            WriteError::Refused { index: None, .. }
        ));
    }
}
