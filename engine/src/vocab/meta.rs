//! Connection metadata: named JSON values attached to a connection (claims from its
//! token, a display name, a role). Stored as JSON so the registry and presence can
//! show them from any shard; read and written with typed helpers.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// A connection's metadata: JSON values by key.
pub type Meta = Map<String, Value>;

/// A value that could not be stored as metadata (it does not serialize to JSON,
/// e.g. a map with non-string keys).
#[derive(Debug)]
pub struct MetaError(pub String);

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metadata value is not JSON: {}", self.0)
    }
}

impl std::error::Error for MetaError {}

/// Metadata as a connection holds it: nothing allocated until the first value.
#[derive(Debug, Default)]
pub(crate) struct MetaCell(std::cell::RefCell<Option<Box<Meta>>>);

impl MetaCell {
    pub(crate) fn set<T: Serialize>(&self, key: &str, value: T) -> Result<(), MetaError> {
        let v = serde_json::to_value(value).map_err(|e| MetaError(e.to_string()))?;
        self.set_value(key, v);
        Ok(())
    }

    pub(crate) fn set_value(&self, key: &str, value: Value) {
        self.0
            .borrow_mut()
            .get_or_insert_with(Box::default)
            .insert(key.to_string(), value);
    }

    /// Add every entry of `meta` (replacing equal keys).
    pub(crate) fn extend(&self, meta: Meta) {
        if meta.is_empty() {
            return;
        }
        self.0
            .borrow_mut()
            .get_or_insert_with(Box::default)
            .extend(meta);
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let guard = self.0.borrow();
        let v = guard.as_ref()?.get(key)?;
        T::deserialize(v).ok()
    }

    pub(crate) fn remove(&self, key: &str) -> bool {
        self.0
            .borrow_mut()
            .as_mut()
            .is_some_and(|m| m.remove(key).is_some())
    }

    /// A copy of everything.
    pub(crate) fn snapshot(&self) -> Meta {
        self.0.borrow().as_deref().cloned().unwrap_or_default()
    }

    /// A copy of the listed keys only (presence shows a subset).
    pub(crate) fn subset(&self, keys: &[String]) -> Meta {
        let guard = self.0.borrow();
        let Some(m) = guard.as_ref() else {
            return Meta::new();
        };
        keys.iter()
            .filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_round_trip_and_subset() {
        let m = MetaCell::default();
        assert_eq!(m.get::<String>("name"), None);
        m.set("name", "ada").unwrap();
        m.set("age", 36u32).unwrap();
        m.set("tags", vec!["a", "b"]).unwrap();
        assert_eq!(m.get::<String>("name").as_deref(), Some("ada"));
        assert_eq!(m.get::<u32>("age"), Some(36));
        // A value of another type is absent, not a panic.
        assert_eq!(m.get::<u32>("name"), None);
        assert_eq!(m.get::<Vec<String>>("tags").unwrap(), ["a", "b"]);
        let sub = m.subset(&["name".into(), "missing".into()]);
        assert_eq!(Value::Object(sub), serde_json::json!({"name": "ada"}));
        assert!(m.remove("age"));
        assert!(!m.remove("age"));
    }

    #[test]
    fn non_json_values_are_refused() {
        let m = MetaCell::default();
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1);
        assert!(m.set("bad", map).is_err());
        assert!(m.snapshot().is_empty());
    }
}
