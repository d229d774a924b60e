//! Consent decisions for a batch of accesses: one ask per distinct question, and what each
//! answer means for the data and for its audit entry.

use sharedcare_kit::access::Outcome;
use sharedcare_kit::edge::Refuse;
use std::collections::HashMap;

use sharedcare_kit::bus::Envelope;
use sharedcare_kit::nhs::NHS_NUMBER_SYSTEM;
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::consent::v1::{DecideRequest, DecideResponse};
use tokio::sync::oneshot;

use super::{Engine, GetJob, PendingPut, PutJob, Stored, Verdict};
use crate::RecordsError;
use crate::consent::{self, Pdp, PdpError};
use crate::fhir::{self, Resource};

impl Engine {
    /// Asks consent about every found resource of a batch that is patient data (one call,
    /// identical asks once), records every access durably with its outcome, then answers each
    /// caller. Without a decision or a durable audit entry a caller gets an error, never data.
    pub(super) async fn decide_audit_answer(
        &self,
        jobs: Vec<GetJob>,
        found: HashMap<(String, String), Stored>,
        replies: Vec<oneshot::Sender<Result<Stored, RecordsError>>>,
    ) {
        let mut asks = Asks::default();
        let asked: Vec<Option<usize>> = jobs
            .iter()
            .map(|job| {
                let s = found.get(&(job.resource_type.clone(), job.id.clone()))?;
                if !fhir::is_patient_data(&s.resource_type) || s.deleted {
                    return None;
                }
                let labels = stored_labels(s);
                Some(asks.add(consent::ask(&job.caller.actor, &s.nhs_number, "read", labels)))
            })
            .collect();
        let decisions = asks.decide(self.pdp.as_ref()).await;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for (job, asked) in jobs.iter().zip(asked) {
            let reference = format!("{}/{}", job.resource_type, job.id);
            let purpose = job.caller.actor.purpose.as_str();
            let (v, resource, nhs) = match found.get(&(job.resource_type.clone(), job.id.clone())) {
                None => (Verdict::not_found(&reference, purpose), reference, String::new()),
                Some(s) => {
                    let versioned = format!("{reference}/_history/{}", s.version);
                    let v = match asked {
                        // Deleted: nothing of it is read, so nothing to decide.
                        None if s.deleted => Verdict::refused(
                            RecordsError::Gone(reference.clone()),
                            Outcome::NotFound,
                            purpose,
                            "deleted".into(),
                        ),
                        None => directory_verdict(&s.resource_type, &job.caller.actor, s.clone()),
                        Some(i) => verdict(&decisions, i, purpose, &stored_labels(s), s.clone()),
                    };
                    (v, versioned, s.nhs_number.clone())
                }
            };
            let env = self.access(&job.caller, "read", &resource, &nhs, &v);
            records.push(self.outbox.record(&self.topic, env));
            answers.push(v.answer);
        }
        let recorded = futures::future::join_all(records).await;
        for ((reply, answer), rec) in replies.into_iter().zip(answers).zip(recorded) {
            let _ = reply.send(match rec {
                Ok(()) => answer,
                Err(e) => Err(RecordsError::Audit(e.to_string())),
            });
        }
    }

