//! `sharedcare demo population`: a deterministic synthetic ICS of N people, each with a record
//! of about 10–60 resources across the demo organisations, written as NDJSON per writing
//! organisation for `sharedcare import --source <ODS>`. The same seed (and the same `--today`)
//! gives the same files byte for byte. Built from the demo record's story builder
//! ([`crate::demo_record`]), so the demo and the synthetic population are coded alike.
//!
//! NHS numbers come from the 999 range (never issued to people); every person is registered
//! at the demo practice by an EpisodeOfCare, and their hospital stays, referrals and care home
//! placements start the care relationships records derives from a feed's writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use sharedcare_kit::nhs::NhsNumber;

use crate::demo_record::{CARE_HOME, COMMUNITY, COUNCIL, GP, HOME_CARE, HOSPITAL, Person, Record, Story};

/// The most people one run writes: NHS numbers come from the 999 range (never issued to
/// people), which holds about 909,000 valid ones.
pub const MAX_PEOPLE: u64 = 900_000;

/// SplitMix64: a small, fast generator whose sequence for a seed never changes (a crate's
/// could, between versions, and the population must stay the same for the same seed).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `from` (the non-empty tables of this file): `below` keeps the index in range.
    #[allow(clippy::indexing_slicing)]
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

const GIVEN_FEMALE: &[&str] = &[
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Grace",
    "Freya",
    "Lily",
    "Sophia",
    "Ella",
    "Joan",
    "Margaret",
    "Susan",
    "Patricia",
    "Fatima",
    "Priya",
    "Zainab",
    "Agnieszka",
    "Siobhan",
    "Chloe",
];
const GIVEN_MALE: &[&str] = &[
    "Oliver", "George", "Noah", "Arthur", "Leo", "Harry", "Jack", "Oscar", "Muhammad", "Charlie", "John", "David",
    "Peter", "Michael", "Tomasz", "Rajesh", "Kwame", "Sean", "Daniel", "Ahmed",
];
const FAMILY: &[&str] = &[
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Robinson", "Wright",
    "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Khan", "Nowak", "Okafor", "Begum", "Murphy",
    "Hughes", "Edwards", "Ali", "Kowalski", "Mensah", "Clarke", "Lewis",
];

