//! Which writes may start a care relationship. A relationship lets a whole organisation read a
//! patient's record without break-glass, so it comes only from trusted facts:
//!
//! - a system client configured as a feed (`records.feeds`: a hospital PAS through the HL7 v2
//!   connector, the ICS's integration engine) may name any organisation and any dates, as the
//!   source system recorded them;
//! - a member of staff starts one only for their own organisation, never while acting under
//!   break-glass, with a start no earlier than the write by more than
//!   `records.relationship_backdate_secs`, and ending `records.staff_relationship_days` after the
//!   write unless it ends sooner (writing again renews it);
//! - any other writer starts none.
//!
//! A write that may not start a relationship changes none: the event carries no relationship,
//! so one recorded earlier for the same resource stays as it was.

use sharedcare_kit::edge::Refuse;
use std::collections::HashSet;

use sharedcare_kit::pdp::Actor;

use crate::error::RecordsError;
use crate::fhir::CareRelationship;

/// The organisation a write is recorded as coming from: a member of staff's own (from their
/// token; naming another in `field` is refused), or for a system the ODS code it names in
/// `field` ("" = none named).
pub fn writing_organisation(writer: &Actor, given: &str, field: &str) -> Result<String, RecordsError> {
    let named = if given.is_empty() {
        String::new()
    } else {
        sharedcare_kit::nhs::OdsCode::parse(given)
            .map_err(|e| RecordsError::invalid(field, e.to_string()))?
            .as_str()
            .to_string()
    };
    if writer.kind != "staff" {
        return Ok(named);
    }
    if !named.is_empty() && !named.eq_ignore_ascii_case(&writer.organisation) {
        return Err(RecordsError::invalid(
            field,
            format!(
                "{named:?} is not the organisation of your selected role ({}); staff write as their own organisation",
                writer.organisation
            ),
        ));
    }
    Ok(writer.organisation.clone())
}

/// What records trusts to start care relationships (`records.*` settings).
#[derive(Clone, Debug, Default)]
pub struct CarePolicy {
    /// Client ids of system feeds.
    pub feeds: HashSet<String>,
    /// How far before the write a staff writer's relationship may start (µs).
    pub backdate_us: i64,
    /// How long an open-ended relationship from a staff write lasts after the write (µs).
    pub staff_period_us: i64,
    /// How long a feed's relationship lasts after the care it shows ended (µs).
    pub after_end_us: i64,
}

