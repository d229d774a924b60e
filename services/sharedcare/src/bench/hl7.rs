//! `sharedcare bench hl7`: HL7 v2 ADT over MLLP into `sharedcare up` (a child process; on
//! Kafka and Postgres when `kafka.brokers` and `database.url` are set in the environment):
//! - admissions (A01) of `HL7_PATIENTS` people, then updates (A08), over `--connections` MLLP
//!   connections (default 8), each message answered AA only once records has stored it: the
//!   rate and the ACK's latency;
//! - an admission's way to the passport: from an A01's ACK until the person's passport shows
//!   the Encounter, sampled every 50 ms while the updates keep coming.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sharedcare_proto::passport::v1::GetPassportRequest;
use sharedcare_proto::passport::v1::passport_client::PassportClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::args::BenchArgs;
use super::harness::{Bearer, UpProcess, demo_service_token, histogram, phase, report};

/// People admitted and then updated.
const HL7_PATIENTS: u64 = 1_000;

/// One MLLP connection: a message out, its ACK back.
struct Mllp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Mllp {
    async fn connect(addr: &str) -> anyhow::Result<Mllp> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("MLLP at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Mllp {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `message` and returns its ACK.
    async fn send(&mut self, message: &str) -> anyhow::Result<String> {
        let mut frame = Vec::with_capacity(message.len() + 3);
        frame.push(0x0b);
        frame.extend_from_slice(message.as_bytes());
        frame.extend_from_slice(&[0x1c, 0x0d]);
        self.stream.write_all(&frame).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the connection closed before the ACK");
            }
            self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if self.buf.ends_with(&[0x1c, 0x0d]) {
                return Ok(String::from_utf8_lossy(&self.buf).into_owned());
            }
        }
    }

    /// Sends `message`; an error unless the ACK is AA.
    async fn apply(&mut self, message: &str) -> anyhow::Result<()> {
        let ack = self.send(message).await?;
        if !ack.contains("\rMSA|AA|") {
            bail!("not accepted: {}", ack.replace('\r', "\n"));
        }
        Ok(())
    }
}

/// An ADT message from the demo acute trust's PAS about patient `i` (visit `BV<i>`).
fn adt(event: &str, control: &str, nhs: &str, i: u64) -> String {
    let now = chrono::Utc::now().format("%Y%m%d%H%M%S+0000").to_string();
    // PV1's fields by number: class, location, attending, visit number, admit time.
    let mut pv1 = vec![String::new(); 45];
    for (n, v) in [
        (1, "1".to_string()),
        (2, "I".into()),
        (3, format!("WARD{}^BAY1^BED{}", i % 20, i % 30)),
        (7, "C100^Lister^Joseph^^^Dr".into()),
        (19, format!("BV{i:07}")),
        (44, now.clone()),
    ] {
        if let Some(f) = pv1.get_mut(n) {
            *f = v;
        }
    }
    format!(
        "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|{now}||ADT^{event}^ADT_A01|{control}|P|2.4\r\
         EVN|{event}|{now}\r\
         PID|1||RX{i:07}^^^RX1^MR~{nhs}^^^NHS^NH||Bench{i}^Pat^^^Mx||19700101|U|||{i} Bench Street^^Northbridge^^NB1 1AA\r\
         PV1{}\r",
        pv1.get(1..).unwrap_or_default().iter().fold(String::new(), |mut s, f| {
            s.push('|');
            s.push_str(f);
            s
        }),
    )
}

/// `sharedcare bench hl7`.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (p, _) = UpProcess::start_env(&[], &[("SHAREDCARE_IDENTITY__SEED_DEMO_RECORD", "false")])?;
    let connections = args.connections_or(8);
    let nhs: Arc<Vec<String>> = Arc::new(crate::population::nhs_numbers(HL7_PATIENTS + 1_000).collect());
    println!(
        "HL7 v2 ADT over MLLP at {}, {connections} connections, {HL7_PATIENTS} patients, {} s per phase",
        p.mllp, args.seconds
    );
    let mut links = Vec::new();
    for _ in 0..connections {
        links.push(Arc::new(Mutex::new(Mllp::connect(&p.mllp).await?)));
    }
    let run_id = std::process::id();

    // Admissions: each patient once, spread over the connections.
    let started = Instant::now();
    let mut admitting = tokio::task::JoinSet::new();
    for (c, link) in links.iter().enumerate() {
        let (link, nhs) = (link.clone(), nhs.clone());
        admitting.spawn(async move {
            let mut h = histogram();
            let mut link = link.lock().await;
            for i in (c as u64..HL7_PATIENTS).step_by(connections) {
                let n = nhs.get(i as usize).context("an NHS number")?;
                let t = Instant::now();
                link.apply(&adt("A01", &format!("B{run_id}-A01-{i}"), n, i)).await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        });
    }
    let mut h = histogram();
    while let Some(done) = admitting.join_next().await {
        h.add(done??)?;
    }
    report("A01 admit, ACK after write", h.len(), started.elapsed(), &h);

    // Updates at full speed, while an admission's way to the passport is sampled.
    let token = demo_service_token(&p.http, "records.read").await?;
    let channel = tonic::transport::Channel::from_shared(p.grpc.clone())?
        .connect()
        .await?;
    let passport = PassportClient::with_interceptor(channel, Bearer(format!("Bearer {token}").parse()?));
    let probe_link = Mllp::connect(&p.mllp).await?;
    let probing = tokio::spawn(to_passport(args.seconds, probe_link, passport, nhs.clone(), run_id));
    let mut updates = args.clone();
    updates.concurrency = connections;
    let nhs_for_updates = nhs.clone();
    phase("A08 update, ACK after write", &updates, &links, move |link, n| {
        let nhs = nhs_for_updates.clone();
        async move {
            let i = n % HL7_PATIENTS;
            let number = nhs.get(i as usize).context("an NHS number")?;
            let message = adt("A08", &format!("B{run_id}-A08-{n}"), number, i);
            link.lock().await.apply(&message).await
        }
    })
    .await?;
    let h = probing.await??;
    report(
        "A01 ACK → passport shows it",
        h.len(),
        Duration::from_secs(args.seconds),
        &h,
    );
    Ok(())
}

/// For `seconds`, every 50 ms: admits a new person and waits until their passport shows the
/// Encounter; the histogram of those waits.
async fn to_passport(
    seconds: u64,
    mut link: Mllp,
    mut passport: PassportClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>,
    nhs: Arc<Vec<String>>,
    run_id: u32,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut h = histogram();
    let started = Instant::now();
    let mut i = HL7_PATIENTS;
    while started.elapsed() < Duration::from_secs(seconds) && (i as usize) < nhs.len() {
        let number = nhs.get(i as usize).context("an NHS number")?.clone();
        link.apply(&adt("A01", &format!("B{run_id}-P-{i}"), &number, i)).await?;
        let acked = Instant::now();
        let encounter = format!("rx1-encounter-BV{i:07}");
        loop {
            let view = passport
                .get_passport(GetPassportRequest {
                    nhs_number: number.clone(),
                    purpose: String::new(),
                })
                .await;
            let shown = view.is_ok_and(|v| {
                v.into_inner()
                    .sections
                    .iter()
                    .flat_map(|s| &s.entries)
                    .any(|e| e.id.ends_with(&encounter))
            });
            if shown {
                break;
            }
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("admission {i} did not reach the passport within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        h.record(acked.elapsed().as_micros() as u64)?;
        i += 1;
        tokio::time::sleep(Duration::from_millis(50).saturating_sub(acked.elapsed())).await;
    }
    Ok(h)
}