    /// Asks consent about a batch of puts, refusing those it denies (or cannot decide) and
    /// those about a patient the record does not hold; each refusal is audited and answered
    /// here. Returns the puts to write, with their replies.
    pub(super) async fn decide_puts(&self, batch: Vec<PendingPut>) -> (Vec<Vec<PutJob>>, Vec<Reply>) {
        let (units, replies): (Vec<Vec<PutJob>>, Vec<Reply>) = batch.into_iter().unzip();
        let sizes: Vec<usize> = units.iter().map(Vec::len).collect();
        let judged = match self.judge_puts(units.into_iter().flatten().collect(), &sizes).await {
            Ok(j) => j,
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err((0, RecordsError::Unavailable(msg.clone()))));
                }
                return (Vec::new(), Vec::new());
            }
        };
        let mut judged = judged.into_iter();
        let mut keep = Vec::with_capacity(sizes.len());
        let mut keep_replies = Vec::with_capacity(sizes.len());
        // Every refusal of a refused unit is audited; its caller hears of the first.
        let mut refusals = Vec::new();
        let mut refused: Vec<(usize, usize, Reply)> = Vec::new();
        for (n, reply) in sizes.into_iter().zip(replies) {
            let unit: Vec<(PutJob, Option<Refusal>)> = judged.by_ref().take(n).collect();
            match unit.iter().position(|(_, r)| r.is_some()) {
                None => {
                    keep.push(unit.into_iter().map(|(job, _)| job).collect());
                    keep_replies.push(reply);
                }
                Some(at) => {
                    let before = refusals.len();
                    refusals.extend(unit.into_iter().filter_map(|(_, r)| r));
                    refused.push((at, refusals.len() - before, reply));
                }
            }
        }
        let mut answers = self.audit_refusals(refusals).await.into_iter();
        for (at, count, reply) in refused {
            let mut of_unit = answers.by_ref().take(count);
            let first = of_unit.next().unwrap_or(RecordsError::Stopped);
            of_unit.for_each(drop);
            let _ = reply.send(Err((at, first)));
        }
        (keep, keep_replies)
    }

    /// Records the audit entries of refused puts; each comes back as the error its caller gets
    /// (the audit failure instead, when the entry could not be recorded).
    pub(super) async fn audit_refusals(&self, refusals: Vec<Refusal>) -> Vec<RecordsError> {
        let mut pending = Vec::new();
        for r in &refusals {
            if let Some(env) = &r.audit {
                pending.push(self.outbox.record(&self.topic, env.clone()));
            }
        }
        let mut recorded = futures::future::join_all(pending).await.into_iter();
        refusals
            .into_iter()
            .map(|r| {
                if r.audit.is_none() {
                    return r.error;
                }
                match recorded.next() {
                    Some(Err(audit)) => RecordsError::Audit(audit.to_string()),
                    _ => r.error,
                }
            })
            .collect()
    }

    /// Decides each put of a batch of units (`sizes`: how many puts each unit has, in order):
    /// patient data needs a patient the record holds, or one its own unit writes first, and
    /// consent's permit; an update with an expected version needs that to be the version it
    /// will follow (the stored one, counting earlier puts of the batch to the same resource).
    /// Permitted puts get the purpose and reason their audit entry records.
    pub(super) async fn judge_puts(
        &self,
        mut jobs: Vec<PutJob>,
        sizes: &[usize],
    ) -> Result<Vec<(PutJob, Option<Refusal>)>, RecordsError> {
        let mut conn = self.db.pool().acquire().await?;
        // Versions, and the merges of the batch's Patients, in one statement.
        let (versions, mut merged) = self.versions_and_merges(&mut conn, &jobs).await?;
        let mut patients = self.referenced_patients(&mut conn, &jobs).await?;
        // A merge (rare) also needs the merges of the Patients its Patients are replaced by.
        let targets: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.resource.replaced_by.as_ref().and_then(|id| patients.get(id)))
            .map(String::as_str)
            .filter(|n| !merged.contains_key(*n))
            .collect();
        if !targets.is_empty() {
            let more = self.merged(&mut conn, &targets).await?;
            merged.extend(more);
        }
        drop(conn);
        let action_of = |job: &PutJob| {
            let r = &job.resource;
            if job.delete {
                "delete"
            } else if versions.contains_key(&(r.resource_type.clone(), r.id.clone())) {
                "update"
            } else {
                "create"
            }
        };
        // A put's patient: its own NHS number, or the stored (or same-batch) Patient it names.
        let mut checks: Vec<(Result<Option<usize>, RecordsError>, String)> = Vec::with_capacity(jobs.len());
        // A merge also needs the writer to be permitted to update the survivor.
        let mut survivor_asks: Vec<Option<usize>> = Vec::with_capacity(jobs.len());
        let mut asks = Asks::default();
        // Another unit's Patient is not the record's until that unit is permitted: each unit
        // starts from the stored patients.
        let stored_patients = patients.clone();
        let mut unit_starts: Vec<usize> = sizes
            .iter()
            .scan(0, |at, n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        unit_starts.reverse();
        let mut unit_wrote_patient = false;
        // The version each put follows: the stored one plus the batch's earlier puts to it.
        let mut follows: HashMap<(String, String), i64> = HashMap::new();
        // The version held, for each put only if absent whose resource is held.
        let mut held: Vec<Option<i64>> = Vec::with_capacity(jobs.len());
        for (n, job) in jobs.iter().enumerate() {
            if unit_starts.last() == Some(&n) {
                unit_starts.pop();
                // Only a Patient adds to what the unit knows: reset after a unit that had one.
                if unit_wrote_patient {
                    patients.clone_from(&stored_patients);
                    unit_wrote_patient = false;
                }
            }
            let r = &job.resource;
            unit_wrote_patient |= r.resource_type == "Patient";
            let key = (r.resource_type.clone(), r.id.clone());
            let stored = versions.get(&key).copied().unwrap_or(0);
            let follows = follows.entry(key).or_insert(stored);
            let current = *follows;
            // Only if absent, and held: nothing is written, but consent still decides it as the
            // update it would be, so that its answer (the resource exists, at this version) goes
            // only to a writer consent permits. Held means stored: a put earlier in this batch
            // may yet be refused or fail, so this one is then judged and written.
            if job.expected_version == super::ONLY_IF_ABSENT && stored > 0 {
                let nhs = patient_of(r, &mut patients);
                survivor_asks.push(None);
                let check = match (fhir::is_patient_data(&r.resource_type), nhs.is_empty()) {
                    (true, false) => Ok(Some(asks.add(consent::ask(
                        &job.caller.actor,
                        &nhs,
                        "update",
                        fhir::security_labels(&r.body),
                    )))),
                    _ => fhir::directory_access(&r.resource_type, job.caller.actor.kind).map(|()| None),
                };
                checks.push((check, nhs));
                held.push(Some(current));
                continue;
            }
            *follows += 1;
            held.push(None);
            let survivor = r.replaced_by.as_ref().and_then(|id| patients.get(id)).cloned();
            let nhs = patient_of(r, &mut patients);
            let merge = match (r.resource_type.as_str(), job.delete) {
                ("Patient", false) => super::merges::check(r, &nhs, survivor.as_deref(), &merged),
                _ => Ok(()),
            };
            survivor_asks.push(match (&merge, &survivor) {
                (Ok(()), Some(s)) if !job.delete => {
                    Some(asks.add(consent::ask(&job.caller.actor, s, "update", Vec::new())))
                }
                _ => None,
            });
            let check = if job.expected_version > 0 && job.expected_version != current {
                Err(RecordsError::VersionMismatch {
                    reference: format!("{}/{}", r.resource_type, r.id),
                    expected: job.expected_version,
                    current,
                })
            } else if let Err(e) = fhir::directory_access(&r.resource_type, job.caller.actor.kind) {
                Err(e)
            } else if let Err(e) = merge {
                Err(e)
            } else if !fhir::is_patient_data(&r.resource_type) {
                Ok(None)
            } else if nhs.is_empty() {
                Err(unknown_patient(r))
            } else {
                let labels = fhir::security_labels(&r.body);
                Ok(Some(asks.add(consent::ask(
                    &job.caller.actor,
                    &nhs,
                    action_of(job),
                    labels,
                ))))
            };
            checks.push((check, nhs));
        }
        let decisions = asks.decide(self.pdp.as_ref()).await;
        let mut out = Vec::with_capacity(jobs.len());
        for (((mut job, (check, nhs)), survivor_ask), held) in jobs.drain(..).zip(checks).zip(survivor_asks).zip(held) {
            let purpose = job.caller.actor.purpose.clone();
            let asked = check.as_ref().ok().copied().flatten();
            let v = match check {
                Err(error) => {
                    out.push((job, Some(Refusal { error, audit: None })));
                    continue;
                }
                Ok(None) => Verdict {
                    answer: Ok(()),
                    outcome: Outcome::Success,
                    purpose,
                    reason: String::new(),
                },
                Ok(Some(i)) => match (verdict(&decisions, i, &purpose, &[], ()), survivor_ask) {
                    (v, Some(j)) if v.answer.is_ok() => verdict(&decisions, j, &purpose, &[], ()),
                    (v, _) => v,
                },
            };
            let refusal = match &v.answer {
                Ok(()) => None,
                Err(e) => {
                    let r = &job.resource;
                    let reference = format!("{}/{}", r.resource_type, r.id);
                    let env = self.access(&job.caller, action_of(&job), &reference, &nhs, &v);
                    let error = match e {
                        RecordsError::Denied(why) => RecordsError::Denied(why.clone()),
                        RecordsError::Consent(why) => RecordsError::Consent(why.clone()),
                        _ => RecordsError::Withheld,
                    };
                    Some(Refusal {
                        error,
                        audit: Some(env),
                    })
                }
            };
            if refusal.is_none() {
                job.held = held;
                job.purpose = v.purpose;
                job.reason = v.reason;
                job.break_glass = asked.is_some_and(|i| {
                    decisions
                        .as_ref()
                        .is_ok_and(|d| d.get(i).is_some_and(|d| d.break_glass))
                });
            }
            out.push((job, refusal));
        }
        Ok(out)
    }
}

