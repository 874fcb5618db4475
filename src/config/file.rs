//! The file schema of `gateway.toml`: which tables and keys exist, and typed reads of them that
//! record a problem (with its key path) instead of stopping at the first one.
//!
//! Owns: [`Section`], a view of one TOML table that remembers which keys were read so that
//! unknown keys (typos) are reported. Does not own: what a value means (`validate.rs`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use super::ConfigIssue;

/// Problems found so far.
#[derive(Default)]
pub(super) struct Issues(RefCell<Vec<ConfigIssue>>);

impl Issues {
    pub(super) fn push(&self, key: impl Into<String>, message: impl Into<String>) {
        self.0.borrow_mut().push(ConfigIssue {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn into_vec(self) -> Vec<ConfigIssue> {
        self.0.into_inner()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

/// A TOML table at a key path, read key by key.
pub(super) struct Section<'a> {
    path: String,
    table: Option<&'a toml::Table>,
    read: RefCell<BTreeSet<&'static str>>,
    issues: &'a Issues,
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl<'a> Section<'a> {
    /// The root table.
    pub(super) fn root(table: &'a toml::Table, issues: &'a Issues) -> Self {
        Section {
            path: String::new(),
            table: Some(table),
            read: RefCell::default(),
            issues,
        }
    }

    /// The key path of `key` in this section.
    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Records a problem with `key`.
    pub(super) fn issue(&self, key: &str, message: impl Into<String>) {
        self.issues.push(self.key(key), message);
    }

    fn get(&self, key: &'static str) -> Option<&'a toml::Value> {
        self.read.borrow_mut().insert(key);
        self.table.and_then(|t| t.get(key))
    }

    /// Whether `key` is present.
    pub(super) fn has(&self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    fn wrong(&self, key: &str, want: &str, got: &toml::Value) {
        self.issue(key, format!("expected {want}, found {}", type_name(got)));
    }

    /// A string value.
    pub(super) fn str(&self, key: &'static str) -> Option<&'a str> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s),
            other => {
                self.wrong(key, "a string", other);
                None
            }
        }
    }

    /// A string, or an integer read as its decimal text (for prices written as `1000`).
    pub(super) fn str_or_int(&self, key: &'static str) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(_) => {
                self.issue(
                    key,
                    "write prices as strings (\"$0.001\"): floats are inexact",
                );
                None
            }
            other => {
                self.wrong(key, "a string", other);
                None
            }
        }
    }

    /// A non-negative integer.
    pub(super) fn uint(&self, key: &'static str) -> Option<u64> {
        match self.get(key)? {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
            toml::Value::Integer(_) => {
                self.issue(key, "must not be negative");
                None
            }
            other => {
                self.wrong(key, "an integer", other);
                None
            }
        }
    }

    /// A boolean.
    pub(super) fn bool(&self, key: &'static str) -> Option<bool> {
        match self.get(key)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                self.wrong(key, "a boolean", other);
                None
            }
        }
    }

    /// A duration written as a string: `"10s"`, `"500ms"`, `"5m"`.
    pub(super) fn duration(&self, key: &'static str) -> Option<Duration> {
        let s = self.str(key)?;
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.issue(key, "must be longer than zero");
                None
            }
            Err(e) => {
                self.issue(key, format!("`{s}` is not a duration like \"10s\": {e}"));
                None
            }
        }
    }

    /// A duration that may be zero (`"0ms"`: off).
    pub(super) fn duration_or_zero(&self, key: &'static str) -> Option<Duration> {
        let s = self.str(key)?;
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.issue(key, format!("`{s}` is not a duration like \"20ms\": {e}"));
                None
            }
        }
    }

    /// An array of strings.
    pub(super) fn str_array(&self, key: &'static str) -> Option<Vec<&'a str>> {
        match self.get(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    match v {
                        toml::Value::String(s) => out.push(s.as_str()),
                        other => self.issue(
                            &format!("{key}[{i}]"),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong(key, "an array of strings", other);
                None
            }
        }
    }

    /// A table of string values (`headers = { Authorization = "..." }`).
    pub(super) fn str_map(&self, key: &'static str) -> Option<Vec<(&'a str, &'a str)>> {
        match self.get(key)? {
            toml::Value::Table(t) => {
                let mut out = Vec::with_capacity(t.len());
                for (k, v) in t {
                    match v {
                        toml::Value::String(s) => out.push((k.as_str(), s.as_str())),
                        other => self.issue(
                            &format!("{key}.{k}"),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong(key, "a table of strings", other);
                None
            }
        }
    }

    /// A sub-table; absent gives an empty section (every key defaulted).
    pub(super) fn table(&self, key: &'static str) -> Section<'a> {
        let table = match self.get(key) {
            Some(toml::Value::Table(t)) => Some(t),
            Some(other) => {
                self.wrong(key, "a table", other);
                None
            }
            None => None,
        };
        Section {
            path: self.key(key),
            table,
            read: RefCell::default(),
            issues: self.issues,
        }
    }

    /// The raw value of `key`, for keys that accept several shapes.
    pub(super) fn raw(&self, key: &'static str) -> Option<&'a toml::Value> {
        self.get(key)
    }

    /// A section over a table value found under `key` (used for inline-table alternatives).
    pub(super) fn sub(&self, key: &str, table: &'a toml::Table) -> Section<'a> {
        Section {
            path: self.key(key),
            table: Some(table),
            read: RefCell::default(),
            issues: self.issues,
        }
    }

    /// An array of tables (`[[route]]`).
    pub(super) fn tables(&self, key: &'static str) -> Vec<Section<'a>> {
        match self.get(key) {
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    toml::Value::Table(t) => Some(Section {
                        path: format!("{}[{i}]", self.key(key)),
                        table: Some(t),
                        read: RefCell::default(),
                        issues: self.issues,
                    }),
                    other => {
                        self.issue(
                            &format!("{key}[{i}]"),
                            format!("expected a table, found {}", type_name(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.wrong(key, "an array of tables ([[...]])", other);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// The sub-tables of a table whose keys are names (`[upstreams.NAME]`), in name order; a
    /// value that is not a table is reported. Every key counts as read.
    pub(super) fn named_tables(&self) -> Vec<(&'a str, Section<'a>)> {
        let Some(t) = self.table else {
            return Vec::new();
        };
        t.iter()
            .filter_map(|(k, v)| match v {
                toml::Value::Table(inner) => Some((k.as_str(), self.sub(k, inner))),
                other => {
                    self.issue(k, format!("expected a table, found {}", type_name(other)));
                    None
                }
            })
            .collect()
    }

    /// Reports keys of this table that were never read: typos and unsupported settings.
    pub(super) fn finish(&self) {
        let Some(t) = self.table else { return };
        let read = self.read.borrow();
        for k in t.keys() {
            if !read.contains(k.as_str()) {
                let known: Vec<_> = read.iter().copied().collect();
                self.issue(k, format!("unknown key (known here: {})", known.join(", ")));
            }
        }
    }
}
