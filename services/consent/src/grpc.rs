//! `sharedcare.consent.v1.Consent`: authorise the caller, decode, decide or store, encode.

use sharedcare_kit::auth::{Principal, Verifier, has_scope};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::{NhsNumber, OdsCode};
use std::collections::HashMap;
use tonic::{Request, Response, Status};

use crate::ConsentError;
use crate::api;
use crate::api::consent_server::Consent;
use crate::policy::{self, Action, Ask, Decision, Directive, Relationship, Who};
use crate::store::{Actor, ConsentVersion, Grant, Known, Review, Store};

/// How long a break-glass grant lasts.
pub const BREAK_GLASS_SECS: i64 = 4 * 3600;

/// The national RBAC activity that lets a member of staff work the break-glass review queue.
pub const REVIEW_ACTIVITY: &str = sharedcare_kit::auth::BREAK_GLASS_REVIEW_ACTIVITY;

/// The gRPC service.
#[derive(Clone)]
pub struct ConsentApi {
    store: Store,
    verifier: Verifier,
    directory: std::sync::Arc<sharedcare_kit::directory::Directory>,
}

impl ConsentApi {
    /// Serves `store` to callers whose bearer token `verifier` accepts.
    pub fn new(store: Store, verifier: Verifier) -> Self {
        let directory = sharedcare_kit::directory::Directory::known(&[]);
        ConsentApi {
            store,
            verifier,
            directory: std::sync::Arc::new(directory),
        }
    }

    /// The same API reading which organisations a reviewer covers from `directory`.
    pub fn with_directory(self, directory: sharedcare_kit::directory::Directory) -> Self {
        ConsentApi {
            directory: std::sync::Arc::new(directory),
            ..self
        }
    }

    /// Whether reviewer `who` covers grants made at `org`: services (with `consent.write`) all
    /// of them; staff their role's organisation and those under it in the directory.
    async fn covers<T>(&self, who: &Principal, req: &Request<T>, org: &str) -> Result<bool, ConsentError> {
        let Principal::Staff { role, .. } = who else {
            return Ok(true);
        };
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(sharedcare_kit::auth::bearer)
            .unwrap_or_default();
        Ok(self.directory.covers(&role.org_code, org, bearer).await?)
    }

