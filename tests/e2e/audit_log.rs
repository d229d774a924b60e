//! The audit log as anyone outside sees it: checkpoints and tiles over HTTP (C2SP
//! tlog-checkpoint and tlog-tiles), checked by Go's own sumdb libraries (tools/tlog-client) and
//! by `sharedcare audit monitor`, which raises an alert when the log forks, goes back or serves
//! a tile that does not match.

use std::time::Duration;

use sharedcare_proto::audit::v1::{GetInclusionProofRequest, GetTreeHeadRequest, ListByPatientRequest, SignedTreeHead};
use sharedcare_proto::records::v1::{GetRequest, PutRequest};

use crate::harness::{Proc, eventually, http, nhs_number, patient, run, service_token_for, up};

/// A fresh signed head.
async fn head(p: &Proc) -> SignedTreeHead {
    p.audit()
        .await
        .get_tree_head(GetTreeHeadRequest { fresh: true })
        .await
        .expect("tree head")
        .into_inner()
}

/// Writes a new patient: its NHS number, id, and the records client that wrote it.
async fn new_patient(p: &Proc) -> (String, String, crate::harness::Records) {
    let nhs = nhs_number();
    let id = format!("p{}", &nhs[..6]);
    let mut records = p.records().await;
    records
        .put(PutRequest {
            resource_json: patient(&id, &nhs),
            source_organisation: "A81001".into(),
            ..Default::default()
        })
        .await
        .expect("put");
    (nhs, id, records)
}

