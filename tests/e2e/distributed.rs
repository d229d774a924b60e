//! One service per process on Postgres and Kafka (`sharedcare serve`), as Kubernetes runs it.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use sharedcare_proto::records::v1::{GetRequest, PutRequest};

use crate::harness::{
    Proc, audit_trail, eventually, fresh_database, kafka_brokers, namespace, nhs_number, patient, serve_env,
};

/// `sharedcare serve identity` with the demo ICS seeded (tests get tokens from it).
fn identity(env: &[(&str, String)]) -> Proc {
    let mut env = env.to_vec();
    env.push(("SHAREDCARE_IDENTITY__SEED_DEMO", "true".into()));
    Proc::start(&["serve", "identity"], &env)
}

/// `sharedcare serve <service>` trusting tokens from `identity`.
fn serve(service: &str, env: &[(&str, String)], identity: &Proc) -> Proc {
    let mut env = env.to_vec();
    env.push(("SHAREDCARE_AUTH__ISSUER", identity.http.clone()));
    Proc::start(&["serve", service], &env).with_issuer(&identity.http)
}

/// `sharedcare serve records`, asking `consent` with the demo integration client's
/// credentials (scope consent.decide).
fn serve_records(env: &[(&str, String)], identity: &Proc, consent: &Proc) -> Proc {
    let mut env = env.to_vec();
    env.push(("SHAREDCARE_RECORDS__CONSENT_URL", consent.grpc.clone()));
    // The integration engine is the ICS's feed: its admissions start care relationships.
    env.push(("SHAREDCARE_RECORDS__FEEDS", r#"["ics-integration"]"#.into()));
    env.push(("SHAREDCARE_AUTH__CLIENT_ID", "ics-integration".into()));
    env.push(("SHAREDCARE_AUTH__CLIENT_SECRET", crate::harness::SERVICE_SECRET.into()));
    serve("records", &env, identity)
}

#[tokio::test]
async fn records_and_audit_run_as_two_processes_on_postgres_and_kafka() {
    let env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    let id = identity(&env);
    let consent = serve("consent", &env, &id);
    let records = serve_records(&env, &id, &consent);
    let audit = serve("audit", &env, &id);
    assert_eq!(
        audit.advertised_services().await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "sharedcare.audit.v1.Audit",
        ],
        "`serve audit` advertises only what it serves"
    );
    let nhs = nhs_number();
    let mut client = records.records().await;
    client
        .put(PutRequest {
            resource_json: patient("p-dist", &nhs),
            source_organisation: "RXX01".into(),
            ..Default::default()
        })
        .await
        .expect("put");
    let obs = serde_json::json!({"resourceType": "Observation", "id": "o-dist", "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "27113001"}]},
        "subject": {"reference": "Patient/p-dist"}});
    client
        .put(PutRequest {
            resource_json: obs.to_string(),
            source_organisation: "RXX01".into(),
            ..Default::default()
        })
        .await
        .expect("put obs");
    let got = client
        .get(GetRequest {
            resource_type: "Observation".into(),
            id: "o-dist".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.version, 1);
    let trail = eventually(
        Duration::from_secs(60),
        "audit entries from the other process",
        || async {
            let t = audit_trail(&audit, &nhs).await;
            (t.len() >= 3).then_some(t)
        },
    )
    .await;
    let resources: Vec<&str> = trail.iter().map(|t| t.2[0].as_str()).collect();
    assert_eq!(
        resources,
        vec![
            "Patient/p-dist/_history/1",
            "Observation/o-dist/_history/1",
            "Observation/o-dist/_history/1"
        ]
    );
    assert_eq!(trail[2].0, "read");
}

/// An OpenTelemetry Collector (tools/otelcol, built by the test command) receiving OTLP/gRPC on
/// a free port and writing every batch to a file as OTLP JSON.
struct Otelcol {
    child: std::process::Child,
    endpoint: String,
    file: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Otelcol {
    fn start() -> Otelcol {
        let binary = std::env::var("SHAREDCARE_OTELCOL")
            .expect("SHAREDCARE_OTELCOL is not set: run the README's test command (infra/tools.sh builds it)");
        let dir = tempfile::tempdir().expect("tmp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let file = dir.path().join("traces.jsonl");
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{port}\n\
                 exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n  \
                 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
                file.display()
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("otelcol.log")).expect("log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start otelcol");
        let collector = Otelcol {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            file,
            dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return collector;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(collector.dir.path().join("otelcol.log")).unwrap_or_default();
        panic!("otelcol did not listen on {port}: {log}");
    }

    /// Every span the collector wrote: (service.name, trace id, span id, parent span id, name).
    fn spans(&self) -> Vec<(String, String, String, String, String)> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(batch) = serde_json::from_str::<serde_json::Value>(line) else {
                continue; // a line still being written
            };
            for rs in batch["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_string();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let field = |k: &str| span[k].as_str().unwrap_or_default().to_string();
                        out.push((
                            service.clone(),
                            field("traceId"),
                            field("spanId"),
                            field("parentSpanId"),
                            field("name"),
                        ));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Otelcol {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_fhir_read_is_one_trace_across_records_consent_and_the_audit_consumer_in_a_real_collector() {
    let collector = Otelcol::start();
    let mut env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    env.push(("SHAREDCARE_TELEMETRY__OTLP_ENDPOINT", collector.endpoint.clone()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
    let id = identity(&env);
    let consent = serve("consent", &env, &id);
    let records = serve_records(&env, &id, &consent);
    let _audit = serve("audit", &env, &id);
    let nhs = nhs_number();
    records
        .records()
        .await
        .put(PutRequest {
            resource_json: patient("p-otel", &nhs),
            source_organisation: String::new(),
            ..Default::default()
        })
        .await
        .expect("put");
    let token = records.service_token().await;
    let (status, body) =
        crate::harness::get_json(&format!("{}/fhir/R4/Patient/p-otel", records.http), &token, &[]).await;
    assert_eq!(status, 200, "{body}");

    // The read's trace: its root span in records, with consent's decision and the audit
    // consumer's handling of the read event under the same trace id.
    let (read, trace) = eventually(
        Duration::from_secs(60),
        "the read's spans from records, consent and audit in the collector's file",
        || async {
            let spans = collector.spans();
            let read = spans
                .iter()
                .find(|s| s.0 == "records" && s.3.is_empty() && s.4.starts_with("/fhir/R4/"))?
                .clone();
            let trace: Vec<_> = spans.iter().filter(|s| s.1 == read.1).cloned().collect();
            let has = |svc: &str, name: &str| trace.iter().any(|s| s.0 == svc && s.4.ends_with(name));
            (has("consent", "Consent/DecideMany") && has("audit", "sharedcare.records.v1 process"))
                .then_some((read, trace))
        },
    )
    .await;
    assert_eq!(read.1.len(), 32, "a W3C trace id: {read:?}");
    let ids: HashSet<&str> = trace.iter().map(|s| s.2.as_str()).collect();
    for span in &trace {
        assert!(
            span.2 == read.2 || ids.contains(span.3.as_str()),
            "every span of the trace hangs from another of it, none orphaned: {span:?} in {trace:#?}"
        );
    }
    assert!(
        trace.iter().any(|s| s.0 == "consent" && s.4.contains("Decide")),
        "consent's decision: {trace:#?}"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.0 == "audit" && s.4.ends_with("sharedcare.records.v1 process")),
        "the audit consumer: {trace:#?}"
    );
    assert!(
        trace.iter().any(|s| s.0 == "records" && s.4 == "read batch"),
        "records' read batch, which asked consent: {trace:#?}"
    );

    // The write before it is one trace too: records' Put, and the audit consumer's handling
    // of its event, which crossed Kafka in the event's traceparent.
    let spans = collector.spans();
    let put = spans
        .iter()
        .find(|s| s.0 == "records" && s.4 == "/sharedcare.records.v1.Records/Put")
        .expect("the put's span");
    assert!(
        spans
            .iter()
            .any(|s| s.0 == "audit" && s.1 == put.1 && s.4.ends_with("sharedcare.records.v1 process")),
        "the audit consumer's span in the put's trace: {spans:#?}"
    );
}

/// Runs infra/kafka.sh for a broker of this test's own.
fn broker(action: &str, port: u16, home: &std::path::Path) {
    broker_with(action, port, home, &[]);
}

/// As [`broker`], with extra environment for kafka.sh (e.g. `KAFKA_SCRAM_USERS`).
fn broker_with(action: &str, port: u16, home: &std::path::Path, env: &[(&str, &str)]) {
    let script =
        std::env::var("TEST_KAFKA_SCRIPT").expect("TEST_KAFKA_SCRIPT is not set: run the README's test command");
    let status = Command::new(script)
        .arg(action)
        .env("KAFKA_PORT", port.to_string())
        .env("KAFKA_HOME", home)
        .env("KAFKA_HEAP", "256m")
        .envs(env.iter().copied())
        .status()
        .expect("run kafka.sh");
    assert!(status.success(), "kafka.sh {action} failed");
}

/// The environment that makes a process log in to Kafka over SASL/SCRAM as `user`.
fn scram(env: &[(&'static str, String)], user: &str, password: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = env.to_vec();
    env.push(("SHAREDCARE_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext".into()));
    env.push(("SHAREDCARE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512".into()));
    env.push(("SHAREDCARE_KAFKA__SASL_USERNAME", user.into()));
    env.push(("SHAREDCARE_KAFKA__SASL_PASSWORD", password.into()));
    env
}

#[tokio::test]
async fn each_service_logs_in_to_kafka_with_its_own_scram_user_and_a_wrong_password_is_named() {
    // A broker of its own whose SASL listener (port + 2) knows one user per service, as
    // Strimzi's scram-sha-512 listener with a KafkaUser each (infra/k8s/kafka.yaml).
    let port = 19292;
    let b = Broker(port, tempfile::tempdir().expect("tmp"));
    let users = "identity:id-pw,consent:co-pw,records:re-pw,audit:au-pw";
    broker_with("start", port, b.1.path(), &[("KAFKA_SCRAM_USERS", users)]);
    let env = serve_env(
        &fresh_database().await,
        &format!("127.0.0.1:{}", port + 2),
        &namespace(),
    );
    let id = identity(&scram(&env, "identity", "id-pw"));
    let consent = serve("consent", &scram(&env, "consent", "co-pw"), &id);
    let records = serve_records(&scram(&env, "records", "re-pw"), &id, &consent);
    let audit = serve("audit", &scram(&env, "audit", "au-pw"), &id);
    let nhs = nhs_number();
    records
        .records()
        .await
        .put(PutRequest {
            resource_json: patient("p-scram", &nhs),
            source_organisation: String::new(),
            ..Default::default()
        })
        .await
        .expect("put");
    let trail = eventually(
        Duration::from_secs(60),
        "the write's audit entry, over SCRAM",
        || async {
            let t = audit_trail(&audit, &nhs).await;
            (!t.is_empty()).then_some(t)
        },
    )
    .await;
    assert_eq!(trail[0].2, ["Patient/p-scram/_history/1"]);

    let args = ["serve", "audit", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"];
    let mut wrong = scram(&env, "audit", "not-the-password");
    wrong.push(("SHAREDCARE_AUTH__ISSUER", id.http.clone()));
    let (status, _, stderr) = crate::harness::run(&args, &wrong, Duration::from_secs(60));
    assert!(!status.success(), "a process Kafka refuses must not start");
    assert!(
        stderr.contains("refused the login of kafka.sasl_username \"audit\"") && stderr.contains("SCRAM-SHA-512"),
        "{stderr}"
    );
    let mut plain = env.clone();
    plain.push(("SHAREDCARE_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext".into()));
    plain.push(("SHAREDCARE_AUTH__ISSUER", id.http.clone()));
    let (status, _, stderr) = crate::harness::run(&args, &plain, Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        stderr.contains("`kafka.sasl_username`: is required when kafka.security_protocol is sasl_plaintext"),
        "{stderr}"
    );
}

struct Broker(u16, tempfile::TempDir);

impl Drop for Broker {
    fn drop(&mut self) {
        broker("stop", self.0, self.1.path());
    }
}

#[tokio::test]
async fn events_committed_before_a_crash_and_a_broker_outage_all_arrive() {
    let port = 19192;
    let b = Broker(port, tempfile::tempdir().expect("tmp"));
    broker("start", port, b.1.path());
    let env = serve_env(&fresh_database().await, &format!("127.0.0.1:{port}"), &namespace());
    let id = identity(&env);
    let consent = serve("consent", &env, &id);
    let records = serve_records(&env, &id, &consent);
    let audit = serve("audit", &env, &id);
    let nhs = nhs_number();
    records
        .records()
        .await
        .put(PutRequest {
            resource_json: patient("p-crash", &nhs),
            source_organisation: String::new(),
            ..Default::default()
        })
        .await
        .expect("put");
    eventually(Duration::from_secs(60), "the first entry", || async {
        (!audit_trail(&audit, &nhs).await.is_empty()).then_some(())
    })
    .await;

    broker("stop", port, b.1.path());
    let mut client = records.records().await;
    for i in 0..5 {
        let obs = serde_json::json!({"resourceType": "Observation", "id": format!("o-crash-{i}"), "status": "final", "code": {"text": "observation"},
            "subject": {"reference": "Patient/p-crash"}});
        client
            .put(PutRequest {
                resource_json: obs.to_string(),
                source_organisation: String::new(),
                ..Default::default()
            })
            .await
            .expect("writes succeed while the broker is down: the outbox holds the events");
    }
    records.crash(); // SIGKILL after commit, before any publish

    broker("start", port, b.1.path());
    let _records = serve_records(&env, &id, &consent); // the relay finds the committed rows
    let trail = eventually(Duration::from_secs(120), "all five events after the outage", || async {
        let t = audit_trail(&audit, &nhs).await;
        (t.len() >= 6).then_some(t)
    })
    .await;
    let got: HashSet<String> = trail.iter().map(|t| t.2[0].clone()).collect();
    assert_eq!(trail.len(), 6, "each event applied once: {trail:?}");
    for i in 0..5 {
        assert!(got.contains(&format!("Observation/o-crash-{i}/_history/1")), "{got:?}");
    }
}

#[tokio::test]
async fn up_can_run_every_service_on_postgres_and_kafka() {
    let env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(&["up", "--data", data.path().to_str().expect("path")], &env);
    let nhs = nhs_number();
    p.records()
        .await
        .put(PutRequest {
            resource_json: patient("p-single-node", &nhs),
            source_organisation: String::new(),
            ..Default::default()
        })
        .await
        .expect("put");
    let trail = eventually(Duration::from_secs(60), "the create entry via Kafka", || async {
        let t = audit_trail(&p, &nhs).await;
        (!t.is_empty()).then_some(t)
    })
    .await;
    assert_eq!(trail[0].2[0], "Patient/p-single-node/_history/1");
    assert!(
        !data.path().join("events.db").exists(),
        "the embedded log is not used when Kafka is configured"
    );
    assert!(
        !data.path().join("records.db").exists(),
        "SQLite is not used when Postgres is configured"
    );
}

#[tokio::test]
async fn reads_fail_when_the_audit_trail_or_consent_cannot_be_reached() {
    let database = fresh_database().await;
    let env = serve_env(&database, &kafka_brokers(), &namespace());
    let id = identity(&env);
    let consent = serve("consent", &env, &id);
    let records = serve_records(&env, &id, &consent);
    let nhs = nhs_number();
    let mut client = records.records().await;
    client
        .put(PutRequest {
            resource_json: patient("p-cut", &nhs),
            source_organisation: "RXX01".into(),
            ..Default::default()
        })
        .await
        .expect("put");
    let read = || GetRequest {
        resource_type: "Patient".into(),
        id: "p-cut".into(),
        ..Default::default()
    };
    client.get(read()).await.expect("readable while everything is up");

    // The audit trail cannot be written (records' outbox table is gone): no data leaves.
    let db = sharedcare_kit::db::Db::connect(&database, "records", 1, Duration::from_secs(5))
        .await
        .expect("records schema");
    sqlx::query("ALTER TABLE kit_outbox RENAME TO kit_outbox_away")
        .execute(db.writer())
        .await
        .expect("take the outbox away");
    let err = client.get(read()).await.expect_err("no audit entry, no data");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("could not be audited"), "{}", err.message());
    sqlx::query("ALTER TABLE kit_outbox_away RENAME TO kit_outbox")
        .execute(db.writer())
        .await
        .expect("give it back");
    client.get(read()).await.expect("readable again");
    db.close().await;

    // Consent stops: no decision, no data.
    let _ = consent.terminate();
    let err = client.get(read()).await.expect_err("no decision, no data");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("consent decision could not be made"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn serve_records_refuses_to_start_without_a_way_to_ask_consent() {
    let env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    let mut env = env.to_vec();
    env.push(("SHAREDCARE_AUTH__ISSUER", "http://127.0.0.1:9".into()));
    let args = ["serve", "records", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"];
    let (status, _, stderr) = crate::harness::run(&args, &env, Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("`records.consent_url` is required"), "{stderr}");
    env.push(("SHAREDCARE_RECORDS__CONSENT_URL", "http://127.0.0.1:9".into()));
    let (status, _, stderr) = crate::harness::run(&args, &env, Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        stderr.contains("`auth.client_id` and `auth.client_secret` are required by records"),
        "{stderr}"
    );
}

/// A database failure inside identity reaches the caller as a fixed sentence: no driver text,
/// table name or SQL. (The detail is in identity's log.)
#[tokio::test]
async fn a_storage_failure_tells_the_caller_nothing_internal() {
    use sharedcare_proto::identity::v1::ListOrganisationsRequest;

    let database = fresh_database().await;
    let env = serve_env(&database, &kafka_brokers(), &namespace());
    let id = identity(&env);
    let mut admin = crate::harness::admin(&id).await;
    admin
        .list_organisations(ListOrganisationsRequest::default())
        .await
        .expect("listed while the table is there");

    let db = sharedcare_kit::db::Db::connect(&database, "identity", 1, Duration::from_secs(5))
        .await
        .expect("identity schema");
    sqlx::query("ALTER TABLE organisations RENAME TO organisations_away")
        .execute(db.writer())
        .await
        .expect("take the table away");
    let err = admin
        .list_organisations(ListOrganisationsRequest::default())
        .await
        .expect_err("no table, no answer");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(err.message(), "identity storage unavailable");
    for internal in ["organisations", "relation", "sqlx", "SQLSTATE", "postgres", "42P01"] {
        assert!(
            !err.message().contains(internal),
            "{internal} leaked: {}",
            err.message()
        );
    }
    sqlx::query("ALTER TABLE organisations_away RENAME TO organisations")
        .execute(db.writer())
        .await
        .expect("give it back");
    admin
        .list_organisations(ListOrganisationsRequest::default())
        .await
        .expect("listed again");
    db.close().await;

    // A value Postgres would refuse and SQLite would keep (a NUL) is refused as the caller's
    // mistake, by name, before any store sees it.
    let err = admin
        .create_person(sharedcare_proto::identity::v1::CreatePersonRequest {
            username: "nul-test".into(),
            given_name: "Ann".into(),
            family_name: "Lee".into(),
            password: "a long enough password 1".into(),
            role_profiles: vec![sharedcare_proto::identity::v1::RoleProfile {
                ods_code: "A81\u{0}001".into(),
                role_code: "S8000:G8000:R8000".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("a NUL in an ODS code");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("role_profiles[0].ods_code: "),
        "{}",
        err.message()
    );
}

/// `sharedcare serve passport` as its own process on Postgres and Kafka: it builds its read
/// model from records' and consent's state topics, a kill -9 while records keeps writing
/// loses and doubles nothing once it is back, and the model then equals a rebuild from Kafka.
#[tokio::test]
async fn passport_runs_as_its_own_process_and_loses_nothing_across_a_crash() {
    use sharedcare_proto::passport::v1::GetPassportRequest;

    let env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    let id = identity(&env);
    let consent = serve("consent", &env, &id);
    let records = serve_records(&env, &id, &consent);
    let audit = serve("audit", &env, &id);
    let passport_env = {
        let mut env = env.clone();
        env.push(("SHAREDCARE_PASSPORT__CONSENT_URL", consent.grpc.clone()));
        env.push(("SHAREDCARE_PASSPORT__AUDIT_URL", audit.grpc.clone()));
        env.push(("SHAREDCARE_AUTH__CLIENT_ID", "ics-integration".into()));
        env.push(("SHAREDCARE_AUTH__CLIENT_SECRET", crate::harness::SERVICE_SECRET.into()));
        env
    };
    let passport = serve("passport", &passport_env, &id);
    assert_eq!(
        passport.advertised_services().await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "sharedcare.passport.v1.Passport",
        ]
    );
    let nhs = nhs_number();
    let mut client = records.records().await;
    let put = |body: String| PutRequest {
        resource_json: body,
        source_organisation: "RXX01".into(),
        ..Default::default()
    };
    client.put(put(patient("p-pass", &nhs))).await.expect("patient");
    // An admission: consent records the hospital's care relationship and publishes the
    // person's sharing state, which the passport keeps for the care team.
    let admission = serde_json::json!({"resourceType": "Encounter", "id": "adm-pass", "status": "in-progress",
        "class": {"code": "IMP"}, "subject": {"reference": "Patient/p-pass"},
        "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RXX01"},
                            "display": "St Elsewhere Hospital"}});
    client.put(put(admission.to_string())).await.expect("admission");
    let observation = |i: usize| {
        serde_json::json!({"resourceType": "Observation", "id": format!("o-pass-{i}"), "status": "final",
            "code": {"text": format!("reading {i}")}, "subject": {"reference": "Patient/p-pass"}})
    };
    for i in 0..100 {
        client.put(put(observation(i).to_string())).await.expect("observation");
    }
    // Crash the passport (it may still be applying the stream), write more, start it again.
    passport.crash();
    for i in 100..150 {
        client.put(put(observation(i).to_string())).await.expect("observation");
    }
    let passport = serve("passport", &passport_env, &id);
    let ask = || GetPassportRequest {
        nhs_number: nhs.clone(),
        purpose: String::new(),
    };
    let view = eventually(
        Duration::from_secs(60),
        "all 150 observations and the hospital in the passport",
        || {
            let (passport, ask) = (&passport, ask());
            async move {
                let view = passport.passport().await.get_passport(ask).await.ok()?.into_inner();
                let results = view.sections.iter().find(|s| s.title.starts_with("Test results"))?;
                let hospital = view.care_team.iter().any(|m| m.ods_code == "RXX01");
                (results.entries.len() >= 150 && hospital).then_some(view)
            }
        },
    )
    .await;
    let hospital = view.care_team.iter().find(|m| m.ods_code == "RXX01").expect("hospital");
    assert_eq!(hospital.organisation_name, "St Elsewhere Hospital");
    let results = view
        .sections
        .iter()
        .find(|s| s.title.starts_with("Test results"))
        .expect("results");
    let mut ids: Vec<&str> = results.entries.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 150, "every observation once");
    assert!(results.entries.iter().all(|e| e.version == 1));

    // A rebuild from Kafka into a second schema, while the passport runs, equals the live model.
    let (status, stdout, stderr) = crate::harness::run(
        &["passport", "rebuild", "--into", "passport_rebuild"],
        &passport_env,
        Duration::from_secs(120),
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("passport rebuilt into passport_rebuild"), "{stdout}");
    assert!(stderr.contains("rebuild: 100%"), "{stderr}");
    let db = sqlx::PgPool::connect(&passport_env[0].1).await.expect("postgres");
    let model = |schema: &'static str| {
        let db = db.clone();
        async move {
            let entries: Vec<(String, String, i64, String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT resource_type, id, version, section, body, hidden FROM {schema}.entries ORDER BY resource_type, id"
            )))
            .fetch_all(&db)
            .await
            .expect("entries");
            let sharing: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT nhs_number, state FROM {schema}.sharing ORDER BY nhs_number"
            )))
            .fetch_all(&db)
            .await
            .expect("sharing");
            (entries, sharing)
        }
    };
    let (live, rebuilt) = (model("passport").await, model("passport_rebuild").await);
    assert_eq!(live.0.len(), 152, "the patient, the admission and 150 observations");
    assert!(live.1.iter().any(|(n, _)| *n == nhs), "her sharing state is held");
    assert!(live == rebuilt, "the rebuilt model differs from the live one");

    // Consent gone: views fail closed, never open.
    consent.crash();
    let err = passport
        .passport()
        .await
        .get_passport(ask())
        .await
        .expect_err("no decision, no view");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// The `__Host-sc-portal=…` pair a portal response sets.
fn portal_cookie(r: &reqwest::Response) -> Option<String> {
    set_cookie(r, "__Host-sc-portal=")
}

/// The sign-in binding cookie the portal set, as `name=value`.
fn signin_cookie(r: &reqwest::Response) -> Option<String> {
    set_cookie(r, "__Host-sc-signin=")
}

fn set_cookie(r: &reqwest::Response, prefix: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.starts_with(prefix)))
        .map(str::to_string)
}

/// GET `url` with the portal session `cookie`: (status, page).
async fn signed_get(client: &reqwest::Client, url: &str, cookie: &str) -> (u16, String) {
    let r = client.get(url).header("cookie", cookie).send().await.expect("page");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// `serve portal` on Postgres and Kafka, as its own OIDC client, reading from the other
/// services over gRPC: a GP signs in and opens a patient, the session lives in Postgres, and a
/// portal without its client's secret refuses to start, naming the setting.
#[tokio::test]
async fn the_portal_runs_as_its_own_process_on_postgres_with_its_own_client() {
    let data = tempfile::tempdir().expect("tmp");
    // Access tokens of 35 s: the portal refreshes them 30 s before they expire, so after 5 s.
    let platform = Proc::start(
        &["up", "--data", data.path().to_str().expect("path")],
        &[("SHAREDCARE_IDENTITY__ACCESS_TOKEN_SECS", "35".into())],
    );
    let nhs = crate::harness::demo_nhs_numbers()[0].clone();
    let system = crate::harness::service_token_for(&platform.http, "records.write").await;
    let mut records = sharedcare_proto::records::v1::records_client::RecordsClient::new(platform.channel().await);
    let mut put = PutRequest {
        resource_json: patient("portal-patient", &nhs),
        source_organisation: "A81001".into(),
        ..Default::default()
    };
    records
        .put(crate::harness::with_token(put.clone(), &system))
        .await
        .expect("patient");
    put.resource_json = serde_json::json!({"resourceType": "Condition", "id": "portal-asthma",
        "subject": {"reference": "Patient/portal-patient"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001", "display": "Asthma"}]}})
    .to_string();
    records
        .put(crate::harness::with_token(put, &system))
        .await
        .expect("condition");

    let port = crate::oidc_node::free_port();
    let site = format!("http://127.0.0.1:{port}");
    let (id, secret) = crate::harness::register_app(
        &platform,
        "Portal (own process)",
        &format!("{site}/portal/callback"),
        &format!("{site}/portal/backchannel-logout"),
    )
    .await;
    let mut env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    env.extend([
        ("SHAREDCARE_AUTH__ISSUER", platform.http.clone()),
        ("SHAREDCARE_AUTH__CLIENT_ID", "ics-integration".into()),
        ("SHAREDCARE_AUTH__CLIENT_SECRET", crate::harness::SERVICE_SECRET.into()),
        ("SHAREDCARE_PORTAL__PUBLIC_URL", site.clone()),
        ("SHAREDCARE_PORTAL__CLIENT_ID", id),
    ]);
    for setting in [
        "SHAREDCARE_PORTAL__PASSPORT_URL",
        "SHAREDCARE_PORTAL__CONSENT_URL",
        "SHAREDCARE_PORTAL__RECORDS_URL",
        "SHAREDCARE_PORTAL__AUDIT_URL",
        "SHAREDCARE_PORTAL__IDENTITY_URL",
    ] {
        env.push((setting, platform.grpc.clone()));
    }
    // Without its secret it does not start, and says which setting to give.
    let args = ["serve", "portal", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"];
    let (status, _, stderr) = crate::harness::run(&args, &env, Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("`portal.client_secret` is required"), "{stderr}");
    env.push(("SHAREDCARE_PORTAL__CLIENT_SECRET", secret));
    let portal = Proc::start_on(&["serve", "portal"], &env, &format!("127.0.0.1:{port}"), "127.0.0.1:0");
    // A second replica on the same database, as behind one load balancer (same public URL).
    let replica = Proc::start_on(&["serve", "portal"], &env, "127.0.0.1:0", "127.0.0.1:0");
    let other_site = replica.http.clone();
    assert!(
        !portal
            .advertised_services()
            .await
            .iter()
            .any(|s| s.starts_with("sharedcare.")),
        "the portal serves no gRPC API of its own"
    );

    // The GP signs in through identity (the platform's) and comes back to this process.
    let b = crate::harness::browser();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // A sign-in is bound to the browser that started it: its callback carried to another
    // browser (login CSRF: someone else's sign-in finishing there) is refused.
    let started = plain.get(format!("{site}/portal/login")).send().await.expect("login");
    let to_identity = crate::harness::location(&started);
    let other = crate::harness::browser();
    let (back, _, _) = crate::harness::sign_in(&other, &platform.http, &to_identity, "gp", "demo-gp-password").await;
    let elsewhere = plain.get(&back).send().await.expect("callback in another browser");
    assert_eq!(
        elsewhere.status().as_u16(),
        400,
        "a callback without the binding cookie is refused"
    );
    assert!(
        elsewhere
            .text()
            .await
            .expect("page")
            .contains("not started in this browser"),
        "the page says why"
    );
    let started = plain.get(format!("{site}/portal/login")).send().await.expect("login");
    let binding = signin_cookie(&started).expect("the sign-in binds the browser");
    let to_identity = crate::harness::location(&started);
    let (back, _, _) = crate::harness::sign_in(&b, &platform.http, &to_identity, "gp", "demo-gp-password").await;
    assert!(back.starts_with(&format!("{site}/portal/callback")), "{back}");
    let r = plain
        .get(&back)
        .header("cookie", &binding)
        .send()
        .await
        .expect("callback");
    let cookie = portal_cookie(&r).expect("a session cookie");
    let home = plain
        .get(format!("{site}/portal/"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("home")
        .text()
        .await
        .expect("page");
    let csrf = crate::harness::hidden(&home, "csrf");
    let r = plain
        .post(format!("{site}/portal/search"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("nhs_number", nhs.as_str())])
        .send()
        .await
        .expect("search");
    let summary = format!("{site}{}", crate::harness::location(&r));
    let page = eventually(
        Duration::from_secs(30),
        "the passport to show the condition",
        || async {
            let (_, page) = signed_get(&plain, &summary, &cookie).await;
            page.contains("Asthma").then_some(page)
        },
    )
    .await;
    assert!(page.contains("patient-name"), "{page}");
    // The other replica serves the same session (it is in the table, not in a process).
    let on_replica = summary.replacen(&site, &other_site, 1);
    let (status, page) = signed_get(&plain, &on_replica, &cookie).await;
    assert!(
        status == 200 && page.contains("Asthma"),
        "the other replica: {status} {page}"
    );
    // Past the refresh point, four pages at once on each replica: one refresh between them
    // (identity would revoke the session's tokens if the rotated refresh token were presented
    // twice: a claim on the session's row lets one replica refresh and the other wait for
    // its tokens), every page served.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut pages = tokio::task::JoinSet::new();
    for n in 0..8 {
        let (plain, cookie) = (plain.clone(), cookie.clone());
        let page = if n % 2 == 0 {
            summary.clone()
        } else {
            on_replica.clone()
        };
        pages.spawn(async move { signed_get(&plain, &page, &cookie).await });
    }
    while let Some(done) = pages.join_next().await {
        let (status, page) = done.expect("task");
        assert!(
            status == 200 && page.contains("Asthma"),
            "after the refresh: {status} {page}"
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, _) = signed_get(&plain, &summary, &cookie).await;
    assert_eq!(status, 200, "the refreshed tokens are refreshed again");
    // The session is the portal's own, in its own schema.
    let url = env
        .iter()
        .find(|(k, _)| *k == "SHAREDCARE_DATABASE__URL")
        .map(|(_, v)| v.clone())
        .expect("url");
    let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM portal.sessions")
        .fetch_one(&pool)
        .await
        .expect("sessions");
    assert_eq!(n, 1, "one signed-in browser");
    // Signing out on one replica ends the session on the other at once (it reads the table
    // on every page; it used to remember a session for 5 s).
    let (status, page) = signed_get(&plain, &on_replica, &cookie).await;
    assert_eq!(status, 200, "the other replica, just before: {page}");
    let csrf = crate::harness::hidden(&page, "csrf");
    let out = plain
        .post(format!("{site}/portal/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status().as_u16(), 200, "the signing-out page");
    let (status, page) = signed_get(&plain, &on_replica, &cookie).await;
    assert!(
        status != 200 && !page.contains("Asthma"),
        "signed out on one replica, still served by the other: {status} {page}"
    );
    drop(replica);
}
