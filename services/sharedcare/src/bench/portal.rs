//! `sharedcare bench portal`: a signed-in clinician's patient summary page in `up` (started as a
//! child process, seeding the demo's records), for the richest demo patient, over HTTP/1.1 keep-alive, as a browser asks for it: the session read, the
//! passport view decided by consent and audited as the GP (with her own token), and the page
//! rendered. The GP signs in through the real pages first (login, code flow, search).

use std::sync::Arc;

use anyhow::{Context, bail};

use super::args::BenchArgs;
use super::harness::{UpProcess, phase};
use super::identity::{client, location, sign_in_back};

/// `sharedcare bench portal`.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    if args.audit_entries > 0 {
        super::audit::prefill(data.path(), args.audit_entries).await?;
    }
    let (p, _) = UpProcess::start_in(data, &[], &[])?;
    let base = format!("http://{}", p.http);
    // The richest demo patient's record, as `up` seeds it (every section, from six
    // organisations); her GP has a care relationship with her.
    let patients = sharedcare_identity::demo::patients();
    let (margaret, _) = patients.first().context("no demo patient")?;
    let nhs = margaret.nhs_number.clone();

    // The GP signs in to the portal through the real pages and opens Margaret.
    let b = client(false)?;
    let cookie = sign_in(&b, &base, "/portal", "gp", "demo-gp-password").await?;
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
    pages("summary page (GP, consent + audit)", args, page, cookie, |body| {
        if body.contains("patient-name") {
            Ok(())
        } else {
            Err(anyhow::anyhow!("not the summary page"))
        }
    })
    .await?;

    // Margaret, signed in to the passport pages at P9, opens "Who has looked at your record":
    // the passport's access log (25 entries with inclusion proofs against a signed tree head),
    // each entry checked in the portal against the audit log's own key.
    let me = client(false)?;
    let cookie = sign_in(&me, &base, "/passport", "patient1", "demo-patient1-password").await?;
    let log_page = format!("{base}/passport/access-log");
    let body = me.get(&log_page).header("cookie", &cookie).send().await?.text().await?;
    if !body.contains("Verified in the audit log") || body.contains("Not verified") {
        bail!("the access-log page did not verify its entries");
    }
    println!(
        "the patient's access-log page (\"Who has looked at your record\", 25 entries each proved against a signed tree head) over an audit log of {}+ entries",
        args.audit_entries
    );
    pages("access-log page (patient, proofs)", args, log_page, cookie, |body| {
        if body.contains("Verified in the audit log") && !body.contains("Not verified") {
            Ok(())
        } else {
            Err(anyhow::anyhow!("an entry did not verify"))
        }
    })
    .await
}

/// Measures GETs of `page` with the session `cookie`, each body passing `check`.
async fn pages(
    name: &str,
    args: &BenchArgs,
    page: String,
    cookie: String,
    check: fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let clients: Vec<reqwest::Client> = (0..args.connections_or(4))
        .map(|_| client(false))
        .collect::<anyhow::Result<_>>()?;
    let (page, cookie) = (Arc::new(page), Arc::new(cookie));
    phase(name, args, &clients, move |c, _| {
        let (page, cookie) = (page.clone(), cookie.clone());
        async move {
            let r = c.get(page.as_str()).header("cookie", cookie.as_str()).send().await?;
            if !r.status().is_success() {
                bail!("HTTP {}", r.status());
            }
            check(&r.text().await?)
        }
    })
    .await?;
    Ok(())
}

/// Signs `user` in to the site's `area` (`/portal` or `/passport`) through the real pages
/// (login, identity's sign-in, the code flow): the session cookie.
async fn sign_in(b: &reqwest::Client, base: &str, area: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let started = b.get(format!("{base}{area}/login")).send().await?;
    let to_identity = location(&started);
    // The sign-in is bound to this client by a cookie its callback must carry.
    let binding = set_cookie(&started, "__Host-sc-signin=").context("no sign-in binding cookie")?;
    let (_, back) = sign_in_back(base, &to_identity, user, password).await?;
    let r = b.get(&back).header("cookie", &binding).send().await?;
    set_cookie(&r, "__Host-sc-portal=")
        .with_context(|| format!("no portal session after the callback ({})", r.status()))
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
