//! The verifiable log over the `entries` table: signed tree heads (Ed25519), inclusion and
//! consistency proofs, and the verification `sharedcare audit verify` runs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sharedcare_kit::db;
use sharedcare_proto::audit::v1::{AuditEntry, SignedTreeHead};

use crate::AuditError;
use crate::merkle::{self, Hash};
use crate::store::{Store, hex, unhex};

/// The canonical leaf of an entry: a JSON array of its fields in this fixed order —
/// `[leaf_index, event_id, nhs_number, actor, actor_organisation, actor_role, action,
/// resources, purpose, reason, outcome, time_us, trace_id, service]`. Anyone holding the entry
/// (the patient, an auditor) can rebuild it and check it against a signed tree head.
pub fn leaf_data(e: &AuditEntry) -> String {
    let time_us = e.time.as_ref().map(db::micros).unwrap_or_default();
    serde_json::json!([
        e.leaf_index,
        e.event_id,
        e.nhs_number,
        e.actor,
        e.actor_organisation,
        e.actor_role,
        e.action,
        e.resources,
        e.purpose,
        e.reason,
        e.outcome,
        time_us,
        e.trace_id,
        e.service
    ])
    .to_string()
}

/// The bytes a tree head signature covers.
pub fn signed_bytes(size: u64, timestamp_us: i64, root: &Hash) -> Vec<u8> {
    let mut m = b"sharedcare-audit-sth-v1\n".to_vec();
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(&timestamp_us.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// The log: its store and signing key.
#[derive(Clone)]
pub struct Log {
    store: Store,
    key: std::sync::Arc<Ed25519KeyPair>,
    /// The tree's right edge as of the last head signed here: a new head reads only the leaves
    /// appended since (entries are never changed; `verify` rechecks everything from the rows).
    frontier: std::sync::Arc<tokio::sync::Mutex<merkle::Frontier>>,
}

/// One thing `verify` found wrong, naming the entry or head.
pub type Problem = String;

impl Log {
    /// The log over `store`, with its key (made on first use).
    pub async fn open(store: Store) -> Result<Log, AuditError> {
        let bad = |why: &str| AuditError::Invalid {
            field: "log_keys.pkcs8".into(),
            reason: why.into(),
        };
        let stored = store
            .log_key(|| {
                let rng = SystemRandom::new();
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the operating system provides randomness");
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a fresh key parses");
                (B64.encode(pkcs8.as_ref()), B64.encode(pair.public_key().as_ref()))
            })
            .await?;
        let bytes = B64.decode(stored).map_err(|_| bad("not base64"))?;
        let key = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| bad("not an Ed25519 PKCS#8 key"))?;
        store.backfill_leaf_hashes().await?;
        Ok(Log {
            store,
            key: std::sync::Arc::new(key),
            frontier: Default::default(),
        })
    }

    /// The log's public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    fn head_message(&self, size: i64, root: &str, ts: i64, sig: &str) -> Result<SignedTreeHead, AuditError> {
        Ok(SignedTreeHead {
            tree_size: size as u64,
            root_hash: unhex(root).map(|h| h.to_vec()).unwrap_or_default(),
            timestamp_us: ts,
            signature: B64.decode(sig).unwrap_or_default(),
            public_key: self.public_key(),
        })
    }

    /// Signs a head for the log as it is now, unless the latest head already covers it.
    pub async fn sign_head(&self) -> Result<SignedTreeHead, AuditError> {
        let size = self.store.size().await?;
        if let Some((s, root, ts, sig)) = self.store.heads().await?.into_iter().next()
            && s == size
        {
            return self.head_message(s, &root, ts, &sig);
        }
        let root = {
            let mut f = self.frontier.lock().await;
            let known = f.size() as i64;
            if known > size {
                *f = merkle::Frontier::default();
            }
            let from = f.size() as i64;
            for leaf in self.store.leaf_hashes_between(from, size).await? {
                f.push(leaf);
            }
            if f.size() as i64 != size {
                return Err(AuditError::Invalid {
                    field: "entries.leaf_index".into(),
                    reason: format!("leaves {from}..{size} are not all present"),
                });
            }
            f.root()
        };
        let ts = db::now_us();
        let sig = self.key.sign(&signed_bytes(size as u64, ts, &root));
        self.store
            .insert_head(size, &hex(&root), ts, &B64.encode(sig.as_ref()))
            .await?;
        self.latest().await
    }

    /// The latest signed head (signing the first one if there is none).
    pub async fn latest(&self) -> Result<SignedTreeHead, AuditError> {
        match self.store.heads().await?.into_iter().next() {
            Some((s, root, ts, sig)) => self.head_message(s, &root, ts, &sig),
            None => Box::pin(self.sign_head()).await,
        }
    }

    /// The entry at `index` with its audit path in the tree of `size` leaves.
    pub async fn inclusion(&self, index: u64, size: u64) -> Result<(AuditEntry, Vec<Hash>), AuditError> {
        let invalid = |f: &str, r: String| AuditError::Invalid {
            field: f.into(),
            reason: r,
        };
        if index >= size {
            return Err(invalid("leaf_index", format!("{index} is not below tree_size {size}")));
        }
        let leaves = self.store.leaf_hashes(size as i64).await?;
        if (leaves.len() as u64) < size {
            return Err(invalid(
                "tree_size",
                format!("the log has only {} entries", leaves.len()),
            ));
        }
        let entry = self
            .store
            .entry_at(index as i64)
            .await?
            .ok_or_else(|| invalid("leaf_index", format!("no entry {index}")))?;
        Ok((entry, merkle::inclusion_proof(index as usize, &leaves)))
    }

    /// The consistency proof between tree sizes `first` ≤ `second`.
    pub async fn consistency(&self, first: u64, second: u64) -> Result<Vec<Hash>, AuditError> {
        if first > second {
            return Err(AuditError::Invalid {
                field: "first".into(),
                reason: format!("{first} is larger than second ({second})"),
            });
        }
        let leaves = self.store.leaf_hashes(second as i64).await?;
        if (leaves.len() as u64) < second {
            return Err(AuditError::Invalid {
                field: "second".into(),
                reason: format!("the log has only {} entries", leaves.len()),
            });
        }
        Ok(merkle::consistency_proof(first as usize, &leaves))
    }

    /// Recomputes everything from the stored entries: each leaf hash, the dense order, and
    /// every signed tree head (root and signature). Returns what is wrong, naming entries.
    pub async fn verify(&self) -> Result<(usize, usize, Vec<Problem>), AuditError> {
        let mut problems = Vec::new();
        let entries = self.store.all_entries().await?;
        let mut leaves: Vec<Hash> = Vec::with_capacity(entries.len());
        for (i, (e, stored)) in entries.iter().enumerate() {
            let expected = i as u64;
            if e.leaf_index != expected {
                problems.push(format!(
                    "entry at position {expected} is missing: the next entry found is leaf {} (event {}); entries were removed or reordered",
                    e.leaf_index as i64, e.event_id
                ));
            }
            let recomputed = merkle::leaf_hash(leaf_data(e).as_bytes());
            if hex(&recomputed) != *stored {
                problems.push(format!(
                    "entry {} (event {}, sequence {}) was altered: its content does not hash to the leaf recorded when it was appended",
                    e.leaf_index as i64, e.event_id, e.sequence
                ));
            }
            leaves.push(recomputed);
        }
        let public = UnparsedPublicKey::new(&ED25519, self.public_key());
        let heads = self.store.heads().await?;
        for (size, root, ts, sig) in &heads {
            let Some(expected) = unhex(root) else {
                problems.push(format!("tree head {size}: root is not a hash"));
                continue;
            };
            let signature = B64.decode(sig).unwrap_or_default();
            if public
                .verify(&signed_bytes(*size as u64, *ts, &expected), &signature)
                .is_err()
            {
                problems.push(format!("tree head {size}: the signature does not verify"));
            }
            let n = *size as usize;
            if n > leaves.len() {
                problems.push(format!(
                    "tree head {size}: the log holds only {} entries; entries were removed",
                    leaves.len()
                ));
            } else if merkle::root(&leaves[..n]) != expected {
                problems.push(format!(
                    "tree head {size}: the entries now stored do not produce its root; entries before {size} were altered, removed or reordered"
                ));
            }
        }
        Ok((entries.len(), heads.len(), problems))
    }
}
