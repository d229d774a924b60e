//! HL7 v2 messages as an MLLP frame brings them (any bytes): parsed, then mapped as each event
//! the connectors take. Bad input is an AE/AR with an error, never a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sharedcare_connectors::config::SenderConfig;
use sharedcare_connectors::hl7::Hl7;
use sharedcare_connectors::{adt, mllp, oru};

fuzz_target!(|bytes: &[u8]| {
    let text = mllp::text(bytes.to_vec());
    let Ok(m) = Hl7::parse(&text) else {
        return;
    };
    let sender = SenderConfig {
        application: "PAS".into(),
        facility: "RX1".into(),
        ods_code: "RX1".into(),
        client_id: "rx1-pas".into(),
        client_secret: String::new(),
        client_secret_file: String::new(),
        local_time: "uk".into(),
    };
    let _ = adt::nhs_number(&m);
    for event in ["A01", "A02", "A03", "A04", "A08", "A11", "A13", "A28", "A31", "A40"] {
        let _ = adt::map(&m, event, &sender, "2026-12-07T12:00:00Z");
    }
    let _ = oru::map(&m, &sender, "2026-12-07T12:00:00Z");
});
