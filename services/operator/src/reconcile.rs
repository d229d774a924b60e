//! The reconcilers, in the shape of kube-rs's controller-rs: a [`Context`], a `reconcile` per
//! kind and one `error_policy`. Each reconcile reads the spec, brings identity to it (creating,
//! updating, or repairing what was changed or deleted by hand), writes the status conditions
//! with the generation they describe, and requeues: soon after a failure (exponential
//! back-off), periodically otherwise (drift repair). A finalizer deregisters from identity.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sharedcare_proto::identity::v1 as api;

use crate::crd::{CareApp, CareOrganisation, Condition, ConditionKind, Status};
use crate::identity::{Identity, IdentityError};
use crate::metrics::Metrics;

/// The finalizer both kinds carry while identity holds what they made.
pub const FINALIZER: &str = "sharedcare.nhs.uk/identity";
/// Set (to any new value) to have a CareApp's client secret rotated.
pub const ROTATE_ANNOTATION: &str = "sharedcare.nhs.uk/rotate-secret";
/// The field manager of everything the operator writes.
const MANAGER: &str = "sharedcare-operator";

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes API.
    pub client: kube::Client,
    /// Identity's admin API.
    pub identity: Identity,
    /// Publishes Kubernetes Events on the resources.
    pub recorder: Recorder,
    /// Identity's issuer URL, written into each app's Secret.
    pub issuer: String,
    /// How often a healthy resource is looked at again (drift repair).
    pub resync: Duration,
    /// Consecutive failures per resource, for the back-off.
    failures: Mutex<HashMap<String, u32>>,
    /// Reconciles run (for the benchmark and the logs).
    pub reconciles: AtomicU64,
    /// Reconciles, failures and durations, served at `/metrics`.
    pub metrics: Metrics,
}

impl Context {
    /// A context over `client` and `identity`.
    pub fn new(client: kube::Client, identity: Identity, recorder: Recorder, issuer: String, resync: Duration) -> Self {
        Context {
            client,
            identity,
            recorder,
            issuer,
            resync,
            failures: Mutex::new(HashMap::new()),
            reconciles: AtomicU64::new(0),
            metrics: Metrics::default(),
        }
    }

    /// The same context recording into `metrics` (the ones `/metrics` serves).
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Context { metrics, ..self }
    }

    /// Runs one reconcile of a resource of `kind`, counted and timed.
    async fn measured(
        &self,
        kind: &'static str,
        reconcile: impl std::future::Future<Output = Result<Action>>,
    ) -> Result<Action> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = reconcile.await;
        self.metrics.reconciled(kind, started.elapsed(), result.is_err());
        result
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// The next back-off for `key`: 1 s, doubling to at most 5 min.
    fn back_off(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }
}

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Identity failed or was unreachable.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

type Result<T> = std::result::Result<T, Error>;

