//! Passport views served in batches, as records serves its reads: one task takes the views
//! waiting, reads what the model holds about their people in one query while consent decides
//! all of them in one call, builds each view, records every audit entry together (one
//! commit), and only then answers. One batch at a time lets the batches grow with the load,
//! and a view costs one hop to this task instead of one per batcher.

use sharedcare_kit::edge::Refusal;
use std::collections::HashMap;
use std::sync::Arc;

use sharedcare_kit::access::Outcome;
use sharedcare_kit::auth::Principal;
use sharedcare_kit::bus;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::outbox::Outbox;
use sharedcare_kit::pdp::{Pdp, PdpError};
use sharedcare_kit::tasks::Tasks;
use sharedcare_proto::consent::v1::decide_response::Effect;
use tokio::sync::{mpsc, oneshot};

use crate::PassportError;
use crate::decision::{Asked, Audited, Trace, access, ask, judge};
use crate::store::{Held, Store, is_demographics};
use crate::view::View;

/// Most views in one batch.
const VIEWS_PER_BATCH: usize = 128;

/// A view waiting for the batch task.
struct Job {
    who: Principal,
    patient: NhsNumber,
    purpose: String,
    trace: Trace,
    reply: oneshot::Sender<Result<View, PassportError>>,
}

/// Where views are sent to be served.
#[derive(Clone)]
pub struct Viewer {
    waiting: mpsc::Sender<Job>,
}

impl Viewer {
    /// Serves views of `store`'s model, asking `pdp` and auditing through `outbox`, from a
    /// task under `tasks`.
    pub fn new(store: Store, pdp: Arc<dyn Pdp>, outbox: Outbox, tasks: &Tasks) -> Viewer {
        let (waiting, mut rx) = mpsc::channel::<Job>(VIEWS_PER_BATCH * 4);
        tasks.spawn(async move {
            while let Some(batch) = sharedcare_kit::batch::next_batch(&mut rx, VIEWS_PER_BATCH).await {
                serve(&store, pdp.as_ref(), &outbox, batch).await;
            }
        });
        Viewer { waiting }
    }

