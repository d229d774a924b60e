//! Overload: a process answers at most `max_in_flight` requests at once, and refuses one more at
//! once (503 with Retry-After, or RESOURCE_EXHAUSTED), naming the setting, instead of queueing
//! it; health probes still answer.

use std::time::Duration;

use sharedcare_proto::records::v1::HoldingsRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use tokio::io::AsyncWriteExt;

use crate::harness::{Proc, eventually, http, service_token_for};

#[tokio::test]
async fn a_process_at_its_limit_refuses_more_at_once_naming_the_limit_and_probes_still_answer() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8")],
        &[("SHAREDCARE_MAX_IN_FLIGHT", "1".into())],
    );
    let metadata = format!("{}/fhir/R4/metadata", p.http);
    let status = |url: String| async move { http().get(url).send().await.expect("request").status().as_u16() };
    assert_eq!(status(metadata.clone()).await, 200, "under the limit, answered");

    // A slow client: the request's head, and a body that never comes. It is in flight (the
    // token endpoint waits for its form) for as long as the connection stays open.
    let address = p.http.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await.expect("connect");
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
    let mut raw = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let request = format!(
        "POST /fhir/R4 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{bundle}\r\n0\r\n\r\n",
        bundle.len()
    );
    raw.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut raw, &mut answer)
        .await
        .expect("read");
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
