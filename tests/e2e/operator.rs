//! The operator (`sharedcare operator run`) against a real kube-apiserver with etcd
//! (infra/kube.sh, started by the test command) and a real `sharedcare up` as identity:
//! resources applied with kubectl as a platform team (or its GitOps tool) would, and identity
//! checked through its admin API and its token endpoint.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sharedcare_proto::identity::v1::{DeleteClientRequest, GetClientRequest, GetOrganisationRequest};

use crate::harness::{Proc, SERVICE_ID, SERVICE_SECRET, admin, eventually, http};

/// kubectl against the test API server.
struct Kube {
    kubectl: String,
    kubeconfig: String,
}

impl Kube {
    fn new() -> Kube {
        let var =
            |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("{v} is not set: run the README's test command"));
        let kube = Kube {
            kubectl: var("SHAREDCARE_KUBECTL"),
            kubeconfig: var("TEST_KUBECONFIG"),
        };
        kube.install_crds();
        kube
    }

    /// (success, stdout, stderr) of `kubectl <args>`, with `stdin` piped in.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.run(args, stdin);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }

    /// The object, or `None` when the server has none.
    fn get(&self, ns: &str, what: &str) -> Option<Value> {
        let (ok, out, err) = self.run(&["get", "-n", ns, what, "-o", "json"], None);
        if !ok {
            assert!(err.contains("NotFound"), "kubectl get {what}: {err}");
            return None;
        }
        Some(serde_json::from_str(&out).expect("json"))
    }

    /// A namespace of this test's own.
    fn namespace(&self, prefix: &str) -> String {
        let ns = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        self.ok(&["create", "namespace", &ns], None);
        ns
    }

    /// The CRDs as `sharedcare operator crds` prints them.
    fn install_crds(&self) {
        let (status, crds, err) = crate::harness::run(&["operator", "crds"], &[], Duration::from_secs(30));
        assert!(status.success(), "{err}");
        self.ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&crds));
        self.ok(
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "crd/careapps.sharedcare.nhs.uk",
                "crd/careorganisations.sharedcare.nhs.uk",
            ],
            None,
        );
    }

    fn apply(&self, ns: &str, yaml: &str) {
        self.ok(&["apply", "-n", ns, "-f", "-"], Some(yaml));
    }

    /// A condition of an object: (status, reason, message, observedGeneration).
    fn condition(&self, ns: &str, what: &str, kind: &str) -> Option<(String, String, String, i64)> {
        let obj = self.get(ns, what)?;
        let c = obj["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)?
            .clone();
        Some((
            c["status"].as_str()?.to_string(),
            c["reason"].as_str()?.to_string(),
            c["message"].as_str()?.to_string(),
            c["observedGeneration"].as_i64()?,
        ))
    }

    /// Waits until `what` is Ready for its current generation.
    async fn ready(&self, ns: &str, what: &str) {
        eventually(Duration::from_secs(60), &format!("{what} Ready"), || async {
            let generation = self.get(ns, what)?["metadata"]["generation"].as_i64()?;
            let (status, ..) = self.condition(ns, what, "Ready").filter(|c| c.3 == generation)?;
            (status == "True").then_some(())
        })
        .await;
    }

    fn secret(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        use base64::Engine as _;
        let s = self.get(ns, &format!("secret/{name}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s["data"][key].as_str()?)
            .ok()?;
        String::from_utf8(bytes).ok()
    }
}

/// Two free loopback addresses (for an identity that must come back where it was).
fn free_addresses() -> (String, String) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        a.local_addr().expect("addr").to_string(),
        b.local_addr().expect("addr").to_string(),
    )
}

/// `sharedcare up` as identity (the demo ICS seeded: its integration client has
/// identity.admin, which the operator uses), on `addresses`, storing under `data`.
fn identity(data: &std::path::Path, addresses: &(String, String)) -> Proc {
    Proc::start_on(
        &["up", "--data", data.to_str().expect("utf-8")],
        &[("SHAREDCARE_IDENTITY__SEED_DEMO", "true".into())],
        &addresses.0,
        &addresses.1,
    )
}