/// Why a put was refused, and its audit entry (none for input the record cannot hold).
pub(super) struct Refusal {
    pub(super) error: RecordsError,
    pub(super) audit: Option<Envelope>,
}

/// The NHS number a resource is about: a Patient's own, or that of the Patient it references
/// (from `known`: stored patients and those earlier in the same batch, which a Patient adds
/// itself to). Empty when unknown.
pub(super) fn patient_of(r: &Resource, known: &mut HashMap<String, String>) -> String {
    let nhs = match (&r.nhs_number, &r.patient_ref) {
        (Some(n), _) => n.to_string(),
        (None, Some(pid)) => known.get(pid).cloned().unwrap_or_default(),
        (None, None) => String::new(),
    };
    if r.resource_type == "Patient" && !nhs.is_empty() {
        known.insert(r.id.clone(), nhs.clone());
    }
    nhs
}

/// What a read of directory data (no consent decision) comes to: permitted, except a Group
/// (a cohort) read by anyone but a system.
pub(super) fn directory_verdict<T>(resource_type: &str, actor: &super::Actor, data: T) -> Verdict<T> {
    let purpose = actor.purpose.as_str();
    match fhir::directory_access(resource_type, actor.kind) {
        Err(e) => {
            let reason = e.to_string();
            Verdict::refused(e, Outcome::Denied, purpose, reason)
        }
        Ok(()) => Verdict {
            answer: Ok(data),
            outcome: Outcome::Success,
            purpose: purpose.to_string(),
            reason: String::new(),
        },
    }
}