/// Long-term conditions (SNOMED CT), the age from which each is common, how common (%), and
/// the repeat medicine (dm+d) that usually goes with it.
/// A repeat medicine: dm+d code, name, dosage.
type Medicine = (&'static str, &'static str, &'static str);

/// A long-term condition: SNOMED CT code, name, the age from which it is common, how common
/// (%), and the medicine that usually goes with it.
type Condition = (&'static str, &'static str, u32, u64, Option<Medicine>);

const CONDITIONS: &[Condition] = &[
    (
        "59621000",
        "Essential hypertension",
        40,
        30,
        Some(("319283006", "Amlodipine 5mg tablets", "One tablet each morning")),
    ),
    (
        "44054006",
        "Type 2 diabetes mellitus",
        40,
        12,
        Some((
            "325278007",
            "Metformin 500mg tablets",
            "One tablet twice a day with food",
        )),
    ),
    (
        "195967001",
        "Asthma",
        0,
        10,
        Some((
            "320176004",
            "Salbutamol 100micrograms/dose inhaler",
            "Two puffs when needed",
        )),
    ),
    (
        "13645005",
        "Chronic obstructive lung disease",
        50,
        6,
        Some((
            "320176004",
            "Salbutamol 100micrograms/dose inhaler",
            "Two puffs when needed for breathlessness",
        )),
    ),
    (
        "239872002",
        "Osteoarthritis of hip",
        55,
        10,
        Some((
            "322236009",
            "Paracetamol 500mg tablets",
            "Two tablets up to four times a day when needed",
        )),
    ),
    ("26929004", "Alzheimer's disease", 70, 7, None),
    (
        "279039007",
        "Low back pain",
        20,
        8,
        Some((
            "322236009",
            "Paracetamol 500mg tablets",
            "Two tablets up to four times a day when needed",
        )),
    ),
    ("35489007", "Depressive disorder", 16, 8, None),
];

/// Laboratory results (LOINC) drawn on an admission: code, name, typical value, spread, unit.
const RESULTS: &[(&str, &str, f64, f64, &str)] = &[
    ("1988-5", "C reactive protein", 40.0, 60.0, "mg/L"),
    ("6690-2", "White blood cell count", 9.0, 6.0, "10*9/L"),
    ("2951-2", "Sodium", 138.0, 6.0, "mmol/L"),
    ("2823-3", "Potassium", 4.3, 0.8, "mmol/L"),
    ("2160-0", "Creatinine", 85.0, 40.0, "umol/L"),
];

/// Why people are admitted (SNOMED CT).
const ADMISSIONS: &[(&str, &str)] = &[
    ("68566005", "Urinary tract infectious disease"),
    ("233604007", "Pneumonia"),
    ("195951007", "Acute exacerbation of chronic obstructive airways disease"),
    ("2776000", "Delirium"),
];

/// Person `i`'s own generator: every person is drawn from a generator seeded by `seed` and
/// `i`, so any person can be drawn without drawing those before them.
fn rng_for(seed: u64, i: u64) -> Rng {
    let mut r = Rng(seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next();
    r
}

/// The first `count` NHS numbers of a population, in order: valid numbers from 999 000 000 up,
/// the range never issued to people (so two populations share numbers; load one at a time).
pub fn nhs_numbers(count: u64) -> impl Iterator<Item = String> {
    (999_000_000u32..)
        .filter_map(NhsNumber::from_stem)
        .map(|n| n.as_str().to_string())
        .take(count as usize)
}

/// Person `i`'s Patient resource id.
pub fn patient_id(seed: u64, i: u64) -> String {
    format!("syn-{seed}-{i}")
}

/// Who person `i` is: their Patient, drawn first from their own generator (which then goes on
/// to draw their record).
struct Drawn {
    rng: Rng,
    female: bool,
    given: &'static str,
    family: &'static str,
    age: i64,
    born: String,
    postcode: String,
}

fn draw(today: NaiveDate, seed: u64, i: u64) -> Drawn {
    let mut rng = rng_for(seed, i);
    let female = rng.chance(51);
    let given = *rng.pick(if female { GIVEN_FEMALE } else { GIVEN_MALE });
    let family = *rng.pick(FAMILY);
    let age = rng.below(95) as i64 + 1;
    let born = (today - chrono::Duration::days(age * 365 + rng.below(365) as i64))
        .format("%Y-%m-%d")
        .to_string();
    let postcode = format!(
        "NB{} {}{}{}",
        1 + rng.below(9),
        rng.below(10),
        (b'A' + rng.below(26) as u8) as char,
        (b'A' + rng.below(26) as u8) as char
    );
    Drawn {
        rng,
        female,
        given,
        family,
        age,
        born,
        postcode,
    }
}

/// Person `i`'s story so far: their Patient, written by the practice.
fn story(today: NaiveDate, seed: u64, i: u64, nhs: &str, d: &Drawn) -> Story {
    Story::of(
        today,
        &Person {
            id: patient_id(seed, i),
            nhs_number: nhs,
            given: d.given,
            family: d.family,
            born: &d.born,
            gender: if d.female { "female" } else { "male" },
            postcode: &d.postcode,
        },
    )
}

/// Person `i`'s Patient resource alone, as JSON (what the record-writing benchmarks put): the
/// same Patient their whole record starts with.
pub fn patient_at(today: NaiveDate, seed: u64, i: u64, nhs: &str) -> String {
    let d = draw(today, seed, i);
    let record = story(today, seed, i, nhs, &d).finish(nhs);
    record
        .parts
        .first()
        .and_then(|p| p.resources.first())
        .map(|r| r.to_string())
        .unwrap_or_default()
}

/// Person `i` of the population from `seed`, with NHS number `nhs`: their whole record.
pub fn person_at(today: NaiveDate, seed: u64, i: u64, nhs: &str) -> Record {
    let mut d = draw(today, seed, i);
    let mut s = story(today, seed, i, nhs, &d);
    let (rng, age) = (&mut d.rng, d.age);
    let registered = (age * 365).min(3_000 + rng.below(5_000) as i64);
    s.episode(GP, "GP registration", registered);
    // Long-term conditions by age, with their medicines and reviews.
    let mut long_term = 0;
    for (code, name, from_age, percent, medicine) in CONDITIONS {
        if age as u32 >= *from_age && rng.chance(*percent) {
            long_term += 1;
            let onset = rng.below((age as u64 - u64::from(*from_age)) * 365 + 30) as i64 + 30;
            s.problem(GP, code, name, onset);
            if let Some((mcode, mname, dose)) = medicine {
                s.repeat(mcode, mname, dose, onset.min(2_000));
            }
            if *code == "44054006" {
                for k in 0..(1 + rng.below(3)) as i64 {
                    let v = 45.0 + rng.below(30) as f64;
                    s.result(
                        GP,
                        "59261-8",
                        "Haemoglobin A1c (IFCC)",
                        v,
                        "mmol/mol",
                        "mmol/mol",
                        30 + k * 180,
                        None,
                    );
                }
            }
        }
    }
    // Visits to the practice, a weight at each.
    let kg = 50.0 + rng.below(50) as f64;
    for k in 0..(4 + rng.below(6 + 2 * long_term)) as i64 {
        let when = 20 + k * 150 + rng.below(120) as i64;
        let kind = if rng.chance(25) {
            ("185317003", "Telephone encounter")
        } else {
            ("11429006", "Consultation")
        };
        let visit = s.encounter(GP, "AMB", kind, when, Some(when));
        s.weight(GP, when, kg + rng.below(60) as f64 / 10.0 - 3.0, &visit);
    }
    if rng.chance(15) {
        s.allergy(
            "91936005",
            "Allergy to penicillin",
            "Rash",
            rng.below(9_000) as i64 + 30,
        );
    }
    if rng.chance(4) {
        s.allergy(
            "91935009",
            "Allergy to peanuts",
            "Swelling of lips and tongue",
            rng.below(9_000) as i64 + 30,
        );
    }
    if age >= 65 || long_term > 0 {
        s.vaccination("1181000221105", "Influenza vaccine", 40 + rng.below(60) as i64);
    }
    for k in 0..(1 + rng.below(3 + long_term)) as i64 {
        let sys = 110 + rng.below(50) as u32;
        s.blood_pressure(GP, 10 + k * 120 + rng.below(60) as i64, sys, 65 + rng.below(30) as u32);
    }
    // A hospital stay, more likely with age and illness.
    if rng.chance(8 + long_term * 6 + (age as u64 / 10)) {
        let from = 10 + rng.below(700) as i64;
        let nights = 1 + rng.below(10) as i64;
        let stay = s.encounter(
            HOSPITAL,
            "IMP",
            ("32485007", "Hospital admission"),
            from,
            Some((from - nights).max(0)),
        );
        let (code, why) = *rng.pick(ADMISSIONS);
        s.diagnosis(HOSPITAL, code, why, from, &stay);
        for (lcode, lname, typical, spread, unit) in RESULTS.iter().take(2 + rng.below(4) as usize) {
            let v = ((typical + (rng.below(1000) as f64 / 1000.0 - 0.5) * spread) * 10.0).round() / 10.0;
            s.result(HOSPITAL, lcode, lname, v, unit, unit, from, Some(&stay));
        }
        s.letter(
            HOSPITAL,
            ("373942005", "Discharge summary"),
            "Discharge summary",
            &format!(
                "Admitted with {}. Treated and discharged home after {nights} nights.",
                why.to_lowercase()
            ),
            (from - nights).max(0),
            Some(&stay),
        );
        if rng.chance(40) {
            let home = (from - nights).max(0);
            s.referral(
                HOSPITAL,
                COMMUNITY,
                ("1097151000000103", "Referral to falls service"),
                "Reduced mobility after an admission",
                home,
            );
            // Seen by the community falls service, if the referral is old enough.
            if home > 14 {
                let seen = home - 7 - rng.below(7) as i64;
                let visit = s.encounter(COMMUNITY, "HH", ("11429006", "Consultation"), seen, Some(seen));
                s.weight(COMMUNITY, seen, kg, &visit);
            }
        }
    }
    // Care in later life: a care home placement or a package of home care, and the council's
    // assessment behind it.
    if age >= 75 && rng.chance(12) {
        let since = 30 + rng.below(900) as i64;
        s.episode(CARE_HOME, "Residential care", since);
        s.care_plan(
            CARE_HOME,
            "Care home care plan",
            &["Help with washing and dressing", "Walk with staff to meals"],
            since,
        );
        s.assessment(
            COUNCIL,
            "Care Act needs assessment",
            &[("Outcome", "Residential care")],
            since + 14,
        );
        s.alert(CARE_HOME, "129839007", "At risk for falls", since);
    } else if age >= 65 && rng.chance(10) {
        let since = 14 + rng.below(400) as i64;
        s.episode(HOME_CARE, "Home care package", since);
        s.care_plan(
            HOME_CARE,
            "Home care support plan",
            &["Morning visit: help to wash and dress"],
            since,
        );
        s.assessment(
            COUNCIL,
            "Care Act needs assessment",
            &[("Outcome", "Home care, one visit a day")],
            since + 7,
        );
    }
    if rng.chance(25) {
        s.appointment(
            GP,
            ("", "Long-term condition review"),
            "Annual review",
            7 + rng.below(120) as i64,
        );
    }
    s.finish(nhs)
}

/// The population: `people` records from `seed`, as of `today`.
pub fn people(today: NaiveDate, seed: u64, people: u64) -> impl Iterator<Item = Record> {
    nhs_numbers(people)
        .enumerate()
        .map(move |(i, nhs)| person_at(today, seed, i as u64, &nhs))
}

/// What a run wrote.
pub struct Written {
    /// People.
    pub people: u64,
    /// Resources per writing organisation (ODS code).
    pub resources: BTreeMap<&'static str, u64>,
}

/// Writes `count` people from `seed` to `<dir>/<ODS>.ndjson`, one file per writing
/// organisation (the GP practice's holds the Patients, so import it first).
pub fn write(dir: &Path, today: NaiveDate, seed: u64, count: u64) -> anyhow::Result<Written> {
    if !(1..=MAX_PEOPLE).contains(&count) {
        bail!("--patients: must be 1 to {MAX_PEOPLE}, got {count}");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--out: cannot create {}", dir.display()))?;
    let mut files: BTreeMap<&'static str, std::io::BufWriter<std::fs::File>> = BTreeMap::new();
    let mut written = Written {
        people: 0,
        resources: BTreeMap::new(),
    };
    for org in [GP, HOSPITAL, COMMUNITY, CARE_HOME, HOME_CARE, COUNCIL] {
        let path = dir.join(format!("{org}.ndjson"));
        let f = std::fs::File::create(&path).with_context(|| format!("--out: cannot write {}", path.display()))?;
        files.insert(org, std::io::BufWriter::with_capacity(1 << 20, f));
    }
    for record in people(today, seed, count) {
        for part in &record.parts {
            let out = files.get_mut(part.org).context("an organisation without a file")?;
            for r in &part.resources {
                serde_json::to_writer(&mut *out, r)?;
                out.write_all(b"\n")?;
            }
            *written.resources.entry(part.org).or_default() += part.resources.len() as u64;
        }
        written.people += 1;
    }
    for (_, mut f) in files {
        f.flush()?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 6).expect("date")
    }

    #[test]
    fn the_same_seed_gives_the_same_people_and_another_seed_others() {
        let a: Vec<String> = people(today(), 7, 50).map(|r| format!("{:?}", r.parts)).collect();
        let b: Vec<String> = people(today(), 7, 50).map(|r| format!("{:?}", r.parts)).collect();
        let c: Vec<String> = people(today(), 8, 50).map(|r| format!("{:?}", r.parts)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_person_has_a_plausible_record_records_accepts() {
        let mut sizes = Vec::new();
        let mut nhs = std::collections::HashSet::new();
        for r in people(today(), 1, 300) {
            assert!(nhs.insert(r.nhs_number.clone()), "NHS numbers are unique");
            assert!(r.nhs_number.starts_with("999"), "{}", r.nhs_number);
            sizes.push(r.resources());
            for part in &r.parts {
                for res in &part.resources {
                    sharedcare_records::fhir::parse(&res.to_string())
                        .unwrap_or_else(|e| panic!("{} {}: {e}", part.org, res["id"]));
                }
            }
        }
        let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!(
            min >= Some(10) && max <= Some(70),
            "about 10-60 resources a person: {min:?}..{max:?}"
        );
        assert!((15.0..=45.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn any_person_can_be_drawn_alone_as_the_population_draws_them() {
        let all: Vec<Record> = people(today(), 3, 40).collect();
        let numbers: Vec<String> = nhs_numbers(40).collect();
        for i in [0u64, 17, 39] {
            let alone = person_at(today(), 3, i, &numbers[i as usize]);
            assert_eq!(
                format!("{:?}", alone.parts),
                format!("{:?}", all[i as usize].parts),
                "person {i}"
            );
            let patient: serde_json::Value =
                serde_json::from_str(&patient_at(today(), 3, i, &numbers[i as usize])).expect("json");
            assert_eq!(patient, all[i as usize].parts[0].resources[0], "person {i}'s Patient");
            assert_eq!(patient["id"], patient_id(3, i));
        }
    }

    #[test]
    fn bad_counts_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = write(dir.path(), today(), 1, 0).err().expect("refused").to_string();
        assert!(e.starts_with("--patients: must be 1 to"), "{e}");
    }
}
