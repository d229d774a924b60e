//! `sharedcare bench identity`: the token endpoint and friends over HTTP/1.1 keep-alive
//! against `sharedcare up` started as a child process. When `taskset` is available the server
//! is pinned to CPU 0; run the bench itself with `taskset -c 1` so the load generator has the
//! other core (the README gives the command).

use sharedcare_kit::json::Fields;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sharedcare_kit::auth::{KeySource, Verifier};
use sharedcare_kit::jose::JwkSet;

use super::args::BenchArgs;
use super::harness::{DEMO_SERVICE_ID, DEMO_SERVICE_SECRET, UpProcess, histogram, phase, report};

const PORTAL_ID: &str = "sharedcare-portal";
const PORTAL_SECRET: &str = "demo-portal-secret-7c1f9e2b4a";

struct FixedKeys(JwkSet);

#[async_trait::async_trait]
impl KeySource for FixedKeys {
    async fn fetch(&self) -> Result<JwkSet, sharedcare_kit::auth::KeysError> {
        Ok(self.0.clone())
    }
}

pub(crate) fn client(cookies: bool) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(cookies)
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()?)
}

pub(crate) fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The value of hidden field `name` on a login page.
fn field(page: &str, name: &str) -> String {
    page.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_string()
}

fn code_of(url: &str) -> anyhow::Result<String> {
    url::Url::parse(url)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .with_context(|| format!("no code in {url}"))
}

/// One browser: signs in once, then every authorize call returns a code at once. As a patient
/// (NHS login style, password only): staff have a second factor whose codes are single use per
/// 30 s step, which a benchmark signing in thousands of times cannot repeat; the password and
/// session work measured is the same.
async fn signed_in(base: &str, authorize: &str) -> anyhow::Result<reqwest::Client> {
    Ok(sign_in(base, authorize, "patient1", "demo-patient1-password").await?.0)
}

/// Signs `username` in through the login pages for `authorize`; the browser and the code.
async fn sign_in(
    base: &str,
    authorize: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<(reqwest::Client, String)> {
    let (b, back) = sign_in_back(base, authorize, username, password).await?;
    Ok((b, code_of(&back)?))
}

/// Signs `username` in through the login pages for `authorize`: the browser, and where identity
/// sends it back to (the app's redirect URI with the code and state).
pub(crate) async fn sign_in_back(
    base: &str,
    authorize: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<(reqwest::Client, String)> {
    let b = client(true)?;
    let r = b.get(authorize).send().await?;
    let login = format!("{base}{}", location(&r));
    let page = b.get(&login).send().await?.text().await?;
    let r = b
        .post(format!("{base}/oauth2/login"))
        .form(&[
            ("req", field(&page, "req")),
            ("csrf", field(&page, "csrf")),
            ("username", username.into()),
            ("password", password.into()),
        ])
        .send()
        .await?;
    let resume = format!("{base}{}", location(&r));
    let r = b.get(&resume).send().await?;
    let mut back = location(&r);
    // Demo staff all have a second factor: the security code, as their authenticator shows it
    // (this step's, or the next one's if this step was used by a sign-in just before).
    if back.contains("/oauth2/login/otp")
        && let Some(secret) = sharedcare_identity::demo::totp_secret(username)
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        for t in [now, now + 30] {
            let page = b.get(format!("{base}{back}")).send().await?.text().await?;
            let code = sharedcare_identity::secrets::totp(secret, t).context("a TOTP code")?;
            let r = b
                .post(format!("{base}/oauth2/login/otp"))
                .form(&[
                    ("req", field(&page, "req")),
                    ("csrf", field(&page, "csrf")),
                    ("code", code),
                ])
                .send()
                .await?;
            if r.status().is_redirection() {
                let r = b.get(format!("{base}{}", location(&r))).send().await?;
                back = location(&r);
                break;
            }
        }
    }
    Ok((b, back))
}

/// An access token for a demo user (a person with one role profile, or a patient) through the
/// demo portal client's code flow, with `scope`.
pub(crate) async fn user_token(http: &str, username: &str, password: &str, scope: &str) -> anyhow::Result<String> {
    let base = format!("http://{http}");
    let redirect = format!("{base}/portal/callback");
    let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let authorize = format!(
        "{base}/oauth2/authorize?response_type=code&client_id={PORTAL_ID}&scope={}&redirect_uri={}",
        enc(&format!("openid {scope}")),
        enc(&redirect)
    );
    let (b, code) = sign_in(&base, &authorize, username, password).await?;
    let t = token(
        &b,
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect),
        ],
    )
    .await
    .map_err(|e| anyhow::anyhow!("token for {username}: {e}"))?;
    t.at("access_token")
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no access token for {username}: {t}"))
}

async fn token(c: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
    let r = c
        .post(format!("{base}/oauth2/token"))
        .basic_auth(PORTAL_ID, Some(PORTAL_SECRET))
        .form(form)
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!("HTTP {}", r.status());
    }
    Ok(r.json().await?)
}

