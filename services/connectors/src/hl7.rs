//! Reading an HL7 v2 message: the structure is parsed by the `hl7-parser` crate (segments,
//! fields, repeats, components, escape sequences); this module adds what the connector needs
//! on top — values by position, decoded; timestamps as FHIR dateTimes; and [`Problem`], the
//! reason a message cannot be applied, which names the segment, field and component and
//! becomes the ACK's ERR segment.

use std::fmt;

use hl7_parser::Message;
use hl7_parser::message::{Repeat, Segment, Separators};

/// The HL7 v2 versions NHS trusts send and this connector reads.
pub const VERSIONS: &[&str] = &["2.3", "2.3.1", "2.4", "2.5", "2.5.1"];

/// Where in a message a problem is: a segment (and which occurrence of it, from 1), a field
/// and a component (0 = the whole segment or field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Segment id, e.g. `PID`.
    pub segment: String,
    /// Which occurrence of the segment (1 = the first).
    pub sequence: usize,
    /// Field number (0 = the segment itself).
    pub field: usize,
    /// Component number (0 = the whole field).
    pub component: usize,
}

impl Location {
    /// The segment `segment` (its first occurrence), field `field` (0 = the segment).
    pub fn at(segment: &str, field: usize) -> Location {
        Location {
            segment: segment.to_string(),
            sequence: 1,
            field,
            component: 0,
        }
    }

    /// The same place, narrowed to component `component`.
    pub fn component(self, component: usize) -> Location {
        Location { component, ..self }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.segment)?;
        if self.sequence > 1 {
            write!(f, "[{}]", self.sequence)?;
        }
        if self.field > 0 {
            write!(f, "-{}", self.field)?;
            if self.component > 0 {
                write!(f, ".{}", self.component)?;
            }
        }
        Ok(())
    }
}

/// HL7 table 0357: what kind of error a message has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100: a segment is missing or out of order.
    SegmentSequence,
    /// 101: a required field is empty.
    RequiredField,
    /// 102: a value is not of its data type (a bad date, a bad NHS number).
    DataType,
    /// 103: a coded value is not in its table.
    TableValue,
    /// 200: the message type is not one this connector applies.
    UnsupportedMessageType,
    /// 201: the trigger event is not one this connector applies.
    UnsupportedEvent,
    /// 202: the processing id is not P, T or D.
    UnsupportedProcessingId,
    /// 203: the version is not one this connector reads.
    UnsupportedVersion,
    /// 204: the sender, or a key the message names, is not known.
    UnknownKey,
    /// 207: the platform could not apply the message (retry later).
    Internal,
}

impl ErrorCode {
    /// Its code in table 0357.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredField => 101,
            ErrorCode::DataType => 102,
            ErrorCode::TableValue => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEvent => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersion => 203,
            ErrorCode::UnknownKey => 204,
            ErrorCode::Internal => 207,
        }
    }

    /// Its text in table 0357.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredField => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValue => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEvent => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersion => "Unsupported version id",
            ErrorCode::UnknownKey => "Unknown key identifier",
            ErrorCode::Internal => "Application internal error",
        }
    }
}

/// The acknowledgment code (MSA-1, original mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCode {
    /// AA: applied; the data is durably stored.
    Accept,
    /// AE: the message's content could not be applied (nothing was stored); resending it
    /// unchanged will not help, except after a platform fault ([`ErrorCode::Internal`]).
    Error,
    /// AR: the message was refused for its envelope (sender, version, type), not its content.
    Reject,
}

impl AckCode {
    /// `AA`, `AE` or `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// Why a message was not applied: the ACK's code, the table 0357 code, where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub struct Problem {
    /// AE or AR.
    pub ack: AckCode,
    /// What kind of error.
    pub code: ErrorCode,
    /// Where in the message.
    pub location: Location,
    /// Why, in words an interface analyst can act on.
    pub reason: String,
}