/// What a reconcile of one resource concluded.
enum Outcome {
    Ready(String),
    /// Not done, through the spec's fault: the message names the field; retried with back-off
    /// (the spec may be fixed, or what it names may appear).
    Degraded(&'static str, String),
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Requeue after a failure, with exponential back-off per resource.
pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let wait = ctx.back_off(&key(obj.as_ref()));
    tracing::warn!(resource = %key(obj.as_ref()), error = %error, retry_in_ms = wait.as_millis() as u64, "reconcile failed");
    Action::requeue(wait)
}

/// Brings identity's organisation to the CareOrganisation's spec.
#[tracing::instrument(skip_all, fields(resource = %key(org.as_ref())))]
pub async fn reconcile_organisation(org: Arc<CareOrganisation>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<CareOrganisation> = Api::namespaced(ctx.client.clone(), &org.namespace().unwrap_or_default());
    let c = ctx.clone();
    ctx.measured(
        "CareOrganisation",
        finalizer(&api, FINALIZER, org, |event| async move {
            match event {
                Finalizer::Apply(org) => apply_organisation(&org, &c).await,
                Finalizer::Cleanup(org) => {
                    // Organisations are never deleted in identity (role profiles and the audit
                    // trail name them): deleting the resource deactivates it.
                    c.identity.deactivate_organisation(&org.spec.ods_code).await?;
                    publish(
                        &c,
                        org.as_ref(),
                        EventType::Normal,
                        "Deactivated",
                        "organisation deactivated in identity",
                    )
                    .await;
                    Ok(Action::await_change())
                }
            }
        })
        .map(|r| r.map_err(finalizer_error)),
    )
    .await
}

async fn apply_organisation(org: &CareOrganisation, ctx: &Context) -> Result<Action> {
    let spec = &org.spec;
    let want = api::Organisation {
        ods_code: spec.ods_code.clone(),
        name: spec.name.clone(),
        kind: spec.kind.identity_kind().to_string(),
        parent_ods_code: spec.parent.clone().unwrap_or_default(),
        active: spec.active,
    };
    let outcome = match ctx.identity.organisation(&spec.ods_code).await {
        Err(e) => return failed(org, ctx, e).await,
        Ok(None) => {
            let created = ctx.identity.create_organisation(want.clone()).await;
            let done = match created {
                Ok(_) if !want.active => ctx.identity.update_organisation(want).await.map(|_| ()),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => {
                    publish(
                        ctx,
                        org,
                        EventType::Normal,
                        "Created",
                        "organisation registered in identity",
                    )
                    .await;
                    Outcome::Ready("registered in identity".into())
                }
                Err(IdentityError::Invalid(why)) => {
                    Outcome::Degraded("IdentityRefused", spec_field(&why, ORGANISATION_FIELDS))
                }
                Err(e) => return failed(org, ctx, e).await,
            }
        }
        Ok(Some(have)) if have == want => Outcome::Ready("in step with identity".into()),
        Ok(Some(_)) => match ctx.identity.update_organisation(want).await {
            Ok(_) => {
                publish(ctx, org, EventType::Normal, "Updated", "identity brought to the spec").await;
                Outcome::Ready("updated in identity".into())
            }
            Err(IdentityError::Invalid(why)) => {
                Outcome::Degraded("IdentityRefused", spec_field(&why, ORGANISATION_FIELDS))
            }
            Err(e) => return failed(org, ctx, e).await,
        },
    };
    settle(org, ctx, outcome, Status::default()).await
}

/// Names the spec field at fault in identity's message, which starts `field: reason` (the
/// field perhaps indexed, `scopes[1]`), using `fields` (identity's name, the spec's).
fn spec_field(why: &str, fields: &[(&str, &str)]) -> String {
    let Some((field, reason)) = why.split_once(": ") else {
        return why.to_string();
    };
    let (base, index) = field.split_at(field.find('[').unwrap_or(field.len()));
    match fields.iter().find(|(theirs, _)| *theirs == base) {
        Some((_, ours)) => format!("{ours}{index}: {reason}"),
        None => why.to_string(),
    }
}

/// Identity's organisation fields as the CareOrganisation names them.
const ORGANISATION_FIELDS: &[(&str, &str)] = &[
    ("ods_code", "spec.odsCode"),
    ("name", "spec.name"),
    ("kind", "spec.type"),
    ("parent_ods_code", "spec.parent"),
];

/// Identity's client fields as the CareApp names them.
const APP_FIELDS: &[(&str, &str)] = &[
    ("name", "spec.displayName"),
    ("redirect_uris", "spec.redirectUris"),
    ("post_logout_redirect_uris", "spec.postLogoutRedirectUris"),
    ("grant_types", "spec.grantTypes"),
    ("scopes", "spec.scopes"),
    ("token_endpoint_auth_method", "spec.tokenEndpointAuthMethod"),
    ("jwks_json", "spec.jwks"),
    ("jwks_uri", "spec.jwksUri"),
    ("backchannel_logout_uri", "spec.backchannelLogoutUri"),
    ("organisation", "spec.organisationRef"),
];

/// The client id a CareApp registers: `<namespace>.<name>`.
pub fn client_id(app: &CareApp) -> String {
    format!("{}.{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// The Secret a CareApp's credentials are written to.
pub fn secret_name(app: &CareApp) -> String {
    format!("{}-oidc", app.name_any())
}

/// Brings identity's client (and the app's Secret) to the CareApp's spec.
#[tracing::instrument(skip_all, fields(resource = %key(app.as_ref())))]
pub async fn reconcile_app(app: Arc<CareApp>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<CareApp> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let c = ctx.clone();
    ctx.measured(
        "CareApp",
        finalizer(&api, FINALIZER, app, |event| async move {
            match event {
                Finalizer::Apply(app) => apply_app(&app, &c).await,
                Finalizer::Cleanup(app) => {
                    c.identity.delete_client(&client_id(&app)).await?;
                    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), &app.namespace().unwrap_or_default());
                    match secrets.delete(&secret_name(&app), &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                    publish(
                        &c,
                        app.as_ref(),
                        EventType::Normal,
                        "Deregistered",
                        "client removed from identity",
                    )
                    .await;
                    Ok(Action::await_change())
                }
            }
        })
        .map(|r| r.map_err(finalizer_error)),
    )
    .await
}

async fn apply_app(app: &CareApp, ctx: &Context) -> Result<Action> {
    let ns = app.namespace().unwrap_or_default();
    let status = app.status.clone().unwrap_or_default();
    if status.observed_generation != app.meta().generation {
        set_status(app, ctx, reconciling(app, &status)).await?;
    }
    // The organisation first: nothing is made in identity for an app whose organisation is
    // missing or not yet registered.
    let orgs: Api<CareOrganisation> = Api::namespaced(ctx.client.clone(), &ns);
    let org_name = &app.spec.organisation_ref.name;
    let Some(org) = orgs.get_opt(org_name).await? else {
        let why = format!("spec.organisationRef.name: CareOrganisation {org_name:?} does not exist in namespace {ns}");
        return settle(app, ctx, Outcome::Degraded("OrganisationNotFound", why), status).await;
    };
    if !registered(org.status.as_ref()) {
        let why = format!("spec.organisationRef.name: CareOrganisation {org_name:?} is not Ready yet");
        return settle(app, ctx, Outcome::Degraded("OrganisationNotReady", why), status).await;
    }
    let id = client_id(app);
    let want = registration(app, &id, &org.spec.ods_code);
    let rotation = app.annotations().get(ROTATE_ANNOTATION).cloned();
    let rotate = rotation.is_some() && rotation != status.rotated_for;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let needs_secret = app.spec.token_endpoint_auth_method == crate::crd::AuthMethod::ClientSecretBasic;
    let have_secret = needs_secret && secrets.get_opt(&secret_name(app)).await?.is_some();

    let result = match ctx.identity.client(&id).await {
        Err(e) => Err(e),
        Ok(None) => ctx
            .identity
            .create_client(want)
            .await
            .map(|s| (s, Some(Change::Registered))),
        Ok(Some(have)) => {
            let drifted = !have.client.as_ref().is_some_and(|have| same_registration(have, &want));
            // A Secret deleted by hand cannot be written back: the secret is only shown once,
            // so a new one is made.
            let rotate = rotate || (needs_secret && !have_secret);
            if drifted || rotate {
                let why = if rotate { Change::SecretRotated } else { Change::Updated };
                ctx.identity.update_client(want, rotate).await.map(|s| (s, Some(why)))
            } else {
                Ok((String::new(), None))
            }
        }
    };
    let outcome = match result {
        Ok((secret, change)) => {
            if !secret.is_empty() {
                write_secret(app, ctx, &id, &secret).await?;
            }
            if let Some(change) = change {
                publish(ctx, app, EventType::Normal, change.reason(), change.note()).await;
            }
            Outcome::Ready(format!("client {id} in step with identity"))
        }
        Err(IdentityError::Invalid(why)) => Outcome::Degraded("IdentityRefused", spec_field(&why, APP_FIELDS)),
        Err(e) => return failed(app, ctx, e).await,
    };
    let extra = Status {
        client_id: Some(id),
        secret_name: needs_secret.then(|| secret_name(app)),
        rotated_for: rotation.or(status.rotated_for),
        ..Status::default()
    };
    settle(app, ctx, outcome, extra).await
}

/// What a reconcile changed in identity for a CareApp: the reason of the Event it publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// The client was made.
    Registered,
    /// Its secret was rotated (asked for, or its Secret was deleted).
    SecretRotated,
    /// It had drifted from the spec and was brought back.
    Updated,
}

impl Change {
    fn reason(self) -> &'static str {
        match self {
            Change::Registered => "Registered",
            Change::SecretRotated => "SecretRotated",
            Change::Updated => "Updated",
        }
    }