/// Runs the identity benchmarks.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    let prefix: &[&str] = if pinned { &["taskset", "-c", "0"] } else { &[] };
    let (up, _) = UpProcess::start_with(prefix)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = up.rss_kib()?;
    let base = format!("http://{}", up.http);
    println!(
        "identity over HTTP/1.1 keep-alive at {base}, {} in flight, {} s per phase, server {}",
        args.concurrency,
        args.seconds,
        if pinned {
            "pinned to CPU 0 (taskset)"
        } else {
            "not pinned (no taskset)"
        }
    );
    println!(
        "idle RSS of `up` (every service) before load: {:.1} MiB",
        idle as f64 / 1024.0
    );

    // client_credentials: authenticate the client, sign an ES256 access token.
    let shared = client(false)?;
    let clients = vec![shared.clone()];
    phase("client_credentials token", args, &clients, {
        let base = base.clone();
        move |c: reqwest::Client, _| {
            let base = base.clone();
            async move {
                let r = c
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth(DEMO_SERVICE_ID, Some(DEMO_SERVICE_SECRET))
                    .form(&[("grant_type", "client_credentials"), ("scope", "records.read")])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("HTTP {}", r.status()));
                }
                r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
            }
        }
    })
    .await?;

    // Authorization code round trips with a live SSO session: authorize → code → token.
    let redirect = format!("{base}/portal/callback");
    let authorize = format!(
        "{base}/oauth2/authorize?response_type=code&client_id={PORTAL_ID}&scope=openid%20profile&redirect_uri={}",
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    let mut browsers = Vec::new();
    for _ in 0..args.concurrency.clamp(1, 64) {
        browsers.push(signed_in(&base, &authorize).await?);
    }
    phase("authorization code round trip", args, &browsers, {
        let (base, authorize, redirect) = (base.clone(), authorize.clone(), redirect.clone());
        move |b: reqwest::Client, _| {
            let (base, authorize, redirect) = (base.clone(), authorize.clone(), redirect.clone());
            async move {
                let r = b.get(&authorize).send().await?;
                let code = code_of(&location(&r))?;
                token(
                    &b,
                    &base,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", &redirect),
                    ],
                )
                .await
                .map(|_| ())
            }
        }
    })
    .await?;

    // Refresh: each worker rotates its own refresh token.
    let mut holders = Vec::new();
    for b in &browsers {
        let r = b.get(&authorize).send().await?;
        let code = code_of(&location(&r))?;
        let t = token(
            b,
            &base,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect),
            ],
        )
        .await?;
        let rt = t.at("refresh_token").as_str().context("refresh_token")?.to_string();
        holders.push((b.clone(), Arc::new(std::sync::Mutex::new(rt))));
    }
    phase("refresh (rotating)", args, &holders, {
        let base = base.clone();
        move |(b, rt): (reqwest::Client, Arc<std::sync::Mutex<String>>), _| {
            let base = base.clone();
            async move {
                let current = rt.lock().map(|g| g.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
                let t = token(
                    &b,
                    &base,
                    &[("grant_type", "refresh_token"), ("refresh_token", &current)],
                )
                .await?;
                let next = t.at("refresh_token").as_str().unwrap_or_default().to_string();
                if let Ok(mut g) = rt.lock() {
                    *g = next;
                }
                Ok::<(), anyhow::Error>(())
            }
        }
    })
    .await?;

    // Password logins (Argon2id at the configured cost) through the pages, fresh browser each.
    let login_args = BenchArgs {
        concurrency: 4,
        ..args.clone()
    };
    phase("password login (Argon2id)", &login_args, &[()], {
        let (base, authorize) = (base.clone(), authorize.clone());
        move |_: (), _| {
            let (base, authorize) = (base.clone(), authorize.clone());
            async move {
                signed_in(&base, &authorize)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await?;

    // JWT verification in the kit, one core, keys cached.
    let jwks: JwkSet = shared.get(format!("{base}/oauth2/jwks")).send().await?.json().await?;
    let access = super::harness::demo_service_token(&up.http, "records.read").await?;
    drop(up);
    let keys = Arc::new(FixedKeys(jwks));
    for (name, capacity) in [
        ("kit JWT verify, every signature", 0),
        ("kit JWT verify, repeated token", sharedcare_kit::auth::VERIFIED_CACHE),
    ] {
        let verifier = Verifier::new(base.clone(), "sharedcare", keys.clone()).with_cache(capacity);
        verifier.principal(&access).await.map_err(anyhow::Error::msg)?;
        let mut h = histogram();
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(args.seconds.min(5)) {
            let t = Instant::now();
            if verifier.principal(&access).await.is_err() {
                bail!("verification failed");
            }
            let _ = h.record((t.elapsed().as_nanos() as u64 / 1000).max(1));
            n += 1;
        }
        report(name, n, started.elapsed(), &h);
    }
    Ok(())
}
