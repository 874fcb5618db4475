//! Health-probe answers shared by the admin listener and the standalone facilitator's server:
//! a plain uncached answer, and `/readyz` as one line per check.
//!
//! Owns: [`Check`], [`text`], [`readiness`].

use http::{Response, StatusCode};

/// One readiness check: its name, and why it failed (`None`: passed).
pub type Check = (String, Option<String>);

/// A plain answer that no cache keeps.
pub fn text(status: StatusCode, content_type: &str, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body.into_bytes())
        .unwrap_or_default()
}

/// The `/readyz` answer: 200 when every check passed, else 503; a line per check.
pub fn readiness(checks: &[Check]) -> (StatusCode, String) {
    let mut body = String::new();
    let mut ready = true;
    for (name, failed) in checks {
        match failed {
            None => body.push_str(&format!("ok   {name}\n")),
            Some(why) => {
                ready = false;
                body.push_str(&format!("fail {name}: {why}\n"));
            }
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
