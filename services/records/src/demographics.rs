//! What Patient search matches on (FHIR R4 `Patient` search parameters `family`, `given`,
//! `name`, `birthdate`, `gender`, `address-postalcode`), taken from a Patient resource when it
//! is written, and the search parameters themselves, parsed with FHIR's modifiers and prefixes.
//! The domain core: no I/O.

use serde_json::{Map, Value};
use sharedcare_kit::edge::Refuse;

use crate::RecordsError;

/// Which part of a name a row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `HumanName.family`.
    Family,
    /// `HumanName.given`.
    Given,
}

impl Part {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Family => "family",
            Part::Given => "given",
        }
    }
}

/// The searchable demographics of one Patient.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demographics {
    /// Each family and given name, as written.
    pub names: Vec<(Part, String)>,
    /// The first and last day the birth date can be (`YYYY-MM-DD`), when it has one.
    pub birth: Option<(String, String)>,
    /// `male | female | other | unknown`, or empty.
    pub gender: String,
    /// Each address's postcode, upper case without spaces.
    pub postcodes: Vec<String>,
}

/// Folds a name for case-insensitive matching (FHIR string search ignores case).
pub fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

/// A postcode as matched: upper case, no spaces.
pub fn postcode(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_uppercase()
}

/// The days a FHIR date (or dateTime) can be: `1970` → 1970-01-01..1970-12-31, `1970-02` →
/// 1970-02-01..1970-02-28, `1970-02-03` (or a dateTime that day) → that day.
pub fn date_range(s: &str) -> Option<(String, String)> {
    let day = s.get(..10).unwrap_or(s);
    let parts: Vec<&str> = day.split('-').collect();
    let first = parts.first()?;
    let year: i32 = first.parse().ok().filter(|_| first.len() == 4)?;
    let month = |i: usize| -> Option<u32> { parts.get(i)?.parse().ok().filter(|m| (1..=12).contains(m)) };
    let date = |y: i32, m: u32, d: u32| chrono::NaiveDate::from_ymd_opt(y, m, d);
    let (lo, hi) = match parts.len() {
        1 => (date(year, 1, 1)?, date(year, 12, 31)?),
        2 => {
            let m = month(1)?;
            let first = date(year, m, 1)?;
            let next = if m == 12 {
                date(year + 1, 1, 1)?
            } else {
                date(year, m + 1, 1)?
            };
            (first, next.pred_opt()?)
        }
        3 => {
            let d = date(year, month(1)?, parts.get(2)?.parse().ok()?)?;
            (d, d)
        }
        _ => return None,
    };
    Some((lo.format("%Y-%m-%d").to_string(), hi.format("%Y-%m-%d").to_string()))
}

fn text(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// The searchable demographics of a Patient resource.
pub fn of(body: &Map<String, Value>) -> Demographics {
    let mut d = Demographics::default();
    for name in body.get("name").and_then(Value::as_array).into_iter().flatten() {
        if let Some(f) = name.get("family").and_then(text) {
            d.names.push((Part::Family, f.to_string()));
        }
        for g in name.get("given").and_then(Value::as_array).into_iter().flatten() {
            if let Some(g) = text(g) {
                d.names.push((Part::Given, g.to_string()));
            }
        }
    }
    d.birth = body.get("birthDate").and_then(text).and_then(date_range);
    d.gender = body.get("gender").and_then(text).unwrap_or_default().to_string();
    for a in body.get("address").and_then(Value::as_array).into_iter().flatten() {
        if let Some(p) = a.get("postalCode").and_then(text) {
            d.postcodes.push(postcode(p));
        }
    }
    d
}

/// An NHS number identifier token (`https://fhir.nhs.uk/Id/nhs-number|9434765919`, or the
/// number alone), checked; errors name `name`.
pub fn nhs_identifier(name: &str, v: &str) -> Result<String, RecordsError> {
    let value = match v.split_once('|') {
        Some((system, value)) if system == sharedcare_kit::nhs::NHS_NUMBER_SYSTEM || system.is_empty() => value,
        Some(_) => {
            return Err(RecordsError::invalid(
                name,
                format!(
                    "only NHS number identifiers are searchable ({}|…)",
                    sharedcare_kit::nhs::NHS_NUMBER_SYSTEM
                ),
            ));
        }
        None => v,
    };
    Ok(sharedcare_kit::nhs::NhsNumber::parse(value)
        .map_err(|e| RecordsError::invalid(name, e.to_string()))?
        .as_str()
        .to_string())
}

/// How a string parameter matches (FHIR: starts-with by default, `:exact`, `:contains`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Case-insensitive prefix of a name part.
    StartsWith,
    /// The whole name part, case and accents as written.
    Exact,
    /// Case-insensitive anywhere in a name part.
    Contains,
}

