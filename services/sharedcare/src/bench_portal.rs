//! `sharedcare bench portal`: a signed-in clinician's patient summary page in `up` (started as a
//! child process, seeding the demo's records), for the richest demo patient, over HTTP/1.1 keep-alive, as a browser asks for it: the session read, the
//! passport view decided by consent and audited as the GP (with her own token), and the page
//! rendered. The GP signs in through the real pages first (login, code flow, search).

use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bench::{BenchArgs, UpProcess, phase};
use crate::bench_identity::{client, location, sign_in_back};

/// `sharedcare bench portal`.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (p, _) = UpProcess::start()?;
    let base = format!("http://{}", p.http);
    // The richest demo patient's record, as `up` seeds it (every section, from six
    // organisations); her GP has a care relationship with her.
    let patients = sharedcare_identity::demo::patients();
    let (margaret, _) = patients.first().context("no demo patient")?;
    let nhs = margaret.nhs_number.clone();

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
        if body.contains("Allergy to penicillin") && body.contains("patient-name") {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            bail!("the summary page did not show the record within 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!(
        "portal over HTTP/1.1 keep-alive at {base}: the GP's summary page of the richest demo patient (Margaret Evans: every section, from four organisations), {} in flight, {} s; each page: session read, passport view (consent decision + durable audit entry), render",
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