/// A running `sharedcare operator run`; killed when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(kube: &Kube, ns: &str, identity: &Proc, replica: &str) -> Operator {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("operator.log");
        let env = [
            ("KUBECONFIG", kube.kubeconfig.clone()),
            ("SHAREDCARE_OPERATOR__IDENTITY_URL", identity.grpc.clone()),
            ("SHAREDCARE_OPERATOR__NAMESPACE", ns.to_string()),
            ("SHAREDCARE_OPERATOR__REPLICA", replica.to_string()),
            ("SHAREDCARE_OPERATOR__RESYNC_SECONDS", "2".into()),
            ("SHAREDCARE_OPERATOR__LEASE_SECONDS", "4".into()),
            ("SHAREDCARE_AUTH__ISSUER", identity.http.clone()),
            ("SHAREDCARE_AUTH__CLIENT_ID", SERVICE_ID.into()),
            ("SHAREDCARE_AUTH__CLIENT_SECRET", SERVICE_SECRET.into()),
            ("SHAREDCARE_TELEMETRY__LOG", "info,kube_runtime=warn".into()),
            ("SHAREDCARE_OPERATOR__LISTEN", "127.0.0.1:0".into()),
        ];
        let child = crate::harness::command(&["operator", "run"], &env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the operator");
        Operator { child, log, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where it serves `/healthz` and `/metrics` (from its log).
    fn health_address(&self) -> Option<String> {
        let log = self.log();
        let at = log.find("operator health and metrics on http://")?;
        let rest = log.get(at + "operator health and metrics on http://".len()..)?;
        Some(rest.split('/').next()?.to_string())
    }

    /// How many reconciles it finished.
    fn reconciled(&self) -> usize {
        self.log().matches(" reconciled").count()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn organisation(name: &str, ods: &str) -> String {
    format!(
        "apiVersion: sharedcare.nhs.uk/v1\nkind: CareOrganisation\nmetadata: {{name: {name}}}\n\
         spec: {{odsCode: {ods}, name: Sunrise Care Home, type: CareHome, parent: QN1}}\n"
    )
}

fn app(name: &str, org: &str, redirect: &str, extra: &str) -> String {
    format!(
        "apiVersion: sharedcare.nhs.uk/v1\nkind: CareApp\nmetadata: {{name: {name}}}\nspec:\n  \
         organisationRef: {{name: {org}}}\n  redirectUris: [{redirect}]\n  \
         grantTypes: [authorization_code, refresh_token, client_credentials]\n  scopes: [openid, profile]\n{extra}"
    )
}

/// Whether `id` with `secret` gets a client_credentials token from identity.
async fn token_works(identity: &Proc, id: &str, secret: &str) -> bool {
    http()
        .post(format!("{}/oauth2/token", identity.http))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "openid")])
        .send()
        .await
        .expect("token request")
        .status()
        .is_success()
}

async fn redirect_uris(identity: &Proc, id: &str) -> Option<Vec<String>> {
    let mut a = admin(identity).await;
    match a.get_client(GetClientRequest { client_id: id.into() }).await {
        Ok(r) => r.into_inner().client.map(|c| c.redirect_uris),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("GetClient: {s}"),
    }
}