    fn note(self) -> &'static str {
        match self {
            Change::Registered => "client registered in identity",
            Change::SecretRotated => "client secret rotated and written to the Secret",
            Change::Updated => "identity brought back to the spec",
        }
    }
}

/// The registration identity should hold for `app`.
fn registration(app: &CareApp, id: &str, ods_code: &str) -> api::CreateClientRequest {
    let spec = &app.spec;
    api::CreateClientRequest {
        client_id: id.to_string(),
        name: spec.display_name.clone().unwrap_or_else(|| app.name_any()),
        redirect_uris: spec.redirect_uris.clone(),
        post_logout_redirect_uris: spec.post_logout_redirect_uris.clone(),
        backchannel_logout_uri: spec.backchannel_logout_uri.clone().unwrap_or_default(),
        grant_types: spec.grant_types.iter().map(|g| g.as_str().to_string()).collect(),
        scopes: spec.scopes.clone(),
        token_endpoint_auth_method: spec.token_endpoint_auth_method.as_str().to_string(),
        jwks_json: spec.jwks.clone().unwrap_or_default(),
        jwks_uri: spec.jwks_uri.clone().unwrap_or_default(),
        id_token_signed_response_alg: "ES256".into(),
        organisation: ods_code.to_string(),
    }
}

/// Whether identity holds `want`: field by field, the JWK Set compared as JSON (identity
/// stores it parsed and gives it back in its own formatting).
fn same_registration(have: &api::CreateClientRequest, want: &api::CreateClientRequest) -> bool {
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    let mut have = have.clone();
    if json(&have.jwks_json).is_some() && json(&have.jwks_json) == json(&want.jwks_json) {
        have.jwks_json.clone_from(&want.jwks_json);
    }
    have == *want
}