    /// `patient`'s passport as `who` may see it, acting for `purpose` (checked).
    pub async fn view(&self, who: Principal, patient: NhsNumber, purpose: String) -> Result<View, PassportError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || PassportError::Unavailable("the passport is stopping".into());
        let job = Job {
            who,
            patient,
            purpose,
            trace: Trace::current(),
            reply,
        };
        self.waiting.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Serves one batch: decide and read together, build, audit all, answer. A merged person's
/// view holds the entries of each of their NHS numbers that consent, asked about that number,
/// lets the viewer see: until consent has heard of a merge, a merged number's entries are
/// decided as its own person's, so a merge never shows anyone more than before. The merge is
/// found in the same statement as what is held; only a batch with a merged person takes a
/// second round (its other numbers' decisions and entries).
async fn serve(store: &Store, pdp: &dyn Pdp, outbox: &Outbox, batch: Vec<Job>) {
    let mut asks = Vec::with_capacity(batch.len());
    let asked: Vec<Result<usize, PassportError>> = batch
        .iter()
        .map(|job| {
            ask(&job.who, &job.patient, job.purpose.clone()).map(|a| {
                asks.push(a);
                asks.len() - 1
            })
        })
        .collect();
    let mut patients: Vec<NhsNumber> = batch.iter().map(|j| j.patient.clone()).collect();
    patients.sort();
    patients.dedup();
    let (mut decisions, held) = tokio::join!(decide(pdp, asks), store.held_people(&patients));
    // Per job: one ask per other number of a merged person, decided and read in a second round.
    let mut member_asks: Vec<Vec<(NhsNumber, usize)>> = vec![Vec::new(); batch.len()];
    let held = match held {
        Ok((mut held, groups)) if !groups.is_empty() => {
            let mut more = Vec::new();
            let base = decisions.as_ref().map(Vec::len).unwrap_or(0);
            for ((job, own), others) in batch.iter().zip(&asked).zip(member_asks.iter_mut()) {
                let group = groups.get(job.patient.as_str()).filter(|_| own.is_ok());
                for m in group
                    .into_iter()
                    .flatten()
                    .filter(|n| n.as_str() != job.patient.as_str())
                {
                    let Ok(m) = NhsNumber::parse(m) else { continue };
                    if let Ok(a) = ask(&job.who, &m, job.purpose.clone()) {
                        more.push(a);
                        others.push((m, base + more.len() - 1));
                    }
                }
            }
            let mut members: Vec<NhsNumber> = member_asks.iter().flatten().map(|(m, _)| m.clone()).collect();
            members.retain(|m| !held.contains_key(m.as_str()));
            members.sort();
            members.dedup();
            let (decided, extra) = tokio::join!(decide(pdp, more), store.held_many(&members));
            decisions = match (decisions, decided) {
                (Ok(mut d), Ok(more)) => {
                    d.extend(more);
                    Ok(d)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            extra.map(|extra| {
                held.extend(extra);
                held
            })
        }
        other => other.map(|(held, _)| held),
    };
    let wanted = decisions.as_ref().map(Vec::len).unwrap_or(0);
    // One failure answers every view of the batch.
    let mut held: Result<HashMap<String, Held>, Arc<PassportError>> = held.map_err(Arc::new);
    let mut views_of: HashMap<&str, usize> = HashMap::new();
    for p in batch.iter().map(|j| j.patient.as_str()) {
        *views_of.entry(p).or_default() += 1;
    }
    for (m, _) in member_asks.iter().flatten() {
        *views_of.entry(m.as_str()).or_default() += 1;
    }
    let now = sharedcare_kit::db::now_us();
    let topic = bus::topic(crate::NAME);
    let mut answers = Vec::with_capacity(batch.len());
    let mut records = Vec::with_capacity(batch.len());
    for ((job, asked), others) in batch.iter().zip(asked).zip(&member_asks) {
        let judged = match (asked, &decisions) {
            (Err(refused), _) => (Audited::refused(&job.purpose, refused.to_string()), Err(refused)),
            (Ok(_), Err(e)) => judge(Err(e), &job.purpose),
            (Ok(i), Ok(d)) => judge(
                d.get(i).ok_or(&PdpError::Incomplete {
                    got: d.len(),
                    asked: wanted,
                }),
                &job.purpose,
            ),
        };
        let (outcome, answer) = match judged {
            (o, Err(refused)) => (o, Err(refused)),
            (outcome, Ok(decision)) => {
                let key = job.patient.as_str();
                // Several views of one person in a batch: each gets its own copy.
                let mut withheld = decision.withheld_categories.clone();
                let h = match &mut held {
                    Err(why) => Err(why.clone()),
                    Ok(h) => {
                        let mut mine = take(h, &views_of, key);
                        // The other numbers of a merged person: each as consent decides it.
                        for (m, i) in others {
                            let d = decisions.as_ref().ok().and_then(|d| d.get(*i));
                            let Some(d) = d.filter(|d| !matches!(d.effect(), Effect::Deny | Effect::Unspecified))
                            else {
                                continue;
                            };
                            withheld.extend(d.withheld_categories.iter().cloned());
                            // The person is shown as the survivor: the merged numbers' own
                            // demographics (now replaced) are left out.
                            let entries = take(h, &views_of, m.as_str()).entries;
                            mine.entries.extend(entries.into_iter().filter(|e| !is_demographics(e)));
                        }
                        if !others.is_empty() {
                            withheld.sort();
                            withheld.dedup();
                            mine.entries
                                .sort_by(|a, b| b.date.cmp(&a.date).then(b.updated_us.cmp(&a.updated_us)));
                        }
                        Ok(mine)
                    }
                };
                match h {
                    Err(why) => (
                        Audited::error(&job.purpose),
                        Err(PassportError::Unavailable(why.to_string())),
                    ),
                    Ok(h) if h.entries.is_empty() && !matches!(job.who, Principal::Patient { .. }) => {
                        let missing = Audited {
                            outcome: Outcome::NotFound,
                            ..outcome
                        };
                        (
                            missing,
                            Err(PassportError::from(Refusal::NotFound(format!(
                                "no record is held for {}",
                                job.patient
                            )))),
                        )
                    }
                    Ok(h) => {
                        let view = View::build(&job.patient, h, &withheld, now);
                        (outcome, Ok(view))
                    }
                }
            }
        };
        let resource = Asked::Passport.resource(&job.patient);
        let envelope = access(&job.who, &job.patient, &resource, &outcome, &job.trace);
        records.push(outbox.record(&topic, envelope));
        answers.push(answer);
    }
    let recorded = futures::future::join_all(records).await;
    for ((job, answer), rec) in batch.into_iter().zip(answers).zip(recorded) {
        let _ = job.reply.send(match rec {
            Ok(()) => answer,
            Err(e) => Err(PassportError::Audit(e.to_string())),
        });
    }
}

/// What is held about `key`: moved out when only one view needs it, else a copy.
fn take(h: &mut HashMap<String, Held>, views_of: &HashMap<&str, usize>, key: &str) -> Held {
    if views_of.get(key) == Some(&1) {
        h.remove(key).unwrap_or_default()
    } else {
        h.get(key).cloned().unwrap_or_default()
    }
}

/// Consent's decisions on `asks`, all or an error.
async fn decide(
    pdp: &dyn Pdp,
    asks: Vec<sharedcare_proto::consent::v1::DecideRequest>,
) -> Result<Vec<sharedcare_proto::consent::v1::DecideResponse>, PdpError> {
    let wanted = asks.len();
    if asks.is_empty() {
        return Ok(Vec::new());
    }
    match pdp.decide(asks).await {
        Ok(d) if d.len() == wanted => Ok(d),
        Ok(d) => Err(PdpError::Incomplete {
            got: d.len(),
            asked: wanted,
        }),
        Err(e) => Err(e),
    }
}
