//! One message in, one ACK out. The envelope is checked first (version, processing id,
//! message type and event, sender, control id: AR when wrong); a message already answered is
//! answered again from the record of it; otherwise it is mapped (AE when its content is
//! wrong), written to records as the sender (all or nothing) while no other message for the
//! same patient is being applied, recorded with its ACK, and only then acknowledged AA.
//!
//! A platform fault (records, consent or audit unavailable past the write timeout) gets AE
//! with code 207 and is not recorded, so a resend is applied afresh; every other answer is
//! recorded and a resend gets it again.

use std::sync::Arc;

use sharedcare_kit::db::now_us;
use tokio::sync::Mutex;

use crate::ack::{Header, ack};
use crate::config::{ConnectorsConfig, SenderConfig};
use crate::hl7::{AckCode, ErrorCode, Hl7, Location, Problem, VERSIONS};
use crate::records::{WriteError, Writer};
use crate::store::{Received, Store};

/// How many locks patients are spread over: messages for one patient apply in order, and
/// messages for different patients rarely wait for each other.
const STRIPES: usize = 256;

/// The message pipeline shared by every connection.
pub struct Intake {
    config: ConnectorsConfig,
    store: Store,
    writer: Writer,
    stripes: Vec<Mutex<()>>,
}

impl Intake {
    /// The pipeline for `config`'s senders, recording in `store` and writing with `writer`.
    pub fn new(config: ConnectorsConfig, store: Store, writer: Writer) -> Arc<Intake> {
        Arc::new(Intake {
            config,
            store,
            writer,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ConnectorsConfig {
        &self.config
    }

    /// The ACK for the message `raw`.
    pub async fn handle(&self, raw: &str) -> String {
        let received_at = now_us();
        let m = match Hl7::parse(raw) {
            Ok(m) => m,
            Err(p) => return answer(&Header::from_text(raw), &p, received_at),
        };
        let h = Header::of(&m);
        let sender = match self.envelope(&m, &h) {
            Ok(s) => s,
            Err(p) => return answer(&h, &p, received_at),
        };
        match self.store.answered(&sender.name(), &h.control_id).await {
            Ok(Some(previous)) => return previous,
            Ok(None) => {}
            Err(e) => return unavailable(&h, &format!("the message store: {e}"), received_at),
        }
        let received = chrono::DateTime::from_timestamp_micros(received_at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let event = event_of(&m, &h);
        let ods = sender.ods_code.to_ascii_uppercase();
        let mapped = match h.message_type.as_str() {
            "ADT" => {
                // An A40 may name the merged patient by the trust's own number alone.
                let wanted = match event.as_str() {
                    "A40" => crate::adt::merged_local_numbers(&m),
                    _ => Vec::new(),
                };
                let known = match wanted.is_empty() {
                    true => Default::default(),
                    false => match self.store.nhs_numbers_of(&ods, &wanted).await {
                        Ok(k) => k,
                        Err(e) => return unavailable(&h, &format!("the message store: {e}"), received_at),
                    },
                };
                crate::adt::map_with(&m, &event, sender, &received, &known)
            }
            "ORU" => crate::oru::map(&m, sender, &received),
            _ => Err(Problem::reject(
                Location::at("MSH", 9).component(1),
                ErrorCode::UnsupportedMessageType,
                "only ADT and ORU^R01 are applied",
            )),
        };
        let mut record = Received {
            sender: sender.name(),
            control_id: h.control_id.clone(),
            received_at,
            message_type: h.kind(),
            nhs_number: String::new(),
            ack_code: String::new(),
            ack: String::new(),
            produced: String::new(),
            raw: raw.to_string(),
        };
        let mapped = match mapped {
            Ok(m) => m,
            Err(p) => {
                if let Ok(n) = crate::adt::nhs_number(&m) {
                    record.nhs_number = n.as_str().to_string();
                }
                return self.finish(record, &h, AckCode::Error, Some(&p)).await;
            }
        };
        record.nhs_number = mapped.nhs_number.as_str().to_string();
        record.produced = mapped.references().join(",");
        let _patient = self.lock(&record.nhs_number).await;
        let document = format!("hl7v2:{}:{}", record.sender, record.control_id);
        match self
            .writer
            .put_many_keeping(sender, &mapped.resources, &mapped.only_if_absent, &document)
            .await
        {
            Ok(unchanged) => {
                // What was written: not a resource the record already held (only if absent).
                let mut unchanged = unchanged.into_iter();
                record.produced = mapped
                    .references()
                    .into_iter()
                    .filter(|_| !unchanged.next().unwrap_or(false))
                    .collect::<Vec<_>>()
                    .join(",");
                // The trust's own numbers, for an A40 that names a patient by one of them.
                let local = crate::adt::local_numbers(&m);
                self.finish_with(record, &h, AckCode::Accept, None, (&ods, &local))
                    .await
            }
            Err(WriteError::Refused { index, message }) => {
                let location = index
                    .and_then(|i| mapped.sources.get(i).cloned())
                    .unwrap_or_else(|| Location::at("MSH", 0));
                record.produced.clear();
                let p = Problem::error(
                    location,
                    ErrorCode::DataType,
                    format!("the shared care record refused it: {message}"),
                );
                self.finish(record, &h, AckCode::Error, Some(&p)).await
            }
            Err(WriteError::Unavailable(why)) => unavailable(&h, &why, received_at),
        }
    }

    /// Checks what the message says about itself; the configured sender it comes from.
    fn envelope(&self, m: &Hl7<'_>, h: &Header) -> Result<&SenderConfig, Problem> {
        if !VERSIONS.contains(&h.version.as_str()) {
            return Err(Problem::reject(
                Location::at("MSH", 12),
                ErrorCode::UnsupportedVersion,
                format!(
                    "version {:?} is not read here; expected one of {}",
                    h.version,
                    VERSIONS.join(", ")
                ),
            ));
        }
        if !matches!(h.processing_id.as_str(), "P" | "T" | "D") {
            return Err(Problem::reject(
                Location::at("MSH", 11),
                ErrorCode::UnsupportedProcessingId,
                format!("processing id {:?} is not P, T or D", h.processing_id),
            ));
        }
        let event = event_of(m, h);
        match h.message_type.as_str() {
            "ADT" if crate::adt::EVENTS.contains(&event.as_str()) => {}
            "ADT" if event == "A37" => {
                return Err(Problem::reject(
                    Location::at("MSH", 9).component(2),
                    ErrorCode::UnsupportedEvent,
                    "ADT^A37 (unlink) is not applied: the shared care record does not undo a merge, \
                     because consent, the passport and audit have joined the two people's records; \
                     ask the ICS's records team to separate them",
                ));
            }
            "ORU" if event == "R01" => {}
            "ORU" => {
                return Err(Problem::reject(
                    Location::at("MSH", 9).component(2),
                    ErrorCode::UnsupportedEvent,
                    format!("ORU^{event} is not applied; ORU^R01 is"),
                ));
            }
            "ADT" => {
                return Err(Problem::reject(
                    Location::at("MSH", 9).component(2),
                    ErrorCode::UnsupportedEvent,
                    format!(
                        "ADT^{event} is not applied; the ADT events applied are {}",
                        crate::adt::EVENTS.join(", ")
                    ),
                ));
            }
            other => {
                return Err(Problem::reject(
                    Location::at("MSH", 9).component(1),
                    ErrorCode::UnsupportedMessageType,
                    format!("{other:?} messages are not applied; ADT and ORU^R01 are"),
                ));
            }
        }
        let sender = self
            .config
            .sender(&h.sending_application, &h.sending_facility)
            .ok_or_else(|| {
                Problem::reject(
                    Location::at("MSH", 4),
                    ErrorCode::UnknownKey,
                    format!(
                        "{}@{} is not a configured sender (connectors.senders)",
                        h.sending_application, h.sending_facility
                    ),
                )
            })?;
        if h.control_id.is_empty() {
            return Err(Problem::reject(
                Location::at("MSH", 10),
                ErrorCode::RequiredField,
                "the message control id is required",
            ));
        }
        Ok(sender)
    }

    /// Records the answer and returns the ACK on record (a concurrent delivery of the same
    /// message may have recorded first).
    async fn finish(&self, record: Received, h: &Header, code: AckCode, problem: Option<&Problem>) -> String {
        self.finish_with(record, h, code, problem, ("", &[])).await
    }

    /// [`Intake::finish`], recording with an applied message the local patient numbers `local`
    /// of organisation `ods` it named (each with the message's NHS number).
    async fn finish_with(
        &self,
        mut record: Received,
        h: &Header,
        code: AckCode,
        problem: Option<&Problem>,
        (ods, local): (&str, &[String]),
    ) -> String {
        record.ack = ack(
            h,
            code,
            problem,
            &ack_id(record.received_at),
            &hl7_now(record.received_at),
        );
        record.ack_code = code.as_str().to_string();
        match self.store.record_with_numbers(&record, ods, local).await {
            Ok(on_record) => on_record,
            Err(e) => unavailable(h, &format!("the message store: {e}"), record.received_at),
        }
    }

    async fn lock(&self, nhs_number: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h: usize = 0;
        for b in nhs_number.bytes() {
            h = h.wrapping_mul(31).wrapping_add(usize::from(b));
        }
        // STRIPES > 0, so the index is always in range.
        #[allow(clippy::indexing_slicing)]
        self.stripes[h % STRIPES].lock().await
    }

    /// Forgets messages older than the retention period; returns how many.
    pub async fn forget_old(&self) -> Result<u64, sqlx::Error> {
        let days = i64::from(self.config.retention_days);
        self.store.forget_before(now_us() - days * 86_400_000_000).await
    }
}

/// The trigger event: MSH-9.2, else EVN-1 (v2.3 senders may put it only there).
fn event_of(m: &Hl7<'_>, h: &Header) -> String {
    if !h.event.is_empty() {
        return h.event.to_ascii_uppercase();
    }
    m.segment("EVN")
        .map(|e| e.text(1, 1).to_ascii_uppercase())
        .unwrap_or_default()
}

/// The ACK for a message answered without being recorded.
pub(crate) fn answer(h: &Header, p: &Problem, at_us: i64) -> String {
    ack(h, p.ack, Some(p), &ack_id(at_us), &hl7_now(at_us))
}

/// AE 207 for a platform fault: nothing was stored, and a resend will be applied afresh.
fn unavailable(h: &Header, why: &str, at_us: i64) -> String {
    tracing::error!(control_id = %h.control_id, %why, "an HL7 v2 message could not be applied; the sender gets AE and may resend");
    let p = Problem::error(
        Location::at("MSH", 0),
        ErrorCode::Internal,
        "the shared care record is unavailable; nothing was stored: resend the message later",
    );
    answer(h, &p, at_us)
}

/// The ACK's own control id.
fn ack_id(at_us: i64) -> String {
    format!("SC{at_us}")
}

/// `at_us` as an HL7 timestamp in UTC.
fn hl7_now(at_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(at_us)
        .unwrap_or_default()
        .format("%Y%m%d%H%M%S+0000")
        .to_string()
}
