//! NHS identifiers. Parse, don't validate: holding an [`NhsNumber`] means it is valid.

use std::fmt;

/// The FHIR identifier system for NHS numbers.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A 10-digit NHS number with a valid modulus-11 check digit
/// (NHS Data Dictionary, "NHS Number").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(String);

/// Why a string is not an NHS number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    /// Not exactly ten digits (spaces are allowed between groups).
    #[error("{0:?} is not a valid NHS number (expected 10 digits)")]
    Format(String),
    /// Ten digits, but the modulus-11 check digit does not match.
    #[error("{0:?} is not a valid NHS number (check digit)")]
    CheckDigit(String),
}

impl NhsNumber {
    /// Parses `s` (digits, optionally grouped with spaces as "943 476 5919").
    pub fn parse(s: &str) -> Result<Self, NhsNumberError> {
        let digits: String = s.chars().filter(|c| *c != ' ').collect();
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NhsNumberError::Format(s.to_string()));
        }
        let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
        let Some((&given, body)) = d.split_last() else {
            return Err(NhsNumberError::Format(s.to_string()));
        };
        let sum: u32 = body.iter().zip((2..=10).rev()).map(|(x, w)| x * w).sum();
        let check = match 11 - (sum % 11) {
            11 => 0,
            10 => return Err(NhsNumberError::CheckDigit(s.to_string())),
            c => c,
        };
        if check != given {
            return Err(NhsNumberError::CheckDigit(s.to_string()));
        }
        Ok(NhsNumber(digits))
    }

    /// The ten digits without spaces.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Builds a valid NHS number from a 9-digit stem by computing its check digit; `None`
    /// when the stem has no valid check digit (remainder 10). Used by demos and tests.
    pub fn from_stem(stem: u32) -> Option<Self> {
        let s = format!("{:09}", stem % 1_000_000_000);
        (0..=9)
            .map(|c| format!("{s}{c}"))
            .find_map(|cand| NhsNumber::parse(&cand).ok())
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Organisation Data Service (ODS) code: 3–10 letters and digits, e.g. `A81001` (a GP
/// practice) or `RXX` (a trust). Stored upper-case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

/// Why a string is not an ODS code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ODS code (expected 3 to 10 letters and digits, e.g. \"A81001\")")]
pub struct OdsCodeError(String);

impl OdsCode {
    /// Parses an ODS code (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, OdsCodeError> {
        if (3..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(OdsCode(s.to_ascii_uppercase()))
        } else {
            Err(OdsCodeError(s.to_string()))
        }
    }

    /// The code, upper-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How strongly a patient's identity was proven (NHS login's identity proofing levels,
/// NHS Digital's Identity Verification and Authentication Standard): P0 (none), P5 (basic),
/// P9 (high, needed to see one's own record). Ordered: `P5 < P9`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ProofingLevel {
    /// No proof of identity.
    #[default]
    P0,
    /// Basic proof (low confidence).
    P5,
    /// High proof: may see and manage their own record.
    P9,
}

impl ProofingLevel {
    /// Parses `P0`, `P5` or `P9`.
    pub fn parse(s: &str) -> Option<ProofingLevel> {
        match s {
            "P0" => Some(ProofingLevel::P0),
            "P5" => Some(ProofingLevel::P5),
            "P9" => Some(ProofingLevel::P9),
            _ => None,
        }
    }

    /// `P0`, `P5` or `P9`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofingLevel::P0 => "P0",
            ProofingLevel::P5 => "P5",
            ProofingLevel::P9 => "P9",
        }
    }

    /// Whether a patient proofed at this level may see and manage their own record (P9).
    pub fn sees_own_record(self) -> bool {
        self >= ProofingLevel::P9
    }
}

impl serde::Serialize for ProofingLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ProofingLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ProofingLevel::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?}: expected P0, P5 or P9")))
    }
}

impl fmt::Display for ProofingLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_numbers_with_or_without_spaces() {
        assert_eq!(NhsNumber::parse("9434765919").map(|n| n.0), Ok("9434765919".into()));
        assert_eq!(NhsNumber::parse("943 476 5919").map(|n| n.0), Ok("9434765919".into()));
        assert!(NhsNumber::parse("9000000009").is_ok());
    }

    #[test]
    fn rejects_a_wrong_check_digit_and_says_so() {
        let err = NhsNumber::parse("9434765918").expect_err("wrong check digit");
        assert_eq!(
            err.to_string(),
            "\"9434765918\" is not a valid NHS number (check digit)"
        );
    }

    #[test]
    fn rejects_wrong_length_and_letters() {
        assert!(matches!(NhsNumber::parse("943476591"), Err(NhsNumberError::Format(_))));
        assert!(matches!(NhsNumber::parse("94347659A9"), Err(NhsNumberError::Format(_))));
    }

    #[test]
    fn ods_codes_are_short_alphanumerics() {
        assert_eq!(OdsCode::parse("a81001").map(|c| c.0), Ok("A81001".into()));
        assert!(OdsCode::parse("RXX").is_ok());
        assert!(OdsCode::parse("RX").is_err());
        assert!(OdsCode::parse("A8 1001").is_err());
        assert!(OdsCode::parse("A\u{0}B01").is_err());
    }

    #[test]
    fn proofing_levels_parse_and_order() {
        assert_eq!(ProofingLevel::parse("P9"), Some(ProofingLevel::P9));
        assert_eq!(ProofingLevel::parse("p9"), None);
        assert!(ProofingLevel::P5 < ProofingLevel::P9);
        assert!(ProofingLevel::P9.sees_own_record() && !ProofingLevel::P5.sees_own_record());
    }

    #[test]
    fn stems_give_valid_numbers() {
        for stem in 0..200 {
            if let Some(n) = NhsNumber::from_stem(943_476_000 + stem) {
                assert!(NhsNumber::parse(n.as_str()).is_ok());
            }
        }
    }
}
