//! Which organisations a reviewer covers: their role's own organisation and every one under it
//! in identity's organisation directory (the ODS parent chain: a practice under its ICB).
//! Consent (the break-glass review queue) and audit (what a reviewed grant opened) do not keep
//! the directory: they ask identity's `GetOrganisation`, which any valid token may read (the
//! directory is reference data, as the national ODS is), with the reviewer's own token, and
//! remember each answer for a few minutes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sharedcare_proto::identity::v1::GetOrganisationRequest;
use sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient;
use tonic::transport::Channel;

/// Why the directory could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The identity URL is not a URL.
    #[error("{0}: {1}")]
    Config(String, String),
    /// The caller's token cannot be sent on.
    #[error("{0}")]
    Forbidden(String),
    /// Identity did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// How deep a parent chain is followed (ODS hierarchies are two or three levels).
const MAX_DEPTH: usize = 8;

/// Identity's organisation directory as a service reads it.
pub struct Directory {
    identity: Option<IdentityAdminClient<Channel>>,
    /// Parent ODS code by ODS code ("" = none), and when it was read.
    parents: Mutex<HashMap<String, (String, Instant)>>,
    ttl: Duration,
}

impl Directory {
    /// The directory at identity's gRPC `url` (`None`: not configured, so no staff reviewer
    /// covers anything beyond their own organisation), remembering answers for `ttl`;
    /// `setting` names where the URL came from, for errors.
    pub fn new(url: Option<&str>, setting: &str, ttl: Duration) -> Result<Directory, DirectoryError> {
        let identity = match url {
            None => None,
            Some(u) => Some(IdentityAdminClient::new(
                Channel::from_shared(u.to_string())
                    .map_err(|e| DirectoryError::Config(setting.to_string(), e.to_string()))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(2))
                    .connect_lazy(),
            )),
        };
        Ok(Directory {
            identity,
            parents: Mutex::new(HashMap::new()),
            ttl,
        })
    }

    /// A directory that knows only `parents` (child → parent), for tests of the walk.
    pub fn known(parents: &[(&str, &str)]) -> Directory {
        let now = Instant::now();
        Directory {
            identity: None,
            parents: Mutex::new(
                parents
                    .iter()
                    .map(|(c, p)| (c.to_string(), (p.to_string(), now)))
                    .collect(),
            ),
            ttl: Duration::from_secs(3600),
        }
    }

    /// Whether `reviewer_org` covers `org`: it is `org`, or an organisation above it. `bearer`
    /// is the reviewer's token, for identity.
    pub async fn covers(&self, reviewer_org: &str, org: &str, bearer: &str) -> Result<bool, DirectoryError> {
        let mut at = org.to_ascii_uppercase();
        let reviewer = reviewer_org.to_ascii_uppercase();
        for _ in 0..MAX_DEPTH {
            if at == reviewer {
                return Ok(true);
            }
            match self.parent(&at, bearer).await? {
                Some(p) if !p.is_empty() => at = p.to_ascii_uppercase(),
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The parent of `org` ("" = none; `None` = no directory to ask and nothing remembered).
    async fn parent(&self, org: &str, bearer: &str) -> Result<Option<String>, DirectoryError> {
        let remembered = self.parents.lock().ok().and_then(|m| {
            m.get(org)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(p, _)| p.clone())
        });
        if remembered.is_some() {
            return Ok(remembered);
        }
        let Some(mut identity) = self.identity.clone() else {
            return Ok(None);
        };
        let mut req = tonic::Request::new(GetOrganisationRequest {
            ods_code: org.to_string(),
        });
        let value = format!("Bearer {bearer}")
            .parse()
            .map_err(|_| DirectoryError::Forbidden("the caller's token cannot be forwarded".into()))?;
        req.metadata_mut().insert("authorization", value);
        let parent = match identity.get_organisation(req).await {
            Ok(o) => o.into_inner().parent_ods_code,
            Err(s) if s.code() == tonic::Code::NotFound => String::new(),
            Err(s) => {
                return Err(DirectoryError::Unavailable(format!(
                    "identity's organisation directory: {}",
                    s.message()
                )));
            }
        };
        if let Ok(mut m) = self.parents.lock() {
            m.insert(org.to_string(), (parent.clone(), Instant::now()));
        }
        Ok(Some(parent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reviewer_covers_their_organisation_and_those_under_it_only() {
        let d = Directory::known(&[
            ("A81001", "QN1"),
            ("VH2D7", "QN1"),
            ("QN1", ""),
            ("RX1", "QN2"),
            ("QN2", ""),
        ]);
        assert!(
            d.covers("QN1", "A81001", "t").await.expect("walk"),
            "the ICB covers its practice"
        );
        assert!(
            d.covers("VH2D7", "VH2D7", "t").await.expect("walk"),
            "an organisation covers itself"
        );
        assert!(!d.covers("QN1", "RX1", "t").await.expect("walk"), "another ICB's trust");
        assert!(!d.covers("A81001", "VH2D7", "t").await.expect("walk"), "a sibling");
        assert!(!d.covers("A81001", "QN1", "t").await.expect("walk"), "not upwards");
        assert!(
            !d.covers("QN1", "UNKNOWN", "t").await.expect("walk"),
            "not in the directory"
        );
    }
}
