//! Overload and bad clients: a process answers at most `max_in_flight` requests at once, and
//! refuses one more at once (503 with Retry-After, or RESOURCE_EXHAUSTED), naming the setting,
//! instead of queueing it; health probes still answer. Bodies and gRPC messages over their
//! limits are refused naming them; clients too slow to send (a head, a body, anything at all)
//! or idle on a kept-alive connection are cut off after `client_timeout_ms`.

use std::time::Duration;

use sharedcare_proto::records::v1::records_client::RecordsClient;
use sharedcare_proto::records::v1::{GetRequest, HoldingsRequest, PutRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Proc, eventually, http, service_token_for};

#[tokio::test]
async fn a_process_at_its_limit_refuses_more_at_once_naming_the_limit_and_probes_still_answer() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8")],
        // The slow client below must not be cut off while the test looks.
        &[
            ("SHAREDCARE_MAX_IN_FLIGHT", "1".into()),
            ("SHAREDCARE_CLIENT_TIMEOUT_MS", "120000".into()),
        ],
    );
    let metadata = format!("{}/fhir/R4/metadata", p.http);
    let status = |url: String| async move { http().get(url).send().await.expect("request").status().as_u16() };
    assert_eq!(status(metadata.clone()).await, 200, "under the limit, answered");
    // A read is one request here, however many calls `up` makes to itself to answer it (the
    // token keys from identity, a decision from consent, an entry to audit): those are not
    // counted, so an admitted request does not fail on its own inner calls.
    let nhs = crate::harness::nhs_number();
    let token = service_token_for(&p.http, "records.write records.read").await;
    let patient: serde_json::Value =
        serde_json::from_str(&crate::harness::patient("overload", &nhs)).expect("a Patient");
    let (wrote, said) = crate::harness::put_fhir(&p.http, &token, "A81001", &patient).await;
    assert_eq!(wrote, 201, "a decided, audited write at a limit of one: {said}");
    let (read, found) = crate::harness::get_json(&format!("{}/fhir/R4/Patient/overload", p.http), &token, &[]).await;
    assert_eq!(read, 200, "a decided, audited read at a limit of one: {found}");
    assert_eq!(found["id"], "overload", "{found}");

    // A slow client: the request's head, and a body that never comes. It is in flight (the
    // token endpoint waits for its form) for as long as the connection stays open.
    let address = p.http.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&address).await.expect("connect");
    slow.write_all(
        format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type="
        )
        .as_bytes(),
    )
    .await
    .expect("write the head");
    eventually(Duration::from_secs(10), "the slow request in flight", || async {
        (status(metadata.clone()).await == 503).then_some(())
    })
    .await;

    let refused = http().get(&metadata).send().await.expect("request");
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let outcome: serde_json::Value = refused.json().await.expect("an OperationOutcome");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let said = outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(said.contains("limit of 1 requests at once (max_in_flight)"), "{said}");

    // gRPC is refused the same way, at once (before any token is looked at); gRPC health
    // checks, like the HTTP probes, are not.
    let mut records = RecordsClient::new(p.channel().await);
    let refused = records.holdings(HoldingsRequest {}).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_in_flight"), "{}", refused.message());
    let mut health = tonic_health::pb::health_client::HealthClient::new(p.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("gRPC health answers at the limit");

    // Probes are never refused: the kubelet must not restart a busy pod.
    for probe in ["healthz", "readyz"] {
        assert_eq!(
            status(format!("{}/{probe}", p.http)).await,
            200,
            "/{probe} while at the limit"
        );
    }
    let metrics = http()
        .get(format!("{}/metrics", p.http))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"sharedcare_requests_total{protocol="http",path="/fhir/R4/metadata",code="503"}"#),
        "refusals are counted: {metrics}"
    );

    // The slow client gone, the next request is answered.
    drop(slow);
    eventually(Duration::from_secs(10), "answered again", || async {
        (status(metadata.clone()).await == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read_naming_the_limit() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8")],
        &[("SHAREDCARE_MAX_BODY_BYTES", "4096".into())],
    );
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Basic", "id": "x".repeat(8000)}}],
    })
    .to_string();
    let refused = http()
        .post(format!("{}/fhir/R4", p.http))
        .header("content-type", "application/fhir+json")
        .body(bundle.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 413);
    let outcome: serde_json::Value = refused.json().await.expect("an OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "too-long");
    let said = outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        said.contains(&format!("the request body is {} bytes", bundle.len()))
            && said.contains("at most 4096 (max_body_bytes)"),
        "{said}"
    );

    // Without a declared length (chunked), the body is cut off at the limit all the same.
    let token = service_token_for(&p.http, "records.write").await;
    let address = p.http.trim_start_matches("http://").to_string();
    let mut raw = TcpStream::connect(&address).await.expect("connect");
    let request = format!(
        "POST /fhir/R4 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{bundle}\r\n0\r\n\r\n",
        bundle.len()
    );
    raw.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 413")
            && answer.contains("over 4096 bytes, the most this service takes (max_body_bytes)"),
        "{answer}"
    );

    // Under the limit, the request goes on to be judged on its merits (here: no token).
    let small = http()
        .post(format!("{}/fhir/R4", p.http))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Bundle","type":"transaction","entry":[]}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(small.status().as_u16(), 401);

    // A limit too small to take a login form is refused at start, naming the setting.
    let (status, _, err) = crate::harness::run(
        &["--dump-config", "up"],
        &[("SHAREDCARE_MAX_BODY_BYTES", "100".into())],
        Duration::from_secs(30),
    );
    assert!(!status.success() && err.contains("max_body_bytes"), "{err}");
}

