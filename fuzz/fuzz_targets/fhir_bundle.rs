//! Transaction and batch Bundles: each entry checked, ids given to created resources and
//! `urn:uuid:` references between entries rewritten — everything before the store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|json: &str| {
    let Ok(bundle) = serde_json::from_str::<Value>(json) else {
        return;
    };
    let Some(Value::Array(entries)) = bundle.get("entry") else {
        return;
    };
    if entries.len() > sharedcare_records::bundle::MAX_ENTRIES {
        return;
    }
    if let Ok(prepared) = sharedcare_records::bundle::prepare(entries) {
        assert_eq!(prepared.len(), entries.len(), "one resource per entry");
        for (r, _, _) in &prepared {
            assert!(!r.id.is_empty(), "every resource has its id");
            let body = serde_json::to_string(&r.body).expect("JSON");
            assert!(
                !body.contains("\"reference\":\"urn:uuid:"),
                "no reference left to a urn:uuid: {body}"
            );
        }
    }
});