/// One name criterion: which parts (none = family or given), how, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameParam {
    /// `Some(part)` for `family`/`given`, `None` for `name`.
    pub part: Option<Part>,
    /// How it matches.
    pub how: Match,
    /// Any of these values (comma-separated in the request) matches.
    pub values: Vec<String>,
}

/// FHIR date search prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// eq (default).
    Eq,
    /// ne.
    Ne,
    /// gt.
    Gt,
    /// lt.
    Lt,
    /// ge.
    Ge,
    /// le.
    Le,
    /// sa: starts after.
    Sa,
    /// eb: ends before.
    Eb,
}

/// One `birthdate` criterion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateParam {
    /// The prefix.
    pub prefix: Prefix,
    /// The first and last day of the searched value.
    pub lo: String,
    /// .
    pub hi: String,
}

/// Whether `d` matches a stored birth date range `[lo, hi]` (FHIR R4 date search, §3.1.1.2:
/// ranges, not points).
pub fn date_matches(d: &DateParam, lo: &str, hi: &str) -> bool {
    let within = d.lo.as_str() <= lo && hi <= d.hi.as_str();
    match d.prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => hi > d.hi.as_str(),
        Prefix::Lt => lo < d.lo.as_str(),
        Prefix::Ge => hi > d.hi.as_str() || within,
        Prefix::Le => lo < d.lo.as_str() || within,
        Prefix::Sa => lo > d.hi.as_str(),
        Prefix::Eb => hi < d.lo.as_str(),
    }
}

/// A cross-patient search: the criteria of a `GET /Patient?…` other than `identifier`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatientQuery {
    /// Name criteria, all of which must hold.
    pub names: Vec<NameParam>,
    /// Birth date criteria, all of which must hold.
    pub birthdate: Vec<DateParam>,
    /// `male | female | other | unknown`.
    pub gender: Option<String>,
    /// A postcode prefix (upper case, no spaces).
    pub postcode: Option<String>,
    /// An NHS number (`identifier`), checked, alongside the other criteria.
    pub nhs_number: Option<String>,
}

