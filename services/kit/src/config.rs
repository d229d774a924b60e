//! Layered configuration: defaults → TOML file → `SHAREDCARE_*` environment → flags.
//!
//! Environment keys use `__` for nesting (`SHAREDCARE_HTTP__LISTEN` sets `http.listen`).
//! Values are read as TOML scalars when they parse as one (numbers, booleans, arrays) and as
//! strings otherwise. Unknown keys are errors. Every error names the key, where the value came
//! from and what was expected. The loader takes the environment as an argument so tests can
//! pass a map instead of the process environment.
//!
//! Hand-written rather than `config`/`figment` because neither reports which *source* (file,
//! variable or flag) supplied a bad value when the environment is injected as a map.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// The environment variable prefix every Sharedcare setting uses.
pub const ENV_PREFIX: &str = "SHAREDCARE_";

/// A setting that is not acceptable: its key (`records.consent_url`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The setting's key, dotted as in the TOML file.
    pub key: String,
    /// What is wrong with its value, and what is expected.
    pub reason: String,
}

impl Invalid {
    /// `key` is invalid because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks that go beyond types (ranges, combinations); run after loading.
pub trait Validate {
    /// The first invalid setting, if any.
    fn validate(&self) -> std::result::Result<(), Invalid>;
}

/// Loads `T` from its defaults, an optional TOML file, the `SHAREDCARE_*` entries of `env` and
/// explicit overrides (command-line flags, as `("http.listen", "127.0.0.1:0")`).
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, String)],
) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut root =
        toml::Value::try_from(T::default()).map_err(|e| Error::Config(format!("defaults do not serialise: {e}")))?;
    let mut sources: BTreeMap<String, String> = BTreeMap::new();

    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?;
        let label = format!("file {}", path.display());
        merge(&mut root, value, "", &label, &mut sources);
    }

    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    env.sort();
    for (name, raw) in env {
        let key = name[ENV_PREFIX.len()..].to_ascii_lowercase().replace("__", ".");
        if key.is_empty() {
            continue;
        }
        set_path(&mut root, &key, scalar(&raw))
            .map_err(|why| Error::Config(format!("`{key}` (from {name}): {why}")))?;
        sources.insert(key, name);
    }

    for (key, raw) in overrides {
        set_path(&mut root, key, scalar(raw)).map_err(|why| Error::Config(format!("`{key}` (from flag): {why}")))?;
        sources.insert((*key).to_string(), "command-line flag".to_string());
    }

    let value: T = serde_path_to_error::deserialize(root).map_err(|e| {
        let key = e.path().to_string();
        let from = source_of(&sources, &key);
        Error::Config(format!("`{key}`{from}: {}", e.inner()))
    })?;
    value.validate().map_err(|Invalid { key, reason: why }| {
        let from = source_of(&sources, &key);
        Error::Config(format!("`{key}`{from}: {why}"))
    })?;
    Ok(value)
}

/// Renders a configuration as TOML (for `--dump-config`).
pub fn dump<T: Serialize>(value: &T) -> Result<String> {
    toml::to_string_pretty(value).map_err(|e| Error::Config(format!("cannot render: {e}")))
}

fn source_of(sources: &BTreeMap<String, String>, key: &str) -> String {
    // The most specific recorded source at or above `key`.
    let mut k = key.to_string();
    loop {
        if let Some(s) = sources.get(&k) {
            return format!(" (from {s})");
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => return String::new(),
        }
    }
}

fn scalar(raw: &str) -> toml::Value {
    let trimmed = raw.trim();
    let looks_typed = trimmed.starts_with('[')
        || trimmed == "true"
        || trimmed == "false"
        || trimmed.parse::<i64>().is_ok()
        || (trimmed.parse::<f64>().is_ok() && trimmed.contains('.'));
    if looks_typed
        && let Ok(toml::Value::Table(mut t)) = toml::from_str::<toml::Value>(&format!("v = {trimmed}"))
        && let Some(v) = t.remove("v")
    {
        return v;
    }
    toml::Value::String(raw.to_string())
}

