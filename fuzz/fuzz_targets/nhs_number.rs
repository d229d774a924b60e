//! The NHS number parser (every NHS number that enters: FHIR identifiers, HL7 PID-3, forms).
//! A number it accepts is ten digits with a valid check digit, and reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sharedcare_kit::nhs::NhsNumber;

fuzz_target!(|text: &str| {
    if let Ok(n) = NhsNumber::parse(text) {
        let digits = n.as_str();
        assert!(
            digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()),
            "{digits:?}"
        );
        assert_eq!(NhsNumber::parse(digits).as_ref(), Ok(&n), "parsing is idempotent");
    }
});
