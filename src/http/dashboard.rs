//! `GET /dashboard`: one self-contained page (no external assets, its charts drawn as SVG by its
//! own script): the calls of a date range with search and cursor paging, each opening to its
//! detail, and the range's totals and per-day charts from `/records/summary`. It holds no data
//! itself: the browser fetches the records API with the key the operator pastes, so the real gate
//! stays the records API. Values from records are rendered as text only.

use super::Reply;

const PAGE: &str = include_str!("dashboard.html");

pub fn dashboard() -> Reply {
    Reply {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: PAGE.as_bytes().to_vec(),
        headers: Vec::new(),
    }
    // The page needs its own inline script and style and to call this origin; nothing else.
    .with_header(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    )
    .with_header("X-Content-Type-Options", "nosniff")
    .with_header("Referrer-Policy", "no-referrer")
}
