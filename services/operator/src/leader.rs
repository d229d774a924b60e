//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews the lease well within its duration; another replica takes it
//! only once it has gone unrenewed for a whole duration. Every write names the resourceVersion
//! it read, so two replicas racing for it cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// One replica's claim on the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// Whether this replica holds the lease after a try.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// It does, until `duration` from now unless renewed.
    Held,
    /// Another replica does.
    HeldBy(String),
}

impl Elector {
    /// A claim on the Lease `name` in `namespace`, as `identity` (unique per replica).
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// How often to renew (a third of the duration) or retry.
    pub fn period(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the lease when this replica may.
    pub async fn try_claim(&self) -> Result<Claim, kube::Error> {
        let now = now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Claim::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Claim::HeldBy("another replica".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or_default();
        let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
        let expired = k8s_openapi::jiff::SignedDuration::try_from(duration)
            .ok()
            .and_then(|d| renewed.checked_add(d).ok())
            .is_none_or(|until| until < now);
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = if holder == self.identity {
            let acquired = spec.acquire_time.as_ref().map_or(now, |t| t.0);
            self.spec(acquired, now, transitions)
        } else if holder.is_empty() || expired {
            self.spec(now, now, transitions + 1)
        } else {
            return Ok(Claim::HeldBy(holder));
        };
        let mut lease = lease;
        lease.spec = Some(next);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Claim::Held),
            // Someone else wrote it since we read it: they won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Claim::HeldBy("another replica".into())),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on a clean stop), so that another replica need not wait it out.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }

    fn spec(
        &self,
        acquired: k8s_openapi::jiff::Timestamp,
        renewed: k8s_openapi::jiff::Timestamp,
        transitions: i32,
    ) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}