fn merge(into: &mut toml::Value, from: toml::Value, prefix: &str, label: &str, sources: &mut BTreeMap<String, String>) {
    match (into, from) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for (k, v) in b {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match a.get_mut(&k) {
                    Some(existing @ toml::Value::Table(_)) if v.is_table() => merge(existing, v, &path, label, sources),
                    _ => {
                        sources.insert(path, label.to_string());
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => {
            sources.insert(prefix.to_string(), label.to_string());
            *slot = v;
        }
    }
}

/// A dotted key whose prefix names a value that is not a section (`http.listen.port`).
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a section")]
struct NotASection(String);

fn set_path(root: &mut toml::Value, key: &str, value: toml::Value) -> std::result::Result<(), NotASection> {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = match cur {
            toml::Value::Table(t) => t,
            _ => return Err(NotASection(parts.get(..i).unwrap_or_default().join("."))),
        };
        if i + 1 == parts.len() {
            table.insert((*part).to_string(), value);
            return Ok(());
        }
        cur = table
            .entry((*part).to_string())
            .or_insert_with(|| toml::Value::Table(toml::map::Map::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Http {
        listen: SocketAddr,
        timeout_ms: u64,
    }
    impl Default for Http {
        fn default() -> Self {
            Http {
                listen: ([127, 0, 0, 1], 8080).into(),
                timeout_ms: 1000,
            }
        }
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        http: Http,
        name: String,
    }
    impl Validate for Cfg {
        fn validate(&self) -> std::result::Result<(), Invalid> {
            if self.http.timeout_ms == 0 {
                return Err(Invalid::new("http.timeout_ms", "must be greater than 0"));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn environment_overrides_defaults_with_nesting() {
        let cfg: Cfg = load(
            None,
            env(&[
                ("SHAREDCARE_HTTP__LISTEN", "0.0.0.0:9000"),
                ("SHAREDCARE_NAME", "x"),
                ("OTHER", "1"),
            ]),
            &[],
        )
        .expect("loads");
        assert_eq!(cfg.http.listen, "0.0.0.0:9000".parse::<SocketAddr>().expect("addr"));
        assert_eq!(cfg.name, "x");
        assert_eq!(cfg.http.timeout_ms, 1000);
    }

    #[test]
    fn wrong_form_names_the_key_and_the_variable() {
        let err = load::<Cfg>(None, env(&[("SHAREDCARE_HTTP__LISTEN", "not-an-address")]), &[])
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("`http.listen`"), "{err}");
        assert!(err.contains("SHAREDCARE_HTTP__LISTEN"), "{err}");
        assert!(err.contains("socket address"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load::<Cfg>(None, env(&[("SHAREDCARE_HTTP__LISTN", "1")]), &[])
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn file_then_env_then_flags_and_validation_names_the_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"file\"\n[http]\ntimeout_ms = 5\n").expect("write");
        let cfg: Cfg = load(
            Some(&path),
            env(&[("SHAREDCARE_NAME", "env")]),
            &[("http.timeout_ms", "7".into())],
        )
        .expect("loads");
        assert_eq!((cfg.name.as_str(), cfg.http.timeout_ms), ("env", 7));
        let err = load::<Cfg>(Some(&path), env(&[]), &[("http.timeout_ms", "0".into())])
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("`http.timeout_ms` (from command-line flag): must be greater than 0"),
            "{err}"
        );
        let err = load::<Cfg>(Some(&path), env(&[("SHAREDCARE_HTTP__TIMEOUT_MS", "soon")]), &[])
            .expect_err("wrong type")
            .to_string();
        assert!(
            err.contains("`http.timeout_ms` (from SHAREDCARE_HTTP__TIMEOUT_MS)"),
            "{err}"
        );
    }
}