/// Reads what `stream` still sends until the server closes it; `None` if it stays open for
/// `wait`. Returns what was read and how long the close took.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<(String, Duration)> {
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| (String::from_utf8_lossy(&got).into_owned(), started.elapsed()))
}

#[tokio::test]
async fn clients_too_slow_to_send_or_idle_are_cut_off_and_a_stalled_body_is_answered_naming_the_setting() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8")],
        &[
            ("SHAREDCARE_CLIENT_TIMEOUT_MS", "1000".into()),
            // Two stalled requests would take both places if they were not cut off.
            ("SHAREDCARE_MAX_IN_FLIGHT", "2".into()),
        ],
    );
    let address = p.http.trim_start_matches("http://").to_string();
    let grpc_address = p.grpc.trim_start_matches("http://").to_string();
    let metadata = format!("{}/fhir/R4/metadata", p.http);
    let token = service_token_for(&p.http, "records.write").await;

    // Half a request head, and then nothing: closed after the timeout, not kept for ever.
    let mut slow_head = TcpStream::connect(&address).await.expect("connect");
    slow_head
        .write_all(format!("GET /fhir/R4/metadata HTTP/1.1\r\nHost: {address}\r\n").as_bytes())
        .await
        .expect("write half a head");
    let (_, took) = closed_within(&mut slow_head, Duration::from_secs(10))
        .await
        .expect("a half-sent head is cut off");
    assert!(took >= Duration::from_millis(900), "not before the timeout: {took:?}");

    // A kept-alive connection that goes quiet after its answer is closed too.
    let mut idle = TcpStream::connect(&address).await.expect("connect");
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (answer, took) = closed_within(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "answered first: {answer}");
    assert!(took >= Duration::from_millis(900), "not before the timeout: {took:?}");

    // Bodies that stop arriving: answered 408 naming the setting, and the requests' places
    // given back (the limit here is two requests at once).
    let mut slow_bodies = Vec::new();
    for _ in 0..2 {
        let mut slow_body = TcpStream::connect(&address).await.expect("connect");
        slow_body
            .write_all(
                format!(
                    "POST /oauth2/token HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type="
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        slow_bodies.push(slow_body);
    }
    for slow_body in &mut slow_bodies {
        let (answer, _) = closed_within(slow_body, Duration::from_secs(10))
            .await
            .expect("a stalled body is answered and the connection closed");
        assert!(
            answer.starts_with("HTTP/1.1 408")
                && answer.contains("the request body stopped arriving: nothing for 1000 ms (client_timeout_ms)"),
            "{answer}"
        );
    }
    let answered = http().get(&metadata).send().await.expect("request");
    assert_eq!(
        answered.status().as_u16(),
        200,
        "the stalled requests' places are free again"
    );

    // On the FHIR API the same is an OperationOutcome.
    let mut slow_fhir = TcpStream::connect(&address).await.expect("connect");
    slow_fhir
        .write_all(
            format!(
                "POST /fhir/R4 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let (answer, _) = closed_within(&mut slow_fhir, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(
        answer.starts_with("HTTP/1.1 408")
            && answer.contains("\"OperationOutcome\"")
            && answer.contains("client_timeout_ms"),
        "{answer}"
    );

    // The gRPC port: a connection that never says anything is closed after the timeout.
    let mut silent = TcpStream::connect(&grpc_address).await.expect("connect");
    let (_, took) = closed_within(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent gRPC connection is closed");
    assert!(took >= Duration::from_millis(900), "not before the timeout: {took:?}");

    // A gRPC client that talks is served, whatever it waits between calls: pings keep a live
    // connection open.
    let mut records = p.records().await;
    let unknown = || GetRequest {
        resource_type: "Patient".into(),
        id: "nobody".into(),
        ..Default::default()
    };
    let answered = records.get(unknown()).await.expect_err("no such patient");
    assert_eq!(answered.code(), tonic::Code::NotFound, "served: {answered:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answered = records.get(unknown()).await.expect_err("no such patient");
    assert_eq!(
        answered.code(),
        tonic::Code::NotFound,
        "served again on a connection idle past the timeout: {answered:?}"
    );

    // A gRPC message over the limit is refused naming it, before any of it is stored.
    let huge = PutRequest {
        resource_json: format!(r#"{{"resourceType":"Basic","id":"{}"}}"#, "x".repeat(5 << 20)),
        source_organisation: "RR8".into(),
        ..Default::default()
    };
    let refused = records.put(huge).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("the limit is: 4194304 bytes"),
        "{}",
        refused.message()
    );

    // Too short a timeout to read a request is refused at start, naming the setting.
    let (status, _, err) = crate::harness::run(
        &["--dump-config", "up"],
        &[("SHAREDCARE_CLIENT_TIMEOUT_MS", "10".into())],
        Duration::from_secs(30),
    );
    assert!(!status.success() && err.contains("client_timeout_ms"), "{err}");
}