/// Writes a patient and reads it `reads` times (each read audited); returns its NHS number
/// once the log holds at least `at_least` entries.
async fn audited_reads(p: &Proc, reads: usize, at_least: u64) -> String {
    let (nhs, id, mut records) = new_patient(p).await;
    for _ in 0..reads {
        records
            .get(GetRequest {
                resource_type: "Patient".into(),
                id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("get");
    }
    eventually(Duration::from_secs(30), "the reads in the audit log", || async {
        (head(p).await.tree_size >= at_least).then_some(())
    })
    .await;
    nhs
}

fn tlog_client() -> String {
    std::env::var("SHAREDCARE_TLOG_CLIENT")
        .expect("SHAREDCARE_TLOG_CLIENT: run the tests through infra/test.sh, which builds tools/tlog-client")
}

#[tokio::test]
async fn go_sumdb_tlog_checks_the_checkpoint_tiles_an_inclusion_and_a_consistency_proof() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let token = service_token_for(&p.http, "audit.read").await;
    let first = head(&p).await;
    let old = data.path().join("old.checkpoint");
    std::fs::write(&old, &first.checkpoint).expect("write");
    // Enough reads to fill the first leaf tile and start the second.
    let nhs = audited_reads(&p, 260, first.tree_size + 261).await;
    let second = head(&p).await;
    assert!(second.tree_size > 256, "{}", second.tree_size);
    let mut audit = p.audit().await;
    let index = audit
        .list_by_patient(ListByPatientRequest {
            nhs_number: nhs.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("trail")
        .into_inner()
        .entries[0]
        .leaf_index;
    let proof = audit
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf_index: index,
            tree_size: 0,
        })
        .await
        .expect("proof")
        .into_inner();
    let leaf = data.path().join("leaf");
    std::fs::write(&leaf, &proof.leaf_data).expect("write");

    let go = |key: &str| {
        let out = std::process::Command::new(tlog_client())
            .args(["-url", &format!("{}/audit/v1", p.http), "-key", key, "-token", &token])
            .args(["-index", &index.to_string(), "-data", leaf.to_str().expect("path")])
            .args(["-old", old.to_str().expect("path")])
            .output()
            .expect("run tlog-client");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("tlog-client printed {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.success(), json)
    };
    let (ok, json) = go(&second.verifier_key);
    assert!(ok, "{json}");
    assert_eq!(json["tiles_match_root"], true, "{json}");
    assert_eq!(json["inclusion"], true, "{json}");
    assert_eq!(json["consistent_from"], first.tree_size, "{json}");
    assert!(json["size"].as_u64().expect("size") >= second.tree_size, "{json}");
    assert_eq!(
        json["origin"],
        format!("sharedcare.{}/audit", p.http.trim_start_matches("http://"))
    );

    // Another key (the same name, another public key) is refused by Go's note package.
    let other = {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        use ring::signature::KeyPair;
        sharedcare_audit::note::verifier_key(json["origin"].as_str().expect("origin"), pair.public_key().as_ref())
    };
    let (ok, json) = go(&other);
    assert!(!ok);
    assert!(
        json["error"].as_str().expect("error").starts_with("checkpoint:"),
        "{json}"
    );

    // Over HTTP: who may read, bad paths named, and the cache headers.
    let c = http();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let get = |path: &str, bearer: Option<&str>| {
        let mut r = c.get(format!("{}/audit/v1/{path}", p.http));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        async move {
            let resp = r.send().await.expect("get");
            let status = resp.status().as_u16();
            let cache = resp
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            let body = resp.bytes().await.expect("body");
            (status, cache, body)
        }
    };
    assert_eq!(get("checkpoint", None).await.0, 401);
    let no_audit_scope = service_token_for(&p.http, "records.read").await;
    let (status, _, body) = get("checkpoint", Some(&no_audit_scope)).await;
    assert_eq!((status, text(&body)), (403, "scope: the token lacks audit.read".into()));
    let (status, cache, body) = get("checkpoint", Some(&token)).await;
    assert_eq!((status, cache.as_str()), (200, "private, max-age=5"));
    assert!(text(&body).starts_with("sharedcare."), "{}", text(&body));
    let (status, cache, body) = get("tile/0/000", Some(&token)).await;
    assert_eq!((status, body.len()), (200, 256 * 32));
    assert!(cache.contains("immutable"), "{cache}");
    for (path, status, part) in [
        ("tile/8/000", 400, "level:"),
        ("tile/0/000.p/256", 400, "width:"),
        ("tile/0/1", 400, "index:"),
        ("tile/0/x001/000", 404, "index:"),
        ("tile/entries/000", 404, "tile/entries:"),
    ] {
        let (got, _, body) = get(path, Some(&token)).await;
        let body = text(&body);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.starts_with(part), "{path}: {body}");
    }
}

/// The audit log's own signing key, read from its store and opened with the key-encryption key
/// `up` keeps beside the data (what a log operator holds: both).
async fn log_key(data: &std::path::Path) -> ring::signature::Ed25519KeyPair {
    use base64::Engine;
    use sqlx::Row;
    let db = crate::harness::audit_db(data).await;
    let sealed: String = sqlx::query("SELECT pkcs8 FROM log_keys WHERE id = 1")
        .fetch_one(db.pool())
        .await
        .expect("key")
        .get(0);
    db.close().await;
    let kek = sharedcare_kit::sealing::KeyEncryptionConfig::default()
        .sealer(Some(&sharedcare_kit::sealing::default_kek_path(data)))
        .expect("the KEK beside the data");
    let pkcs8 = kek
        .open(&sealed, "audit/log_keys/1")
        .await
        .expect("opens under the KEK");
    let pkcs8 = String::from_utf8(pkcs8).expect("base64 text");
    let bytes = base64::engine::general_purpose::STANDARD.decode(pkcs8).expect("base64");
    ring::signature::Ed25519KeyPair::from_pkcs8(&bytes).expect("pkcs8")
}

#[tokio::test]
async fn the_monitor_accepts_growth_and_alerts_on_a_fork_a_rollback_a_forged_checkpoint_and_a_changed_tile() {
    use ring::signature::KeyPair;
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let token = service_token_for(&p.http, "audit.read").await;
    let state = data.path().join("monitor.state");
    let key = head(&p).await.verifier_key;
    let monitor = |state: &std::path::Path, key: &str| {
        run(
            &[
                "audit",
                "monitor",
                &p.http,
                "--key",
                key,
                "--once",
                "--state",
                state.to_str().expect("path"),
            ],
            &[("AUDIT_MONITOR_TOKEN", token.clone())],
            Duration::from_secs(30),
        )
    };
    // The size of the checkpoint a monitor run accepted ("ok <origin> at N entries, …").
    let accepted = |stdout: &str| -> u64 {
        stdout
            .split(" at ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no size in {stdout}"))
    };
    let (status, stdout, stderr) = monitor(&state, &key);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok sharedcare."), "{stdout}");
    let seen = accepted(&stdout);

    // The log grows; the checkpoint it serves follows within the signing interval (10 s).
    audited_reads(&p, 5, seen + 6).await;
    let stdout = eventually(Duration::from_secs(30), "a newer checkpoint accepted", || async {
        let (status, stdout, stderr) = monitor(&state, &key);
        assert!(status.success(), "{stdout}{stderr}");
        (accepted(&stdout) > seen).then_some(stdout)
    })
    .await;
    assert!(stdout.contains(&format!("consistent with {seen} entries")), "{stdout}");

    // The log's operator signs another history: a checkpoint of a size already seen with
    // another root, then one larger than the log.
    let pair = log_key(data.path()).await;
    let origin = sharedcare_audit::note::VerifierKey::parse(&key).expect("key").name;
    let signed = |size: u64, root: [u8; 32]| {
        let body = sharedcare_audit::note::checkpoint_body(&origin, size, &root);
        sharedcare_audit::note::signed(
            &body,
            &origin,
            pair.public_key().as_ref(),
            pair.sign(body.as_bytes()).as_ref(),
        )
    };
    let now = head(&p).await.tree_size;
    let forked = data.path().join("forked.state");
    std::fs::write(&forked, signed(now - 2, [7; 32])).expect("write");
    let (status, stdout, _) = monitor(&forked, &key);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ALERT THE LOG FORKED"), "{stdout}");
    let ahead = data.path().join("ahead.state");
    std::fs::write(&ahead, signed(now + 1000, [7; 32])).expect("write");
    let (status, stdout, _) = monitor(&ahead, &key);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ALERT THE LOG WENT BACK"), "{stdout}");

    // A checkpoint signed by someone else (the pinned key is another's) is refused.
    let stranger = {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        sharedcare_audit::note::verifier_key(&origin, pair.public_key().as_ref())
    };
    let (status, stdout, _) = monitor(&data.path().join("fresh.state"), &stranger);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("ALERT the checkpoint was refused: no signature by the pinned key"),
        "{stdout}"
    );

    // Someone with database access changes a leaf hash in a tile: a monitor starting afresh
    // reads every tile and finds it; `audit verify` names the entry and the tile.
    let db = crate::harness::audit_db(data.path()).await;
    let mut tile: Vec<u8> = {
        use sqlx::Row;
        sqlx::query("SELECT hashes FROM tiles WHERE level = 0 AND idx = 0")
            .fetch_one(db.pool())
            .await
            .expect("tile 0/0")
            .get(0)
    };
    tile[0] ^= 1;
    sqlx::query("UPDATE tiles SET hashes = $1 WHERE level = 0 AND idx = 0")
        .bind(tile)
        .execute(db.writer())
        .await
        .expect("tamper");
    db.close().await;
    let (status, stdout, _) = monitor(&data.path().join("new.state"), &key);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("ALERT A TILE DOES NOT MATCH"), "{stdout}");
    let (status, _) = p.terminate();
    assert!(status.success());
    let dir = data.path().to_str().expect("path");
    let (status, stdout, _) = run(&["audit", "verify", "--data", dir], &[], Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        stdout.contains("FAIL entry 0 ") && stdout.contains("tile 0/0"),
        "{stdout}"
    );
}

