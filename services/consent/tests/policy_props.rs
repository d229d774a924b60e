//! Properties of the consent decision over generated facts and asks (proptest): deny by
//! default, withheld categories never released, and a revocation binds the next decision.
// Test code: a panic is a failed test.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use sharedcare_consent::policy::{
    Action, Ask, BreakGlass, Decision, Directive, Effect, Facts, Provision, Relationship, Who, decide,
};

const NOW: i64 = 1_800_000_000;
const PATIENT: &str = "9434765919";
const ORGS: &[&str] = &["A81001", "RX1", "CH001", "B82005"];
const LABELS: &[&str] = &["R", "V", "PSY", "SEX", "HIV", "ETH"];
const PURPOSES: &[&str] = &["TREAT", "ETREAT", "BTG", "CAREMGT", "HRESCH", "HPAYMT"];

fn org() -> impl Strategy<Value = String> {
    prop::sample::select(ORGS).prop_map(str::to_string)
}

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(LABELS).prop_map(str::to_string)
}

fn action() -> impl Strategy<Value = Action> {
    prop::sample::select(vec![
        Action::Read,
        Action::Search,
        Action::Create,
        Action::Update,
        Action::Delete,
    ])
}

fn period() -> impl Strategy<Value = Option<(i64, Option<i64>)>> {
    prop::option::of((NOW - 1000..NOW + 1000, prop::option::of(NOW - 500..NOW + 2000)))
}

fn leaf_provision() -> impl Strategy<Value = Provision> {
    (
        prop::option::of(prop::sample::select(vec![Effect::Permit, Effect::Deny])),
        period(),
        prop::collection::vec(org(), 0..2),
        prop::collection::vec(action(), 0..2),
        prop::collection::vec(label(), 0..2),
    )
        .prop_map(|(kind, period, organisations, actions, security_labels)| Provision {
            kind,
            period,
            organisations,
            actions,
            security_labels,
            ..Provision::default()
        })
}

fn directive() -> impl Strategy<Value = Directive> {
    (
        leaf_provision(),
        prop::collection::vec(leaf_provision(), 0..3),
        prop::sample::select(vec!["active", "active", "inactive", "rejected"]),
        "[a-z]{4}",
    )
        .prop_map(|(mut root, nested, status, id)| {
            root.provision = nested;
            Directive {
                id,
                status: status.into(),
                provision: root,
            }
        })
}

fn relationship() -> impl Strategy<Value = Relationship> {
    (
        org(),
        prop::sample::select(vec!["gp_registration", "encounter", "referral"]),
        NOW - 2000..NOW + 100,
        prop::option::of(NOW - 1000..NOW + 2000),
    )
        .prop_map(|(org, kind, start, end)| Relationship {
            org,
            kind: kind.into(),
            start,
            end,
        })
}

fn facts() -> impl Strategy<Value = Facts> {
    (
        prop::collection::vec(directive(), 0..4),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(relationship(), 0..4),
    )
        .prop_map(|(directives, national_opt_out, gp_dissent, relationships)| Facts {
            directives,
            national_opt_out,
            gp_dissent,
            relationships,
            break_glass: Vec::new(),
            representatives: Vec::new(),
        })
}

fn staff_ask() -> impl Strategy<Value = Ask> {
    (
        org(),
        action(),
        prop::collection::vec(label(), 0..3),
        prop::sample::select(PURPOSES),
    )
        .prop_map(|(org, action, categories, purpose)| Ask {
            who: Who::Staff {
                person: "555000111222".into(),
                org,
                role: "R8000".into(),
            },
            nhs_number: PATIENT.into(),
            action,
            categories,
            purpose: purpose.into(),
            now: NOW,
        })
}

