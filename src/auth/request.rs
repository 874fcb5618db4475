//! Reading a forward-auth sub-request: which proxy asks ([`Style`], by the sub-request's
//! path), and what the original request was ([`original`]), each proxy saying it its own way.
//!
//! Owns: [`Style`], [`Original`], [`AuthError`], [`style`], [`original`], [`client_ip`].

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};
use http::Method;
use pingora::http::RequestHeader;

use crate::config::{AuthConfig, Cidr};

/// Which proxy asks, by the path of its sub-request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// nginx `auth_request` (`/nginx`).
    Nginx,
    /// nginx fetching a stored denial (`/nginx/answer`).
    NginxAnswer,
    /// Traefik `forwardAuth`, Caddy `forward_auth` (`/forward`).
    Forwarded,
    /// Envoy `ext_authz` HTTP (`{ext_authz_prefix}/…`).
    ExtAuthz,
}

/// The request the proxy asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    /// Its method.
    pub method: Method,
    /// Its target (`/path?query`).
    pub target: String,
    /// Its host, when the proxy said it in a header of its own.
    pub host: Option<String>,
    /// `https` when the proxy said so (`X-Forwarded-Proto`), else `http`.
    pub scheme: &'static str,
}

/// A sub-request the auth service cannot read: the proxy is misconfigured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No endpoint at this path.
    #[error("no forward-auth endpoint at {0}: use /nginx, /nginx/answer, /forward or the ext_authz prefix")]
    UnknownEndpoint(String),
    /// A header the proxy must set is missing.
    #[error("the proxy did not send {0}: see the forward-auth examples in deploy/")]
    MissingHeader(HeaderName),
    /// The original method is not a method.
    #[error("{0} is not an HTTP method")]
    BadMethod(HeaderName),
    /// The original target is not an origin-form target (`/path?query`).
    #[error("{0} is not a request target starting with /")]
    BadTarget(HeaderName),
}

/// The endpoint a sub-request path names.
///
/// # Errors
/// [`AuthError::UnknownEndpoint`].
pub fn style(path: &str, ext_authz_prefix: &str) -> Result<Style, AuthError> {
    match path {
        "/nginx" => Ok(Style::Nginx),
        "/nginx/answer" => Ok(Style::NginxAnswer),
        "/forward" => Ok(Style::Forwarded),
        p if p
            .strip_prefix(ext_authz_prefix)
            .is_some_and(|rest| rest.starts_with('/')) =>
        {
            Ok(Style::ExtAuthz)
        }
        p => Err(AuthError::UnknownEndpoint(p.chars().take(100).collect())),
    }
}

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Reads the original request out of a sub-request.
///
/// # Errors
/// A header the style needs is missing or unreadable.
pub fn original(style: Style, req: &RequestHeader, c: &AuthConfig) -> Result<Original, AuthError> {
    let headers = &req.headers;
    let required = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AuthError::MissingHeader(name.clone()))
    };
    let method_from = |name: &HeaderName| {
        Method::from_bytes(required(name)?.as_bytes())
            .map_err(|_| AuthError::BadMethod(name.clone()))
    };
    let target_from = |name: &HeaderName| {
        let t = required(name)?;
        if t.starts_with('/') && !t.starts_with("//") {
            Ok(t.to_owned())
        } else {
            Err(AuthError::BadTarget(name.clone()))
        }
    };
    let (method, target) = match style {
        Style::Nginx | Style::NginxAnswer => (
            method_from(&c.original_method_header)?,
            target_from(&c.original_uri_header)?,
        ),
        Style::Forwarded => (
            method_from(&X_FORWARDED_METHOD)?,
            target_from(&X_FORWARDED_URI)?,
        ),
        Style::ExtAuthz => {
            let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let target = pq.get(c.ext_authz_prefix.len()..).unwrap_or("/");
            (req.method.clone(), target.to_owned())
        }
    };
    let host = headers
        .get(X_FORWARDED_HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && style != Style::ExtAuthz);
    let https = headers
        .get(X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    Ok(Original {
        method,
        target,
        host,
        scheme: if https { "https" } else { "http" },
    })
}

