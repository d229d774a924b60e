//! Starting and stopping `sharedcare` processes, and the real dependencies they use.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sharedcare_proto::audit::v1::audit_client::AuditClient;
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

fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SHAREDCARE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_BACKTRACE", "0");
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
        let logs = tempfile::tempdir().expect("tmp");
        let stderr = logs.path().join("stderr.log");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]);
        let mut child = command(&all, env)
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
                    "sharedcare {args:?} did not start: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let mut http = String::new();
        let mut grpc = String::new();
        for part in line.split_whitespace() {
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
        crate::identity::service_token_for(&issuer, "records.read records.write audit.read").await
    }

    async fn authorised(&self) -> InterceptedService<Channel, Bearer> {
        let token = self.service_token().await;
        let value = format!("Bearer {token}").parse().expect("metadata value");
        InterceptedService::new(self.channel().await, Bearer(value))
    }

    /// A records client calling as the demo integration service.
    pub async fn records(&self) -> RecordsClient<InterceptedService<Channel, Bearer>> {
        RecordsClient::new(self.authorised().await)
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

/// Environment for `sharedcare serve` on `database` and the test broker in `namespace`.
pub fn serve_env(database: &str, brokers: &str, namespace: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SHAREDCARE_DATABASE__URL", database.to_string()),
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