/// Where a unit of puts' answer goes: every version stored, or the position of the put that
/// stopped the unit and why.
pub(super) type Reply = oneshot::Sender<Result<Vec<Stored>, (usize, RecordsError)>>;

/// The categories of a stored resource consent decides on: its labels, class and codes (its
/// stored body always parses: it was validated).
pub(super) fn stored_labels(s: &Stored) -> Vec<String> {
    if let Some(l) = &s.labels {
        return l.clone();
    }
    match serde_json::from_str::<serde_json::Value>(&s.body) {
        Ok(serde_json::Value::Object(body)) => fhir::categories(&s.resource_type, &body),
        _ => sharedcare_kit::pdp::categories(&s.resource_type, Vec::new(), []),
    }
}

/// The error for patient data whose patient the record does not hold.
pub(super) fn unknown_patient(r: &Resource) -> RecordsError {
    match &r.patient_ref {
        Some(pid) => {
            let element = if r.body.contains_key("subject") {
                "subject"
            } else {
                "patient"
            };
            RecordsError::invalid(
                format!("{element}.reference"),
                format!(
                    "Patient/{pid} is not in the shared care record; write the Patient (with its NHS number) first"
                ),
            )
        }
        None if r.resource_type == "Patient" => RecordsError::invalid(
            "identifier",
            format!("a Patient in the shared care record needs an NHS number identifier (system {NHS_NUMBER_SYSTEM})"),
        ),
        None => RecordsError::invalid(
            "subject",
            format!(
                "a {} is about a patient: subject (or patient) must reference one",
                r.resource_type
            ),
        ),
    }
}

