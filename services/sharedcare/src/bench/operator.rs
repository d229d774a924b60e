//! `sharedcare bench operator`: 500 CareApps applied at once against a real kube-apiserver
//! (KUBECONFIG; `infra/kube.sh start` runs one) and a fresh `up` as identity, reconciled by
//! the operator's controllers in this process: the time from the first apply to all Ready,
//! and reconciles per second.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use sharedcare_operator::crd::{
    AuthMethod, CareApp, CareAppSpec, CareOrganisation, CareOrganisationSpec, GrantType, OrganisationRef,
    OrganisationType, Status,
};

use super::args::BenchArgs;
use super::harness::{DEMO_SERVICE_ID, DEMO_SERVICE_SECRET, UpProcess};

const APPS: usize = 500;

fn ready(status: Option<&Status>, generation: Option<i64>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True" && Some(c.observed_generation) == generation)
    })
}

/// Runs the benchmark.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("a Kubernetes API server (KUBECONFIG): `infra/kube.sh start` prints one")?;
    let (p, _) = UpProcess::start()?;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in sharedcare_operator::crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("sharedcare-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !crds.get(&name).await?.status.is_some_and(|s| {
            s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        }) {
            if Instant::now() > deadline {
                bail!("CRD {name} not established within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await?;

    let token = sharedcare_kit::auth::ServiceToken::new(
        format!("http://{}/oauth2/token", p.http),
        DEMO_SERVICE_ID,
        DEMO_SERVICE_SECRET,
        "identity.admin",
    )?;
    let identity = sharedcare_operator::identity::Identity::new(&p.grpc, "bench", token)?;
    let reporter = Reporter {
        controller: "sharedcare-bench".into(),
        instance: None,
    };
    let ctx = Arc::new(sharedcare_operator::Context::new(
        client.clone(),
        identity,
        Recorder::new(client.clone(), reporter),
        format!("http://{}", p.http),
        Duration::from_secs(300),
    ));
    let controllers = {
        let (client, ns, ctx) = (client.clone(), ns.clone(), ctx.clone());
        tokio::spawn(async move { sharedcare_operator::controllers(client, &ns, ctx).await })
    };

    let orgs: Api<CareOrganisation> = Api::namespaced(client.clone(), &ns);
    let org = CareOrganisation::new(
        "bench-org",
        CareOrganisationSpec {
            ods_code: "VBN01".into(),
            name: "Bench Care Home".into(),
            kind: OrganisationType::CareHome,
            parent: None,
            active: true,
        },
    );
    orgs.create(&PostParams::default(), &org).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = orgs.get("bench-org").await?;
        if ready(o.status.as_ref(), o.metadata.generation) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the CareOrganisation was not Ready within 60 s: {:?}", o.status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let apps: Api<CareApp> = Api::namespaced(client.clone(), &ns);
    let before = ctx.reconciles.load(Ordering::Relaxed);
    let started = Instant::now();
    futures::stream::iter(0..APPS)
        .map(|i| {
            let apps = apps.clone();
            async move {
                let app = CareApp::new(
                    &format!("app-{i}"),
                    CareAppSpec {
                        display_name: None,
                        organisation_ref: OrganisationRef {
                            name: "bench-org".into(),
                        },
                        redirect_uris: vec![format!("https://app-{i}.example.nhs.uk/callback")],
                        post_logout_redirect_uris: Vec::new(),
                        grant_types: vec![GrantType::AuthorizationCode, GrantType::ClientCredentials],
                        scopes: vec!["openid".into(), "profile".into()],
                        token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
                        jwks: None,
                        jwks_uri: None,
                        backchannel_logout_uri: None,
                    },
                );
                apps.create(&PostParams::default(), &app).await
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    let applied = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let list = apps.list(&ListParams::default()).await?;
        let n = list
            .items
            .iter()
            .filter(|a| ready(a.status.as_ref(), a.metadata.generation))
            .count();
        if n == APPS {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("{n} of {APPS} CareApps Ready after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reconciles = ctx.reconciles.load(Ordering::Relaxed) - before;
    controllers.abort();
    println!(
        "operator: {APPS} CareApps applied in {:.1} s ({} at a time), all Ready {:.1} s after the first apply; \
         {reconciles} reconciles, {:.0} reconciles/s; each app a client in identity and a Secret",
        applied.as_secs_f64(),
        args.concurrency,
        done.as_secs_f64(),
        reconciles as f64 / done.as_secs_f64()
    );
    // The namespace is left for inspection (`kubectl get careapps -n {ns}`); the identity it
    // points at stops with this process.
    println!("namespace {ns}");
    Ok(())
}
