//! The container image itself, built by `infra/image.sh build` (the test command exports its
//! reference as `TEST_IMAGE`), run with podman as a pod runs it: a read-only root filesystem,
//! user 10001, only `/data` writable, and SIGTERM to stop.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Proc, demo_nhs_numbers, eventually, get_json, http, user_token};

/// Removes the container however the test ends (killing the `podman run` client leaves it).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.0]).output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().expect("podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn the_image_runs_up_read_only_as_user_10001_serves_the_demo_record_and_stops_on_sigterm() {
    let image = std::env::var("TEST_IMAGE")
        .expect("TEST_IMAGE is not set: run the README's test command (it builds the image)");
    // What the image declares, as Kubernetes reads it.
    let user = podman(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, "10001:10001", "the image runs as its own user");

    // /data as an emptyDir would be: a writable directory owned by nobody in particular but
    // given to the pod's user.
    let data = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::chown(data.path(), Some(10001), Some(10001)).expect("chown /data");
    let (web, grpc) = (free_port(), free_port());
    let issuer = format!("http://127.0.0.1:{web}");
    let name = format!("sharedcare-e2e-{web}");
    let _container = Container(name.clone());
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "run", "--rm", "--name", &name])
        // Kubernetes' readOnlyRootFilesystem: nothing writable, not even /tmp, unless mounted.
        .args(["--read-only", "--read-only-tmpfs=false", "--user", "10001:10001"])
        .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
        .args(["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"])
        .args(["-v", &format!("{}:/data", data.path().display())])
        .args([
            "-p",
            &format!("127.0.0.1:{web}:8080"),
            "-p",
            &format!("127.0.0.1:{grpc}:50051"),
        ])
        .args(["-e", &format!("SHAREDCARE_IDENTITY__ISSUER={issuer}")])
        .arg(&image);
    // The image's own CMD: `up` on 0.0.0.0 with its data under /data.
    let mut p = Proc::launch(cmd, &format!("podman run {image}"));
    p.http = issuer.clone();
    p.grpc = format!("http://127.0.0.1:{grpc}");

    // Ready through the published port, as a probe would see it.
    eventually(Duration::from_secs(60), "/readyz answers 200", || async {
        let r = http().get(format!("{issuer}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let top = podman(&["top", &name, "user", "comm"]);
    assert!(
        top.lines()
            .skip(1)
            .all(|l| l.starts_with("10001 ") || l.starts_with("sharedcare ")),
        "every process runs as 10001: {top}"
    );
    let discovery: Value = http()
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["issuer"], issuer.as_str());

    // A GP signs in through the container and reads a demo patient's record from it.
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let nhs = demo_nhs_numbers().into_iter().next().expect("a demo patient");
    let (found, _) = crate::demo::record(&p, &gp, &nhs).await;
    assert!(
        found.len() > 5,
        "the demo record was seeded inside the container and the GP reads it: {} resources",
        found.len()
    );
    let (status, patient) = get_json(
        &format!("{issuer}/fhir/R4/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
        &gp,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{patient}");
    let patients: Vec<&Value> = patient["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .collect();
    assert_eq!(patients.len(), 1, "over FHIR REST too: {patient}");
    assert_eq!(
        patients[0]["fullUrl"].as_str().map(|u| u.starts_with(&issuer)),
        Some(true),
        "links name the address the client used: {patient}"
    );

    // Everything it keeps is under /data, owned by its user.
    let kept: Vec<String> = std::fs::read_dir(data.path())
        .expect("read /data")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!kept.is_empty(), "up keeps its databases under /data");

    // SIGTERM (what the kubelet sends) reaches the process through podman; it exits cleanly.
    let (status, stderr) = p.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}