/// Writes the app's credentials to its Secret, owned by the app.
async fn write_secret(app: &CareApp, ctx: &Context, id: &str, secret: &str) -> Result<()> {
    let ns = app.namespace().unwrap_or_default();
    let mut data = BTreeMap::new();
    data.insert("client_id".to_string(), ByteString(id.as_bytes().to_vec()));
    data.insert("client_secret".to_string(), ByteString(secret.as_bytes().to_vec()));
    data.insert("issuer".to_string(), ByteString(ctx.issuer.as_bytes().to_vec()));
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(app)),
            namespace: Some(ns.clone()),
            owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    secrets
        .patch(
            &secret_name(app),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&s),
        )
        .await?;
    Ok(())
}

/// What both kinds are: namespaced, with the operator's status.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + kube::core::object::HasStatus<Status = Status>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> Reconciled for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + kube::core::object::HasStatus<Status = Status>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// Whether a CareOrganisation is in identity: Ready, or only failing for want of identity
/// itself (then the app's own call to identity fails and says so).
fn registered(status: Option<&Status>) -> bool {
    is_ready(status)
        || status.is_some_and(|s| {
            s.condition(ConditionKind::Degraded)
                .is_some_and(|c| c.status == "True" && c.reason == IDENTITY_UNAVAILABLE)
                && s.observed_generation.is_some()
        })
}

