//! `sharedcare up`: the whole platform in one process on embedded storage.

use std::time::Duration;

use sharedcare_proto::records::v1::{GetRequest, PutRequest};
use tonic::Code;

use crate::harness::{Proc, audit_trail, eventually, nhs_number, patient};

fn up(data: &std::path::Path) -> Proc {
    Proc::start(&["up", "--data", data.to_str().expect("utf-8 path")], &[])
}

#[tokio::test]
async fn a_put_is_read_back_and_every_access_reaches_the_audit_log() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = nhs_number();
    let mut records = p.records().await;
    let first = records
        .put(PutRequest {
            resource_json: patient("pat-1", &nhs),
            source_organisation: "A81001".into(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(
        (first.resource_type.as_str(), first.id.as_str(), first.version),
        ("Patient", "pat-1", 1)
    );
    let second = records
        .put(PutRequest {
            resource_json: patient("pat-1", &nhs),
            source_organisation: "A81001".into(),
            ..Default::default()
        })
        .await
        .expect("second put")
        .into_inner();
    assert_eq!(second.version, 2, "every put is a new version");

    let got = records
        .get(GetRequest {
            resource_type: "Patient".into(),
            id: "pat-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.version, 2);
    let body: serde_json::Value = serde_json::from_str(&got.resource_json).expect("json");
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(body["identifier"][0]["value"], nhs.as_str());
    assert_eq!(body["name"][0]["family"], "Smith", "elements are kept as written");

    let trail = eventually(Duration::from_secs(20), "three audit entries", || async {
        let t = audit_trail(&p, &nhs).await;
        (t.len() >= 3).then_some(t)
    })
    .await;
    let summary: Vec<(&str, &str, &str)> = trail
        .iter()
        .map(|(a, o, r)| (a.as_str(), o.as_str(), r.first().map(String::as_str).unwrap_or("")))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("create", "success", "Patient/pat-1/_history/1"),
            ("update", "success", "Patient/pat-1/_history/2"),
            ("read", "success", "Patient/pat-1/_history/2"),
        ]
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let mut records = p.records().await;
    let cases = [
        ("{not json", "resource_json: not valid JSON"),
        ("[1,2]", "resource_json: must be a JSON object"),
        (r#"{"id":"x1"}"#, "resourceType: is required"),
        (
            r#"{"resourceType":"Spaceship","id":"x1"}"#,
            "resourceType: \"Spaceship\" is not a resource type",
        ),
        (
            r#"{"resourceType":"Patient","id":"x1","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765918"}]}"#,
            "identifier[0].value: \"9434765918\" is not a valid NHS number (check digit)",
        ),
        (
            r#"{"resourceType":"Patient","id":"has space"}"#,
            "id: \"has space\" is not a FHIR id",
        ),
    ];
    for (json, want) in cases {
        let err = records
            .put(PutRequest {
                resource_json: json.into(),
                source_organisation: String::new(),
                ..Default::default()
            })
            .await
            .expect_err(json);
        assert_eq!(err.code(), Code::InvalidArgument, "{json}");
        assert!(
            err.message().starts_with(want),
            "{json}: {:?} should start with {want:?}",
            err.message()
        );
    }
    let err = records
        .put(PutRequest {
            resource_json: patient("x1", &nhs_number()),
            source_organisation: "A\u{0}1".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad ODS code");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("source_organisation: "), "{}", err.message());
    let err = records
        .get(GetRequest {
            resource_type: "Patient".into(),
            id: "x1".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing was stored");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "Patient/x1 not found");
    let err = records
        .get(GetRequest {
            resource_type: String::new(),
            id: "x1".into(),
            ..Default::default()
        })
        .await
        .expect_err("no type");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "resource_type: is required")
    );
}

/// Sends raw bytes as a gRPC request body, as a buggy or hostile client could.
async fn raw_call(p: &Proc, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(p.channel().await);
    grpc.ready().await.expect("ready");
    grpc.unary::<Vec<u8>, Vec<u8>, _>(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .expect_err("malformed protobuf must be refused")
}

#[tokio::test]
async fn malformed_protobuf_is_refused_naming_the_field() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    // Field 1 (resource_json, a string) sent with the fixed32 wire type.
    let status = raw_call(&p, "/sharedcare.records.v1.Records/Put", vec![0x0d, 1, 2, 3, 4]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("PutRequest.resource_json"),
        "{:?}",
        status.message()
    );
}

#[tokio::test]
async fn reflection_lists_the_mounted_services_like_grpcurl() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    assert_eq!(
        p.advertised_services().await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "sharedcare.audit.v1.Audit",
            "sharedcare.consent.v1.Consent",
            "sharedcare.identity.v1.IdentityAdmin",
            "sharedcare.passport.v1.Passport",
            "sharedcare.records.v1.Records",
        ],
        "every service `up` mounts, and nothing else"
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(p.channel().await);
    let res = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sharedcare.records.v1.Records".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        res.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn http_health_readiness_and_metrics_answer() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let get = |path: &str| {
        let url = format!("{}{path}", p.http);
        async move { http_get(&url).await }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(get("/readyz").await, (200, "ready\n".into()));
    let mut records = p.records().await;
    let _ = records
        .get(GetRequest {
            resource_type: "Patient".into(),
            id: "nobody".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(get("/no/such/page/1").await.0, 404);
    assert_eq!(get("/no/such/page/2").await.0, 404);
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"sharedcare_requests_total{protocol="grpc",path="/sharedcare.records.v1.Records/Get",code="NotFound"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sharedcare_requests_total{protocol="http",path="unmatched",code="404"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains("/no/such/page"), "unknown paths do not become labels");
}

#[tokio::test]
async fn with_a_health_port_probes_and_metrics_are_served_there_and_not_on_the_public_port() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &[
            "up",
            "--data",
            data.path().to_str().expect("utf-8 path"),
            "--health",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(p.health.starts_with("http://127.0.0.1:"), "the listening line names it");
    assert_ne!(p.health, p.http);
    assert_eq!(http_get(&format!("{}/healthz", p.health)).await, (200, "ok\n".into()));
    assert_eq!(http_get(&format!("{}/readyz", p.health)).await, (200, "ready\n".into()));
    // The public port, the one behind the ingress, no longer answers them...
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            http_get(&format!("{}{path}", p.http)).await.0,
            404,
            "{path} on the HTTP port"
        );
    }
    // ... and still serves what it is for.
    let discovery = http_get(&format!("{}/.well-known/openid-configuration", p.http)).await;
    assert_eq!(discovery.0, 200);
    // The metrics count the public port's requests, not the probes.
    let (status, metrics) = http_get(&format!("{}/metrics", p.health)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"sharedcare_requests_total{protocol="http",path="unmatched",code="404"} 3"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("/readyz"),
        "probes are not counted as requests: {metrics}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_the_data_is_there_after_a_restart() {
    let data = tempfile::tempdir().expect("tmp");
    let nhs = nhs_number();
    let p = up(data.path());
    p.records()
        .await
        .put(PutRequest {
            resource_json: patient("keep", &nhs),
            source_organisation: String::new(),
            ..Default::default()
        })
        .await
        .expect("put");
    let (status, stderr) = p.terminate();
    assert!(status.success(), "clean exit on SIGTERM, got {status:?}: {stderr}");
    assert!(stderr.contains("outbox flushed"), "{stderr}");

    let p = up(data.path());
    let got = p
        .records()
        .await
        .get(GetRequest {
            resource_type: "Patient".into(),
            id: "keep".into(),
            ..Default::default()
        })
        .await
        .expect("get after restart")
        .into_inner();
    assert_eq!(got.version, 1);
    let trail = eventually(Duration::from_secs(20), "create and read audited", || async {
        let t = audit_trail(&p, &nhs).await;
        (t.len() >= 2).then_some(t)
    })
    .await;
    assert_eq!(
        trail.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
        vec!["create", "read"]
    );
}

/// A minimal HTTP/1.1 GET over a TCP socket (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Passes bytes through unchanged, to send malformed protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_data_directory_is_refused() {
    let data = tempfile::tempdir().expect("tmp");
    let _first = up(data.path());
    let d = data.path().to_str().expect("path");
    let (status, _, stderr) = crate::harness::run(
        &["up", "--data", d, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        &[],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("is in use by another sharedcare process"), "{stderr}");
}

#[tokio::test]
async fn the_audit_log_proves_an_access_and_verify_names_a_quietly_edited_entry() {
    use sharedcare_proto::audit::v1::{GetInclusionProofRequest, GetTreeHeadRequest, ListByPatientRequest};

    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = nhs_number();
    let mut records = p.records().await;
    records
        .put(PutRequest {
            resource_json: patient("audited", &nhs),
            source_organisation: "A81001".into(),
            ..Default::default()
        })
        .await
        .expect("put");
    records
        .get(GetRequest {
            resource_type: "Patient".into(),
            id: "audited".into(),
            ..Default::default()
        })
        .await
        .expect("get");
    eventually(Duration::from_secs(20), "two audit entries", || async {
        (audit_trail(&p, &nhs).await.len() >= 2).then_some(())
    })
    .await;
    let mut audit = p.audit().await;
    // The log also holds the demo's consent events; prove this patient's first record access.
    let index = audit
        .list_by_patient(ListByPatientRequest {
            nhs_number: nhs.clone(),
            ..Default::default()
        })
        .await
        .expect("trail")
        .into_inner()
        .entries
        .iter()
        .filter(|e| e.service == "records")
        .map(|e| e.leaf_index)
        .min()
        .expect("a records entry");
    let head = audit
        .get_tree_head(GetTreeHeadRequest { fresh: true })
        .await
        .expect("tree head")
        .into_inner();
    assert!(head.tree_size >= 2, "{head:?}");
    let proof = audit
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: index,
            tree_size: head.tree_size,
        })
        .await
        .expect("inclusion proof")
        .into_inner();
    let path: Vec<[u8; 32]> = proof
        .audit_path
        .iter()
        .map(|h| h.as_slice().try_into().expect("32 bytes"))
        .collect();
    let leaf = sharedcare_audit::merkle::leaf_hash(proof.leaf_data.as_bytes());
    let root: [u8; 32] = head.root_hash.as_slice().try_into().expect("32 bytes");
    assert!(sharedcare_audit::merkle::verify_inclusion(
        index,
        head.tree_size,
        &leaf,
        &path,
        &root
    ));
    assert_eq!(proof.entry.expect("entry").nhs_number, nhs);
    let (status, _) = p.terminate();
    assert!(status.success());

    let dir = data.path().to_str().expect("path");
    let (status, stdout, stderr) =
        crate::harness::run(&["audit", "verify", "--data", dir], &[], Duration::from_secs(30));
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("audit log verified"), "{stdout}");

    // Someone with database access quietly rewrites who looked.
    let db = crate::harness::audit_db(data.path()).await;
    sqlx::query("UPDATE entries SET actor = 'someone-else' WHERE leaf_index = $1")
        .bind(index as i64)
        .execute(db.writer())
        .await
        .expect("tamper");
    db.close().await;
    let (status, stdout, stderr) =
        crate::harness::run(&["audit", "verify", "--data", dir], &[], Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        stdout.contains(&format!("FAIL entry {index} ")) && stdout.contains("altered"),
        "{stdout}"
    );
    assert!(stderr.contains("failed verification"), "{stderr}");
}

#[tokio::test]
async fn a_transaction_bundle_over_grpc_is_stored_whole_or_not_at_all() {
    use sharedcare_proto::records::v1::ImportBundleRequest;
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let mut records = p.records().await;
    let nhs = nhs_number();
    let bundle = |condition_subject: &str| {
        serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:7d0c3a52-7f0e-4c49-a3c0-5b9b1f3c2a10",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Condition", "subject": {"reference": condition_subject},
                          "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}},
             "request": {"method": "POST", "url": "Condition"}}]})
        .to_string()
    };
    let err = records
        .import_bundle(ImportBundleRequest {
            bundle_json: bundle("Patient/not-here"),
            ..Default::default()
        })
        .await
        .expect_err("the second entry names an unknown patient");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("entry[1].resource.subject.reference:"),
        "{}",
        err.message()
    );
    let trail = audit_trail(&p, &nhs).await;
    assert!(
        trail.iter().all(|(action, _, _)| action != "create"),
        "nothing of the refused transaction was stored: {trail:?}"
    );
    let done = records
        .import_bundle(ImportBundleRequest {
            bundle_json: bundle("urn:uuid:7d0c3a52-7f0e-4c49-a3c0-5b9b1f3c2a10"),
            source_organisation: "A81001".into(),
            ..Default::default()
        })
        .await
        .expect("transaction")
        .into_inner();
    let out: serde_json::Value = serde_json::from_str(&done.response_bundle_json).expect("json");
    assert_eq!(out["type"], "transaction-response");
    let location = out["entry"][1]["response"]["location"].as_str().expect("location");
    let id = location.split('/').nth(1).expect("id");
    let condition = records
        .get(GetRequest {
            resource_type: "Condition".into(),
            id: id.into(),
            ..Default::default()
        })
        .await
        .expect("the condition")
        .into_inner();
    let body: serde_json::Value = serde_json::from_str(&condition.resource_json).expect("json");
    // The server gave the patient its id; the reference follows it.
    let patient = out["entry"][0]["response"]["location"].as_str().expect("location");
    let patient_id = patient.split('/').nth(1).expect("id");
    assert_eq!(body["subject"]["reference"], format!("Patient/{patient_id}"));

    // A batch: each entry on its own — the good one is stored, the bad one reports why.
    let batch = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient_id}")},
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}},
         "request": {"method": "POST", "url": "Condition"}},
        {"resource": {"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient_id}")},
                      "code": {"coding": [{"system": "SNOMED", "code": "38341003"}]}},
         "request": {"method": "POST", "url": "Condition"}}]});
    let done = records
        .import_bundle(ImportBundleRequest {
            bundle_json: batch.to_string(),
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    let out: serde_json::Value = serde_json::from_str(&done.response_bundle_json).expect("json");
    assert_eq!(out["type"], "batch-response");
    assert_eq!(out["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(out["entry"][1]["response"]["status"], "400");
    assert_eq!(
        out["entry"][1]["response"]["outcome"]["issue"][0]["expression"][0],
        "entry[1].resource.code.coding[0].system"
    );
}