    async fn who<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        sharedcare_kit::caller::of(req)
    }

    /// Services with `scope`, or (when `nhs` is given) that patient, or a current authorised
    /// representative of theirs, at P9.
    async fn require<T>(&self, req: &Request<T>, scope: &str, nhs: Option<&NhsNumber>) -> Result<Principal, Status> {
        let p = self.who(req).await?;
        self.authorise(&p, scope, nhs).await?;
        Ok(p)
    }

    /// Who may work the break-glass review queue: services with `consent.write`, or staff
    /// acting in a role with the national RBAC activity [`REVIEW_ACTIVITY`].
    async fn reviewer<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let p = self.who(req).await?;
        let ok = match &p {
            Principal::Staff { role, .. } => role.activity_codes.iter().any(|a| a == REVIEW_ACTIVITY),
            _ => has_scope(&p, "consent.write"),
        };
        if !ok {
            return Err(ConsentError::forbidden(format!(
                "the break-glass review queue needs a service token with scope consent.write, or a staff role with activity {REVIEW_ACTIVITY}"
            ))
            .into());
        }
        Ok(p)
    }

    /// Whether `p` may act with `scope` (or for `nhs`, as the patient or their representative
    /// at P9).
    pub async fn authorise(&self, p: &Principal, scope: &str, nhs: Option<&NhsNumber>) -> Result<(), ConsentError> {
        let ok = match (p, nhs) {
            (Principal::Service { .. }, _) => has_scope(p, scope),
            (Principal::Patient { nhs_number, proofing }, Some(n)) if proofing.sees_own_record() => {
                nhs_number == n || self.represents(nhs_number, n).await?
            }
            _ => false,
        };
        if !ok {
            return Err(ConsentError::forbidden(format!(
                "this needs a service token with scope {scope}{}",
                if nhs.is_some() {
                    ", or the patient (or their authorised representative) at P9"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// The verifier of callers' tokens.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes a FHIR Consent for `p`: parsed (refusing by path what the policy cannot
    /// enforce), authorised for its patient, stored as a new version. `path_id` is the id of
    /// an update's URL, which the resource's own id must match.
    pub async fn write_consent(
        &self,
        p: &Principal,
        json: &str,
        path_id: Option<&str>,
    ) -> Result<(Directive, ConsentVersion), ConsentError> {
        let parsed = crate::fhir::parse(json)?;
        if let (Some(path), Some(own)) = (path_id, parsed.id.as_deref())
            && path != own
        {
            return Err(ConsentError::invalid(
                "id",
                format!("{own:?} differs from the id in the URL ({path:?})"),
            ));
        }
        self.authorise(p, "consent.write", Some(&parsed.nhs_number)).await?;
        let id = path_id
            .map(str::to_string)
            .or(parsed.id.clone())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let directive = Directive {
            id,
            status: parsed.status.clone(),
            provision: parsed.provision.clone(),
        };
        let (actor, org) = actor_id(p);
        let stored = self
            .store
            .put_directive(
                &parsed.nhs_number,
                &directive,
                Some(&parsed.body),
                &Actor { id: &actor, org: &org },
            )
            .await?;
        Ok((directive, stored))
    }

    /// Whether `who` (an NHS number) is a current authorised representative of `patient`.
    async fn represents(&self, who: &NhsNumber, patient: &NhsNumber) -> Result<bool, ConsentError> {
        let now = chrono::Utc::now().timestamp();
        let known = self.store.facts(patient).await?;
        Ok(known
            .representatives
            .iter()
            .any(|r| r.nhs_number == who.as_str() && r.start <= now && r.end.is_none_or(|e| now < e)))
    }
}

fn nhs(field: &str, v: &str) -> Result<NhsNumber, Status> {
    NhsNumber::parse(v).map_err(|e| ConsentError::invalid(field, e.to_string()).into())
}

fn ods(field: &str, v: &str) -> Result<OdsCode, Status> {
    OdsCode::parse(v).map_err(|e| ConsentError::invalid(field, e.to_string()).into())
}

fn actor_id(p: &Principal) -> (String, String) {
    match p {
        Principal::Staff { person, role, .. } => (person.clone(), role.org_code.clone()),
        Principal::Patient { nhs_number, .. } => (nhs_number.to_string(), String::new()),
        Principal::Service { client_id, .. } => (client_id.clone(), String::new()),
    }
}

fn directive_out(d: &Directive, v: &ConsentVersion) -> api::Directive {
    api::Directive {
        id: v.id.clone(),
        nhs_number: v.nhs_number.clone(),
        status: v.status.clone(),
        provision_json: serde_json::to_string(&d.provision).unwrap_or_default(),
        updated_at: v.updated_at,
        resource_json: v.resource.clone(),
        version: v.version,
    }
}

fn relationship_out(id: &str, nhs: &str, r: &Relationship) -> api::Relationship {
    api::Relationship {
        id: id.to_string(),
        nhs_number: nhs.to_string(),
        ods_code: r.org.clone(),
        kind: r.kind.clone(),
        start: r.start,
        end: r.end.unwrap_or(0),
    }
}

fn grant_out(g: &Grant) -> api::BreakGlassGrant {
    api::BreakGlassGrant {
        id: g.id.clone(),
        nhs_number: g.nhs_number.clone(),
        person_id: g.grant.person.clone(),
        ods_code: g.grant.org.clone(),
        reason_code: g.reason_code.clone(),
        reason_text: g.reason_text.clone(),
        start: g.grant.start,
        end: g.grant.end,
    }
}

const RELATIONSHIPS: &[&str] = &[
    "gp_registration",
    "encounter",
    "episode_of_care",
    "care_package",
    "referral",
];

/// Most asks in one `DecideMany`.
pub const MAX_ASKS: usize = 1000;

/// Checks one decision request; `prefix` places its fields in a batch (`asks[3].`).
fn parse_ask(prefix: &str, r: &api::DecideRequest) -> Result<Ask, Status> {
    let field = |name: &str| format!("{prefix}{name}");
    let patient = nhs(&field("nhs_number"), &r.nhs_number)?;
    let action = Action::parse(&r.action)
        .ok_or_else(|| ConsentError::invalid(field("action"), "expected read, search, create or update"))?;
    if r.purpose.is_empty() {
        return Err(ConsentError::invalid(field("purpose"), "is required (e.g. TREAT)").into());
    }
    let who = match r.principal_kind.as_str() {
        "staff" => Who::Staff {
            person: r.person_id.clone(),
            org: ods(&field("ods_code"), &r.ods_code)?.as_str().to_string(),
            role: r.role_code.clone(),
        },
        "patient" => Who::Patient {
            nhs_number: nhs(&field("principal_nhs_number"), &r.principal_nhs_number)?
                .as_str()
                .to_string(),
            proofing: sharedcare_kit::nhs::ProofingLevel::parse(&r.proofing_level)
                .ok_or_else(|| ConsentError::invalid(field("proofing_level"), "expected P0, P5 or P9"))?,
        },
        "service" => Who::Service {
            client_id: r.client_id.clone(),
            org: r.ods_code.clone(),
        },
        other => {
            return Err(ConsentError::invalid(
                field("principal_kind"),
                format!("{other:?}: expected staff, patient or service"),
            )
            .into());
        }
    };
    Ok(Ask {
        who,
        nhs_number: patient.as_str().to_string(),
        action,
        categories: r.categories.clone(),
        purpose: r.purpose.clone(),
        now: chrono::Utc::now().timestamp(),
    })
}

/// Decides `asks` (already authorised) on the facts in `store`, read once for all their
/// patients. Bad asks are named by position (`asks[3].nhs_number`).
pub async fn decide_many(store: &Store, asks: &[api::DecideRequest]) -> Result<Vec<api::DecideResponse>, Status> {
    let asks: Vec<Ask> = asks
        .iter()
        .enumerate()
        .map(|(n, a)| parse_ask(&format!("asks[{n}]."), a))
        .collect::<Result<_, _>>()?;
    decide_parsed(store, &asks).await
}

/// Decides `asks`, checked, on the facts of their people read once.
async fn decide_parsed(store: &Store, asks: &[Ask]) -> Result<Vec<api::DecideResponse>, Status> {
    let patients: Vec<&str> = asks.iter().map(|a| a.nhs_number.as_str()).collect();
    let (known, groups) = store.people(&patients).await?;
    Ok(asks
        .iter()
        .map(|a| match groups.get(&a.nhs_number) {
            Some(group) => group_decision(a, group, &known),
            None => decision(a, known.get(&a.nhs_number)),
        })
        .collect())
}

/// Decides `ask` about a merged person, whose NHS numbers are `group`: the care relationships,
/// representatives and break-glass grants of every number apply; each number's own
/// directives, opt-out and dissent are decided in turn, and the strictest answer wins (deny
/// over withholding over permit, withheld categories joined). So a merge never lets anyone
/// past a choice either record carried.
fn group_decision(ask: &Ask, group: &[String], known: &HashMap<String, Known>) -> api::DecideResponse {
    let empty = Known::default();
    let member = |n: &String| known.get(n).unwrap_or(&empty);
    let mut shared = Known::default();
    for n in group {
        let k = member(n);
        shared.facts.relationships.extend(k.facts.relationships.iter().cloned());
        shared
            .facts
            .representatives
            .extend(k.facts.representatives.iter().cloned());
        shared.facts.break_glass.extend(k.facts.break_glass.iter().cloned());
        shared.grants.extend(k.grants.iter().cloned());
    }
    let mut strictest: Option<policy::Outcome> = None;
    for n in group {
        let own = member(n);
        let facts = policy::Facts {
            directives: own.facts.directives.clone(),
            national_opt_out: own.facts.national_opt_out,
            gp_dissent: own.facts.gp_dissent,
            ..shared.facts.clone()
        };
        let mut one = ask.clone();
        one.nhs_number = n.clone();
        // A patient of the group is this number's patient too: one person.
        if let Who::Patient { nhs_number, .. } = &mut one.who
            && group.contains(nhs_number)
        {
            *nhs_number = n.clone();
        }
        let o = policy::decide(&one, &facts);
        strictest = Some(match strictest {
            None => o,
            Some(s) => stricter(s, o),
        });
    }
    let mut o = strictest.unwrap_or_else(|| policy::decide(ask, &shared.facts));
    o.rules.push(format!("merged:{}", group.join("+")));
    respond(ask, o, &shared)
}

/// The stricter of two outcomes: a deny over anything; withholding over a permit, with both
/// withholdings' categories.
fn stricter(a: policy::Outcome, b: policy::Outcome) -> policy::Outcome {
    match (&a.decision, &b.decision) {
        (Decision::Deny, _) => a,
        (_, Decision::Deny) => b,
        (Decision::Withhold(x), Decision::Withhold(y)) => {
            let mut all = x.clone();
            all.extend(y.iter().cloned());
            all.sort();
            all.dedup();
            policy::Outcome {
                decision: Decision::Withhold(all),
                break_glass: a.break_glass || b.break_glass,
                ..a
            }
        }
        (Decision::Withhold(_), Decision::Permit) => a,
        (Decision::Permit, Decision::Withhold(_)) => b,
        (Decision::Permit, Decision::Permit) => policy::Outcome {
            break_glass: a.break_glass || b.break_glass,
            ..a
        },
    }
}

/// Decides `ask` on what is known about its patient (nothing known = empty facts).
fn decision(ask: &Ask, known: Option<&Known>) -> api::DecideResponse {
    let empty = Known::default();
    let known = known.unwrap_or(&empty);
    let o = policy::decide(ask, &known.facts);
    respond(ask, o, known)
}

/// The answer for `o`, naming the break-glass grant it rests on from `known`.
fn respond(ask: &Ask, o: policy::Outcome, known: &Known) -> api::DecideResponse {
    let (effect, withheld) = match o.decision {
        Decision::Permit => (api::decide_response::Effect::Permit, Vec::new()),
        Decision::Deny => (api::decide_response::Effect::Deny, Vec::new()),
        Decision::Withhold(c) => (api::decide_response::Effect::PermitWithWithholding, c),
    };
    let glass_reason = match (&ask.who, o.break_glass) {
        (Who::Staff { person, .. }, true) => known
            .grants
            .iter()
            .find(|g| g.grant.person == *person && g.grant.start <= ask.now && ask.now < g.grant.end)
            .map(|g| format!("{}: {}", g.reason_code, g.reason_text))
            .unwrap_or_default(),
        _ => String::new(),
    };
    api::DecideResponse {
        effect: effect as i32,
        withheld_categories: withheld,
        reason: o.reason,
        rules: o.rules,
        break_glass: o.break_glass,
        break_glass_reason: glass_reason,
    }
}

#[tonic::async_trait]
impl Consent for ConsentApi {
    async fn decide(&self, request: Request<api::DecideRequest>) -> Result<Response<api::DecideResponse>, Status> {
        self.require(&request, "consent.decide", None).await?;
        let ask = parse_ask("", request.get_ref())?;
        let mut answers = decide_parsed(&self.store, std::slice::from_ref(&ask)).await?;
        Ok(Response::new(
            answers.pop().ok_or_else(|| Status::internal("no decision"))?,
        ))
    }

    async fn decide_many(
        &self,
        request: Request<api::DecideManyRequest>,
    ) -> Result<Response<api::DecideManyResponse>, Status> {
        self.require(&request, "consent.decide", None).await?;
        let asks = &request.get_ref().asks;
        if asks.len() > MAX_ASKS {
            return Err(
                ConsentError::invalid("asks", format!("at most {MAX_ASKS} per call, got {}", asks.len())).into(),
            );
        }
        let decisions = decide_many(&self.store, asks).await?;
        Ok(Response::new(api::DecideManyResponse { decisions }))
    }

    async fn put_directive(
        &self,
        request: Request<api::PutDirectiveRequest>,
    ) -> Result<Response<api::Directive>, Status> {
        let d = request
            .get_ref()
            .directive
            .clone()
            .ok_or_else(|| ConsentError::invalid("directive", "is required"))?;
        if !d.provision_json.is_empty() {
            return Err(ConsentError::invalid(
                "directive.provision_json",
                "is output only: send the directive as a FHIR R4 Consent in directive.resource_json",
            )
            .into());
        }
        if d.resource_json.is_empty() {
            return Err(ConsentError::invalid("directive.resource_json", "is required (a FHIR R4 Consent)").into());
        }
        let who = self.who(&request).await?;
        let (directive, stored) = self.write_consent(&who, &d.resource_json, None).await?;
        Ok(Response::new(directive_out(&directive, &stored)))
    }

    async fn list_directives(
        &self,
        request: Request<api::ListDirectivesRequest>,
    ) -> Result<Response<api::ListDirectivesResponse>, Status> {
        let patient = nhs("nhs_number", &request.get_ref().nhs_number)?;
        self.require(&request, "consent.write", Some(&patient)).await?;
        let facts = self.store.facts(&patient).await?;
        let stored = self.store.consents_of(&patient, None).await?;
        Ok(Response::new(api::ListDirectivesResponse {
            directives: facts
                .directives
                .iter()
                .filter_map(|d| stored.iter().find(|v| v.id == d.id).map(|v| directive_out(d, v)))
                .collect(),
        }))
    }

    async fn set_flags(&self, request: Request<api::SetFlagsRequest>) -> Result<Response<api::Flags>, Status> {
        let who = self.require(&request, "consent.write", None).await?;
        let r = request.into_inner();
        let patient = nhs("nhs_number", &r.nhs_number)?;
        let (actor, org) = actor_id(&who);
        self.store
            .set_flags(
                &patient,
                r.national_opt_out,
                r.gp_dissent,
                &Actor { id: &actor, org: &org },
            )
            .await?;
        Ok(Response::new(api::Flags {
            nhs_number: patient.as_str().to_string(),
            national_opt_out: r.national_opt_out,
            gp_dissent: r.gp_dissent,
        }))
    }

    async fn add_representative(
        &self,
        request: Request<api::AddRepresentativeRequest>,
    ) -> Result<Response<api::Representative>, Status> {
        let who = self.require(&request, "consent.write", None).await?;
        let r = request
            .into_inner()
            .representative
            .ok_or_else(|| ConsentError::invalid("representative", "is required"))?;
        let patient = nhs("representative.nhs_number", &r.nhs_number)?;
        let rep = nhs("representative.representative_nhs_number", &r.representative_nhs_number)?;
        if rep == patient {
            return Err(ConsentError::invalid("representative.representative_nhs_number", "is the patient").into());
        }
        const KINDS: &[&str] = &["lpa_health_welfare", "court_deputy", "parental_responsibility"];
        if !KINDS.contains(&r.kind.as_str()) {
            return Err(
                ConsentError::invalid("representative.kind", format!("expected one of {}", KINDS.join(", "))).into(),
            );
        }
        if r.end != 0 && r.end <= r.start {
            return Err(ConsentError::invalid("representative.end", "must be after start").into());
        }
        let id = if r.id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            r.id.clone()
        };
        let stored = policy::Representative {
            nhs_number: rep.as_str().to_string(),
            start: r.start,
            end: (r.end != 0).then_some(r.end),
        };
        let (actor, actor_org) = actor_id(&who);
        self.store
            .add_representative(
                &id,
                &patient,
                &r.kind,
                &stored,
                &Actor {
                    id: &actor,
                    org: &actor_org,
                },
            )
            .await?;
        Ok(Response::new(api::Representative {
            id,
            nhs_number: patient.as_str().to_string(),
            representative_nhs_number: rep.as_str().to_string(),
            kind: r.kind,
            start: r.start,
            end: r.end,
        }))
    }

    async fn end_representative(
        &self,
        request: Request<api::EndRepresentativeRequest>,
    ) -> Result<Response<api::Representative>, Status> {
        let who = self.require(&request, "consent.write", None).await?;
        let r = request.into_inner();
        if r.id.is_empty() {
            return Err(ConsentError::invalid("id", "is required").into());
        }
        let end = if r.end == 0 {
            chrono::Utc::now().timestamp()
        } else {
            r.end
        };
        let (actor, org) = actor_id(&who);
        let (patient, kind, rep) = self
            .store
            .end_representative(&r.id, end, &Actor { id: &actor, org: &org })
            .await?;
        Ok(Response::new(api::Representative {
            id: r.id,
            nhs_number: patient,
            representative_nhs_number: rep.nhs_number,
            kind,
            start: rep.start,
            end,
        }))
    }

    async fn add_relationship(
        &self,
        request: Request<api::AddRelationshipRequest>,
    ) -> Result<Response<api::Relationship>, Status> {
        let who = self.require(&request, "consent.write", None).await?;
        let r = request
            .into_inner()
            .relationship
            .ok_or_else(|| ConsentError::invalid("relationship", "is required"))?;
        let patient = nhs("relationship.nhs_number", &r.nhs_number)?;
        let org = ods("relationship.ods_code", &r.ods_code)?;
        if !RELATIONSHIPS.contains(&r.kind.as_str()) {
            return Err(ConsentError::invalid(
                "relationship.kind",
                format!("expected one of {}", RELATIONSHIPS.join(", ")),
            )
            .into());
        }
        if r.end != 0 && r.end <= r.start {
            return Err(ConsentError::invalid("relationship.end", "must be after start").into());
        }
        let id = if r.id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            r.id
        };
        let rel = Relationship {
            org: org.as_str().to_string(),
            kind: r.kind,
            start: r.start,
            end: (r.end != 0).then_some(r.end),
        };
        let (actor, actor_org) = actor_id(&who);
        self.store
            .add_relationship(
                &id,
                &patient,
                &rel,
                &Actor {
                    id: &actor,
                    org: &actor_org,
                },
            )
            .await?;
        Ok(Response::new(relationship_out(&id, patient.as_str(), &rel)))
    }

    async fn end_relationship(
        &self,
        request: Request<api::EndRelationshipRequest>,
    ) -> Result<Response<api::Relationship>, Status> {
        let who = self.require(&request, "consent.write", None).await?;
        let r = request.into_inner();
        let end = if r.end == 0 {
            chrono::Utc::now().timestamp()
        } else {
            r.end
        };
        let (actor, org) = actor_id(&who);
        let (patient, rel) = self
            .store
            .end_relationship(&r.id, end, &Actor { id: &actor, org: &org })
            .await?;
        Ok(Response::new(relationship_out(&r.id, &patient, &rel)))
    }

    async fn break_glass(
        &self,
        request: Request<api::BreakGlassRequest>,
    ) -> Result<Response<api::BreakGlassGrant>, Status> {
        let who = self.who(&request).await?;
        let Principal::Staff { person, role, .. } = who else {
            return Err(ConsentError::forbidden("break-glass is for members of staff acting in a role").into());
        };
        let r = request.into_inner();
        let patient = nhs("nhs_number", &r.nhs_number)?;
        if r.reason_code.trim().is_empty() {
            return Err(ConsentError::invalid("reason_code", "is required (e.g. unconscious-patient)").into());
        }
        if r.reason_text.trim().chars().count() < 10 {
            return Err(ConsentError::invalid("reason_text", "say why, in at least 10 characters").into());
        }
        let now = chrono::Utc::now().timestamp();
        let g = Grant {
            id: uuid::Uuid::now_v7().to_string(),
            nhs_number: patient.as_str().to_string(),
            grant: policy::BreakGlass {
                person,
                org: role.org_code,
                start: now,
                end: now + BREAK_GLASS_SECS,
            },
            reason_code: r.reason_code,
            reason_text: r.reason_text,
        };
        self.store.break_glass(&g).await?;
        // No NHS number or free text in logs: the grant's id leads to both, for those allowed.
        tracing::warn!(grant = %g.id, person = %g.grant.person, org = %g.grant.org, "break-glass granted");
        Ok(Response::new(grant_out(&g)))
    }

    async fn list_break_glass(
        &self,
        request: Request<api::ListBreakGlassRequest>,
    ) -> Result<Response<api::ListBreakGlassResponse>, Status> {
        let who = self.reviewer(&request).await?;
        let grants = self.store.grants("", true).await?;
        // Only the grants made at organisations this reviewer covers.
        let mut covered = Vec::with_capacity(grants.len());
        for g in &grants {
            if self.covers(&who, &request, &g.grant.org).await? {
                covered.push(grant_out(g));
            }
        }
        Ok(Response::new(api::ListBreakGlassResponse { grants: covered }))
    }

    async fn review_break_glass(
        &self,
        request: Request<api::ReviewBreakGlassRequest>,
    ) -> Result<Response<api::BreakGlassGrant>, Status> {
        let who = self.reviewer(&request).await?;
        let r = request.get_ref().clone();
        if r.id.is_empty() {
            return Err(ConsentError::invalid("id", "is required").into());
        }
        // Reviewing a grant made at an organisation outside this reviewer's cover is refused
        // (an unknown id is answered below as not found).
        if let Principal::Staff { role, .. } = &who
            && let Some(org) = self.store.grant_org(&r.id).await?
            && !self.covers(&who, &request, &org).await?
        {
            return Err(ConsentError::forbidden(format!(
                "break-glass grant {} is not at an organisation you review for ({} and those under it)",
                r.id, role.org_code
            ))
            .into());
        }
        // The reviewer is always the caller: the person, or the service's client.
        let caller = who.id();
        if !r.reviewer.is_empty() && r.reviewer != caller {
            return Err(ConsentError::invalid(
                "reviewer",
                "is always the caller; leave it empty (the review is recorded as yours)",
            )
            .into());
        }
        if r.note.trim().chars().count() < 10 {
            return Err(ConsentError::invalid("note", "say what the review found, in at least 10 characters").into());
        }
        match self.store.review_grant(&r.id, &caller, &r.note).await? {
            Review::Done(g) => Ok(Response::new(grant_out(&g))),
            Review::NotFound => Err(Status::not_found(format!("no break-glass grant {}", r.id))),
            Review::AlreadyReviewed => Err(Status::failed_precondition(format!(
                "break-glass grant {} has already been reviewed; a review is never overwritten",
                r.id
            ))),
            Review::OwnGrant => Err(ConsentError::forbidden(
                "a break-glass grant cannot be reviewed by the person it was given to",
            )
            .into()),
        }
    }
}
