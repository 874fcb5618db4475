//! `${VAR}` expansion from the environment, and a string type that never prints its value.
//!
//! Owns: [`expand_env`] and [`Secret`]. Used for facilitator headers and signer keys, which must
//! come from the environment and never appear in logs or `Debug` output.

use std::fmt;

/// A configuration value that may hold a credential. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Replaces every `${NAME}` in `s` with the environment variable `NAME`, through `lookup`.
/// `$$` is not special; a `$` not followed by `{` is kept as it is.
///
/// # Errors
/// The names of variables that are unset, or a `${` without its `}`.
pub fn expand_env(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut missing = Vec::new();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("`${{` without a closing `}}` in {s:?}"));
        };
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => missing.push(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "environment variable {} is not set",
            missing.join(", ")
        ))
    }
}

/// What [`lenient`] puts in place of an unset variable: never a usable value (a NUL is in no
/// key, URL or header), so a configuration read this way can be shown but never run.
const UNSET: &str = "\u{0}unset\u{0}";

/// A lookup that never fails: unset variables read as a stand-in that only [`is_unset`]
/// accepts. For commands that read the configuration without using its secrets (`journal
/// list`): reading the journal must need no secret.
pub fn lenient(lookup: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |name| lookup(name).or_else(|| Some(UNSET.to_owned()))
}

/// Whether `value` holds a stand-in of [`lenient`] (its validation is skipped).
pub fn is_unset(value: &str) -> bool {
    value.contains(UNSET)
}

/// Replaces `url` (and its path and query, where API keys live) in `text`.
pub fn redact(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_owned();
    }
    let mut out = text.replace(url, &redacted_url(url));
    // Error texts may carry the URL re-serialised (with a trailing slash) or its key alone.
    if let Some((_, path)) = url.split_once("://").and_then(|(_, r)| r.split_once('/')) {
        if path.len() >= 8 {
            out = out.replace(path, "[redacted]");
        }
    }
    out
}

/// `scheme://host[:port]/[redacted]`: enough to tell endpoints apart, nothing secret.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if rest.len() > authority.len() {
        format!("{scheme}://{authority}/[redacted]")
    } else {
        format!("{scheme}://{authority}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "abc".to_owned())
    }

    #[test]
    fn expands_and_reports_missing() {
        assert_eq!(expand_env("Bearer ${TOKEN}", env).unwrap(), "Bearer abc");
        assert_eq!(expand_env("no vars $HOME", env).unwrap(), "no vars $HOME");
        assert!(expand_env("${NOPE} ${ALSO}", env)
            .unwrap_err()
            .contains("NOPE, ALSO"));
        assert!(expand_env("${TOKEN", env).is_err());
        assert!(expand_env("${BAD-NAME}", env).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("0xdeadbeef".into());
        assert!(!format!("{s:?} {s}").contains("dead"));
        assert_eq!(s.expose(), "0xdeadbeef");
    }
}