impl Problem {
    /// An error in the message's content (AE): nothing is stored.
    pub fn error(location: Location, code: ErrorCode, reason: impl Into<String>) -> Problem {
        Problem {
            ack: AckCode::Error,
            code,
            location,
            reason: reason.into(),
        }
    }

    /// A refusal of the message's envelope (AR): sender, version, message type.
    pub fn reject(location: Location, code: ErrorCode, reason: impl Into<String>) -> Problem {
        Problem {
            ack: AckCode::Reject,
            code,
            location,
            reason: reason.into(),
        }
    }

    /// A required field that is empty (AE, 101).
    pub fn required(location: Location, what: &str) -> Problem {
        Problem::error(location, ErrorCode::RequiredField, format!("{what} is required"))
    }
}

/// A parsed message.
pub struct Hl7<'m> {
    message: Message<'m>,
}

impl<'m> Hl7<'m> {
    /// Parses `text` (segments separated by CR; LF and CRLF are accepted too).
    pub fn parse(text: &'m str) -> Result<Hl7<'m>, Problem> {
        if !text.starts_with("MSH") {
            return Err(Problem::reject(
                Location::at("MSH", 0),
                ErrorCode::SegmentSequence,
                "a message starts with its MSH segment",
            ));
        }
        let message = Message::parse_with_lenient_newlines(text, true).map_err(|e| {
            Problem::reject(
                Location::at("MSH", 0),
                ErrorCode::SegmentSequence,
                format!("not an HL7 v2 message: {e}"),
            )
        })?;
        Ok(Hl7 { message })
    }

    /// The first segment `name`, if present.
    pub fn segment(&self, name: &str) -> Option<Seg<'_, 'm>> {
        self.segments(name).next()
    }

    /// Every segment `name`, in order.
    pub fn segments<'a>(&'a self, name: &str) -> impl Iterator<Item = Seg<'a, 'm>> + 'a {
        let name = name.to_string();
        self.all().filter(move |s| s.name() == name)
    }

    /// Every segment, in order, each knowing which occurrence of its id it is.
    pub fn all(&self) -> impl Iterator<Item = Seg<'_, 'm>> + '_ {
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        self.message.segments().map(move |segment| {
            let n = seen.entry(segment.name).or_insert(0);
            *n += 1;
            Seg {
                segment,
                separators: &self.message.separators,
                sequence: *n,
            }
        })
    }

    /// The first segment `name`, or an AE (100) saying the message needs it.
    pub fn require(&self, name: &str, why: &str) -> Result<Seg<'_, 'm>, Problem> {
        self.segment(name).ok_or_else(|| {
            Problem::error(
                Location::at(name, 0),
                ErrorCode::SegmentSequence,
                format!("the {name} segment is missing; {why}"),
            )
        })
    }

    /// The separators the message declares (MSH-1, MSH-2), for writing its ACK.
    pub fn separators(&self) -> &Separators {
        &self.message.separators
    }
}

/// One segment of a message.
#[derive(Clone, Copy)]
pub struct Seg<'a, 'm> {
    segment: &'a Segment<'m>,
    separators: &'a Separators,
    sequence: usize,
}