fn org_of(ask: &Ask) -> String {
    match &ask.who {
        Who::Staff { org, .. } | Who::Service { org, .. } => org.clone(),
        Who::Patient { .. } => String::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Staff whose organisation has no live relationship with the patient, and who hold no
    /// break-glass grant, are refused whatever else is true.
    #[test]
    fn deny_by_default(ask in staff_ask(), mut facts in facts()) {
        let org = org_of(&ask);
        facts.relationships.retain(|r| !r.org.eq_ignore_ascii_case(&org) || r.start > NOW || r.end.is_some_and(|e| e <= NOW));
        prop_assert_eq!(decide(&ask, &facts).decision, Decision::Deny);
    }

    /// A category an active, whole-record directive withholds is never released by a read
    /// that carries it: the answer withholds it, or refuses.
    #[test]
    fn a_withheld_category_is_never_released(mut ask in staff_ask(), mut facts in facts(), withheld in label()) {
        ask.action = Action::Read;
        if !ask.categories.contains(&withheld) {
            ask.categories.push(withheld.clone());
        }
        facts.directives.push(Directive {
            id: "withhold".into(),
            status: "active".into(),
            provision: Provision {
                kind: Some(Effect::Permit),
                provision: vec![Provision {
                    kind: Some(Effect::Deny),
                    security_labels: vec![withheld.clone()],
                    ..Provision::default()
                }],
                ..Provision::default()
            },
        });
        match decide(&ask, &facts).decision {
            Decision::Permit => prop_assert!(false, "{withheld} released: {facts:?}"),
            Decision::Withhold(hidden) => prop_assert!(hidden.contains(&withheld), "{hidden:?} lacks {withheld}"),
            Decision::Deny => {}
        }
    }

    /// Whatever was permitted, a revocation binds the next decision: an active whole-record
    /// deny directive, or the end of the relationship that permitted it.
    #[test]
    fn a_revocation_binds_the_next_decision(mut ask in staff_ask(), facts in facts()) {
        ask.action = Action::Read;
        if decide(&ask, &facts).decision == Decision::Deny {
            return Ok(());
        }
        let mut revoked = facts.clone();
        revoked.directives.push(Directive {
            id: "revoke".into(),
            status: "active".into(),
            provision: Provision { kind: Some(Effect::Deny), ..Provision::default() },
        });
        prop_assert_eq!(decide(&ask, &revoked).decision, Decision::Deny, "after a deny directive");
        let org = org_of(&ask);
        let mut ended = facts.clone();
        for r in ended.relationships.iter_mut().filter(|r| r.org.eq_ignore_ascii_case(&org)) {
            r.end = Some(NOW);
        }
        prop_assert_eq!(decide(&ask, &ended).decision, Decision::Deny, "after the relationship ended");
    }

    /// Break-glass needs an emergency purpose and the grant's own person, and lapses.
    #[test]
    fn break_glass_is_personal_and_lapses(ask in staff_ask(), mut facts in facts(), lapsed in any::<bool>()) {
        let org = org_of(&ask);
        facts.relationships.retain(|r| !r.org.eq_ignore_ascii_case(&org));
        facts.break_glass.push(BreakGlass {
            person: "someone-else".into(),
            org: org.clone(),
            start: NOW - 10,
            end: NOW + 10,
        });
        facts.break_glass.push(BreakGlass {
            person: "555000111222".into(),
            org,
            start: NOW - 100,
            end: if lapsed { NOW } else { NOW + 100 },
        });
        let outcome = decide(&ask, &facts);
        let emergency = matches!(ask.purpose.as_str(), "ETREAT" | "BTG");
        if !emergency || lapsed {
            prop_assert_eq!(outcome.decision, Decision::Deny);
        } else if outcome.decision != Decision::Deny {
            prop_assert!(outcome.break_glass, "permitted on the grant, and said so: {outcome:?}");
        }
    }
}

/// Two directives: one withholds a category, another releases only that category from a
/// whole-record deny. The stricter wins: the category stays withheld.
#[test]
fn a_release_in_one_directive_does_not_undo_a_withholding_in_another() {
    let ask = Ask {
        who: Who::Staff {
            person: "555000111222".into(),
            org: "A81001".into(),
            role: "R8000".into(),
        },
        nhs_number: PATIENT.into(),
        action: Action::Read,
        categories: vec!["PSY".into()],
        purpose: "TREAT".into(),
        now: NOW,
    };
    let withhold = Directive {
        id: "withhold".into(),
        status: "active".into(),
        provision: Provision {
            kind: Some(Effect::Permit),
            provision: vec![Provision {
                kind: Some(Effect::Deny),
                security_labels: vec!["PSY".into()],
                ..Provision::default()
            }],
            ..Provision::default()
        },
    };
    let release = Directive {
        id: "release".into(),
        status: "active".into(),
        provision: Provision {
            kind: Some(Effect::Deny),
            provision: vec![Provision {
                kind: Some(Effect::Permit),
                security_labels: vec!["PSY".into(), "class:Observation".into()],
                ..Provision::default()
            }],
            ..Provision::default()
        },
    };
    let facts = Facts {
        directives: vec![withhold, release],
        relationships: vec![Relationship {
            org: "A81001".into(),
            kind: "gp_registration".into(),
            start: NOW - 100,
            end: None,
        }],
        ..Facts::default()
    };
    let decided = decide(&ask, &facts).decision;
    assert_ne!(
        decided,
        Decision::Permit,
        "PSY released despite the withholding directive"
    );
    let mut by_class = ask.clone();
    by_class.categories = vec!["class:Observation".into(), "PSY".into()];
    let decided = decide(&by_class, &facts).decision;
    assert_ne!(decided, Decision::Permit, "PSY released with a released class");
}
