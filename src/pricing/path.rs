//! Request path normalisation, done the way upstream routers read paths, so that no spelling of
//! a priced path reaches the upstream unpaid.
//!
//! Owns: [`normalize`]. Steps: drop `?query`/`#fragment`; percent-decode; fold `\` to `/`;
//! collapse `//`; resolve `.` and `..`; strip the trailing `/`; lowercase (matching is
//! case-insensitive). A path with a malformed escape or non-UTF-8 bytes is reported as
//! [`Normalized::Malformed`] and the caller fails closed.
//!
//! An encoded slash (`%2F`, `%5C`) is read two ways, since routers differ: as a separator and
//! as part of a segment. Both readings are returned and the caller charges if either is priced.

use std::borrow::Cow;

/// A normalised path.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// One reading.
    Clean(Cow<'a, str>),
    /// Two readings: encoded slashes as separators, and as segment text.
    Ambiguous(String, String),
    /// A malformed percent-escape or invalid UTF-8: match the strictest rule.
    Malformed,
}

/// Normalises the path of a request target (`/a/b?x=1`).
pub fn normalize(target: &str) -> Normalized<'_> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if is_clean(path) {
        return Normalized::Clean(Cow::Borrowed(if path.is_empty() { "/" } else { path }));
    }
    let Some(as_separator) = decode(path, false) else {
        return Normalized::Malformed;
    };
    let a = resolve(&as_separator);
    if !has_encoded_slash(path) {
        return Normalized::Clean(Cow::Owned(a));
    }
    let Some(in_segment) = decode(path, true) else {
        return Normalized::Malformed;
    };
    let b = resolve(&in_segment);
    if a == b {
        Normalized::Clean(Cow::Owned(a))
    } else {
        Normalized::Ambiguous(a, b)
    }
}

/// The common case, already normal: `/`-led, lowercase, no escapes, no empty or dot segments,
/// no trailing slash. Checked without allocating.
fn is_clean(path: &str) -> bool {
    let b = path.as_bytes();
    if path == "/" {
        return true;
    }
    if b.first() != Some(&b'/') || b.last() == Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for &c in b {
        let ok = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(
                c,
                b'-' | b'_'
                    | b'~'
                    | b':'
                    | b'@'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
            || (c == b'/' && prev != b'/')
            || (c == b'.' && prev != b'/' && prev != b'.');
        if !ok {
            return false;
        }
        prev = c;
    }
    true
}

fn has_encoded_slash(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

/// Percent-decodes; with `keep_slashes`, `%2F`/`%5C` stay as text in their segment.
fn decode(path: &str, keep_slashes: bool) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if keep_slashes && (v == b'/' || v == b'\\') {
                out.extend_from_slice(&b[i..i + 3]);
            } else {
                out.push(v);
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    // A decoded NUL or control character has no place in a route: fail closed.
    if s.chars().any(char::is_control) {
        return None;
    }
    Some(s)
}

/// Folds `\`, collapses `//`, resolves dot segments, strips the trailing `/`, lowercases.
fn resolve(decoded: &str) -> String {
    let folded = decoded.replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    for seg in folded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(folded.len() + 1);
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        match normalize(s) {
            Normalized::Clean(c) => c.into_owned(),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn already_normal_paths_do_not_allocate() {
        assert!(matches!(
            normalize("/weather/paris"),
            Normalized::Clean(Cow::Borrowed("/weather/paris"))
        ));
        assert!(matches!(
            normalize("/weather/paris?x=1"),
            Normalized::Clean(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize("/"),
            Normalized::Clean(Cow::Borrowed("/"))
        ));
        assert!(matches!(
            normalize("/v1.2/file.json"),
            Normalized::Clean(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn bypass_spellings_normalise_to_the_priced_path() {
        for s in [
            "/weather/paris/",
            "//weather//paris",
            "/Weather/PARIS",
            "/%77eather/paris",
            "/weather%2Fparis",
            "\\weather\\paris",
            "/weather/./paris",
            "/free/../weather/paris",
            "/weather/paris#frag",
            "/weather/paris/.",
        ] {
            let got = match normalize(s) {
                Normalized::Clean(c) => c.into_owned(),
                Normalized::Ambiguous(a, _) => a,
                Normalized::Malformed => panic!("{s} malformed"),
            };
            assert_eq!(got, "/weather/paris", "{s}");
        }
        assert_eq!(clean(""), "/");
        assert_eq!(clean("/.."), "/");
        assert_eq!(clean("/a/b/../../.."), "/");
    }

    #[test]
    fn encoded_slashes_are_read_both_ways() {
        assert_eq!(
            normalize("/weather/a%2Fb"),
            Normalized::Ambiguous("/weather/a/b".into(), "/weather/a%2fb".into())
        );
    }

    #[test]
    fn malformed_escapes_fail_closed() {
        for s in [
            "/weather/%",
            "/weather/%zz",
            "/weather/%e9",
            "/%00admin",
            "/a%0a",
        ] {
            assert_eq!(normalize(s), Normalized::Malformed, "{s}");
        }
    }
}
