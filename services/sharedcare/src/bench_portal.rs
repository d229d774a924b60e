//! `sharedcare bench portal`: a signed-in clinician's patient summary page in `up` (started as a
//! child process), over HTTP/1.1 keep-alive, as a browser asks for it: the session read, the
//! passport view decided by consent and audited as the GP (with her own token), and the page
//! rendered. The GP signs in through the real pages first (login, code flow, search).

use std::sync::Arc;

use anyhow::{Context, bail};
use sharedcare_proto::records::v1::PutRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;

use crate::bench::{Bearer, BenchArgs, UpProcess, demo_service_token, phase};
use crate::bench_identity::{client, location, sign_in_back};

/// `sharedcare bench portal`.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (p, _) = UpProcess::start()?;
    let base = format!("http://{}", p.http);
    // The demo patients' GP records (their GP has a care relationship with each).
    let token = demo_service_token(&p.http, "records.read records.write").await?;
    let channel = tonic::transport::Channel::from_shared(p.grpc.clone())?
        .connect()
        .await?;
    let mut records = RecordsClient::with_interceptor(channel, Bearer(format!("Bearer {token}").parse()?));
    let patients = sharedcare_identity::demo::patients();
    let (margaret, _) = patients.first().context("no demo patient")?;
    let nhs = margaret.nhs_number.clone();
    let subject = r#"{"reference":"Patient/bench-margaret"}"#;
    for body in [
        format!(
            r#"{{"resourceType":"Patient","id":"bench-margaret","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}],"name":[{{"family":"Evans","given":["Margaret"]}}],"birthDate":"1941-03-12"}}"#
        ),
        format!(
            r#"{{"resourceType":"Condition","id":"bench-c1","subject":{subject},"code":{{"coding":[{{"system":"http://snomed.info/sct","code":"44054006","display":"Type 2 diabetes mellitus"}}]}},"onsetDateTime":"2019-04-01"}}"#
        ),
        format!(
            r#"{{"resourceType":"MedicationStatement","id":"bench-m1","status":"active","subject":{subject},"medicationCodeableConcept":{{"text":"Metformin 500mg tablets"}}}}"#
        ),
        format!(
            r#"{{"resourceType":"Encounter","id":"bench-e1","status":"finished","subject":{subject},"class":{{"code":"AMB"}},"period":{{"start":"2026-11-20T09:00:00Z"}},"type":[{{"text":"Diabetes review"}}]}}"#
        ),
        format!(
            r#"{{"resourceType":"AllergyIntolerance","id":"bench-a1","patient":{subject},"clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"active"}}]}},"code":{{"text":"Penicillin"}},"recordedDate":"2010-05-01"}}"#
        ),
    ] {
        records
            .put(PutRequest {
                resource_json: body,
                source_organisation: "A81001".into(),
                ..Default::default()
            })
            .await?;
    }

    // The GP signs in to the portal through the real pages and opens Margaret.
    let b = client(false)?;
    let started = b.get(format!("{base}/portal/login")).send().await?;
    let to_identity = location(&started);
    // The sign-in is bound to this client by a cookie its callback must carry.
    let binding = set_cookie(&started, "__Host-sc-signin=").context("no sign-in binding cookie")?;
    let (_, back) = sign_in_back(&base, &to_identity, "gp", "demo-gp-password").await?;
    let r = b.get(&back).header("cookie", &binding).send().await?;
    let cookie = set_cookie(&r, "__Host-sc-portal=")
        .with_context(|| format!("no portal session after the callback ({})", r.status()))?;
    let home = b
        .get(format!("{base}/portal/"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    let csrf = home
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no CSRF token on the search page")?
        .to_string();
    let r = b
        .post(format!("{base}/portal/search"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("nhs_number", nhs.as_str())])
        .send()
        .await?;
    let page = format!("{base}{}", location(&r));
    // The passport holds the writes before measuring.
    let started = std::time::Instant::now();
    loop {
        let body = b.get(&page).header("cookie", &cookie).send().await?.text().await?;
        if body.contains("Penicillin") && body.contains("patient-name") {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            bail!("the summary page did not show the record within 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!(
        "portal over HTTP/1.1 keep-alive at {base}: the GP's summary page of one patient, {} in flight, {} s; each page: session read, passport view (consent decision + durable audit entry), render",
        args.concurrency, args.seconds
    );
    let clients: Vec<reqwest::Client> = (0..args.connections.max(1))
        .map(|_| client(false))
        .collect::<anyhow::Result<_>>()?;
    let (page, cookie) = (Arc::new(page), Arc::new(cookie));
    phase("summary page (GP, consent + audit)", args, &clients, move |c, _| {
        let (page, cookie) = (page.clone(), cookie.clone());
        async move {
            let r = c
                .get(page.as_str())
                .header("cookie", cookie.as_str())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            let body = r.text().await.map_err(|e| e.to_string())?;
            if !body.contains("patient-name") {
                return Err("not the summary page".into());
            }
            Ok(())
        }
    })
    .await
}

/// The cookie `prefix…` a response set, as `name=value`.
fn set_cookie(r: &reqwest::Response, prefix: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.starts_with(prefix)))
        .map(str::to_string)
}
