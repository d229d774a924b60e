//! `sharedcare import`'s reader: a Bundle's entries or NDJSON lines. Each resource it gives is
//! one JSON object with a resourceType (a Bundle's, with a string id), on one line; read again
//! as NDJSON they come back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sharedcare_records::import::resources;

fuzz_target!(|text: &str| {
    let Ok(out) = resources(text) else {
        return;
    };
    for line in &out {
        assert!(!line.contains('\n'), "one resource per line: {line:?}");
        let v: Value = serde_json::from_str(line).expect("each is JSON");
        assert!(v.get("resourceType").and_then(Value::as_str).is_some(), "{line}");
    }
    let lone_bundle = out.len() == 1 && out[0].contains("\"Bundle\"");
    if !lone_bundle {
        assert_eq!(resources(&out.join("\n")).expect("read again"), out, "NDJSON round trip");
    }
});
