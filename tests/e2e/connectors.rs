//! HL7 v2 into the shared care record: a hospital system's MLLP client (python-hl7, in
//! `tests/python/mllp_feed.py`) sends ADT messages to the connectors of `sharedcare up` as the
//! demo acute trust's PAS, reads the ACKs with its own parser, and each step is checked with a
//! FHIR search; the admission's care relationship is checked through consent as a nurse of
//! the trust sees it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Proc, eventually, get_json, nhs_number, service_token_for, staff_token_in_role, up};

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// Sends `messages` over one MLLP connection with python-hl7; one parsed ACK each.
fn feed(p: &Proc, messages: &[String]) -> Vec<Value> {
    feed_with(p, messages, None)
}

/// Runs `mllp_feed.py` with `messages`, over TLS trusting `tls_ca` when given.
fn feed_output(p: &Proc, messages: &[String], tls_ca: Option<&std::path::Path>) -> std::process::Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "tests/python/.venv is missing: run the README's test command (infra/test.sh)"
    );
    let (host, port) = p.mllp.rsplit_once(':').expect("the MLLP listener's address");
    let mut child = Command::new(&python)
        .arg(dir.join("mllp_feed.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut spec = json!({"host": host, "port": port, "messages": messages});
    if let Some(ca) = tls_ca {
        spec["tls_ca"] = json!(ca.display().to_string());
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.to_string().as_bytes())
        .expect("write the messages");
    child.wait_with_output().expect("python ran")
}

/// [`feed`], over TLS trusting `tls_ca` when given.
fn feed_with(p: &Proc, messages: &[String], tls_ca: Option<&std::path::Path>) -> Vec<Value> {
    let out = feed_output(p, messages, tls_ca);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("mllp feed: done"),
        "mllp_feed.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("an ACK as JSON"))
        .collect()
}

/// Now as an HL7 timestamp in UTC, `minutes` from now.
fn at(minutes: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(minutes))
        .format("%Y%m%d%H%M%S+0000")
        .to_string()
}

/// A PV1 with the visit number (PV1-19), patient class, location (PV1-3), attending doctor,
/// admit (PV1-44) and discharge (PV1-45) times.
fn pv1(visit: &str, ward: &str, admitted: &str, discharged: &str) -> String {
    let mut f = vec![String::new(); 46];
    f[1] = "1".into();
    f[2] = "I".into();
    f[3] = format!("{ward}^BAY1^BED4^RX1");
    f[7] = "C4455667^Achebe^Ngozi^^^Dr".into();
    f[19] = visit.into();
    f[44] = admitted.into();
    f[45] = discharged.into();
    format!("PV1|{}\r", f[1..].join("|"))
}

/// An ADT message from the demo trust's PAS (MSH-3 PAS, MSH-4 RX1).
fn adt(event: &str, control: &str, nhs: &str, family: &str, pv1: &str) -> String {
    format!(
        "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|{now}||ADT^{event}^ADT_A01|{control}|P|2.4\r\
         EVN|{event}|{now}\r\
         PID|1||RX7{nhs}^^^RX1^MR~{nhs}^^^NHS^NH||{family}^Megan^^^Ms||19720314|F|||2 Mill Lane^^Northbridge^^NB3 4CD\r\
         {pv1}",
        now = at(0)
    )
}

fn msa(ack: &Value) -> (String, String) {
    (
        ack["msa"][0].as_str().unwrap_or_default().to_string(),
        ack["msa"][1].as_str().unwrap_or_default().to_string(),
    )
}

async fn search(p: &Proc, token: &str, query: &str) -> Vec<Value> {
    let (status, bundle) = get_json(&format!("{}/fhir/R4/{query}", p.http), token, &[]).await;
    assert_eq!(status, 200, "{query}: {bundle}");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .filter(|r| r["resourceType"] != "OperationOutcome")
        .collect()
}