#[tokio::test]
async fn care_organisations_and_apps_are_reconciled_in_full_into_identity() {
    let kube = Kube::new();
    let ns = kube.namespace("op");
    let data = tempfile::tempdir().expect("tmp");
    let addresses = free_addresses();
    let mut id = identity(data.path(), &addresses);
    let op = Operator::start(&kube, &ns, &id, "solo");

    // Create: the organisation, then the app, each registered in identity; the client secret
    // written to the Secret the status names, and a token can be had with it.
    kube.apply(&ns, &organisation("sunrise", "VNX01"));
    kube.apply(
        &ns,
        &app("handover", "sunrise", "https://handover.example.nhs.uk/cb", ""),
    );
    kube.ready(&ns, "careorganisation/sunrise").await;
    kube.ready(&ns, "careapp/handover").await;
    let client = format!("{ns}.handover");
    let org = admin(&id)
        .await
        .get_organisation(GetOrganisationRequest {
            ods_code: "VNX01".into(),
        })
        .await
        .expect("the organisation is in identity")
        .into_inner();
    assert_eq!(
        (org.kind.as_str(), org.parent_ods_code.as_str(), org.active),
        ("care_home", "QN1", true)
    );
    let status = kube.get(&ns, "careapp/handover").expect("app")["status"].clone();
    assert_eq!(status["clientId"], client.as_str());
    assert_eq!(status["secretName"], "handover-oidc");
    let secret = kube.secret(&ns, "handover-oidc", "client_secret").expect("the Secret");
    assert_eq!(
        kube.secret(&ns, "handover-oidc", "issuer").as_deref(),
        Some(id.http.as_str())
    );
    assert!(
        token_works(&id, &client, &secret).await,
        "a token with the Secret's credentials"
    );

    // Its probes and metrics: healthy, leading, and each reconcile counted by kind.
    let at = op.health_address().expect("the operator logs where it serves /healthz");
    let health = http()
        .get(format!("http://{at}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(health.status().is_success());
    let metrics = http()
        .get(format!("http://{at}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("sharedcare_operator_leading 1"), "{metrics}");
    for kind in ["CareOrganisation", "CareApp"] {
        assert!(
            metrics.contains(&format!(
                "sharedcare_operator_reconcile_duration_seconds_count{{kind=\"{kind}\"}}"
            )),
            "{metrics}"
        );
    }

    // Update: identity follows an edit of the redirect URIs.
    kube.ok(
        &[
            "patch",
            "-n",
            &ns,
            "careapp/handover",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"redirectUris":["https://handover.example.nhs.uk/cb","https://handover.example.nhs.uk/cb2"]}}"#,
        ],
        None,
    );
    eventually(
        Duration::from_secs(30),
        "identity follows the new redirect URIs",
        || async { (redirect_uris(&id, &client).await?.len() == 2).then_some(()) },
    )
    .await;
    kube.ready(&ns, "careapp/handover").await;

    // Drift: a client deleted by hand in identity comes back, with a new secret in the Secret.
    admin(&id)
        .await
        .delete_client(DeleteClientRequest {
            client_id: client.clone(),
        })
        .await
        .expect("delete by hand");
    let restored = eventually(
        Duration::from_secs(30),
        "the client restored with a new secret",
        || async {
            redirect_uris(&id, &client).await?;
            kube.secret(&ns, "handover-oidc", "client_secret")
                .filter(|s| *s != secret)
        },
    )
    .await;
    assert!(token_works(&id, &client, &restored).await);
    assert!(
        !token_works(&id, &client, &secret).await,
        "the lost secret no longer works"
    );

    // Rotation, started by the annotation.
    kube.ok(
        &[
            "annotate",
            "-n",
            &ns,
            "careapp/handover",
            "sharedcare.nhs.uk/rotate-secret=2026-11-29",
        ],
        None,
    );
    let rotated = eventually(Duration::from_secs(30), "the secret rotated", || async {
        kube.secret(&ns, "handover-oidc", "client_secret")
            .filter(|s| *s != restored)
    })
    .await;
    assert!(token_works(&id, &client, &rotated).await && !token_works(&id, &client, &restored).await);

    // Identity down: Degraded, retried with a growing back-off; back up: Ready again.
    drop(id);
    eventually(Duration::from_secs(30), "Degraded while identity is down", || async {
        let (status, reason, message, _) = kube.condition(&ns, "careapp/handover", "Degraded")?;
        (status == "True" && reason == "IdentityUnavailable" && message.contains("identity is unavailable"))
            .then_some(())
    })
    .await;
    let waits = eventually(Duration::from_secs(30), "the retries back off", || async {
        let waits: Vec<u64> = op
            .log()
            .lines()
            .filter(|l| l.contains("CareApp/") && l.contains("reconcile failed"))
            .filter_map(|l| l.split("retry_in_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect();
        (waits.len() >= 3).then_some(waits)
    })
    .await;
    assert!(
        waits.windows(2).all(|w| w[1] >= w[0]) && waits[2] > waits[0],
        "exponential back-off: {waits:?}"
    );
    id = identity(data.path(), &addresses);
    kube.ready(&ns, "careapp/handover").await;
    // The Ready condition may still be the one from before identity went down, so the client
    // is asked until it answers (under a loaded CI run the first token request can come before
    // identity has taken it back): the same client, with the same secret.
    eventually(
        Duration::from_secs(30),
        "identity back with the same client",
        || async { token_works(&id, &client, &rotated).await.then_some(()) },
    )
    .await;

    // Delete: the finalizer deregisters the client and removes the Secret, then lets go.
    kube.ok(
        &["delete", "-n", &ns, "careapp/handover", "--wait=true", "--timeout=60s"],
        None,
    );
    assert!(kube.get(&ns, "careapp/handover").is_none());
    assert!(
        redirect_uris(&id, &client).await.is_none(),
        "the client is gone from identity"
    );
    assert!(kube.get(&ns, "secret/handover-oidc").is_none(), "the Secret is gone");
    assert!(!token_works(&id, &client, &rotated).await);

    // An organisation deleted is deactivated (organisations are never deleted in identity).
    kube.ok(
        &[
            "delete",
            "-n",
            &ns,
            "careorganisation/sunrise",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );
    let org = admin(&id)
        .await
        .get_organisation(GetOrganisationRequest {
            ods_code: "VNX01".into(),
        })
        .await
        .expect("still known")
        .into_inner();
    assert!(!org.active);
}

#[tokio::test]
async fn bad_care_apps_are_refused_by_the_schema_or_degraded_naming_the_field_with_nothing_made() {
    let kube = Kube::new();
    let ns = kube.namespace("opbad");
    let data = tempfile::tempdir().expect("tmp");
    let id = identity(data.path(), &free_addresses());
    let _op = Operator::start(&kube, &ns, &id, "solo");

    // Refused at apply by the CRD's schema and CEL rules, naming the field.
    let refused = [
        (
            app("a1", "org", "http://handover.example.nhs.uk/cb", ""),
            "redirect URIs must be https",
        ),
        (
            app("a2", "org", "https://x.example/cb", "").replace("refresh_token", "password"),
            "spec.grantTypes[1]: Unsupported value: \"password\"",
        ),
        (
            app(
                "a3",
                "org",
                "https://x.example/cb",
                "  tokenEndpointAuthMethod: private_key_jwt\n",
            ),
            "private_key_jwt needs jwks or jwksUri",
        ),
        (organisation("o1", "not-an-ods-code"), "spec.odsCode"),
    ];
    for (yaml, why) in refused {
        let (ok, _, err) = kube.run(&["apply", "-n", &ns, "-f", "-"], Some(&yaml));
        assert!(!ok && err.contains(why), "{why}: {err}");
    }
    let (ok, _, err) = kube.run(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&app("dev", "org", "http://localhost:8080/cb", "")),
    );
    assert!(ok, "http on localhost is allowed for development: {err}");

    // Through the schema but not possible: Degraded, naming the field; nothing in identity.
    kube.apply(&ns, &app("orphan", "nowhere", "https://x.example/cb", ""));
    eventually(
        Duration::from_secs(30),
        "Degraded naming spec.organisationRef.name",
        || async {
            let (status, reason, message, _) = kube.condition(&ns, "careapp/orphan", "Degraded")?;
            (status == "True" && reason == "OrganisationNotFound" && message.contains("spec.organisationRef.name"))
                .then_some(())
        },
    )
    .await;
    assert!(redirect_uris(&id, &format!("{ns}.orphan")).await.is_none());

    kube.apply(&ns, &organisation("org", "VNX02"));
    kube.ready(&ns, "careorganisation/org").await;
    kube.apply(
        &ns,
        &app("greedy", "org", "https://x.example/cb", "").replace("[openid, profile]", "[openid, records.everything]"),
    );
    let message = eventually(Duration::from_secs(30), "Degraded naming spec.scopes", || async {
        let (status, reason, message, _) = kube.condition(&ns, "careapp/greedy", "Degraded")?;
        (status == "True" && reason == "IdentityRefused").then_some(message)
    })
    .await;
    assert!(
        message.contains("spec.scopes[1]") && message.contains("records.everything"),
        "{message}"
    );
    assert!(
        redirect_uris(&id, &format!("{ns}.greedy")).await.is_none(),
        "nothing half-made in identity"
    );

    // Fixing the spec makes it Ready.
    kube.apply(&ns, &app("greedy", "org", "https://x.example/cb", ""));
    kube.ready(&ns, "careapp/greedy").await;
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let kube = Kube::new();
    let ns = kube.namespace("oplead");
    let data = tempfile::tempdir().expect("tmp");
    let id = identity(data.path(), &free_addresses());
    let a = Operator::start(&kube, &ns, &id, "replica-a");
    let b = Operator::start(&kube, &ns, &id, "replica-b");
    let holder = || {
        kube.get(&ns, "lease/sharedcare-operator")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let first = eventually(Duration::from_secs(30), "a leader", || async { holder() }).await;
    kube.apply(&ns, &organisation("org", "VNX03"));
    kube.apply(&ns, &app("one", "org", "https://one.example/cb", ""));
    kube.ready(&ns, "careapp/one").await;
    let (leader, follower) = if first == "replica-a" { (a, b) } else { (b, a) };
    assert!(leader.reconciled() > 0, "the leader reconciles");
    assert_eq!(follower.reconciled(), 0, "the follower does not: {}", follower.log());

    drop(leader); // SIGKILL: no release, the lease must run out
    let second = eventually(Duration::from_secs(30), "the other replica leads", || async {
        holder().filter(|h| *h != first)
    })
    .await;
    assert_ne!(second, first);
    kube.apply(&ns, &app("two", "org", "https://two.example/cb", ""));
    kube.ready(&ns, "careapp/two").await;
    assert!(follower.reconciled() > 0, "the new leader reconciles");
    assert!(redirect_uris(&id, &format!("{ns}.two")).await.is_some());
}

#[test]
fn the_crds_the_chart_installs_are_the_ones_the_operator_generates() {
    let (status, generated, err) = crate::harness::run(&["operator", "crds"], &[], Duration::from_secs(30));
    assert!(status.success(), "{err}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/sharedcare/crds/sharedcare-operator.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from `sharedcare operator crds`: run `sharedcare operator crds > charts/sharedcare/crds/sharedcare-operator.yaml`",
        path.display()
    );
}
