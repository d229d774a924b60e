//! What `sharedcare import` reads from a file, before anything is sent: a FHIR Bundle's
//! entries or NDJSON lines (one resource per line, as FHIR Bulk Data exports them). No I/O.

use sharedcare_kit::json::Fields;
use std::collections::HashMap;

use serde_json::Value;

/// Why a file cannot be imported, naming the line or entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadImport(pub String);

/// The resources in `text`, each as one line of JSON: a Bundle's entries (ids from `urn:uuid:`
/// fullUrls, so that a resumed import writes the same resources, and references to them
/// rewritten) or NDJSON lines as they are. Errors name the line or entry.
pub fn resources(text: &str) -> Result<Vec<String>, BadImport> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && let Ok(v) = serde_json::from_str::<Value>(trimmed)
        && v.get("resourceType").and_then(Value::as_str) == Some("Bundle")
    {
        return bundle_resources(v);
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| BadImport(format!("line {}: {why}", n + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&format!("not a JSON resource ({e})")))?;
        if v.get("resourceType").and_then(Value::as_str).is_none() {
            return Err(bad("resourceType is required"));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

fn bundle_resources(bundle: Value) -> Result<Vec<String>, BadImport> {
    let entries = match bundle.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries.clone(),
        Some(_) => return Err(BadImport("entry: must be an array".into())),
    };
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut resources = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let bad = |why: &str| BadImport(format!("entry[{i}].{why}"));
        let Some(Value::Object(mut r)) = e.get("resource").cloned() else {
            return Err(bad("resource: is required"));
        };
        let rtype = r
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("resource.resourceType: is required"))?
            .to_string();
        let full_url = e.get("fullUrl").and_then(Value::as_str).unwrap_or("");
        match r.get("id") {
            None => {
                let Some(u) = full_url.strip_prefix("urn:uuid:") else {
                    return Err(bad("resource.id: is required unless fullUrl is a urn:uuid"));
                };
                r.insert("id".into(), Value::String(u.to_string()));
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err(bad("resource.id: must be a string")),
        }
        let id = r.at("id").as_str().unwrap_or("").to_string();
        if !full_url.is_empty() {
            ids.insert(full_url.to_string(), format!("{rtype}/{id}"));
        }
        resources.push(Value::Object(r));
    }
    Ok(resources
        .into_iter()
        .map(|mut r| {
            crate::bundle::rewrite(&mut r, &ids);
            r.to_string()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_get_stable_ids_from_urn_uuids_and_references_follow() {
        let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:0b3f5a4e-2c1d-4e6f-8a9b-1c2d3e4f5a6b","resource":{"resourceType":"Patient"}},
            {"resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"urn:uuid:0b3f5a4e-2c1d-4e6f-8a9b-1c2d3e4f5a6b"}}}]}"#;
        let r = resources(bundle).expect("bundle");
        let obs: Value = serde_json::from_str(&r[1]).expect("json");
        assert_eq!(
            obs["subject"]["reference"],
            "Patient/0b3f5a4e-2c1d-4e6f-8a9b-1c2d3e4f5a6b"
        );
        let again = resources(bundle).expect("bundle");
        assert_eq!(r, again, "the same file gives the same ids (resumable)");
    }

    #[test]
    fn ndjson_lines_are_named_when_bad() {
        let err = resources("{\"resourceType\":\"Patient\"}\n\nnot json\n").expect_err("bad line");
        assert!(err.to_string().starts_with("line 3:"), "{err}");
        let err = resources("{\"resourceType\":\"Patient\"}\n{\"id\":\"x\"}\n").expect_err("no type");
        assert_eq!(err.to_string(), "line 2: resourceType is required");
    }

    #[test]
    fn bundle_entries_are_named_when_bad() {
        let err = resources(r#"{"resourceType":"Bundle","entry":{}}"#).expect_err("entry not an array");
        assert_eq!(err.to_string(), "entry: must be an array");
        let err = resources(r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":7}}]}"#)
            .expect_err("numeric id");
        assert_eq!(err.to_string(), "entry[0].resource.id: must be a string");
        let err = resources(
            r#"{"resourceType":"Bundle","entry":[{"fullUrl":"Patient/1","resource":{"resourceType":"Patient"}}]}"#,
        )
        .expect_err("no id");
        assert!(
            err.to_string().starts_with("entry[0].resource.id: is required"),
            "{err}"
        );
    }
}