fn is_ready(status: Option<&Status>) -> bool {
    status.is_some_and(|s| s.holds(ConditionKind::Ready))
}

/// The reason every condition gives while identity cannot be reached.
const IDENTITY_UNAVAILABLE: &str = "IdentityUnavailable";

/// One condition as it should read: `on`, why, and what happened.
struct Says<'a> {
    on: bool,
    reason: &'a str,
    message: &'a str,
}

fn says<'a>(on: bool, reason: &'a str, message: &'a str) -> Says<'a> {
    Says { on, reason, message }
}

/// The three conditions (Ready, Reconciling, Degraded) of generation `generation`, each
/// keeping its transition time from `before` unless its status changes.
fn conditions(
    ready: Says<'_>,
    reconciling: Says<'_>,
    degraded: Says<'_>,
    generation: i64,
    before: &Status,
) -> Vec<Condition> {
    [
        (ConditionKind::Ready, ready),
        (ConditionKind::Reconciling, reconciling),
        (ConditionKind::Degraded, degraded),
    ]
    .into_iter()
    .map(|(kind, says)| {
        let status = if says.on { "True" } else { "False" };
        let last = before
            .condition(kind)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| {
                k8s_openapi::jiff::Timestamp::now()
                    .round(k8s_openapi::jiff::Unit::Second)
                    .unwrap_or_default()
                    .to_string()
            });
        Condition {
            kind: kind.as_str().into(),
            status: status.into(),
            reason: says.reason.into(),
            message: says.message.into(),
            observed_generation: generation,
            last_transition_time: last,
        }
    })
    .collect()
}

fn reconciling<K: Resource>(obj: &K, before: &Status) -> Status {
    let generation = obj.meta().generation.unwrap_or(0);
    let doing = "bringing identity to the new spec";
    Status {
        conditions: conditions(
            says(is_ready(Some(before)), "Reconciling", doing),
            says(true, "SpecChanged", doing),
            says(false, "Reconciling", ""),
            generation,
            before,
        ),
        ..before.clone()
    }
}

/// Writes the outcome as conditions and decides when to look again.
async fn settle<K>(obj: &K, ctx: &Context, outcome: Outcome, extra: Status) -> Result<Action>
where
    K: Reconciled,
{
    let before = obj.status().cloned().unwrap_or_default();
    let generation = obj.meta().generation.unwrap_or(0);
    let (conditions, action) = match &outcome {
        Outcome::Ready(msg) => {
            ctx.succeeded(&key(obj));
            let done = "Reconciled";
            (
                conditions(
                    says(true, done, msg),
                    says(false, done, ""),
                    says(false, done, ""),
                    generation,
                    &before,
                ),
                Action::requeue(ctx.resync),
            )
        }
        Outcome::Degraded(reason, msg) => {
            let already = before
                .condition(ConditionKind::Degraded)
                .is_some_and(|c| c.status == "True" && c.message == *msg);
            if !already {
                publish(ctx, obj, EventType::Warning, reason, msg).await;
            }
            (
                conditions(
                    says(false, reason, msg),
                    says(false, reason, ""),
                    says(true, reason, msg),
                    generation,
                    &before,
                ),
                Action::requeue(ctx.back_off(&key(obj))),
            )
        }
    };
    let status = Status {
        conditions,
        observed_generation: Some(generation),
        client_id: extra.client_id.or(before.client_id.clone()),
        secret_name: extra.secret_name.or(before.secret_name.clone()),
        rotated_for: extra.rotated_for.or(before.rotated_for.clone()),
    };
    if status != before {
        set_status(obj, ctx, status).await?;
    }
    if let Outcome::Ready(_) = outcome {
        tracing::info!(resource = %key(obj), "reconciled");
    }
    Ok(action)
}