/// The client's address: the last `X-Forwarded-For` hop that is not a trusted proxy (the proxy
/// asking appended it), else the proxy's own address.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let hops = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    hops.rsplit(',')
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .find(|ip| !trusted.iter().any(|c| c.contains(*ip)))
        .or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_path_names_the_proxy() {
        let p = "/ext_authz";
        assert_eq!(style("/nginx", p), Ok(Style::Nginx));
        assert_eq!(style("/nginx/answer", p), Ok(Style::NginxAnswer));
        assert_eq!(style("/forward", p), Ok(Style::Forwarded));
        assert_eq!(style("/ext_authz/weather/x", p), Ok(Style::ExtAuthz));
        for other in ["/", "/ext_authzz/a", "/ext_authz", "/nginx/", "/forward/x"] {
            assert!(
                matches!(style(other, p), Err(AuthError::UnknownEndpoint(_))),
                "{other}"
            );
        }
    }

    #[test]
    fn each_proxy_says_the_original_request_its_own_way() {
        let c = AuthConfig::default();
        let nginx = req(
            "GET",
            "/nginx",
            &[
                ("x-original-uri", "/weather/paris?u=c"),
                ("x-original-method", "POST"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-proto", "https"),
                // A client's own X-Forwarded-Uri means nothing to the nginx endpoint.
                ("x-forwarded-uri", "/health"),
            ],
        );
        assert_eq!(
            original(Style::Nginx, &nginx, &c).unwrap(),
            Original {
                method: Method::POST,
                target: "/weather/paris?u=c".into(),
                host: Some("api.example.com".into()),
                scheme: "https",
            }
        );
        let caddy = req(
            "GET",
            "/forward",
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/weather/rome"),
                ("x-original-uri", "/health"),
            ],
        );
        let o = original(Style::Forwarded, &caddy, &c).unwrap();
        assert_eq!(
            (o.method, o.target.as_str(), o.scheme),
            (Method::GET, "/weather/rome", "http")
        );
        let envoy = req(
            "DELETE",
            "/ext_authz/weather/oslo?x=1",
            &[("host", "api.example.com")],
        );
        let o = original(Style::ExtAuthz, &envoy, &c).unwrap();
        assert_eq!(
            (o.method, o.target.as_str(), o.host),
            (Method::DELETE, "/weather/oslo?x=1", None)
        );
    }

    #[test]
    fn a_sub_request_without_the_original_is_refused() {
        let c = AuthConfig::default();
        let no_uri = req("GET", "/nginx", &[("x-original-method", "GET")]);
        assert_eq!(
            original(Style::Nginx, &no_uri, &c),
            Err(AuthError::MissingHeader(c.original_uri_header.clone()))
        );
        let no_method = req("GET", "/forward", &[("x-forwarded-uri", "/a")]);
        assert!(matches!(
            original(Style::Forwarded, &no_method, &c),
            Err(AuthError::MissingHeader(_))
        ));
        for bad in ["weather", "//evil.example/a", "http://x/a", ""] {
            let r = req(
                "GET",
                "/forward",
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", bad)],
            );
            assert!(original(Style::Forwarded, &r, &c).is_err(), "{bad}");
        }
        let r = req(
            "GET",
            "/forward",
            &[("x-forwarded-method", "G E T"), ("x-forwarded-uri", "/a")],
        );
        assert!(matches!(
            original(Style::Forwarded, &r, &c),
            Err(AuthError::BadMethod(_))
        ));
    }

    #[test]
    fn the_client_is_the_last_untrusted_forwarded_hop() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let peer = Some("127.0.0.1".parse().unwrap());
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.5"),
        );
        assert_eq!(
            client_ip(peer, &h, &trusted),
            Some("2.2.2.2".parse().unwrap())
        );
    }
}
