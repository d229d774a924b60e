//! `sharedcare import`: a file of FHIR resources loaded through the records service, stopped by
//! a bad resource (named by its place in the file) and resumed where it stopped.

use std::time::Duration;

use sharedcare_proto::records::v1::GetRequest;

use crate::harness::{nhs_number, run};
use crate::harness::{service_token_for, up};

fn observation(i: usize, patient: &str, code: &str) -> String {
    serde_json::json!({"resourceType": "Observation", "id": format!("imp-o{i}"), "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")}})
    .to_string()
}

#[tokio::test]
async fn an_import_stops_at_a_bad_resource_and_resumes_without_writing_twice() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let token = service_token_for(&p.http, "records.write records.read").await;
    let file = data.path().join("load.ndjson");
    let mut lines = vec![crate::harness::patient("imp-p", &nhs_number())];
    for i in 0..9 {
        // Resource 6 of the file carries a SNOMED code with a bad check digit.
        lines.push(observation(i, "imp-p", if i == 4 { "75367003" } else { "75367002" }));
    }
    std::fs::write(&file, lines.join("\n")).expect("write file");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "import",
            file.to_str().expect("path"),
            "--grpc",
            &p.grpc,
            "--token",
            &token,
            "--chunk",
            "2",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run_import = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run(&refs, &[], Duration::from_secs(60))
    };
    let (status, _, stderr) = run_import(&[]);
    assert!(!status.success());
    assert!(
        stderr.contains("resource 6 of the file: code.coding[0].code") && stderr.contains("4 resources before it were"),
        "{stderr}"
    );
    let progress = std::fs::read_to_string(format!("{}.progress", file.display())).expect("progress saved");
    assert!(progress.starts_with("4 "), "{progress}");

    // Fixed in place (same size), the import resumes after the four stored resources.
    lines[5] = observation(4, "imp-p", "75367002");
    std::fs::write(&file, lines.join("\n")).expect("fix file");
    let (status, stdout, stderr) = run_import(&[]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("resuming after 4 of 10 resources"), "{stderr}");
    assert!(stdout.contains("imported 6 resources"), "{stdout}");
    assert!(!std::path::Path::new(&format!("{}.progress", file.display())).exists());

    let mut records = p.records().await;
    for id in ["imp-o0", "imp-o4", "imp-o8"] {
        let got = records
            .get(GetRequest {
                resource_type: "Observation".into(),
                id: id.into(),
                ..Default::default()
            })
            .await
            .expect("imported")
            .into_inner();
        assert_eq!(got.version, 1, "{id} was written once");
    }
}