/// A failure to reach identity: Degraded in the status (when the API server takes it), then
/// the error, so the controller backs off.
async fn failed<K>(obj: &K, ctx: &Context, e: IdentityError) -> Result<Action>
where
    K: Reconciled,
{
    let before = obj.status().cloned().unwrap_or_default();
    let generation = obj.meta().generation.unwrap_or(0);
    let msg = e.to_string();
    let status = Status {
        conditions: conditions(
            says(false, IDENTITY_UNAVAILABLE, &msg),
            says(true, IDENTITY_UNAVAILABLE, "retrying with back-off"),
            says(true, IDENTITY_UNAVAILABLE, &msg),
            generation,
            &before,
        ),
        ..before.clone()
    };
    if status != before {
        let _ = set_status(obj, ctx, status).await;
    }
    Err(e.into())
}

/// Writes `status` by server-side apply under the operator's field manager (forced: the
/// operator owns its status).
async fn set_status<K: Reconciled>(obj: &K, ctx: &Context, status: Status) -> Result<()> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, kind: EventType, reason: &str, note: &str) {
    let event = Event {
        type_: kind,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event failed");
    }
}

fn finalizer_error(e: kube::runtime::finalizer::Error<Error>) -> Error {
    match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identitys_field_names_become_the_specs() {
        assert_eq!(
            spec_field("scopes[1]: \"records.everything\" is not a known scope", APP_FIELDS),
            "spec.scopes[1]: \"records.everything\" is not a known scope"
        );
        assert_eq!(
            spec_field(
                "parent_ods_code: QWO is not a registered organisation",
                ORGANISATION_FIELDS
            ),
            "spec.parent: QWO is not a registered organisation"
        );
        assert_eq!(
            spec_field("name: is required", ORGANISATION_FIELDS),
            "spec.name: is required"
        );
        assert_eq!(spec_field("something else", APP_FIELDS), "something else");
    }

    #[test]
    fn a_jwk_set_in_other_formatting_is_not_drift() {
        let want = api::CreateClientRequest {
            client_id: "ns.app".into(),
            jwks_json: r#"{ "keys": [ {"kty": "EC", "kid": "k1"} ] }"#.into(),
            ..Default::default()
        };
        let mut have = want.clone();
        have.jwks_json = r#"{"keys":[{"kid":"k1","kty":"EC"}]}"#.into();
        assert!(same_registration(&have, &want));
        have.jwks_json = r#"{"keys":[{"kid":"k2","kty":"EC"}]}"#.into();
        assert!(!same_registration(&have, &want));
        have.jwks_json.clone_from(&want.jwks_json);
        have.redirect_uris = vec!["https://elsewhere.example/cb".into()];
        assert!(!same_registration(&have, &want));
    }
}

