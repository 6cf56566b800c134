//! What every dashboard response carries, and what a write must show to be taken.
//!
//! The page loads nothing from elsewhere and runs no inline script, so the Content-Security-Policy
//! allows only the dashboard itself. Writes (POST, DELETE) must come from the dashboard's own
//! page: they carry a custom header, which a page of another origin cannot send without a CORS
//! preflight this server never grants, and the browser's `Sec-Fetch-Site`/`Origin` must not name
//! another site. That stops cross-site request forgery also behind an authenticating proxy that
//! adds the user's token to every request.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The header every write from the page carries.
pub const WRITE_HEADER: &str = "x-trainjob-dashboard";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Refuses cross-site writes and adds the security headers to every response.
pub async fn guard(request: Request, next: Next) -> Response {
    if let Some(why) = refused(&request) {
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if api {
        // Job data is the user's: never kept by a browser or a proxy.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Why a request may not be served, if it may not.
fn refused(request: &Request<Body>) -> Option<&'static str> {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let headers = request.headers();
    if !headers.contains_key(WRITE_HEADER) {
        return Some("writes come from the dashboard's page only (header x-trainjob-dashboard missing)");
    }
    let foreign_site = headers
        .get_all("sec-fetch-site")
        .iter()
        .any(|s| s.to_str().map_or(true, |s| s != "same-origin" && s != "none"));
    if foreign_site {
        return Some("a write from another site is refused");
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let foreign_origin = headers.get_all(header::ORIGIN).iter().any(|origin| {
        let origin = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        host.is_none() || origin != host
    });
    match foreign_origin {
        true => Some("a write from another origin is refused"),
        false => None,
    }
}