impl PatientQuery {
    /// Whether any criterion is given (a search with none would list everyone: refused).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.birthdate.is_empty() && self.gender.is_none() && self.postcode.is_none()
    }

    /// Adds the search parameter `key=value`; `Ok(false)` when it is not a demographic one.
    /// Errors name the parameter and say what is wrong.
    pub fn add(&mut self, key: &str, value: &str) -> Result<bool, RecordsError> {
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key, None),
        };
        let invalid = |reason: String| RecordsError::invalid(key, reason);
        let values: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        let known = matches!(
            name,
            "family" | "given" | "name" | "birthdate" | "gender" | "address-postalcode"
        );
        if known && values.is_empty() {
            return Err(invalid("needs a value".into()));
        }
        match name {
            "family" | "given" | "name" => {
                let how = match modifier {
                    None => Match::StartsWith,
                    Some("exact") => Match::Exact,
                    Some("contains") => Match::Contains,
                    Some(m) => {
                        return Err(invalid(format!(
                            "modifier :{m} is not supported (use :exact or :contains)"
                        )));
                    }
                };
                let part = match name {
                    "family" => Some(Part::Family),
                    "given" => Some(Part::Given),
                    _ => None,
                };
                self.names.push(NameParam { part, how, values });
            }
            "birthdate" => {
                if let Some(m) = modifier {
                    return Err(invalid(format!("modifier :{m} is not supported")));
                }
                if values.len() > 1 {
                    return Err(invalid(
                        "one date per parameter (repeat the parameter for a range)".into(),
                    ));
                }
                let Some(v) = values.first() else { return Ok(false) };
                let (prefix, date) = match v.get(..2) {
                    Some("eq") => (Prefix::Eq, &v[2..]),
                    Some("ne") => (Prefix::Ne, &v[2..]),
                    Some("gt") => (Prefix::Gt, &v[2..]),
                    Some("lt") => (Prefix::Lt, &v[2..]),
                    Some("ge") => (Prefix::Ge, &v[2..]),
                    Some("le") => (Prefix::Le, &v[2..]),
                    Some("sa") => (Prefix::Sa, &v[2..]),
                    Some("eb") => (Prefix::Eb, &v[2..]),
                    Some("ap") => return Err(invalid("prefix ap (approximately) is not supported".into())),
                    _ => (Prefix::Eq, v.as_str()),
                };
                let (lo, hi) = date_range(date)
                    .ok_or_else(|| invalid(format!("{date:?} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)")))?;
                self.birthdate.push(DateParam { prefix, lo, hi });
            }
            "gender" => {
                if modifier.is_some() || values.len() > 1 {
                    return Err(invalid("one of male, female, other, unknown".into()));
                }
                let g = values.first().map(|g| g.to_ascii_lowercase()).unwrap_or_default();
                if !matches!(g.as_str(), "male" | "female" | "other" | "unknown") {
                    return Err(invalid(format!("{g:?} is not one of male, female, other, unknown")));
                }
                self.gender = Some(g);
            }
            "address-postalcode" => {
                if modifier.is_some() || values.len() > 1 {
                    return Err(invalid("one postcode (or its start)".into()));
                }
                self.postcode = values.first().map(|p| postcode(p));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patient_gives_its_names_birth_date_gender_and_postcodes() {
        let body = json!({"resourceType": "Patient",
            "name": [{"family": "Evans", "given": ["Margaret", "Ann"]}, {"family": "Jones"}],
            "birthDate": "1941-03-12", "gender": "female",
            "address": [{"postalCode": "ls1 4ap"}, {"city": "Leeds"}]});
        let d = of(body.as_object().expect("object"));
        assert_eq!(
            d.names,
            [
                (Part::Family, "Evans".to_string()),
                (Part::Given, "Margaret".to_string()),
                (Part::Given, "Ann".to_string()),
                (Part::Family, "Jones".to_string())
            ]
        );
        assert_eq!(d.birth, Some(("1941-03-12".into(), "1941-03-12".into())));
        assert_eq!(
            (d.gender.as_str(), d.postcodes.as_slice()),
            ("female", &["LS14AP".to_string()][..])
        );
        assert_eq!(of(&Map::new()), Demographics::default());
    }

    #[test]
    fn dates_are_ranges_at_their_precision() {
        assert_eq!(date_range("1970"), Some(("1970-01-01".into(), "1970-12-31".into())));
        assert_eq!(date_range("2024-02"), Some(("2024-02-01".into(), "2024-02-29".into())));
        assert_eq!(date_range("1970-12"), Some(("1970-12-01".into(), "1970-12-31".into())));
        assert_eq!(
            date_range("1970-03-12T10:00:00Z"),
            Some(("1970-03-12".into(), "1970-03-12".into()))
        );
        for bad in ["70", "1970-13", "1970-02-30", "soon", ""] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
    }

    fn param(v: &str) -> DateParam {
        let mut q = PatientQuery::default();
        q.add("birthdate", v).expect("valid");
        q.birthdate.remove(0)
    }

    #[test]
    fn birthdate_prefixes_follow_fhir_range_semantics() {
        let day = ("1941-03-12", "1941-03-12");
        let cases = [
            ("1941", true),
            ("1941-03-12", true),
            ("eq1941-04", false),
            ("ne1941", false),
            ("gt1940", true),
            ("gt1941", false),
            ("lt1942", true),
            ("lt1941-03-12", false),
            ("ge1941-03-12", true),
            ("ge1941-03-13", false),
            ("le1941-03-12", true),
            ("le1941-03-11", false),
            ("sa1940-12-31", true),
            ("eb1941-03-13", true),
            ("eb1941-03-12", false),
        ];
        for (q, expected) in cases {
            assert_eq!(date_matches(&param(q), day.0, day.1), expected, "{q}");
        }
        // A stored year only: within 1941, not equal to one day of it.
        assert!(date_matches(&param("1941"), "1941-01-01", "1941-12-31"));
        assert!(!date_matches(&param("1941-03-12"), "1941-01-01", "1941-12-31"));
    }

    #[test]
    fn parameters_are_parsed_with_modifiers_and_bad_ones_are_named() {
        let mut q = PatientQuery::default();
        assert!(q.add("family:exact", "Evans").expect("ok"));
        assert!(q.add("given", "Mar,Ann").expect("ok"));
        assert!(q.add("name:contains", "vans").expect("ok"));
        assert!(q.add("gender", "Female").expect("ok"));
        assert!(q.add("address-postalcode", "ls1 4").expect("ok"));
        assert!(!q.add("_count", "10").expect("not demographic"));
        assert_eq!(q.names[1].values, ["Mar", "Ann"]);
        assert_eq!((q.names[0].how, q.names[0].part), (Match::Exact, Some(Part::Family)));
        assert_eq!((q.names[2].how, q.names[2].part), (Match::Contains, None));
        assert_eq!(q.gender.as_deref(), Some("female"));
        assert_eq!(q.postcode.as_deref(), Some("LS14"));
        for (k, v, needle) in [
            ("family:missing", "true", "modifier :missing"),
            ("birthdate", "ap1941", "prefix ap"),
            ("birthdate", "12/03/1941", "is not a date"),
            ("gender", "f", "is not one of"),
            ("family", "", "needs a value"),
        ] {
            let e = PatientQuery::default().add(k, v).expect_err(k).to_string();
            assert!(e.starts_with(k) && e.contains(needle), "{e}");
        }
    }
}