/// Reconcile against a mocked API server (kube-rs's controller-rs `fixtures.rs` pattern): each
/// test scripts what the API server is asked and answers, and fails on anything else.
#[cfg(test)]
mod mocked {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use sharedcare_kit::auth::ServiceToken;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A context whose Kubernetes client is the mock, and whose identity cannot be reached.
    fn context() -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "ics");
        // Nothing listens on port 1: the operator's token, and so identity, is unavailable.
        let token = ServiceToken::new(
            "http://127.0.0.1:1/oauth2/token",
            "operator",
            "secret",
            "identity.admin",
        )
        .expect("a token source");
        let identity = Identity::new("http://127.0.0.1:1", "operator.identity_url", token).expect("identity");
        let reporter = kube::runtime::events::Reporter {
            controller: MANAGER.into(),
            instance: None,
        };
        let ctx = Context::new(
            client.clone(),
            identity,
            Recorder::new(client, reporter),
            "https://id.example".into(),
            Duration::from_secs(300),
        );
        (Arc::new(ctx), handle)
    }

    fn organisation(generation: i64) -> CareOrganisation {
        let mut org = CareOrganisation::new(
            "riverside",
            serde_json::from_value(
                json!({"odsCode": "A81001", "name": "Riverside Medical Practice", "type": "GPPractice"}),
            )
            .expect("spec"),
        );
        org.metadata.namespace = Some("ics".into());
        org.metadata.generation = Some(generation);
        org.metadata.finalizers = Some(vec![FINALIZER.into()]);
        org
    }

    #[tokio::test]
    async fn identity_unreachable_is_written_as_degraded_by_server_side_apply_and_counted() {
        let (ctx, mut api) = context();
        let server = tokio::spawn(async move {
            let (req, reply) = api.next_request().await.expect("a status patch");
            assert_eq!(req.method(), http::Method::PATCH);
            assert_eq!(
                req.uri().path(),
                "/apis/sharedcare.nhs.uk/v1/namespaces/ics/careorganisations/riverside/status"
            );
            let query = req.uri().query().unwrap_or_default().to_string();
            assert!(
                query.contains("fieldManager=sharedcare-operator") && query.contains("force=true"),
                "{query}"
            );
            assert_eq!(
                req.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()),
                Some(&b"application/apply-patch+yaml"[..])
            );
            let body = req.into_body().collect_bytes().await.expect("body");
            let patch: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(patch["kind"], "CareOrganisation");
            assert_eq!(patch["apiVersion"], "sharedcare.nhs.uk/v1");
            let conditions = patch["status"]["conditions"].as_array().expect("conditions");
            let of = |kind: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == kind)
                    .expect("condition")
                    .clone()
            };
            assert_eq!(of("Ready")["status"], "False");
            assert_eq!(of("Degraded")["status"], "True");
            assert_eq!(of("Degraded")["reason"], "IdentityUnavailable");
            assert_eq!(of("Reconciling")["observedGeneration"], 4);
            let mut back = serde_json::to_value(organisation(4)).expect("object");
            back["status"] = patch["status"].clone();
            reply.send_response(
                Response::builder()
                    .body(Body::from(back.to_string().into_bytes()))
                    .expect("response"),
            );
        });
        let result = reconcile_organisation(Arc::new(organisation(4)), ctx.clone()).await;
        assert!(matches!(result, Err(Error::Identity(_))), "{result:?}");
        server.await.expect("the API server saw what it expected");
        let text = ctx.metrics.render();
        assert!(
            text.contains("sharedcare_operator_reconcile_failures_total{kind=\"CareOrganisation\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_status_already_degraded_for_the_same_reason_is_not_written_again() {
        let (ctx, mut api) = context();
        let mut org = organisation(4);
        // The first failure writes Degraded; the same failure again finds it written.
        let first = tokio::spawn(async move {
            let (req, reply) = api.next_request().await.expect("the first status patch");
            let body = req.into_body().collect_bytes().await.expect("body");
            let patch: serde_json::Value = serde_json::from_slice(&body).expect("json");
            reply.send_response(Response::builder().body(Body::from(b"{}".to_vec())).expect("response"));
            (patch, api)
        });
        let _ = reconcile_organisation(Arc::new(org.clone()), ctx.clone()).await;
        let (patch, mut api) = first.await.expect("first");
        org.status = Some(serde_json::from_value(patch["status"].clone()).expect("status"));
        let second = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(300), api.next_request())
                .await
                .is_err()
        });
        let _ = reconcile_organisation(Arc::new(org), ctx.clone()).await;
        assert!(second.await.expect("second"), "an unchanged status was written again");
        let text = ctx.metrics.render();
        assert!(
            text.contains("sharedcare_operator_reconciles_total{kind=\"CareOrganisation\"} 2"),
            "{text}"
        );
    }
}
