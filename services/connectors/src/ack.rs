//! The ACK a sender gets (original acknowledgment mode): MSH, MSA and, for AE or AR, an ERR
//! segment that names the segment, field and component and says why, readable by v2.3/v2.4
//! parsers (ERR-1) and v2.5 ones (ERR-2, ERR-3, ERR-4, ERR-8).

use crate::hl7::{AckCode, Hl7, Problem};

/// What the ACK echoes from the message it answers (MSH).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-3 sending application (namespace id).
    pub sending_application: String,
    /// MSH-4 sending facility (namespace id).
    pub sending_facility: String,
    /// MSH-5 receiving application.
    pub receiving_application: String,
    /// MSH-6 receiving facility.
    pub receiving_facility: String,
    /// MSH-9.1 message type, e.g. `ADT`.
    pub message_type: String,
    /// MSH-9.2 trigger event, e.g. `A01`.
    pub event: String,
    /// MSH-10 message control id.
    pub control_id: String,
    /// MSH-11 processing id (P, T or D).
    pub processing_id: String,
    /// MSH-12 version id.
    pub version: String,
}

impl Header {
    /// The header of `m`.
    pub fn of(m: &Hl7<'_>) -> Header {
        let Some(msh) = m.segment("MSH") else {
            return Header::default();
        };
        Header {
            sending_application: msh.text(3, 1),
            sending_facility: msh.text(4, 1),
            receiving_application: msh.text(5, 1),
            receiving_facility: msh.text(6, 1),
            message_type: msh.text(9, 1),
            event: msh.text(9, 2),
            control_id: msh.text(10, 1),
            processing_id: msh.text(11, 1),
            version: msh.text(12, 1),
        }
    }

    /// What can be read of the header of a message the parser refused (or that was too big
    /// to read whole): its first line split on the delimiters it declares.
    pub fn from_text(raw: &str) -> Header {
        let first = raw.split(['\r', '\n']).next().unwrap_or_default();
        let Some(rest) = first.strip_prefix("MSH") else {
            return Header::default();
        };
        let mut chars = rest.chars();
        let (Some(field), Some(component)) = (chars.next(), chars.next()) else {
            return Header::default();
        };
        // fields[0] is "MSH" and fields[1] is MSH-2, so MSH-n is fields[n - 1].
        let fields: Vec<&str> = first.split(field).collect();
        let get = |n: usize, c: usize| {
            fields
                .get(n - 1)
                .and_then(|f| f.split(component).nth(c - 1))
                .unwrap_or_default()
                .to_string()
        };
        Header {
            sending_application: get(3, 1),
            sending_facility: get(4, 1),
            receiving_application: get(5, 1),
            receiving_facility: get(6, 1),
            message_type: get(9, 1),
            event: get(9, 2),
            control_id: get(10, 1),
            processing_id: get(11, 1),
            version: get(12, 1),
        }
    }

    /// `TYPE^EVENT`, e.g. `ADT^A01`.
    pub fn kind(&self) -> String {
        format!("{}^{}", self.message_type, self.event)
    }
}

/// `value` with HL7's escape sequences for the standard delimiters (`|^~\&`), so that any text
/// fits in a field.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The ACK for the message with header `h`: `code`, and the `problem` when there is one.
/// `control_id` is the ACK's own MSH-10; `now` is MSH-7 (`YYYYMMDDHHMMSS+0000`).
pub fn ack(h: &Header, code: AckCode, problem: Option<&Problem>, control_id: &str, now: &str) -> String {
    let version = if crate::hl7::VERSIONS.contains(&h.version.as_str()) {
        h.version.as_str()
    } else {
        "2.5.1"
    };
    let processing = if matches!(h.processing_id.as_str(), "P" | "T" | "D") {
        h.processing_id.as_str()
    } else {
        "P"
    };
    let receiving_application = if h.receiving_application.is_empty() {
        "SHAREDCARE"
    } else {
        h.receiving_application.as_str()
    };
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{now}||ACK^{}^ACK|{}|{processing}|{version}\r",
        escape(receiving_application),
        escape(&h.receiving_facility),
        escape(&h.sending_application),
        escape(&h.sending_facility),
        escape(&h.event),
        escape(control_id),
    );
    let text = problem.map(|p| escape(&p.to_string())).unwrap_or_default();
    out.push_str(&format!("MSA|{}|{}|{text}\r", code.as_str(), escape(&h.control_id)));
    if let Some(p) = problem {
        let l = &p.location;
        let field = if l.field == 0 {
            String::new()
        } else {
            l.field.to_string()
        };
        let component = if l.component == 0 {
            String::new()
        } else {
            l.component.to_string()
        };
        let (c, t) = (p.code.code(), escape(p.code.text()));
        out.push_str(&format!(
            "ERR|{seg}^{seq}^{field}^{c}&{t}&HL70357|{seg}^{seq}^{field}^^{component}|{c}^{t}^HL70357|E||||{}\r",
            escape(&p.reason),
            seg = escape(&l.segment),
            seq = l.sequence,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::{ErrorCode, Location};

    fn header() -> Header {
        Header {
            sending_application: "PAS".into(),
            sending_facility: "RX1".into(),
            receiving_application: "SHAREDCARE".into(),
            receiving_facility: "QN1".into(),
            message_type: "ADT".into(),
            event: "A01".into(),
            control_id: "MSG0001".into(),
            processing_id: "P".into(),
            version: "2.4".into(),
        }
    }

    #[test]
    fn an_accept_echoes_the_control_id_and_version() {
        let a = ack(&header(), AckCode::Accept, None, "SC1", "20261206101500+0000");
        assert_eq!(
            a,
            "MSH|^~\\&|SHAREDCARE|QN1|PAS|RX1|20261206101500+0000||ACK^A01^ACK|SC1|P|2.4\rMSA|AA|MSG0001|\r"
        );
    }

    #[test]
    fn an_error_names_the_segment_field_and_reason_and_parses_back() {
        let p = Problem::error(
            Location::at("PID", 3).component(1),
            ErrorCode::DataType,
            "9434765918 is not an NHS number: its check digit is wrong",
        );
        let a = ack(&header(), AckCode::Error, Some(&p), "SC2", "20261206101500+0000");
        let m = Hl7::parse(&a).expect("the ACK is HL7");
        let err = m.segment("ERR").expect("ERR");
        assert_eq!(
            (err.text(2, 1), err.text(2, 3), err.text(2, 5)),
            ("PID".into(), "3".into(), "1".into())
        );
        assert_eq!(err.text(3, 1), "102");
        assert_eq!(err.text(1, 1), "PID", "v2.3/2.4 readers find it in ERR-1");
        assert!(err.text(8, 1).contains("check digit"), "{a}");
        let msa = m.segment("MSA").expect("MSA");
        assert_eq!((msa.text(1, 1), msa.text(2, 1)), ("AE".into(), "MSG0001".into()));
    }

    #[test]
    fn the_header_of_an_unreadable_message_is_read_from_its_first_line() {
        let h = Header::from_text("MSH|^~\\&|PAS|RX1|SC|QN1|2026||ADT^A01|M9|P|2.4\rPID|garbage");
        assert_eq!(
            (h.control_id.as_str(), h.event.as_str(), h.sending_facility.as_str()),
            ("M9", "A01", "RX1")
        );
        assert_eq!(Header::from_text("not hl7"), Header::default());
    }

    #[test]
    fn text_with_delimiters_is_escaped() {
        assert_eq!(escape("a|b^c~d\\e&f"), "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f");
    }
}
