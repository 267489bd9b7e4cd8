//! The configured resources of one kind, looked up by name.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Every configured resource of one kind (`T` is its cheap-`Clone` handle), by name.
#[derive(Debug)]
pub struct Resources<T> {
    /// The operation named by a failed lookup (`cache`, `rate_limit`…).
    op: &'static str,
    /// What the kind is called in its message (`cache`, `rate-limit policy`…).
    what: &'static str,
    by_name: BTreeMap<String, T>,
}

impl<T: Clone> Resources<T> {
    pub(crate) fn new(op: &'static str, what: &'static str, by_name: BTreeMap<String, T>) -> Self {
        Resources { op, what, by_name }
    }

    /// The resource `name`, or a `Validation` error naming the unknown resource.
    pub fn get(&self, name: &str) -> Result<T> {
        self.by_name.get(name).cloned().ok_or_else(|| {
            Error::validation(
                self.op,
                format!("no {} named `{name}` is configured", self.what),
            )
        })
    }

    /// The configured names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Every resource with its name, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.by_name.iter()
    }

    /// Every resource, sorted by name.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_name.values()
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