/// A batch's decision requests, each distinct one asked once.
#[derive(Default)]
pub(super) struct Asks {
    asks: Vec<DecideRequest>,
    index: HashMap<String, usize>,
}

impl Asks {
    /// Adds `ask` (or finds the identical one) and returns its position.
    pub(super) fn add(&mut self, ask: DecideRequest) -> usize {
        let key = [
            ask.principal_kind.as_str(),
            &ask.person_id,
            &ask.client_id,
            &ask.ods_code,
            &ask.role_code,
            &ask.nhs_number,
            &ask.action,
            &ask.purpose,
            &ask.categories.join(","),
        ]
        .join("|");
        let next = self.asks.len();
        *self.index.entry(key).or_insert_with(|| {
            self.asks.push(ask);
            next
        })
    }

    /// Consent's decisions, in order (none asked = none needed).
    pub(super) async fn decide(self, pdp: &dyn Pdp) -> Result<Vec<DecideResponse>, PdpError> {
        if self.asks.is_empty() {
            return Ok(Vec::new());
        }
        let asked = self.asks.len();
        match pdp.decide(self.asks).await? {
            d if d.len() == asked => Ok(d),
            d => Err(PdpError::Incomplete { got: d.len(), asked }),
        }
    }
}

/// What decision `i` of `decisions` means for data labelled `labels` asked for `purpose`.
pub(super) fn verdict<T>(
    decisions: &Result<Vec<DecideResponse>, PdpError>,
    i: usize,
    purpose: &str,
    labels: &[String],
    data: T,
) -> Verdict<T> {
    let d = match decisions.as_ref().map(|d| (d.get(i), d.len())) {
        Ok((Some(d), _)) => d,
        Ok((None, got)) => return Verdict::no_decision(&PdpError::Incomplete { got, asked: i + 1 }, purpose),
        Err(e) => return Verdict::no_decision(e, purpose),
    };
    let (purpose, reason) = sharedcare_kit::pdp::audit_purpose(d, purpose);
    let permitted = |purpose, reason| Verdict {
        answer: Ok(data),
        outcome: Outcome::Success,
        purpose,
        reason,
    };
    match Effect::try_from(d.effect).unwrap_or(Effect::Unspecified) {
        Effect::Permit => permitted(purpose, reason),
        Effect::PermitWithWithholding => {
            let hidden: Vec<&str> = d
                .withheld_categories
                .iter()
                .filter(|c| labels.contains(c))
                .map(String::as_str)
                .collect();
            if hidden.is_empty() {
                permitted(purpose, reason)
            } else {
                let what = hidden.join(", ");
                Verdict::refused(
                    RecordsError::Withheld,
                    Outcome::Withheld,
                    &purpose,
                    format!("withheld {what}; {reason}"),
                )
            }
        }
        Effect::Deny | Effect::Unspecified => Verdict::refused(
            RecordsError::Denied(d.reason.clone()),
            Outcome::Denied,
            &purpose,
            reason,
        ),
    }
}