impl<'a, 'm> Seg<'a, 'm> {
    /// Its id, e.g. `PID`.
    pub fn name(&self) -> &'m str {
        self.segment.name
    }

    /// Where field `field` of this segment is.
    pub fn at(&self, field: usize) -> Location {
        Location {
            segment: self.name().to_string(),
            sequence: self.sequence,
            field,
            component: 0,
        }
    }

    /// Component `component` (from 1) of the first repeat of field `field` (from 1), decoded;
    /// empty when absent.
    pub fn text(&self, field: usize, component: usize) -> String {
        self.repeats(field)
            .into_iter()
            .next()
            .map(|r| r.text(component))
            .unwrap_or_default()
    }

    /// Field `field`'s first repeat, decoded, components joined as sent; empty when absent.
    pub fn whole(&self, field: usize) -> String {
        match self.field(field).and_then(|f| f.repeats.first()) {
            Some(r) => decode(r.raw_value(), self.separators),
            None => String::new(),
        }
    }

    /// The repeats of field `field` (none when absent or empty).
    pub fn repeats(&self, field: usize) -> Vec<Rep<'a, 'm>> {
        match self.field(field) {
            Some(f) => f
                .repeats
                .iter()
                .filter(|r| !r.raw_value().is_empty())
                .map(|repeat| Rep {
                    repeat,
                    separators: self.separators,
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// The raw field, numbered as HL7 numbers it (the parser counts MSH-1, the field
    /// separator, as MSH's first field, so MSH-3 is the sending application here too).
    fn field(&self, field: usize) -> Option<&'a hl7_parser::message::Field<'m>> {
        if field == 0 {
            return None;
        }
        self.segment.field(field)
    }
}

/// One repeat of a field.
#[derive(Clone, Copy)]
pub struct Rep<'a, 'm> {
    repeat: &'a Repeat<'m>,
    separators: &'a Separators,
}

impl Rep<'_, '_> {
    /// Component `component` (from 1), decoded; empty when absent.
    pub fn text(&self, component: usize) -> String {
        if component == 0 {
            return String::new();
        }
        self.repeat
            .component(component)
            .map(|c| decode(c.raw_value(), self.separators))
            .unwrap_or_default()
    }
}

/// `raw` with HL7's escape sequences decoded (`\F\`, `\R\`, `\S\`, `\T\`, `\E\`, `\X0A\`, `\X0D\`,
/// `\.br\`; another is passed on without its escapes; an unterminated one is dropped), as
/// hl7-parser's own display decodes them — written here because that display indexes the text
/// by character count but slices it by byte, and panicked on non-ASCII text before an escape
/// (found by fuzzing: `fuzz/corpus/hl7/` keeps the input).
pub fn decode(raw: &str, s: &Separators) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((before, after)) = rest.split_once(s.escape) {
        out.push_str(before);
        let Some((code, next)) = after.split_once(s.escape) else {
            return out;
        };
        match code {
            "F" => out.push(s.field),
            "R" => out.push(s.repetition),
            "S" => out.push(s.component),
            "T" => out.push(s.subcomponent),
            "E" => out.push(s.escape),
            "X0A" => out.push('\n'),
            "X0D" | ".br" => out.push('\r'),
            other => out.push_str(other),
        }
        rest = next;
    }
    out.push_str(rest);
    out
}

/// How a sender's timestamps without an offset are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTime {
    /// As UTC.
    Utc,
    /// As UK civil time: GMT, or BST (UTC+1) from 01:00 UTC on the last Sunday of March to
    /// 01:00 UTC on the last Sunday of October.
    UkCivil,
}

/// An HL7 TS/DTM value (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`) as a FHIR `date` or
/// `dateTime` of the same precision; a time without an offset is read by `local`. `None` when
/// the value is not a timestamp.
pub fn fhir_time(value: &str, local: LocalTime) -> Option<String> {
    let value = value.trim();
    let (body, offset) = match value.find(['+', '-']) {
        Some(i) => (value.get(..i)?, Some(value.get(i..)?)),
        None => (value, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || fraction.is_some_and(|f| !f.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let num = |a: usize, b: usize| digits.get(a..b).and_then(|s| s.parse::<u32>().ok());
    let year = num(0, 4)? as i32;
    match digits.len() {
        4 => return Some(format!("{year:04}")),
        6 => {
            let month = num(4, 6).filter(|m| (1..=12).contains(m))?;
            return Some(format!("{year:04}-{month:02}"));
        }
        8 => {
            let d = chrono::NaiveDate::from_ymd_opt(year, num(4, 6)?, num(6, 8)?)?;
            return Some(d.format("%Y-%m-%d").to_string());
        }
        10 | 12 | 14 => {}
        _ => return None,
    }
    let date = chrono::NaiveDate::from_ymd_opt(year, num(4, 6)?, num(6, 8)?)?;
    let time = chrono::NaiveTime::from_hms_opt(num(8, 10)?, num(10, 12).unwrap_or(0), num(12, 14).unwrap_or(0))?;
    let naive = date.and_time(time);
    let offset_secs = match offset {
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hhmm = o.get(1..)?;
            if hhmm.len() != 4 || !hhmm.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let h: i32 = hhmm.get(..2)?.parse().ok()?;
            let m: i32 = hhmm.get(2..)?.parse().ok()?;
            if h > 14 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
        None => match local {
            LocalTime::Utc => 0,
            LocalTime::UkCivil => uk_offset(naive),
        },
    };
    let tz = chrono::FixedOffset::east_opt(offset_secs)?;
    let at = naive.and_local_timezone(tz).single()?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// UK civil time's offset from UTC (seconds) at local time `local`: BST from 01:00 UTC (02:00
/// local) on the last Sunday of March until 01:00 UTC (02:00 local) on the last Sunday of
/// October. The repeated hour in October is read as BST.
fn uk_offset(local: chrono::NaiveDateTime) -> i32 {
    use chrono::Datelike;
    let last_sunday = |month: u32| {
        let first_of_next = chrono::NaiveDate::from_ymd_opt(local.year(), month + 1, 1);
        first_of_next.map(|d| {
            let last = d.pred_opt().unwrap_or(d);
            let back = last.weekday().num_days_from_sunday();
            last - chrono::Duration::days(i64::from(back))
        })
    };
    let (Some(march), Some(october)) = (last_sunday(3), last_sunday(10)) else {
        return 0;
    };
    let starts = march.and_hms_opt(2, 0, 0);
    let ends = october.and_hms_opt(2, 0, 0);
    match (starts, ends) {
        (Some(s), Some(e)) if local >= s && local < e => 3600,
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Segment `name` with `fields` at their HL7 numbers (the rest empty), ending in CR.
    pub(crate) fn segment(name: &str, fields: &[(usize, &str)]) -> String {
        let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
        let mut f = vec![""; last + 1];
        for (n, v) in fields {
            f[*n] = v;
        }
        f[0] = name;
        format!("{}\r", f.join("|"))
    }

    fn adt() -> String {
        "MSH|^~\\&|PAS|RX1|SHAREDCARE|QN1|20261206101500||ADT^A01^ADT_A01|MSG0001|P|2.4\r\
         EVN|A01|20261206101500\r\
         PID|1||RX1000123^^^RX1^MR~9434765919^^^NHS^NH||O\\T\\Brien^Sean^^^Mr||19800101|M\r"
            .to_string()
            + &segment(
                "PV1",
                &[
                    (1, "1"),
                    (2, "I"),
                    (3, "WARD7^BAY2^BED3^RX1"),
                    (19, "V0001"),
                    (44, "20261206101000"),
                ],
            )
    }

    #[test]
    fn escapes_decode_by_character_whatever_the_text_around_them() {
        let s = Separators::default();
        assert_eq!(decode(r"O\T\Brien \F\ \S\ \R\ \E\", &s), "O&Brien | ^ ~ \\");
        assert_eq!(decode(r"line\X0A\next\.br\end", &s), "line\nnext\rend");
        // Non-ASCII text before an escape (the parser's own display panicked here).
        assert_eq!(decode("Zoë Ñuñez \\T\\ café", &s), "Zoë Ñuñez & café");
        assert_eq!(
            decode("ünterminated \\T", &s),
            "ünterminated ",
            "an unterminated escape is dropped"
        );
        assert_eq!(
            decode(r"\H\bold\N\", &s),
            "HboldN",
            "other escapes lose their delimiters"
        );
        let text = "MSH|^~\\&|PAS|RX1|||2026||ADT^A08|M1|P|2.4\rPID|1||9434765919^^^NHS^NH||Ñuñez^Zoë\\T\\\r";
        let m = Hl7::parse(text).expect("parses");
        assert_eq!(m.segment("PID").expect("PID").text(5, 2), "Zoë&");
    }

    #[test]
    fn fields_are_read_by_their_hl7_numbers_and_decoded() {
        let text = adt();
        let m = Hl7::parse(&text).expect("parses");
        let msh = m.segment("MSH").expect("MSH");
        assert_eq!(msh.text(3, 1), "PAS");
        assert_eq!(msh.text(4, 1), "RX1");
        assert_eq!((msh.text(9, 1), msh.text(9, 2)), ("ADT".into(), "A01".into()));
        assert_eq!(msh.text(10, 1), "MSG0001");
        assert_eq!(msh.text(12, 1), "2.4");
        let pid = m.segment("PID").expect("PID");
        assert_eq!(
            pid.text(5, 1),
            "O&Brien",
            "the escaped subcomponent separator is decoded"
        );
        let ids: Vec<(String, String)> = pid.repeats(3).iter().map(|r| (r.text(1), r.text(5))).collect();
        assert_eq!(
            ids,
            vec![("RX1000123".into(), "MR".into()), ("9434765919".into(), "NH".into())]
        );
        let pv1 = m.segment("PV1").expect("PV1");
        assert_eq!(pv1.text(19, 1), "V0001");
        assert_eq!(pv1.text(44, 1), "20261206101000");
        assert_eq!(pv1.text(99, 1), "", "an absent field is empty");
    }

    #[test]
    fn something_that_is_not_hl7_is_refused_at_msh() {
        let e = Hl7::parse("PID|1||x").err().expect("refused");
        assert_eq!((e.ack, e.location.to_string()), (AckCode::Reject, "MSH".to_string()));
    }

    #[test]
    fn timestamps_keep_their_precision_and_offset() {
        assert_eq!(fhir_time("1980", LocalTime::Utc).as_deref(), Some("1980"));
        assert_eq!(fhir_time("198002", LocalTime::Utc).as_deref(), Some("1980-02"));
        assert_eq!(fhir_time("19800229", LocalTime::Utc).as_deref(), Some("1980-02-29"));
        assert_eq!(
            fhir_time("202612061015", LocalTime::Utc).as_deref(),
            Some("2026-12-06T10:15:00Z")
        );
        assert_eq!(
            fhir_time("20260706101530.1234+0100", LocalTime::Utc).as_deref(),
            Some("2026-07-06T10:15:30+01:00")
        );
        assert_eq!(fhir_time("19810229", LocalTime::Utc), None, "no 29 February in 1981");
        assert_eq!(fhir_time("2026x", LocalTime::Utc), None);
        assert_eq!(fhir_time("", LocalTime::Utc), None);
    }

    #[test]
    fn uk_civil_time_is_bst_in_summer_and_gmt_in_winter() {
        assert_eq!(
            fhir_time("20260706101500", LocalTime::UkCivil).as_deref(),
            Some("2026-07-06T10:15:00+01:00")
        );
        assert_eq!(
            fhir_time("20261206101500", LocalTime::UkCivil).as_deref(),
            Some("2026-12-06T10:15:00Z")
        );
        // 2026: BST from Sunday 29 March to Sunday 25 October.
        assert_eq!(
            fhir_time("20260329013000", LocalTime::UkCivil).as_deref(),
            Some("2026-03-29T01:30:00Z")
        );
        assert_eq!(
            fhir_time("20260329030000", LocalTime::UkCivil).as_deref(),
            Some("2026-03-29T03:00:00+01:00")
        );
        assert_eq!(
            fhir_time("20261025030000", LocalTime::UkCivil).as_deref(),
            Some("2026-10-25T03:00:00Z")
        );
    }
}
