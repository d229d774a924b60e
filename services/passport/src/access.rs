//! "Who has looked at my record": the person's entries in the audit log, each with an
//! inclusion proof against a signed tree head, fetched from the audit service with the
//! passport's own credentials (scope `audit.read`) when the person asks.
//!
//! This is the one read the passport does not serve from its own model, on purpose: a proof
//! is only worth having against the log's latest signed head, which only audit can give, and
//! a copy of the entries would prove nothing.

use serde_json::{Value, json};
use sharedcare_kit::auth::ServiceToken;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::peer;
use sharedcare_proto::audit::v1::audit_client::AuditClient;
use sharedcare_proto::audit::v1::{GetInclusionProofsRequest, GetTreeHeadRequest, ListByPatientRequest};
use sharedcare_proto::passport::v1 as api;
use tonic::transport::Channel;

use crate::PassportError;
use crate::view::rfc3339;

/// Most entries on one page.
pub const MAX_PAGE: u32 = 100;
/// Entries on a page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 20;

/// The audit service, as the passport asks it.
#[derive(Clone)]
pub struct AuditLog {
    client: AuditClient<Channel>,
    token: ServiceToken,
}

fn unavailable(s: tonic::Status) -> PassportError {
    PassportError::AuditLog(format!("{:?}: {}", s.code(), s.message()))
}

impl AuditLog {
    /// Audit at `channel`, called with `token` (scope `audit.read`).
    pub fn new(channel: Channel, token: ServiceToken) -> AuditLog {
        AuditLog {
            client: AuditClient::new(channel),
            token,
        }
    }

    async fn request<T>(&self, message: T) -> Result<tonic::Request<T>, PassportError> {
        peer::request(&self.token, message)
            .await
            .map_err(|e| PassportError::AuditLog(e.to_string()))
    }

    /// A page of `patient`'s entries (`page_size` 0 = the default), newest first, before
    /// sequence `before` (0 = from the newest), each proved against one freshly signed head.
    pub async fn page(
        &self,
        patient: &NhsNumber,
        page_size: u32,
        before: u64,
    ) -> Result<api::AccessLog, PassportError> {
        let size = match page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(PassportError::invalid(
                    "page_size",
                    format!("{n} is more than {MAX_PAGE}"),
                ));
            }
            n => n,
        };
        let listed = self
            .client
            .clone()
            .list_by_patient(
                self.request(ListByPatientRequest {
                    nhs_number: patient.to_string(),
                    page_size: size,
                    before_sequence: before,
                })
                .await?,
            )
            .await
            .map_err(unavailable)?
            .into_inner();
        // A head that covers every entry listed: the latest signed one when it does, else one
        // signed now (after the listing, so it covers them).
        let needed = listed.entries.iter().map(|e| e.leaf_index + 1).max().unwrap_or(0);
        let mut head = self
            .client
            .clone()
            .get_tree_head(self.request(GetTreeHeadRequest { fresh: false }).await?)
            .await
            .map_err(unavailable)?
            .into_inner();
        if head.tree_size < needed {
            head = self
                .client
                .clone()
                .get_tree_head(self.request(GetTreeHeadRequest { fresh: true }).await?)
                .await
                .map_err(unavailable)?
                .into_inner();
        }
        // Every entry's proof in one call: the tiles they need are read once.
        let proofs = if listed.entries.is_empty() {
            Vec::new()
        } else {
            let req = self
                .request(GetInclusionProofsRequest {
                    leaf_indexes: listed.entries.iter().map(|e| e.leaf_index).collect(),
                    tree_size: head.tree_size,
                })
                .await?;
            self.client
                .clone()
                .get_inclusion_proofs(req)
                .await
                .map_err(unavailable)?
                .into_inner()
                .proofs
        };
        let entries = listed
            .entries
            .into_iter()
            .zip(proofs)
            .map(|(e, p)| api::AccessLogEntry {
                sequence: e.sequence,
                leaf_index: e.leaf_index,
                time: e.time,
                organisation: e.actor_organisation,
                role: e.actor_role,
                actor: e.actor,
                action: e.action,
                purpose: e.purpose,
                reason: e.reason,
                outcome: e.outcome,
                service: e.service,
                leaf_data: p.leaf_data,
                leaf_hash: p.leaf_hash,
                audit_path: p.audit_path,
            })
            .collect();
        Ok(api::AccessLog {
            entries,
            next_before_sequence: listed.next_before_sequence,
            tree_head: Some(api::TreeHead {
                tree_size: head.tree_size,
                root_hash: head.root_hash,
                timestamp_us: head.timestamp_us,
                signature: head.signature,
                public_key: head.public_key,
            }),
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The JSON the HTTP API answers; hashes, signature and key in lowercase hex.
pub fn to_json(log: &api::AccessLog) -> Value {
    let head = log.tree_head.clone().unwrap_or_default();
    json!({
        "entries": log.entries.iter().map(|e| json!({
            "sequence": e.sequence, "leafIndex": e.leaf_index,
            "time": rfc3339(e.time.as_ref().map(sharedcare_kit::db::micros).unwrap_or_default()),
            "organisation": e.organisation, "role": e.role, "actor": e.actor, "action": e.action,
            "purpose": e.purpose, "reason": e.reason, "outcome": e.outcome, "service": e.service,
            "proof": {
                "leafData": e.leaf_data, "leafHash": hex(&e.leaf_hash),
                "auditPath": e.audit_path.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            },
        })).collect::<Vec<_>>(),
        "nextBeforeSequence": log.next_before_sequence,
        "treeHead": {
            "treeSize": head.tree_size, "rootHash": hex(&head.root_hash),
            "timestampUs": head.timestamp_us, "signature": hex(&head.signature),
            "publicKey": hex(&head.public_key),
        },
    })
}