impl CarePolicy {
    /// The relationship `shown` (what the resource says) that a write by `writer` at
    /// `written_us` may record, if any. `break_glass` is whether consent permitted the write
    /// only because of a break-glass grant.
    pub fn admit(
        &self,
        shown: CareRelationship,
        writer: &Actor,
        break_glass: bool,
        written_us: i64,
    ) -> Option<CareRelationship> {
        match writer.kind {
            "service" if self.feeds.contains(&writer.id) => Some(CareRelationship {
                end_us: shown.end_us.map(|e| e.saturating_add(self.after_end_us)),
                ..shown
            }),
            "staff" if !break_glass && !writer.organisation.is_empty() => {
                if !shown.organisation.eq_ignore_ascii_case(&writer.organisation) {
                    return None;
                }
                let start_us = shown.start_us.max(written_us - self.backdate_us);
                let latest_end = written_us + self.staff_period_us;
                let end_us = Some(shown.end_us.map_or(latest_end, |e| e.min(latest_end)).max(start_us));
                Some(CareRelationship {
                    start_us,
                    end_us,
                    ..shown
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    const NOW: i64 = 1_800_000_000_000_000;

    fn policy() -> CarePolicy {
        CarePolicy {
            feeds: HashSet::from(["pas-feed".to_string()]),
            backdate_us: 3 * DAY,
            staff_period_us: 90 * DAY,
            after_end_us: 0,
        }
    }

    fn staff(org: &str) -> Actor {
        Actor {
            kind: "staff",
            id: "555000000001".into(),
            organisation: org.into(),
            ..Actor::default()
        }
    }

    fn service(id: &str) -> Actor {
        Actor {
            kind: "service",
            id: id.into(),
            ..Actor::default()
        }
    }

    fn shown(org: &str, start_us: i64, end_us: Option<i64>) -> CareRelationship {
        CareRelationship {
            kind: "encounter",
            organisation: org.into(),
            start_us,
            end_us,
        }
    }

    #[test]
    fn staff_start_one_only_for_their_own_organisation_and_never_under_break_glass() {
        let p = policy();
        let own = p.admit(shown("A81001", NOW, None), &staff("A81001"), false, NOW);
        assert_eq!(own.map(|c| c.organisation), Some("A81001".to_string()));
        assert_eq!(
            p.admit(shown("RX1", NOW, None), &staff("A81001"), false, NOW),
            None,
            "naming another organisation grants it nothing"
        );
        assert_eq!(
            p.admit(shown("A81001", NOW, None), &staff("A81001"), true, NOW),
            None,
            "a write under break-glass grants nothing"
        );
    }

    #[test]
    fn a_staff_relationship_cannot_be_backdated_and_ends_unless_renewed() {
        let p = policy();
        let c = p
            .admit(shown("A81001", NOW - 400 * DAY, None), &staff("A81001"), false, NOW)
            .expect("own organisation");
        assert_eq!(c.start_us, NOW - 3 * DAY, "the start is held to the margin");
        assert_eq!(
            c.end_us,
            Some(NOW + 90 * DAY),
            "open-ended becomes the configured period"
        );
        let finished = p
            .admit(shown("A81001", NOW - DAY, Some(NOW)), &staff("A81001"), false, NOW)
            .expect("finished");
        assert_eq!((finished.start_us, finished.end_us), (NOW - DAY, Some(NOW)));
        let far = p
            .admit(
                shown("A81001", NOW, Some(NOW + 900 * DAY)),
                &staff("A81001"),
                false,
                NOW,
            )
            .expect("far end");
        assert_eq!(far.end_us, Some(NOW + 90 * DAY), "no end beyond the period");
    }

    #[test]
    fn staff_write_as_their_own_organisation_and_systems_name_theirs() {
        assert_eq!(writing_organisation(&staff("A81001"), "", "f").expect("own"), "A81001");
        assert_eq!(
            writing_organisation(&staff("A81001"), "a81001", "f").expect("same"),
            "A81001"
        );
        let other = writing_organisation(&staff("A81001"), "RX1", "source_organisation").expect_err("other");
        assert!(other.to_string().contains("source_organisation"), "{other}");
        assert_eq!(
            writing_organisation(&service("feed"), "rx1", "f").expect("system"),
            "RX1"
        );
        assert!(writing_organisation(&service("feed"), "not an ods code!", "f").is_err());
    }

    #[test]
    fn only_configured_feeds_speak_for_other_organisations() {
        let p = policy();
        let admission = shown("RX1", NOW - 400 * DAY, None);
        assert_eq!(
            p.admit(admission.clone(), &service("pas-feed"), false, NOW),
            Some(admission.clone()),
            "a feed's admission is taken as the source system recorded it"
        );
        assert_eq!(p.admit(admission, &service("some-app"), false, NOW), None);
    }

    #[test]
    fn a_feeds_relationship_lasts_the_configured_period_after_a_discharge() {
        let p = CarePolicy {
            after_end_us: 28 * DAY,
            ..policy()
        };
        let discharged = shown("RX1", NOW - 10 * DAY, Some(NOW));
        let kept = p.admit(discharged, &service("pas-feed"), false, NOW).expect("a feed");
        assert_eq!(kept.end_us, Some(NOW + 28 * DAY), "28 days after the discharge");
        let ongoing = p
            .admit(shown("RX1", NOW, None), &service("pas-feed"), false, NOW)
            .expect("a feed");
        assert_eq!(ongoing.end_us, None, "an admission has no end until the discharge");
    }
}