#[tokio::test]
async fn admit_transfer_update_and_discharge_over_mllp_each_show_in_a_fhir_search() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    assert!(!p.mllp.is_empty(), "up reports its MLLP listener");
    let system = service_token_for(&p.http, "records.read").await;
    let nhs = nhs_number();
    let visit = format!("V{}", &nhs[4..]);
    let encounters = format!("Encounter?patient.identifier={NHS_SYSTEM}|{nhs}");

    let admit = adt("A01", "MSG-A01", &nhs, "Jones", &pv1(&visit, "WARD7", &at(-30), ""));
    let acks = feed(&p, std::slice::from_ref(&admit));
    assert_eq!(msa(&acks[0]), ("AA".into(), "MSG-A01".into()), "{}", acks[0]["ack"]);
    let found = search(&p, &system, &encounters).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["status"], "in-progress");
    assert_eq!(found[0]["class"]["code"], "IMP");
    assert_eq!(found[0]["serviceProvider"]["identifier"]["value"], "RX1");
    assert_eq!(found[0]["location"][0]["location"]["display"], "WARD7 / BAY1 / BED4");
    let patients = search(&p, &system, &format!("Patient?identifier={NHS_SYSTEM}|{nhs}")).await;
    assert_eq!(patients.len(), 1);
    assert_eq!(patients[0]["name"][0]["family"], "Jones");
    assert_eq!(patients[0]["birthDate"], "1972-03-14");
    let version = |r: &Value| r["meta"]["versionId"].as_str().unwrap_or_default().to_string();
    let (patient_v, encounter_v) = (version(&patients[0]), version(&found[0]));

    // The same message again (the sender did not see the ACK): the same ACK, nothing written.
    let again = feed(&p, &[admit]);
    assert_eq!(again[0]["ack"], acks[0]["ack"], "a resend gets the very same ACK");
    let found = search(&p, &system, &encounters).await;
    assert_eq!(version(&found[0]), encounter_v, "a resend writes nothing");
    let patients = search(&p, &system, &format!("Patient?identifier={NHS_SYSTEM}|{nhs}")).await;
    assert_eq!(version(&patients[0]), patient_v);

    // Transfer, update (a new surname) and discharge, in order on one connection.
    let acks = feed(
        &p,
        &[
            adt("A02", "MSG-A02", &nhs, "Jones", &pv1(&visit, "WARD9", &at(-30), "")),
            adt(
                "A08",
                "MSG-A08",
                &nhs,
                "Jones-Reid",
                &pv1(&visit, "WARD9", &at(-30), ""),
            ),
            adt(
                "A03",
                "MSG-A03",
                &nhs,
                "Jones-Reid",
                &pv1(&visit, "WARD9", &at(-30), &at(-1)),
            ),
        ],
    );
    let codes: Vec<(String, String)> = acks.iter().map(msa).collect();
    assert_eq!(
        codes,
        vec![
            ("AA".into(), "MSG-A02".into()),
            ("AA".into(), "MSG-A08".into()),
            ("AA".into(), "MSG-A03".into())
        ]
    );
    let found = search(&p, &system, &encounters).await;
    assert_eq!(
        found.len(),
        1,
        "every message about the visit writes the same Encounter"
    );
    assert_eq!(found[0]["status"], "finished");
    assert!(found[0]["period"]["end"].is_string(), "{}", found[0]);
    let places: Vec<&str> = found[0]["location"]
        .as_array()
        .expect("locations")
        .iter()
        .filter_map(|l| l["location"]["display"].as_str())
        .collect();
    assert_eq!(places, vec!["WARD9 / BAY1 / BED4"]);
    let patients = search(&p, &system, &format!("Patient?identifier={NHS_SYSTEM}|{nhs}")).await;
    assert_eq!(patients[0]["name"][0]["family"], "Jones-Reid", "A08 updated the name");
    // Records and audit see the trust's own system as the writer.
    let history = search(
        &p,
        &system,
        &format!("Provenance?target=Encounter/{}", found[0]["id"].as_str().expect("id")),
    )
    .await;
    assert!(
        history.iter().any(|pr| pr.to_string().contains("RX1")),
        "the provenance names the trust: {history:?}"
    );
    let sources: Vec<&str> = history
        .iter()
        .filter_map(|pr| pr["entity"][0]["what"]["identifier"]["value"].as_str())
        .collect();
    assert!(
        sources.contains(&"hl7v2:PAS@RX1:MSG-A03") && sources.contains(&"hl7v2:PAS@RX1:MSG-A01"),
        "each version's Provenance names the message it came from: {sources:?}"
    );
}

