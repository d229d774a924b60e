//! Reading and writing JSON members without indexing: `v["key"]` reads Null for a missing
//! member (as this does), but `v["key"] = x` panics when `v` is not an object, and clippy's
//! `indexing_slicing` (denied outside tests) cannot tell the two apart. [`Fields`] says which.

use serde_json::Value;

static NULL: Value = Value::Null;

/// Members of a JSON object, read and written without a panic.
pub trait Fields {
    /// Member `key`, or Null when it is missing or this is not an object.
    fn at(&self, key: &str) -> &Value;
    /// Sets member `key` on an object (Null becomes an empty object first, as `v[key] = x`
    /// does); any other value is left as it is.
    fn put(&mut self, key: &str, value: Value);
}

impl Fields for Value {
    fn at(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }

    fn put(&mut self, key: &str, value: Value) {
        if self.is_null() {
            *self = Value::Object(serde_json::Map::new());
        }
        if let Some(members) = self.as_object_mut() {
            members.insert(key.to_string(), value);
        }
    }
}

impl Fields for serde_json::Map<String, Value> {
    fn at(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }

    fn put(&mut self, key: &str, value: Value) {
        self.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_like_indexing_and_writes_without_a_panic() {
        let mut v = json!({"a": {"b": 1}});
        assert_eq!(v.at("a").at("b"), &json!(1));
        assert_eq!(v.at("missing"), &Value::Null);
        assert_eq!(
            json!([1, 2]).at("a"),
            &Value::Null,
            "not an object: Null, as v[\"a\"] reads"
        );
        v.put("c", json!("x"));
        assert_eq!(v["c"], "x");
        let mut null = Value::Null;
        null.put("k", json!(true));
        assert_eq!(null, json!({"k": true}));
        let mut array = json!([1]);
        array.put("k", json!(true));
        assert_eq!(array, json!([1]), "v[\"k\"] = x would panic here");
    }
}