#[tokio::test]
async fn after_a_kill_9_mid_append_the_next_checkpoint_is_consistent_with_the_last_published() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = data.path().to_str().expect("path").to_string();
    let p = up(data.path());
    let published = head(&p).await;
    let state = data.path().join("monitor.state");
    std::fs::write(&state, &published.checkpoint).expect("write");
    // A burst of audited reads, and the process killed while audit integrates them.
    let (_, id, mut records) = new_patient(&p).await;
    let burst = tokio::spawn(async move {
        for _ in 0..5_000 {
            let read = records.get(GetRequest {
                resource_type: "Patient".into(),
                id: id.clone(),
                ..Default::default()
            });
            if read.await.is_err() {
                return;
            }
        }
    });
    eventually(Duration::from_secs(30), "the burst reaching the audit log", || async {
        (head(&p).await.tree_size > published.tree_size + 100).then_some(())
    })
    .await;
    let (http_addr, grpc_addr) = (
        p.http.trim_start_matches("http://").to_string(),
        p.grpc.trim_start_matches("http://").to_string(),
    );
    p.crash();
    let _ = burst.await;

    // Back on the same addresses (the checkpoints' origin names the issuer's host and port).
    let p = Proc::start_on(&["up", "--data", &dir], &[], &http_addr, &grpc_addr);
    let after = head(&p).await;
    assert!(
        after.tree_size > published.tree_size,
        "{} after {}",
        after.tree_size,
        published.tree_size
    );
    let token = service_token_for(&p.http, "audit.read").await;
    let (status, stdout, stderr) = run(
        &[
            "audit",
            "monitor",
            &p.http,
            "--key",
            &published.verifier_key,
            "--once",
            "--state",
            state.to_str().expect("path"),
        ],
        &[("AUDIT_MONITOR_TOKEN", token)],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("consistent with {} entries", published.tree_size)),
        "{stdout}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
    let (status, stdout, stderr) = run(&["audit", "verify", "--data", &dir], &[], Duration::from_secs(60));
    assert!(status.success(), "{stdout}{stderr}");
}

#[tokio::test]
async fn with_public_tiles_anyone_reads_the_checkpoint_and_tiles_but_never_an_entry() {
    let data = tempfile::tempdir().expect("tmp");
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("path")],
        &[("SHAREDCARE_AUDIT__PUBLIC_TILES", "true".into())],
    );
    let c = http();
    // The checkpoint served follows the log within the signing interval (10 s).
    let size = eventually(
        Duration::from_secs(20),
        "a checkpoint of the demo's entries",
        || async {
            let r = c
                .get(format!("{}/audit/v1/checkpoint", p.http))
                .send()
                .await
                .expect("get");
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(r.headers()["cache-control"], "public, max-age=5");
            let note = r.text().await.expect("body");
            let size: u64 = note.lines().nth(1).and_then(|l| l.parse().ok()).expect("size line");
            (size > 0).then_some(size)
        },
    )
    .await;
    let width = size.min(256);
    let path = if width == 256 {
        "tile/0/000".to_string()
    } else {
        format!("tile/0/000.p/{width}")
    };
    let r = c.get(format!("{}/audit/v1/{path}", p.http)).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.expect("body").len() as u64, width * 32);
    let r = c
        .get(format!("{}/audit/v1/tile/entries/000", p.http))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404, "entry bundles are never served");
}
