//! FHIR resource validation: a PUT body, a gRPC `resource_json`, an NDJSON import line. What
//! is accepted has a known resource type and an id that is a FHIR id.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|json: &str| {
    if let Ok(r) = sharedcare_records::fhir::parse(json) {
        assert!(
            sharedcare_records::fhir::RESOURCE_TYPES.contains(&r.resource_type.as_str()),
            "{}",
            r.resource_type
        );
        assert!(
            r.id.is_empty()
                || (r.id.len() <= 64
                    && r.id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')),
            "{:?}",
            r.id
        );
    }
});
