//! Starting and stopping `sharedcare` processes, and the real dependencies they use.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreTokenIntrospectionResponse};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IntrospectionUrl, IssuerUrl, Nonce, OAuth2TokenResponse,
    RedirectUrl, Scope,
};
use serde_json::Value;
use sharedcare_proto::audit::v1::audit_client::AuditClient;
use sharedcare_proto::identity::v1::CreateClientRequest;
use sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The built `sharedcare` binary: `$SHAREDCARE_BIN`, or the one beside this test binary.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("SHAREDCARE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-… → target/debug/sharedcare
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("sharedcare"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sharedcare` first (the README's test command does)",
        bin.display()
    );
    bin
}

pub fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SHAREDCARE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_BACKTRACE", "0");
    // The demo ICS's people and organisations, but not its clinical record: each test writes
    // the record it is about. The tests of the demo itself (`demo::`) start `up` as a user
    // does, record and all ([`up_as_shipped`]), by setting this back.
    cmd.env("SHAREDCARE_IDENTITY__SEED_DEMO_RECORD", "false");
    // Tests run many processes at once: each MLLP listener on a free port (HL7's 2575 is for
    // the one a user runs), reported in the `listening` line.
    cmd.env("SHAREDCARE_CONNECTORS__MLLP_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A running `sharedcare` process; killed when dropped.
pub struct Proc {
    child: Child,
    /// HTTP base URL, e.g. `http://127.0.0.1:41234`.
    pub http: String,
    /// gRPC endpoint URL, e.g. `http://127.0.0.1:41235`.
    pub grpc: String,
    /// The HL7 v2 MLLP listener's `host:port`, when connectors run in the process.
    pub mllp: String,
    /// The health and metrics port's base URL, when it has its own (`--health`).
    pub health: String,
    stderr: PathBuf,
    _logs: tempfile::TempDir,
    issuer: Option<String>,
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

impl Proc {
    /// Starts `sharedcare <args>` on free ports and waits until it says it is listening.
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Proc {
        Proc::start_on(args, env, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts `sharedcare <args>` listening on `http` and `grpc` (e.g. to come back on the same
    /// addresses after a stop) and waits until it says it is listening.
    pub fn start_on(args: &[&str], env: &[(&str, String)], http: &str, grpc: &str) -> Proc {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--http", http, "--grpc", grpc]);
        Proc::launch(command(&all, env), &format!("sharedcare {args:?}"))
    }

    /// Spawns `cmd` (which runs `sharedcare`, perhaps inside something else, e.g. a container)
    /// and waits until it says it is listening.
    pub fn launch(mut cmd: Command, what: &str) -> Proc {
        let logs = tempfile::tempdir().expect("tmp");
        let stderr = logs.path().join("stderr.log");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn sharedcare");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{what} did not start: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let mut http = String::new();
        let mut grpc = String::new();
        let mut mllp = String::new();
        let mut health = String::new();
        for part in line.split_whitespace() {
            if let Some(a) = part.strip_prefix("health=") {
                health = format!("http://{a}");
            }
            if let Some(a) = part.strip_prefix("mllp=").or_else(|| part.strip_prefix("mllps=")) {
                mllp = a.to_string();
            }
            if let Some(a) = part.strip_prefix("http=") {
                http = format!("http://{a}");
            } else if let Some(a) = part.strip_prefix("grpc=") {
                grpc = format!("http://{a}");
            }
        }
        Proc {
            child,
            http,
            grpc,
            mllp,
            health,
            stderr,
            _logs: logs,
            issuer: None,
        }
    }

    /// A gRPC channel to the process.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect gRPC")
    }

    /// The gRPC services this process advertises through reflection (what `grpcurl list`
    /// prints), sorted.
    pub async fn advertised_services(&self) -> Vec<String> {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new(self.channel().await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("reflection")
            .into_inner();
        let msg = stream.message().await.expect("response").expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected {msg:?}")
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }

    /// Trusts tokens from another process's identity service (the `serve` tests).
    pub fn with_issuer(mut self, issuer: &str) -> Proc {
        self.issuer = Some(issuer.to_string());
        self
    }

    /// A client_credentials token for the demo integration client from the identity service
    /// this process trusts (its own in `up`).
    pub async fn service_token(&self) -> String {
        let issuer = self.issuer.clone().unwrap_or_else(|| self.http.clone());
        crate::harness::service_token_for(&issuer, "records.read records.write audit.read").await
    }

    async fn authorised(&self) -> InterceptedService<Channel, Bearer> {
        let token = self.service_token().await;
        let value = format!("Bearer {token}").parse().expect("metadata value");
        InterceptedService::new(self.channel().await, Bearer(value))
    }

    /// A records client calling as the demo integration service.
    pub async fn records(&self) -> Records {
        RecordsClient::new(self.authorised().await)
    }

    /// A passport client calling as the demo integration service.
    pub async fn passport(
        &self,
    ) -> sharedcare_proto::passport::v1::passport_client::PassportClient<InterceptedService<Channel, Bearer>> {
        sharedcare_proto::passport::v1::passport_client::PassportClient::new(self.authorised().await)
    }

    /// An audit client calling as the demo integration service.
    pub async fn audit(&self) -> AuditClient<InterceptedService<Channel, Bearer>> {
        AuditClient::new(self.authorised().await)
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and stderr.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no exit 30 s after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush — a crash.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sharedcare <args>` to completion (bounded), returning status, stdout and stderr.
pub fn run(args: &[&str], env: &[(&str, String)], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status,
                String::from_utf8_lossy(&out.stdout).into(),
                String::from_utf8_lossy(&out.stderr).into(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "sharedcare {args:?} still running after {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test Postgres server (started by the test command).
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL is not set: run the README's test command (infra/test.sh), which starts Postgres")
}

/// The test Kafka broker (started by the test command).
pub fn kafka_brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS")
        .expect("TEST_KAFKA_BROKERS is not set: run the README's test command (infra/test.sh), which starts Kafka")
}

/// A new, empty Postgres database for one test; returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let base = postgres_url();
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to test Postgres");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("url has a database");
    format!("{prefix}/{name}")
}

/// A Kafka namespace of its own for one test, so tests never share topics or groups.
pub fn namespace() -> String {
    format!("e2e{}", uuid::Uuid::new_v4().simple())
}

/// The key-encryption key the tests' processes on Postgres seal identity's and audit's keys
/// under (on Postgres one must be configured). Test-only: 32 bytes, base64url.
pub const TEST_KEK: &str = "zKuwGH_Qkd6EXLIrtb7ycB9Ut47fD_FYhARMnhM9F-Y";

/// Environment for `sharedcare serve` on `database` and the test broker in `namespace`.
pub fn serve_env(database: &str, brokers: &str, namespace: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SHAREDCARE_DATABASE__URL", database.to_string()),
        ("SHAREDCARE_KEY_ENCRYPTION__KEY", TEST_KEK.to_string()),
        ("SHAREDCARE_KAFKA__BROKERS", brokers.to_string()),
        ("SHAREDCARE_KAFKA__NAMESPACE", namespace.to_string()),
    ]
}

/// A Patient resource with a valid NHS number.
pub fn patient(id: &str, nhs: &str) -> String {
    serde_json::json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "name": [{"family": "Smith", "given": ["Alex"]}],
        "birthDate": "1970-01-01"
    })
    .to_string()
}

/// A valid NHS number that no other test uses.
pub fn nhs_number() -> String {
    let stem = (uuid::Uuid::new_v4().as_u128() % 900_000_000) as u32 + 100_000_000;
    (0..100)
        .find_map(|i| sharedcare_kit::nhs::NhsNumber::from_stem(stem + i))
        .expect("a valid NHS number")
        .to_string()
}

/// Polls `f` until it returns `Some`, or panics naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audit entries for `nhs` as (action, outcome, resources) triples, oldest first.
pub async fn audit_trail(proc_: &Proc, nhs: &str) -> Vec<(String, String, Vec<String>)> {
    let mut client = proc_.audit().await;
    let res = client
        .list_by_patient(sharedcare_proto::audit::v1::ListByPatientRequest {
            nhs_number: nhs.into(),
            ..Default::default()
        })
        .await
        .expect("list audit");
    let mut v: Vec<_> = res
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.action, e.outcome, e.resources))
        .collect();
    v.reverse();
    v
}

// ---- identity: logins, tokens and apps, for every test that needs a caller --------------

pub const SERVICE_ID: &str = "ics-integration";
pub const SERVICE_SECRET: &str = "demo-integration-secret-95be0d27aa";

/// A records client calling as the demo integration service.
pub type Records = RecordsClient<InterceptedService<Channel, Bearer>>;

/// The audit service's embedded store in `up`'s data directory `data` (what someone with
/// access to the disk could change).
pub async fn audit_db(data: &std::path::Path) -> sharedcare_kit::db::Db {
    sharedcare_kit::db::Db::connect(
        &sharedcare_kit::db::sqlite_url(data, "audit"),
        "audit",
        1,
        Duration::from_secs(5),
    )
    .await
    .expect("open audit.db")
}

/// `up` on `data`, with the demo ICS but not its clinical record (see [`command`]).
pub fn up(data: &std::path::Path) -> Proc {
    Proc::start(&["up", "--data", data.to_str().expect("utf-8 path")], &[])
}

/// `up` on `data` with every default, as the README's run command starts it: the demo ICS and
/// its clinical record.
pub fn up_as_shipped(data: &std::path::Path) -> Proc {
    Proc::start(
        &["up", "--data", data.to_str().expect("utf-8 path")],
        &[("SHAREDCARE_IDENTITY__SEED_DEMO_RECORD", "true".into())],
    )
}

/// A browser stand-in: keeps cookies, does not follow redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// `GET url` with `token` as bearer and extra `headers`; (status, JSON body).
pub async fn get_json(url: &str, token: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = http().get(url).bearer_auth(token);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

/// The demo ICS's patients' NHS numbers, in the order `sharedcare demo` lists them.
pub fn demo_nhs_numbers() -> Vec<String> {
    let demo: Value = serde_json::from_str(&run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo JSON");
    demo["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .map(|p| p["nhs_number"].as_str().expect("nhs_number").to_string())
        .collect()
}

/// A small record for patient `margaret` (NHS number `nhs`) with one resource of each type the
/// record gained for care planning: a Medication and a MedicationRequest for it, an
/// Immunization, a Procedure, an Appointment, a QuestionnaireResponse and a RelatedPerson.
pub fn sample_record(nhs: &str) -> Vec<Value> {
    use serde_json::json;
    let patient = json!({"resourceType": "Patient", "id": "margaret",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "name": [{"family": "Evans", "given": ["Margaret"]}], "birthDate": "1941-03-12"});
    let subject = json!({"reference": "Patient/margaret"});
    vec![
        patient,
        json!({"resourceType": "Medication", "id": "amlodipine", "status": "active",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "319283006", "display": "Amlodipine 5mg tablets"}]}}),
        json!({"resourceType": "MedicationRequest", "id": "rx1", "status": "active", "intent": "order",
            "subject": subject, "medicationReference": {"reference": "Medication/amlodipine"},
            "authoredOn": "2026-11-20", "dosageInstruction": [{"text": "One tablet each morning"}]}),
        json!({"resourceType": "Immunization", "id": "flu26", "status": "completed",
            "vaccineCode": {"text": "Influenza vaccine"}, "patient": subject, "occurrenceDateTime": "2026-10-01"}),
        json!({"resourceType": "Procedure", "id": "hip", "status": "completed", "subject": subject,
            "code": {"text": "Total hip replacement"}, "performedDateTime": "2025-06-03"}),
        json!({"resourceType": "Appointment", "id": "memory", "status": "booked",
            "serviceType": [{"text": "Memory clinic"}], "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:30:00Z",
            "participant": [{"actor": {"reference": "Patient/margaret"}, "status": "accepted"}]}),
        json!({"resourceType": "QuestionnaireResponse", "id": "falls", "status": "completed", "subject": subject,
            "authored": "2026-11-21", "item": [{"linkId": "1", "text": "Falls in the last year", "answer": [{"valueInteger": 2}]}]}),
        json!({"resourceType": "RelatedPerson", "id": "carer", "patient": subject,
            "relationship": [{"text": "Daughter, main carer"}], "name": [{"family": "Evans", "given": ["Ruth"]}]}),
    ]
}

/// A patient's sharing choice as a FHIR R4 Consent (scope patient-privacy) about `nhs`, with
/// `provision` (FHIR JSON), as a patient's app writes it; an empty `id` leaves it to the server.
pub fn fhir_consent(id: &str, nhs: &str, status: &str, provision: Value) -> Value {
    let mut c = serde_json::json!({
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "dateTime": "2026-11-29T10:00:00Z",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    });
    if !id.is_empty() {
        c["id"] = Value::from(id);
    }
    c
}

/// `securityLabel` Codings (HL7 v3 ActCode) for `codes`.
pub fn labels(codes: &[&str]) -> Value {
    codes
        .iter()
        .map(|c| serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": c}))
        .collect()
}

/// `PUT {base}/fhir/R4/{type}/{id}` of `resource` as `token`, written by `org`; (status, body).
pub async fn put_fhir(base: &str, token: &str, org: &str, resource: &Value) -> (u16, Value) {
    let url = format!(
        "{base}/fhir/R4/{}/{}",
        resource["resourceType"].as_str().expect("resourceType"),
        resource["id"].as_str().expect("id")
    );
    let r = http()
        .put(url)
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .header("x-source-organisation", org)
        .body(resource.to_string())
        .send()
        .await
        .expect("PUT");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

pub fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub fn absolute(base: &str, loc: &str) -> String {
    if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        loc.to_string()
    }
}

pub fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    page.split(&marker)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_string()
}

pub fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Follows same-origin redirects from `start` until one leaves the identity service (the
/// redirect back to the app) or a page is shown. Returns (final URL, page body, status).
pub async fn follow(b: &reqwest::Client, base: &str, start: &str) -> (String, String, u16) {
    let mut url = start.to_string();
    for _ in 0..10 {
        if !url.starts_with(base) {
            return (url, String::new(), 302);
        }
        let r = b.get(&url).send().await.expect("GET");
        let status = r.status().as_u16();
        if r.status().is_redirection() {
            url = absolute(base, &location(&r));
            continue;
        }
        return (url, r.text().await.unwrap_or_default(), status);
    }
    panic!("redirect loop from {start}");
}

/// Submits the form on `page` (fields from hidden inputs plus `fields`) to `action` and follows
/// the result.
pub async fn submit(
    b: &reqwest::Client,
    base: &str,
    action: &str,
    page: &str,
    fields: &[(&str, &str)],
) -> (String, String, u16) {
    let mut form: Vec<(String, String)> = vec![
        ("req".into(), hidden(page, "req")),
        ("csrf".into(), hidden(page, "csrf")),
    ];
    form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let r = b
        .post(format!("{base}{action}"))
        .form(&form)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    if r.status().is_redirection() {
        return follow(b, base, &absolute(base, &location(&r))).await;
    }
    let url = r.url().to_string();
    (url, r.text().await.unwrap_or_default(), status)
}

/// Signs in with a password from the login page reached from `auth_url`; returns where the
/// browser ends up.
pub async fn password_login(
    b: &reqwest::Client,
    base: &str,
    auth_url: &str,
    user: &str,
    password: &str,
) -> (String, String, u16) {
    let (url, page, status) = follow(b, base, auth_url).await;
    assert!(
        url.contains("/oauth2/login"),
        "expected the login page, got {url} ({status}): {page}"
    );
    submit(
        b,
        base,
        "/oauth2/login",
        &page,
        &[("username", user), ("password", password)],
    )
    .await
}

/// Signs in through the login pages as a demo user: the password, then, when identity asks for
/// it (every demo staff account has a second factor: services accept staff only at AAL2), the
/// security code from the user's authenticator. Returns where it lands.
pub async fn sign_in(
    b: &reqwest::Client,
    base: &str,
    auth_url: &str,
    user: &str,
    password: &str,
) -> (String, String, u16) {
    let (url, page, status) = password_login(b, base, auth_url, user, password).await;
    if !url.contains("/oauth2/login/otp") {
        return (url, page, status);
    }
    let code = demo_totp(base, user).await;
    submit(b, base, "/oauth2/login/otp", &page, &[("code", &code)]).await
}

/// An authorization URL of `rp` for a member of staff's selected role (scope `selectedrole`).
pub fn staff_auth_url(rp: &Rp) -> String {
    rp.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    )
    .add_scope(Scope::new("selectedrole".into()))
    .url()
    .0
    .to_string()
}

/// Enrols an authenticator app on identity's account page in browser `b` (signed in there):
/// reads the new key, answers with its current code and `enrolment_code` (an administrator's
/// one-time code, which a first authenticator needs). Returns the answer's status and page.
pub async fn enrol_totp(b: &reqwest::Client, base: &str, enrolment_code: &str) -> (u16, String) {
    let page = b
        .get(format!("{base}/account/totp"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("page");
    let key = hidden(&page, "secret");
    let code = sharedcare_identity::secrets::totp(&key, chrono::Utc::now().timestamp()).expect("code");
    let r = b
        .post(format!("{base}/account/totp"))
        .form(&[
            ("csrf", hidden(&page, "csrf")),
            ("secret", key),
            ("code", code),
            ("enrolment_code", enrolment_code.to_string()),
        ])
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// TOTP time steps already used per (identity, user) in this test process.
static USED_STEPS: std::sync::Mutex<Vec<(String, String, i64)>> = std::sync::Mutex::new(Vec::new());

/// A TOTP code for demo staff member `user` that identity at `base` will take: identity takes
/// each 30 s step once per person (a replayed code is refused), and the step before and after
/// the current one, so a test signing the same person in again soon uses the next step, or
/// waits for one.
pub async fn demo_totp(base: &str, user: &str) -> String {
    let secret =
        sharedcare_identity::demo::totp_secret(user).unwrap_or_else(|| panic!("{user} has no demo TOTP secret"));
    loop {
        let now = chrono::Utc::now().timestamp();
        let picked = {
            let mut used = USED_STEPS.lock().expect("steps");
            let last = used
                .iter()
                .filter(|(b, u, _)| b == base && u == user)
                .map(|(_, _, s)| *s)
                .max()
                .unwrap_or(0);
            // The current step, or the next (valid for the next minute); never the previous one,
            // which may fall out of the window before the code arrives.
            let step = [now / 30, now / 30 + 1].into_iter().find(|s| *s > last);
            if let Some(step) = step {
                used.push((base.to_string(), user.to_string(), step));
            }
            step
        };
        match picked {
            Some(step) => {
                return sharedcare_identity::secrets::totp(secret, step * 30).expect("a TOTP code");
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// A service token for the demo integration client.
pub async fn service_token(base: &str) -> String {
    service_token_for(base, "identity.admin").await
}

/// A service token for the demo integration client with `scope`.
pub async fn service_token_for(base: &str, scope: &str) -> String {
    let r: Value = http()
        .post(format!("{base}/oauth2/token"))
        .basic_auth(SERVICE_ID, Some(SERVICE_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    r["access_token"].as_str().expect("access_token").to_string()
}

/// The admin API with a service bearer token.
pub async fn admin(
    p: &Proc,
) -> IdentityAdminClient<tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>> {
    let token = service_token(&p.http).await;
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    IdentityAdminClient::with_interceptor(p.channel().await, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    })
}

/// `scheme://host:port/` of a URL.
pub fn origin(u: &str) -> String {
    let u = url::Url::parse(u).expect("url");
    format!("{}/", u.origin().ascii_serialization())
}

/// Registers a confidential web app (client_secret_basic) with a redirect URI and an optional
/// back-channel logout URI; returns (client_id, secret).
pub async fn register_app(p: &Proc, name: &str, redirect: &str, backchannel: &str) -> (String, String) {
    let mut a = admin(p).await;
    let c = a
        .create_client(CreateClientRequest {
            name: name.into(),
            redirect_uris: vec![redirect.into()],
            post_logout_redirect_uris: vec![format!("{redirect}/signed-out"), origin(redirect)],
            backchannel_logout_uri: backchannel.into(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            // Every scope an app signing people in may have but offline_access.
            scopes: sharedcare_identity::model::USER_SCOPES
                .iter()
                .filter(|s| **s != "offline_access")
                .map(|s| s.to_string())
                .collect(),
            token_endpoint_auth_method: "client_secret_basic".into(),
            ..Default::default()
        })
        .await
        .expect("create client")
        .into_inner();
    (c.client_id, c.client_secret)
}

pub type Rp = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::StandardErrorResponse<openidconnect::RevocationErrorResponseType>,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// A relying party built by discovery, as an ICS app would build one.
pub async fn relying_party(base: &str, id: &str, secret: &str, redirect: &str) -> Rp {
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(base.into()).expect("issuer"), &http())
        .await
        .expect("discovery");
    CoreClient::from_provider_metadata(meta, ClientId::new(id.into()), Some(ClientSecret::new(secret.into())))
        .set_redirect_uri(RedirectUrl::new(redirect.into()).expect("redirect"))
        .set_introspection_url(IntrospectionUrl::new(format!("{base}/oauth2/introspect")).expect("url"))
}

/// Redeems the code in the redirect `back` to the app.
pub async fn exchange(rp: &Rp, back: &str) -> openidconnect::core::CoreTokenResponse {
    rp.exchange_code(AuthorizationCode::new(query(back)["code"].clone()))
        .expect("token endpoint")
        .request_async(&http())
        .await
        .expect("code exchange")
}

pub fn claims_of(jwt: &str) -> Value {
    use base64::Engine;
    let p = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("json")
}

/// A user's access token from the code flow (staff or patient), via the demo portal client.
pub async fn user_token(p: &Proc, user: &str, password: &str, scope: &str) -> String {
    let redirect = "http://127.0.0.1:9/tok";
    let (id, secret) = register_app(p, "Token app", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let mut req = rp.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    for s in scope.split_whitespace() {
        req = req.add_scope(Scope::new(s.into()));
    }
    let (url, _, _) = req.url();
    let (back, _, _) = sign_in(&browser(), &p.http, url.as_str(), user, password).await;
    let t = exchange(&rp, &back).await;
    t.access_token().secret().clone()
}

/// An access token for demo staff member `user` acting in the role profile `role_id` (for
/// those with more than one: identity asks which after the password and security code).
pub async fn staff_token_in_role(p: &Proc, user: &str, password: &str, role_id: &str) -> String {
    let redirect = "http://127.0.0.1:9/tok";
    let (id, secret) = register_app(p, "Token app", redirect, "").await;
    let rp = relying_party(&p.http, &id, &secret, redirect).await;
    let b = browser();
    let (at, page, _) = sign_in(&b, &p.http, &staff_auth_url(&rp), user, password).await;
    assert!(at.contains("/oauth2/select-role"), "{user} is asked for a role: {at}");
    let (back, _, _) = submit(&b, &p.http, "/oauth2/select-role", &page, &[("role", role_id)]).await;
    exchange(&rp, &back).await.access_token().secret().clone()
}

pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    r
}

/// The ICS's `up`, its identity brokering patients to NHS login, and NHS login itself played by
/// a second `up` speaking the same protocol (the national service cannot run here). The ICS is
/// registered at NHS login as the private_key_jwt client `downstream-broker` with the key it
/// publishes.
pub struct WithNhsLogin {
    /// The stand-in NHS login (its cookies prefixed `nhslogin`).
    pub nhs_login: Proc,
    /// The ICS.
    pub ics: Proc,
    _dirs: Vec<tempfile::TempDir>,
}

/// Starts an ICS brokering to a stand-in NHS login (see [`WithNhsLogin`]).
pub async fn with_nhs_login() -> WithNhsLogin {
    let up_dir = tempfile::tempdir().expect("tmp");
    let nhs_login = Proc::start(
        &["up", "--data", up_dir.path().to_str().expect("path")],
        &[("SHAREDCARE_IDENTITY__COOKIE_PREFIX", "nhslogin".into())],
    );
    let cfg_dir = tempfile::tempdir().expect("tmp");
    let cfg = cfg_dir.path().join("sharedcare.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[identity.upstreams]]\nname = \"nhslogin\"\ndisplay_name = \"NHS login\"\nissuer = \"{}\"\n\
             client_id = \"downstream-broker\"\nscopes = \"openid nhs_number\"\nlink_claim = \"nhs_number\"\nlink_to = \"patient\"\n",
            nhs_login.http
        ),
    )
    .expect("config");
    let ics_dir = tempfile::tempdir().expect("tmp");
    let ics = Proc::start(
        &[
            "up",
            "--data",
            ics_dir.path().to_str().expect("path"),
            "--config",
            cfg.to_str().expect("path"),
        ],
        &[],
    );
    let rp_keys = http()
        .get(format!("{}/oauth2/rp/jwks", ics.http))
        .send()
        .await
        .expect("rp jwks")
        .text()
        .await
        .expect("body");
    admin(&nhs_login)
        .await
        .create_client(CreateClientRequest {
            client_id: "downstream-broker".into(),
            name: "Sharedcare (downstream ICS)".into(),
            redirect_uris: vec![format!("{}/oauth2/broker/callback", ics.http)],
            grant_types: vec!["authorization_code".into()],
            scopes: vec!["openid".into(), "nhs_number".into()],
            token_endpoint_auth_method: "private_key_jwt".into(),
            jwks_json: rp_keys,
            ..Default::default()
        })
        .await
        .expect("register the ICS at NHS login");
    WithNhsLogin {
        nhs_login,
        ics,
        _dirs: vec![up_dir, cfg_dir, ics_dir],
    }
}