#[tokio::test]
async fn an_admission_starts_the_trusts_care_relationship_and_a_discharge_ends_it() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let nhs = nhs_number();
    let visit = format!("R{}", &nhs[3..]);
    // The demo nurse, in her role profile at the trust (RX1).
    let nurse = staff_token_in_role(&p, "nurse", "demo-nurse-password", "100000000002").await;
    let url = format!("{}/fhir/R4/Patient/rx1-patient-{nhs}", p.http);

    // Before the admission the patient is not in the record at all; an A28 adds the person,
    // which gives the trust no relationship.
    let acks = feed(&p, &[adt("A28", "REL-A28", &nhs, "Hughes", "")]);
    assert_eq!(msa(&acks[0]).0, "AA", "{}", acks[0]["ack"]);
    let (status, _) = get_json(&url, &nurse, &[]).await;
    assert_eq!(status, 403, "no relationship before the admission");

    let acks = feed(
        &p,
        &[adt("A01", "REL-A01", &nhs, "Hughes", &pv1(&visit, "AMU", &at(-10), ""))],
    );
    assert_eq!(msa(&acks[0]).0, "AA", "{}", acks[0]["ack"]);
    eventually(Duration::from_secs(20), "the admission's relationship", || async {
        (get_json(&url, &nurse, &[]).await.0 == 200).then_some(())
    })
    .await;

    let acks = feed(
        &p,
        &[adt(
            "A03",
            "REL-A03",
            &nhs,
            "Hughes",
            &pv1(&visit, "AMU", &at(-10), &at(-1)),
        )],
    );
    assert_eq!(msa(&acks[0]).0, "AA", "{}", acks[0]["ack"]);
    eventually(Duration::from_secs(20), "the discharge ending it", || async {
        (get_json(&url, &nurse, &[]).await.0 == 403).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_messages_get_ae_or_ar_naming_the_field_and_nothing_is_stored() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let system = service_token_for(&p.http, "records.read").await;
    let nhs = nhs_number();
    let good_pv1 = pv1("VBAD1", "WARD1", &at(-5), "");
    // The right check digit plus one (mod 10) is always wrong.
    let bad_digit = {
        let (stem, last) = nhs.split_at(9);
        let d = last.parse::<u32>().expect("digit");
        format!("{stem}{}", (d + 1) % 10)
    };
    let no_pid = format!(
        "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|{}||ADT^A01|BAD-NOPID|P|2.4\rEVN|A01\r{good_pv1}",
        at(0)
    );
    let big_pid = format!("PID|1||{nhs}^^^NHS^NH||{}^Big\r", "X".repeat(10 * 1024 * 1024));
    let messages = vec![
        adt("A01", "BAD-DIGIT", &bad_digit, "Evans", &good_pv1),
        no_pid,
        adt("A99", "BAD-EVENT", &nhs, "Evans", &good_pv1),
        adt("A01", "BAD-VERSION", &nhs, "Evans", &good_pv1).replace("|P|2.4\r", "|P|2.2\r"),
        adt("A01", "BAD-SENDER", &nhs, "Evans", &good_pv1).replace("|PAS|RX1|", "|PAS|RZZ|"),
        adt("A01", "BAD-CLASS", &nhs, "Evans", &good_pv1.replacen("|I|", "|Q|", 1)),
        format!(
            "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|{}||ADT^A01|BAD-BIG|P|2.4\rEVN|A01\r{big_pid}{good_pv1}",
            at(0)
        ),
    ];
    let acks = feed(&p, &messages);
    let seen: Vec<(String, String, Vec<String>, String)> = acks
        .iter()
        .map(|a| {
            let (code, control) = msa(a);
            let location: Vec<String> = a["err"]["location"]
                .as_array()
                .map(|l| l.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect())
                .unwrap_or_default();
            (
                code,
                control,
                location,
                a["err"]["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let loc = |s: &str, f: &str, c: &str| vec![s.to_string(), "1".into(), f.to_string(), c.to_string()];
    assert_eq!(
        seen,
        vec![
            ("AE".into(), "BAD-DIGIT".into(), loc("PID", "3", "1"), "102".into()),
            ("AE".into(), "BAD-NOPID".into(), loc("PID", "", ""), "100".into()),
            ("AR".into(), "BAD-EVENT".into(), loc("MSH", "9", "2"), "201".into()),
            ("AR".into(), "BAD-VERSION".into(), loc("MSH", "12", ""), "203".into()),
            ("AR".into(), "BAD-SENDER".into(), loc("MSH", "4", ""), "204".into()),
            ("AE".into(), "BAD-CLASS".into(), loc("PV1", "2", ""), "103".into()),
            ("AR".into(), "BAD-BIG".into(), loc("MSH", "", ""), "207".into()),
        ],
        "{acks:#?}"
    );
    assert!(
        acks[0]["err"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&bad_digit),
        "the reason names the value: {}",
        acks[0]["err"]
    );
    assert!(
        acks[6]["err"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("at most"),
        "{}",
        acks[6]["err"]
    );
    // Nothing of any of them was stored.
    for query in [
        format!("Patient?identifier={NHS_SYSTEM}|{nhs}"),
        format!("Encounter?patient.identifier={NHS_SYSTEM}|{nhs}"),
    ] {
        assert!(search(&p, &system, &query).await.is_empty(), "{query} found something");
    }

    // A frame cut short by the next start block gets AR, and the next message is applied.
    let mut s = tokio::net::TcpStream::connect(&p.mllp).await.expect("connect");
    let good = adt("A01", "AFTER-CUT", &nhs, "Evans", &good_pv1);
    let mut bytes = b"\x0bMSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|2026||ADT^A01|CUT|P|2.4\rPID|1||".to_vec();
    bytes.push(0x0b);
    bytes.extend_from_slice(good.as_bytes());
    bytes.extend_from_slice(b"\x1c\r");
    s.write_all(&bytes).await.expect("send");
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches('\u{1c}').count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("ACKs in time")
            .expect("read");
        assert!(n > 0, "the connection stays open: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("MSA|AR|CUT|"), "{got}");
    assert!(got.contains("MSA|AA|AFTER-CUT|"), "{got}");
}

/// An ORU^R01 from the trust with the results `obx` (already framed segments) of order `order`.
fn oru(control: &str, nhs: &str, order: &str, obx: &str) -> String {
    format!(
        "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|{now}||ORU^R01^ORU_R01|{control}|P|2.4\r\
         PID|1||{nhs}^^^NHS^NH||Patel^Ravi||19650707|M\r\
         OBR|1||{order}|U&E^Urea and electrolytes^L|||{now}\r{obx}",
        now = at(-20)
    )
}

#[tokio::test]
async fn results_over_mllp_are_laboratory_observations_and_a_correction_is_a_new_version() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let system = service_token_for(&p.http, "records.read").await;
    let nhs = nhs_number();
    let order = format!("ORD{}", &nhs[5..]);
    let results = "OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L^^UCUM|3.5-5.3|H|||F\r\
                   OBX|2|NM|2951-2^Sodium^LN||139|mmol/L^^UCUM|133-146|N|||F\r";
    let acks = feed(&p, &[oru("LAB-1", &nhs, &order, results)]);
    assert_eq!(msa(&acks[0]), ("AA".into(), "LAB-1".into()), "{}", acks[0]["ack"]);
    let query = format!("Observation?patient.identifier={NHS_SYSTEM}|{nhs}");
    let found = search(&p, &system, &query).await;
    let values: Vec<(String, f64, String)> = found
        .iter()
        .map(|o| {
            (
                o["code"]["coding"][0]["display"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o["valueQuantity"]["value"].as_f64().unwrap_or_default(),
                o["interpretation"][0]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let mut sorted = values.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sorted,
        vec![
            ("Potassium".into(), 5.9, "H".into()),
            ("Sodium".into(), 139.0, "N".into())
        ],
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .all(|o| o["category"][0]["coding"][0]["code"] == "laboratory")
    );
    // The order is a laboratory report naming both results.
    let reports = search(
        &p,
        &system,
        &format!("DiagnosticReport?patient.identifier={NHS_SYSTEM}|{nhs}"),
    )
    .await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["id"], format!("rx1-report-{order}"));
    assert_eq!(reports[0]["code"]["coding"][0]["code"], "U&E");
    let mut named: Vec<String> = reports[0]["result"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["reference"].as_str().map(str::to_string))
        .collect();
    named.sort();
    let mut ids: Vec<String> = found
        .iter()
        .map(|o| format!("Observation/{}", o["id"].as_str().unwrap_or_default()))
        .collect();
    ids.sort();
    assert_eq!(named, ids);

    // The lab corrects the potassium: the same Observation, a new version, status corrected.
    let corrected = "OBX|1|NM|2823-3^Potassium^LN||4.1|mmol/L^^UCUM|3.5-5.3|N|||C\r";
    let acks = feed(&p, &[oru("LAB-2", &nhs, &order, corrected)]);
    assert_eq!(msa(&acks[0]).0, "AA", "{}", acks[0]["ack"]);
    let found = search(&p, &system, &query).await;
    assert_eq!(found.len(), 2, "a correction replaces, it does not add: {found:?}");
    let potassium = found
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "2823-3")
        .expect("potassium");
    assert_eq!(potassium["status"], "corrected");
    assert_eq!(potassium["valueQuantity"]["value"], 4.1);
    assert_eq!(potassium["meta"]["versionId"], "2");
    let patient_url = |nhs: &str| format!("{}/fhir/R4/Patient/rx1-patient-{nhs}", p.http);
    let (_, patient) = get_json(&patient_url(&nhs), &system, &[]).await;
    assert_eq!(
        patient["meta"]["versionId"], "1",
        "the first result created the Patient, the correction left it: {patient}"
    );

    // A person the PAS registered (with an address): the lab's sparse PID does not replace
    // the trust's Patient, and the message store does not list it as written.
    let registered = nhs_number();
    let acks = feed(
        &p,
        &[
            adt("A28", "LAB-A28", &registered, "Adeyemi", ""),
            oru("LAB-3", &registered, &format!("ORD{}", &registered[5..]), results),
        ],
    );
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    let (_, patient) = get_json(&patient_url(&registered), &system, &[]).await;
    assert_eq!(patient["meta"]["versionId"], "1", "{patient}");
    assert_eq!(patient["name"][0]["family"], "Adeyemi");
    assert_eq!(patient["address"][0]["postalCode"], "NB3 4CD");
    let results = search(
        &p,
        &system,
        &format!("Observation?patient.identifier={NHS_SYSTEM}|{registered}"),
    )
    .await;
    assert_eq!(results.len(), 2, "{results:?}");
}

#[tokio::test]
async fn a_sender_killed_mid_stream_and_resending_loses_nothing_and_doubles_nothing() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let system = service_token_for(&p.http, "records.read").await;
    let patients: Vec<String> = (0..4).map(|_| nhs_number()).collect();
    let admit = |i: usize| {
        let nhs = &patients[i];
        adt(
            "A01",
            &format!("KILL-{i}"),
            nhs,
            "Khan",
            &pv1(&format!("K{}", &nhs[2..]), "WARD2", &at(-3), ""),
        )
    };
    // Three admissions acknowledged, the fourth sent and the sender killed before its ACK.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let (host, port) = p.mllp.rsplit_once(':').expect("address");
    let mut child = Command::new(dir.join(".venv/bin/python"))
        .arg(dir.join("mllp_feed.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let spec = json!({"host": host, "port": port, "messages": (0..4).map(admit).collect::<Vec<_>>(), "hang": true});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(spec.to_string().as_bytes())
        .expect("write");
    let mut acked = 0;
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("a line");
        if line.starts_with('{') {
            let ack: Value = serde_json::from_str(&line).expect("json");
            assert_eq!(msa(&ack).0, "AA", "{line}");
            acked += 1;
        }
        if line.contains("sent unacknowledged") {
            break;
        }
    }
    assert_eq!(acked, 3);
    child.kill().expect("kill -9 the sender");
    child.wait().expect("reaped");

    // The sender comes back and, as interface engines do, resends what it had no ACK for.
    let acks = feed(&p, &[admit(3)]);
    assert_eq!(msa(&acks[0]), ("AA".into(), "KILL-3".into()), "{}", acks[0]["ack"]);
    for nhs in &patients {
        let found = search(&p, &system, &format!("Encounter?patient.identifier={NHS_SYSTEM}|{nhs}")).await;
        assert_eq!(found.len(), 1, "one admission for {nhs}: {found:?}");
        let patients = search(&p, &system, &format!("Patient?identifier={NHS_SYSTEM}|{nhs}")).await;
        assert_eq!(patients.len(), 1, "one Patient for {nhs}");
    }
}

#[tokio::test]
async fn hapi_hl7v2s_own_client_and_model_admit_a_patient_and_read_a_refusal_as_v2_4() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let system = service_token_for(&p.http, "records.read").await;
    let nhs = nhs_number();
    let bad = format!("{}{}", &nhs[..9], (nhs[9..].parse::<u32>().expect("digit") + 1) % 10);
    let visit = format!("H{}", &nhs[3..]);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("java/target");
    let classpath = std::fs::read_to_string(dir.join("classpath.txt")).expect(
        "tests/java/target/classpath.txt is missing: run the README's test command (infra/test.sh), which builds tests/java with Maven",
    );
    let (host, port) = p.mllp.rsplit_once(':').expect("address");
    let out = Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{}", dir.join("classes").display(), classpath.trim()))
        .arg("uk.nhs.sharedcare.Hl7Checks")
        .args([host, port, &nhs, &bad, &visit])
        .output()
        .expect("run java");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hapi hl7: done"),
        "Hl7Checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("A01 AA HAPI-A01"), "{stdout}");
    assert!(
        stdout.contains("BAD AE PID 3 102"),
        "a v2.4 reader finds the segment, field and code in ERR-1: {stdout}"
    );
    let found = search(&p, &system, &format!("Encounter?patient.identifier={NHS_SYSTEM}|{nhs}")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["identifier"][0]["value"], visit);
    assert_eq!(found[0]["location"][0]["location"]["display"], "WARD3 / BED9");
}

#[tokio::test]
async fn over_tls_the_listener_answers_a_client_that_checks_its_certificate_and_refuses_plain_tcp() {
    let data = tempfile::tempdir().expect("tmp");
    let (cert, key) = (data.path().join("cert.pem"), data.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=connectors", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let p = Proc::start(
        &["up", "--data", data.path().to_str().expect("utf-8")],
        &[
            ("SHAREDCARE_CONNECTORS__MLLP_TLS_CERT", cert.display().to_string()),
            ("SHAREDCARE_CONNECTORS__MLLP_TLS_KEY", key.display().to_string()),
        ],
    );
    assert!(!p.mllp.is_empty(), "up reports its MLLP listener over TLS");
    let nhs = nhs_number();
    let message = adt(
        "A01",
        "TLS-1",
        &nhs,
        "Lee",
        &pv1(&format!("T{}", &nhs[3..]), "WARD1", &at(-2), ""),
    );
    let acks = feed_with(&p, std::slice::from_ref(&message), Some(&cert));
    assert_eq!(msa(&acks[0]), ("AA".into(), "TLS-1".into()), "{}", acks[0]["ack"]);
    let plain = feed_output(&p, &[message], None);
    assert!(
        !plain.status.success() && !String::from_utf8_lossy(&plain.stdout).contains("\"msa\""),
        "plain TCP gets no ACK from a TLS listener"
    );
}

/// An A40 from the demo PAS: `survivor` (PID-3) absorbs `merged` (MRG-1).
fn a40(control: &str, survivor: &str, merged: &str, family: &str) -> String {
    format!(
        "{}MRG|RX7{merged}^^^RX1^MR~{merged}^^^NHS^NH\r",
        adt("A40", control, survivor, family, "")
    )
}

#[tokio::test]
async fn an_a40_merge_joins_both_numbers_in_records_consent_passport_and_audit_and_an_a37_is_refused() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let (survivor, merged) = (nhs_number(), nhs_number());
    let visit = format!("M{}", &merged[3..]);
    let nurse = staff_token_in_role(&p, "nurse", "demo-nurse-password", "100000000002").await;
    let careworker = crate::harness::user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let system = service_token_for(&p.http, "records.read").await;
    let patient_url = |nhs: &str| format!("{}/fhir/R4/Patient/rx1-patient-{nhs}", p.http);

    // The trust knew the person under two numbers: admitted under one, registered under the other.
    let acks = feed(
        &p,
        &[
            adt("A01", "MRG-A01", &merged, "Okafor", &pv1(&visit, "AMU", &at(-30), "")),
            adt("A28", "MRG-A28", &survivor, "Okafor", ""),
        ],
    );
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    eventually(Duration::from_secs(20), "the admission's relationship", || async {
        (get_json(&patient_url(&merged), &nurse, &[]).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        get_json(&patient_url(&survivor), &nurse, &[]).await.0,
        403,
        "no relationship with the survivor yet"
    );
    let passport = format!("{}/passport/v1/patients/{survivor}", p.http);
    assert_eq!(get_json(&passport, &nurse, &[]).await.0, 403);

    // The PAS merges them; resent, the same ACK and nothing more.
    let merge = a40("MRG-A40", &survivor, &merged, "Okafor");
    let acks = feed(&p, &[merge.clone(), merge]);
    assert_eq!(msa(&acks[0]), ("AA".into(), "MRG-A40".into()), "{}", acks[0]["ack"]);
    assert_eq!(acks[0]["ack"], acks[1]["ack"], "a resend gets the same ACK");

    // records: the old number finds the survivor; the old Patient points to it; the survivor's
    // encounters include the admission made under the old number.
    let found = search(&p, &system, &format!("Patient?identifier={NHS_SYSTEM}|{merged}")).await;
    let ids: Vec<&str> = found.iter().filter_map(|r| r["id"].as_str()).collect();
    assert!(ids.contains(&format!("rx1-patient-{survivor}").as_str()), "{ids:?}");
    let (status, old) = get_json(&patient_url(&merged), &system, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(old["link"][0]["type"], "replaced-by", "{old}");
    assert_eq!(
        old["link"][0]["other"]["reference"],
        format!("Patient/rx1-patient-{survivor}")
    );
    assert_eq!(old["active"], false);
    let encounters = search(&p, &system, &format!("Encounter?patient=rx1-patient-{survivor}")).await;
    assert_eq!(encounters.len(), 1, "{encounters:?}");
    assert_eq!(encounters[0]["id"], format!("rx1-encounter-{visit}"));

    // consent: the admission's relationship is with the one person now.
    eventually(Duration::from_secs(20), "consent to hear of the merge", || async {
        (get_json(&patient_url(&survivor), &nurse, &[]).await.0 == 200).then_some(())
    })
    .await;
    // Nobody else gains anything: a care worker with no relationship with either is refused both.
    for nhs in [&survivor, &merged] {
        assert_eq!(get_json(&patient_url(nhs), &careworker, &[]).await.0, 403, "{nhs}");
    }

    // passport: one person, the survivor's demographics, the admission from the old number.
    let view = eventually(Duration::from_secs(20), "the passport of the merged person", || async {
        let (status, view) = get_json(&passport, &nurse, &[]).await;
        (status == 200 && !crate::passport::section(&view, "encounters").is_empty()).then_some(view)
    })
    .await;
    assert_eq!(view["nhsNumber"], survivor.as_str(), "{view}");
    assert_eq!(
        crate::passport::section(&view, "encounters"),
        [format!("rx1-encounter-{visit}")]
    );

    // audit: the survivor's trail holds the old number's entries too (the admission's write).
    let trail = eventually(Duration::from_secs(20), "both trails under the survivor", || async {
        let trail = crate::harness::audit_trail(&p, &survivor).await;
        trail
            .iter()
            .any(|(_, _, resources)| {
                resources
                    .iter()
                    .any(|r| r.starts_with(&format!("Encounter/rx1-encounter-{visit}")))
            })
            .then_some(trail)
    })
    .await;
    assert!(
        trail.iter().any(|(action, _, _)| action == "patients_merged"),
        "{trail:?}"
    );

    // An unmerge is refused with the reason; so is a message that would quietly undo the merge.
    let mut unlink = a40("MRG-A37", &survivor, &merged, "Okafor").replace("ADT^A40", "ADT^A37");
    unlink = unlink.replace("EVN|A40", "EVN|A37");
    let acks = feed(&p, &[unlink, adt("A31", "MRG-A31", &merged, "Okafor", "")]);
    assert_eq!(msa(&acks[0]).0, "AR", "{}", acks[0]["ack"]);
    assert!(
        acks[0]["ack"]
            .as_str()
            .unwrap_or_default()
            .contains("does not undo a merge"),
        "{}",
        acks[0]["ack"]
    );
    assert_eq!(msa(&acks[1]).0, "AE", "{}", acks[1]["ack"]);
    let ack = acks[1]["ack"].as_str().unwrap_or_default();
    assert!(ack.contains(&format!("was merged into NHS number {survivor}")), "{ack}");
    let (_, old) = get_json(&patient_url(&merged), &system, &[]).await;
    assert_eq!(old["link"][0]["type"], "replaced-by", "nothing stored: {old}");
}

/// A PAS that names the merged patient by its own number alone (MRG-1 of type MR, as many
/// send): the number was applied before with an NHS number, so the merge joins that NHS number
/// to the survivor; a number never applied with one gets AE naming MRG-1, and nothing changes.
#[tokio::test]
async fn an_a40_naming_the_merged_patient_by_the_trusts_own_number_merges_the_nhs_number_it_came_with() {
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let (survivor, merged) = (nhs_number(), nhs_number());
    let system = service_token_for(&p.http, "records.read").await;
    let acks = feed(
        &p,
        &[
            adt("A28", "LOC-A28-1", &merged, "Achebe", ""),
            adt("A28", "LOC-A28-2", &survivor, "Achebe", ""),
        ],
    );
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");

    // `adt` sends PID-3 as RX7<nhs>^^^RX1^MR~<nhs>^^^NHS^NH: the trust's number is RX7<nhs>.
    let by_local =
        |control: &str, local: &str| format!("{}MRG|{local}^^^RX1^MR\r", adt("A40", control, &survivor, "Achebe", ""));
    let unknown = format!("RX7{}", &nhs_number()[..6]);
    let acks = feed(
        &p,
        &[
            by_local("LOC-A40-X", &unknown),
            by_local("LOC-A40", &format!("RX7{merged}")),
        ],
    );
    assert_eq!(msa(&acks[0]).0, "AE", "{}", acks[0]["ack"]);
    let ack = acks[0]["ack"].as_str().unwrap_or_default();
    assert!(ack.contains(&format!("local number {unknown} alone")), "{ack}");
    assert!(ack.contains("MRG^1"), "ERR names MRG-1: {ack}");
    assert_eq!(msa(&acks[1]).0, "AA", "{}", acks[1]["ack"]);

    // records: the old Patient points to the survivor, and keeps the trust's number.
    let (status, old) = get_json(
        &format!("{}/fhir/R4/Patient/rx1-patient-{merged}", p.http),
        &system,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(old["active"], false, "{old}");
    assert_eq!(
        old["link"][0]["other"]["reference"],
        format!("Patient/rx1-patient-{survivor}")
    );
    assert!(
        old["identifier"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i["value"] == format!("RX7{merged}"))),
        "{old}"
    );
    // The old NHS number finds the survivor.
    let found = search(&p, &system, &format!("Patient?identifier={NHS_SYSTEM}|{merged}")).await;
    let ids: Vec<&str> = found.iter().filter_map(|r| r["id"].as_str()).collect();
    assert!(ids.contains(&format!("rx1-patient-{survivor}").as_str()), "{ids:?}");
}

/// A GP practice's GP Connect endpoint (`tests/python/gpconnect_provider.py`): checks each
/// request as NHS England's demonstrator does and answers with the demonstrator's recorded
/// responses. Returns the process (killed when dropped), its base URL and its request log.
fn gp_practice() -> (Practice, String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::BufRead;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(dir.join("python/.venv/bin/python"))
        .arg(dir.join("python/gpconnect_provider.py"))
        .arg(dir.join("../services/connectors/tests/fixtures/gpconnect"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the GP practice");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let port = first.strip_prefix("listening ").expect("listening <port>").to_string();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                sink.lock().expect("log").push(v);
            }
        }
    });
    (Practice(child), format!("http://127.0.0.1:{port}/fhir"), log)
}

/// The GP practice's process, stopped when the test ends however it ends.
struct Practice(std::process::Child);

impl Drop for Practice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn gp_connect_fetches_the_practices_structured_record_for_a_clinician_consent_permits() {
    let (_practice, endpoint, requests) = gp_practice();
    let data = tempfile::tempdir().expect("tmp");
    let gp = |k: &str| format!("SHAREDCARE_CONNECTORS__GP_CONNECT__{k}");
    let env = [
        (gp("ENDPOINT"), endpoint),
        (gp("ODS_CODE"), "A20047".to_string()),
        (gp("PROVIDER_ASID"), "918999198993".to_string()),
        (gp("CONSUMER_ASID"), "200000000359".to_string()),
        (gp("ORGANISATION_ODS"), "RX1".to_string()),
        (gp("ORGANISATION_NAME"), "Northbridge Hospital".to_string()),
        (gp("CLIENT_ID"), crate::harness::SERVICE_ID.to_string()),
        (gp("CLIENT_SECRET"), crate::harness::SERVICE_SECRET.to_string()),
    ];
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let p = Proc::start(&["up", "--data", data.path().to_str().expect("utf-8")], &env);
    // The demonstrator's patients 2 (a full record) and 15 (no consent to share), admitted
    // to the trust: its nurse may read them; a care worker may not.
    let (full, dissent) = ("9658218873", "9658220169");
    let acks = feed(
        &p,
        &[
            adt("A01", "GPC-1", full, "Gpconnect", &pv1("G1", "AMU", &at(-5), "")),
            adt("A01", "GPC-2", dissent, "Gpconnect", &pv1("G2", "AMU", &at(-5), "")),
        ],
    );
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    let nurse = staff_token_in_role(&p, "nurse", "demo-nurse-password", "100000000002").await;
    let careworker = crate::harness::user_token(&p, "careworker", "demo-careworker-password", "selectedrole").await;
    let http = crate::harness::http();
    let fetch = |token: String, nhs: &str| {
        let url = format!("{}/connectors/v1/gp-connect/patients/{nhs}", p.http);
        let http = http.clone();
        async move {
            let r = http.post(url).bearer_auth(token).send().await.expect("fetch");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    eventually(Duration::from_secs(20), "the admissions' relationships", || async {
        (get_json(&format!("{}/fhir/R4/Patient/rx1-patient-{full}", p.http), &nurse, &[])
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;

    // Consent first: someone who may not read the patient's record does not get it fetched.
    let (status, body) = fetch(careworker, full).await;
    assert_eq!(status, 403, "{body}");
    assert!(requests.lock().expect("log").is_empty(), "the practice was not asked");

    // The nurse opens the patient: the practice is asked, and its record is in the shared one.
    let (status, summary) = fetch(nurse.clone(), full).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        requests.lock().expect("log")[0]["status"],
        200,
        "the practice accepted the request"
    );
    let written: Vec<&str> = summary["written"]
        .as_array()
        .expect("written")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(written[0], format!("Patient/a20047-patient-{full}"));
    let allergies = search(
        &p,
        &nurse,
        &format!("AllergyIntolerance?patient.identifier={NHS_SYSTEM}|{full}"),
    )
    .await;
    assert_eq!(allergies.len(), 1, "{allergies:?}");
    let allergy = &allergies[0];
    assert_eq!(
        allergy["code"]["coding"][0]["code"], "89707004",
        "sesame oil, as the practice records it"
    );
    assert_eq!(allergy["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(
        allergy["meta"]["tag"][0]["code"], summary["fetchedAt"],
        "marked with when it was fetched"
    );
    assert!(
        allergy["meta"]["source"]
            .as_str()
            .unwrap_or_default()
            .ends_with(summary["traceId"].as_str().unwrap_or("?"))
    );
    let statements = search(
        &p,
        &nurse,
        &format!("MedicationStatement?patient.identifier={NHS_SYSTEM}|{full}"),
    )
    .await;
    assert_eq!(statements.len(), 5);

    // The practice refuses for a patient who dissented: passed on, nothing stored.
    let (status, body) = fetch(nurse.clone(), dissent).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("NO_PATIENT_CONSENT"),
        "{body}"
    );
    let none = search(
        &p,
        &nurse,
        &format!("AllergyIntolerance?patient.identifier={NHS_SYSTEM}|{dissent}"),
    )
    .await;
    assert!(none.is_empty());
    // Bad input names the field.
    let (status, body) = fetch(nurse, "9658218874").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "nhs_number");
    let log = requests.lock().expect("log").clone();
    assert_eq!(log.len(), 2, "one request per fetch consent allowed: {log:?}");
    assert!(log.iter().all(|r| r["problem"].is_null()), "{log:?}");
}

#[tokio::test]
async fn serve_connectors_on_postgres_and_kafka_writes_to_records_in_its_own_process() {
    use crate::harness::{fresh_database, kafka_brokers, namespace, serve_env};
    use sharedcare_proto::records::v1::GetRequest;
    let env = serve_env(&fresh_database().await, &kafka_brokers(), &namespace());
    let with = |extra: &[(&'static str, String)]| env.iter().cloned().chain(extra.iter().cloned()).collect::<Vec<_>>();
    let id = Proc::start(
        &["serve", "identity"],
        &with(&[("SHAREDCARE_IDENTITY__SEED_DEMO", "true".into())]),
    );
    let issuer = [("SHAREDCARE_AUTH__ISSUER", id.http.clone())];
    let client = [
        ("SHAREDCARE_AUTH__CLIENT_ID", crate::harness::SERVICE_ID.to_string()),
        (
            "SHAREDCARE_AUTH__CLIENT_SECRET",
            crate::harness::SERVICE_SECRET.to_string(),
        ),
    ];
    let consent = Proc::start(&["serve", "consent"], &with(&issuer)).with_issuer(&id.http);
    let mut records_env = with(&issuer);
    records_env.extend(client.iter().cloned());
    records_env.push(("SHAREDCARE_RECORDS__CONSENT_URL", consent.grpc.clone()));
    records_env.push(("SHAREDCARE_RECORDS__FEEDS", r#"["rx1-pas"]"#.into()));
    let records = Proc::start(&["serve", "records"], &records_env).with_issuer(&id.http);
    // The senders are configuration: a TOML file, as the chart's ConfigMap gives them.
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("sharedcare.toml");
    let (pas, secret) = sharedcare_identity::demo::PAS_CLIENT;
    std::fs::write(
        &config,
        format!(
            "[connectors]\nrecords_url = \"{}\"\n\n[[connectors.senders]]\napplication = \"PAS\"\nfacility = \"RX1\"\nods_code = \"RX1\"\nclient_id = \"{pas}\"\nclient_secret = \"{secret}\"\n",
            records.grpc
        ),
    )
    .expect("config");
    let connectors = Proc::start(
        &["--config", config.to_str().expect("utf-8"), "serve", "connectors"],
        &with(&issuer),
    );
    assert!(!connectors.mllp.is_empty(), "serve connectors listens for MLLP");
    let nhs = nhs_number();
    let visit = format!("D{}", &nhs[3..]);
    let acks = feed(
        &connectors,
        &[adt("A01", "DIST-1", &nhs, "Moss", &pv1(&visit, "WARD4", &at(-5), ""))],
    );
    assert_eq!(msa(&acks[0]), ("AA".into(), "DIST-1".into()), "{}", acks[0]["ack"]);
    let got = records
        .records()
        .await
        .get(GetRequest {
            resource_type: "Encounter".into(),
            id: format!("rx1-encounter-{visit}"),
            ..Default::default()
        })
        .await
        .expect("records holds the admission")
        .into_inner();
    let encounter: Value = serde_json::from_str(&got.resource_json).expect("json");
    assert_eq!(encounter["status"], "in-progress");
    assert_eq!(encounter["serviceProvider"]["identifier"]["value"], "RX1");

    // A merge on Postgres and Kafka: records answers for the survivor with the admitted
    // number's data at once, and consent, hearing of it over Kafka, lets the trust's nurse
    // (whose relationship is with the admitted number) read the survivor.
    let survivor = nhs_number();
    let acks = feed(
        &connectors,
        &[
            adt("A28", "DIST-2", &survivor, "Moss", ""),
            a40("DIST-3", &survivor, &nhs, "Moss"),
        ],
    );
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    let system = service_token_for(&id.http, "records.read").await;
    let (status, bundle) = get_json(
        &format!(
            "{}/fhir/R4/Encounter?patient.identifier={NHS_SYSTEM}|{survivor}",
            records.http
        ),
        &system,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(
        bundle["entry"][0]["resource"]["id"],
        format!("rx1-encounter-{visit}"),
        "{bundle}"
    );
    let nurse = staff_token_in_role(&id, "nurse", "demo-nurse-password", "100000000002").await;
    let url = format!("{}/fhir/R4/Patient/rx1-patient-{survivor}", records.http);
    eventually(
        Duration::from_secs(30),
        "consent to hear of the merge over Kafka",
        || async { (get_json(&url, &nurse, &[]).await.0 == 200).then_some(()) },
    )
    .await;
}
