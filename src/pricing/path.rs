//! Request path normalisation, done the ways upstream routers read paths, so that no spelling of
//! a priced path reaches the upstream unpaid.
//!
//! Owns: [`readings`]. Every reading drops `?query`/`#fragment`, percent-decodes, folds `\` to
//! `/`, collapses `//`, resolves `.` and `..` and strips the trailing `/`. Routers differ in
//! three more places, so a path can have several readings, and the caller charges if *any*
//! of them is priced:
//! - an encoded slash (`%2F`, `%5C`) is a separator to some routers and segment text to others,
//!   and so is a backslash (IIS and ASP.NET fold it to `/`, nginx and Go do not);
//! - `;` starts path parameters that Tomcat, Jetty and Spring strip from each segment
//!   (`/premium;x=1/a` is `/premium/a` to them, and `..;` is `..`);
//! - case-insensitive routers fold case differently outside ASCII: full Unicode lowercase
//!   (`İ` → `i̇`), the simple one-character mapping (`İ` → `i`, as .NET's invariant culture
//!   does), and upper-then-lower (`ſ` → `S` → `s`, `ı` → `I` → `i`).
//!
//! The first reading is the primary one (separators, parameters kept as text, full lowercase).
//! A path with a malformed escape or non-UTF-8 bytes is [`Readings::Malformed`] and the caller
//! fails closed.

use std::borrow::Cow;

/// The readings of a request path.
#[derive(Debug, PartialEq, Eq)]
pub enum Readings<'a> {
    /// One reading (the common case, often borrowed from the request without a copy).
    One(Cow<'a, str>),
    /// Several distinct readings, primary first.
    Many(Vec<String>),
    /// A malformed percent-escape, invalid UTF-8 or a control character: match the strictest
    /// rule.
    Malformed,
}

impl Readings<'_> {
    /// The readings in order, primary first (none when malformed).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many): (Option<&str>, &[String]) = match self {
            Readings::One(c) => (Some(c.as_ref()), &[]),
            Readings::Many(v) => (None, v.as_slice()),
            Readings::Malformed => (None, &[]),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }

    /// The primary reading.
    pub fn primary(&self) -> Option<&str> {
        self.iter().next()
    }
}

/// Normalises the path of a request target (`/a/b?x=1`) into every reading a common router
/// may give it.
pub fn readings(target: &str) -> Readings<'_> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if is_clean(path) {
        return Readings::One(Cow::Borrowed(if path.is_empty() { "/" } else { path }));
    }
    let Some(as_separator) = decode(path, false) else {
        return Readings::Malformed;
    };
    let mut decoded = vec![as_separator];
    if has_encoded_slash(path) {
        let Some(in_segment) = decode(path, true) else {
            return Readings::Malformed;
        };
        decoded.push(in_segment);
    }
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for d in &decoded {
        let params = if d.contains(';') {
            &[false, true][..]
        } else {
            &[false]
        };
        let folds = if d.contains('\\') {
            &[true, false][..]
        } else {
            &[true]
        };
        let resolved = params
            .iter()
            .flat_map(|&strip| folds.iter().map(move |&fold| resolve(d, strip, fold)));
        for r in resolved {
            let r = &r;
            add(r.to_lowercase());
            if !r.is_ascii() {
                add(simple_lower(r));
                add(r.to_uppercase().to_lowercase());
            }
        }
    }
    if out.len() == 1 {
        Readings::One(Cow::Owned(out.remove(0)))
    } else {
        Readings::Many(out)
    }
}

/// The common case, already normal: `/`-led, ASCII lowercase, no escapes, no `;`, no empty or
/// dot segments, no trailing slash. Checked without allocating.
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

/// Folds `\` (when `fold_backslash`), collapses `//`, optionally strips `;parameters` from each
/// segment, resolves dot segments and strips the trailing `/`. Case is left alone.
fn resolve(decoded: &str, strip_params: bool, fold_backslash: bool) -> String {
    let folded = if fold_backslash {
        decoded.replace('\\', "/")
    } else {
        decoded.to_owned()
    };
    let mut segs: Vec<&str> = Vec::new();
    for seg in folded.split('/') {
        let seg = if strip_params {
            seg.split(';').next().unwrap_or("")
        } else {
            seg
        };
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
    out
}

/// Lowercase with the simple (one-to-one) mapping: the first character of each full mapping.
fn simple_lower(s: &str) -> String {
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &str) -> Vec<String> {
        readings(s).iter().map(str::to_owned).collect()
    }

    fn primary(s: &str) -> String {
        match readings(s) {
            Readings::Malformed => panic!("{s} malformed"),
            r => r.primary().unwrap().to_owned(),
        }
    }

    #[test]
    fn already_normal_paths_do_not_allocate() {
        for s in [
            "/weather/paris",
            "/weather/paris?x=1",
            "/",
            "/v1.2/file.json",
        ] {
            assert!(
                matches!(readings(s), Readings::One(Cow::Borrowed(_))),
                "{s}"
            );
        }
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
            assert_eq!(primary(s), "/weather/paris", "{s}");
        }
        assert_eq!(primary(""), "/");
        assert_eq!(primary("/.."), "/");
        assert_eq!(primary("/a/b/../../.."), "/");
    }

    #[test]
    fn encoded_slashes_are_read_both_ways() {
        assert_eq!(all("/weather/a%2Fb"), ["/weather/a/b", "/weather/a%2fb"]);
    }

    #[test]
    fn path_parameters_are_read_as_tomcat_and_spring_strip_them() {
        for s in [
            "/premium;x=1/a",
            "/premium;/a",
            "/health/..;/premium/a",
            "/premium/a;jsessionid=1",
        ] {
            let r = all(s);
            assert!(r.contains(&"/premium/a".to_owned()), "{s}: {r:?}");
        }
        // `;` kept as segment text is the primary reading (nginx, Express).
        assert_eq!(primary("/premium;x=1/a"), "/premium;x=1/a");
        assert_eq!(all("/premium%3bx/a"), ["/premium;x/a", "/premium/a"]);
    }

    #[test]
    fn unicode_case_foldings_are_all_read() {
        // Kelvin sign and long s fold to ASCII under some mapping.
        assert!(all("/\u{212A}ey").contains(&"/key".to_owned()));
        assert!(all("/pa\u{17F}\u{17F}").contains(&"/pass".to_owned()));
        // Dotted capital I: full lowercase is i + combining dot; the simple mapping is i.
        let r = all("/prem\u{130}um");
        assert!(r.contains(&"/premium".to_owned()), "{r:?}");
        assert!(r.contains(&"/premi\u{307}um".to_owned()), "{r:?}");
        // Dotless i upper-cases to I.
        assert!(all("/prem\u{131}um").contains(&"/premium".to_owned()));
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
            assert_eq!(readings(s), Readings::Malformed, "{s}");
        }
    }
}
