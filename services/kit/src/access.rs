//! How an access to patient data ended, as every service writes it into its audit entry
//! (`AccessRecorded.outcome`) and as the portal and the passport read it back.

use std::fmt;

/// The outcome of one access, the audit log's `outcome` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The data was returned (in full, or with what consent withholds left out).
    Success,
    /// Consent (or the caller's rights) refused it.
    Denied,
    /// Consent withheld the whole of what was asked for.
    Withheld,
    /// The record holds nothing under that name.
    NotFound,
    /// No decision could be made or the data could not be read: nothing was returned.
    Error,
    /// An emergency (break-glass) access was granted.
    Granted,
}

/// The reason written beside [`Outcome::Error`] when consent gave no decision.
pub const NO_DECISION: &str = "no consent decision";

impl Outcome {
    /// Every outcome, in the order a filter lists them.
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Denied,
        Outcome::Withheld,
        Outcome::NotFound,
        Outcome::Error,
        Outcome::Granted,
    ];

    /// The word stored in the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Withheld => "withheld",
            Outcome::NotFound => "not-found",
            Outcome::Error => "error",
            Outcome::Granted => "granted",
        }
    }

    /// The outcome a stored word names, if any.
    pub fn parse(word: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == word)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_back_from_its_word() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("Success"), None, "words are case-sensitive, as stored");
        assert_eq!(Outcome::parse(""), None);
    }
}
