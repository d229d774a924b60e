//! Start-up: bad configuration and unreachable dependencies stop the process at once, with a
//! message that names the key or the dependency — never a half-running process.

use std::time::Duration;

use crate::harness::run;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_config_value_of_the_wrong_form_stops_up_naming_the_key_and_variable() {
    let data = tempfile::tempdir().expect("tmp");
    let data = data.path().to_str().expect("path");
    let (status, _, stderr) = run(
        &["up", "--data", data],
        &[("SHAREDCARE_HTTP__LISTEN", "localhost-8080".into())],
        LIMIT,
    );
    assert!(!status.success());
    assert!(
        stderr.contains("`http.listen` (from SHAREDCARE_HTTP__LISTEN)"),
        "{stderr}"
    );
    assert!(stderr.contains("socket address"), "{stderr}");

    let (status, _, stderr) = run(
        &["up", "--data", data],
        &[("SHAREDCARE_OUTBOX__BATCH_SIZE", "lots".into())],
        LIMIT,
    );
    assert!(!status.success());
    assert!(
        stderr.contains("`outbox.batch_size` (from SHAREDCARE_OUTBOX__BATCH_SIZE)"),
        "{stderr}"
    );

    let (status, _, stderr) = run(
        &["up", "--data", data],
        &[("SHAREDCARE_DATABASE__URLL", "x".into())],
        LIMIT,
    );
    assert!(!status.success());
    assert!(stderr.contains("unknown field `urll`"), "{stderr}");

    let (status, _, stderr) = run(
        &[
            "up",
            "--data",
            data,
            "--http",
            "127.0.0.1:18181",
            "--health",
            "127.0.0.1:18181",
        ],
        &[],
        LIMIT,
    );
    assert!(!status.success());
    assert!(
        stderr.contains("health.listen") && stderr.contains("is also the HTTP or gRPC address"),
        "{stderr}"
    );
}

#[test]
fn a_config_file_error_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("sharedcare.toml");
    std::fs::write(&file, "[grpc]\nlisten = 50051\n").expect("write");
    let (status, _, stderr) = run(&["--config", file.to_str().expect("path"), "up"], &[], LIMIT);
    assert!(!status.success());
    assert!(stderr.contains("`grpc.listen` (from file"), "{stderr}");
}

#[test]
fn dump_config_shows_the_settings_in_force() {
    let (status, stdout, _) = run(
        &["--dump-config", "up"],
        &[("SHAREDCARE_KAFKA__PARTITIONS", "12".into())],
        LIMIT,
    );
    assert!(status.success());
    assert!(stdout.contains("partitions = 12"), "{stdout}");
    assert!(stdout.contains("listen = \"127.0.0.1:8080\""), "{stdout}");
}

#[test]
fn dump_config_shows_no_client_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("sharedcare.toml");
    std::fs::write(
        &file,
        "[auth]\nclient_id = \"records-svc\"\nclient_secret = \"auth-s3cret\"\n\n\
         [[connectors.senders]]\nfacility = \"RX1\"\nods_code = \"RX1\"\nclient_id = \"rx1-pas\"\nclient_secret = \"pas-s3cret\"\n",
    )
    .expect("write");
    let (status, stdout, stderr) = run(
        &[
            "--config",
            file.to_str().expect("path"),
            "--dump-config",
            "serve",
            "connectors",
        ],
        &[
            ("SHAREDCARE_PORTAL__CLIENT_SECRET", "portal-s3cret".into()),
            ("SHAREDCARE_CONNECTORS__GP_CONNECT__CLIENT_SECRET", "gpc-s3cret".into()),
        ],
        LIMIT,
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("client_id = \"rx1-pas\""), "{stdout}");
    for secret in ["auth-s3cret", "pas-s3cret", "portal-s3cret", "gpc-s3cret"] {
        assert!(!stdout.contains(secret), "{secret} printed: {stdout}");
    }
    assert_eq!(stdout.matches("<redacted>").count(), 4, "{stdout}");
}

#[test]
fn an_unreachable_database_stops_serve_naming_it_without_the_password() {
    let env = [
        (
            "SHAREDCARE_DATABASE__URL",
            "postgres://app:s3cret@127.0.0.1:9/sharedcare".to_string(),
        ),
        ("SHAREDCARE_DATABASE__CONNECT_TIMEOUT_MS", "2000".to_string()),
        ("SHAREDCARE_KAFKA__BROKERS", crate::harness::kafka_brokers()),
    ];
    let (status, _, stderr) = run(
        &["serve", "records", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        &env,
        LIMIT,
    );
    assert!(!status.success());
    assert!(stderr.contains("postgres://app:***@127.0.0.1:9/sharedcare"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password must not be echoed: {stderr}");
}

#[test]
fn unreachable_kafka_stops_serve_naming_the_brokers() {
    let env = [
        ("SHAREDCARE_DATABASE__URL", crate::harness::postgres_url()),
        ("SHAREDCARE_KAFKA__BROKERS", "127.0.0.1:9".to_string()),
    ];
    let (status, _, stderr) = run(
        &["serve", "audit", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        &env,
        LIMIT,
    );
    assert!(!status.success());
    assert!(stderr.contains("`kafka.brokers` cannot be reached"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
}

#[test]
fn serve_refuses_unknown_services_and_missing_settings() {
    let (status, _, stderr) = run(&["serve", "billing"], &[], LIMIT);
    assert!(!status.success());
    assert!(
        stderr.contains("invalid value 'billing'")
            && stderr.contains("[possible values: identity, consent, records, audit, passport, portal, connectors]"),
        "{stderr}"
    );
    let (status, _, stderr) = run(&["serve", "records"], &[], LIMIT);
    assert!(!status.success());
    assert!(stderr.contains("`database.url` is required by serve"), "{stderr}");
}

#[test]
fn help_and_version_work_on_every_command() {
    let (status, stdout, _) = run(&["--version"], &[], LIMIT);
    assert!(status.success());
    assert!(stdout.starts_with("sharedcare "), "{stdout}");
    for cmd in ["up", "serve", "migrate", "bench", "demo", "import"] {
        let (status, stdout, _) = run(&[cmd, "--help"], &[], LIMIT);
        assert!(status.success(), "{cmd} --help");
        assert!(stdout.contains("Usage: sharedcare"), "{cmd}: {stdout}");
    }
    // The services `serve` and `migrate` accept come from the one registry, each with what it does.
    for cmd in ["serve", "migrate"] {
        let (_, stdout, _) = run(&[cmd, "--help"], &[], LIMIT);
        for service in ["identity", "consent", "records", "audit", "passport"] {
            assert!(
                stdout.contains(&format!("- {service}:")),
                "{cmd} --help lacks {service}: {stdout}"
            );
        }
    }
}

#[test]
fn migrate_prepares_embedded_storage_and_is_repeatable() {
    let data = tempfile::tempdir().expect("tmp");
    let d = data.path().to_str().expect("path");
    for _ in 0..2 {
        let (status, stdout, stderr) = run(&["migrate", "--data", d], &[], LIMIT);
        assert!(status.success(), "{stderr}");
        assert_eq!(
            stdout,
            "migrated identity\nmigrated consent\nmigrated records\nmigrated audit\nmigrated passport\nmigrated portal\nmigrated connectors\n"
        );
    }
    assert!(data.path().join("records.db").exists());
    assert!(data.path().join("identity.db").exists());
}
