//! Text a store will keep. Postgres refuses U+0000 in `text` columns while SQLite keeps it, so
//! a value that one back end stores and the other refuses is refused here, at the edge, for
//! both; other control characters (but tab, line feed and carriage return) go with it, as FHIR's
//! `string` datatype rules them out (<https://hl7.org/fhir/R4/datatypes.html#string>).

/// Why a text value cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "contains the control character U+{0:04X} at character {1}; text may not contain control characters other than tab and line breaks"
)]
pub struct ControlCharacter(u32, usize);

/// Checks that `value` holds no control character a store would refuse or a reader could
/// be fooled by.
pub fn storable(value: &str) -> Result<(), ControlCharacter> {
    match value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some((at, c)) => Err(ControlCharacter(c as u32, at)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_other_control_characters_are_refused_with_their_place() {
        assert_eq!(
            storable("A8\u{0}1001").expect_err("NUL").to_string(),
            "contains the control character U+0000 at character 2; text may not contain control characters other than tab and line breaks"
        );
        assert!(storable("bell\u{7}").is_err());
        assert!(storable("esc\u{1b}[31m").is_err());
    }

    #[test]
    fn ordinary_text_with_line_breaks_and_accents_is_kept() {
        assert_eq!(storable("Dr Zoë O'Brien\n\tline two\r\n"), Ok(()));
        assert_eq!(storable(""), Ok(()));
    }
}
