//! `GET /health`: liveness for the operator, the proxy and the dashboard; `GET /metrics`: the
//! call counters and turn latencies in Prometheus text format, behind the records API's gate
//! (Bearer `OUTBOUND_API_KEY` in production: a scraper sends it as its bearer token).

use serde_json::json;

use std::sync::atomic::{AtomicU64, Ordering};

use super::listener::HttpCounters;
use super::request::Incoming;
use super::Reply;
use crate::app::App;

pub fn health(app: &App) -> Reply {
    Reply::json(
        200,
        &json!({
            "status": "ok",
            "tier": "single-host",
            "uptime": app.started_at.elapsed().as_secs_f64(),
            "activeCalls": app.calls.active(),
            "peakActiveCalls": app.calls.peak(),
            "maxConcurrentCalls": app.config.calls.max_concurrent,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

pub fn metrics(app: &App, req: &Incoming) -> Reply {
    if let Some(refused) = super::records::gate(app, req, "metrics") {
        return refused;
    }
    let mut text = app.metrics.render(app.calls.active(), app.calls.peak());
    text.push_str(&render_http(
        &app.http_counters,
        app.config.http.max_connections,
    ));
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: text.into_bytes(),
        headers: Vec::new(),
    }
}

/// The HTTP tier's counters in the same text format (see the README's "HTTP limits").
fn render_http(c: &HttpCounters, max_connections: usize) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        crate::metrics::write_metric(&mut out, name, kind, help, samples)
    };
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    metric(
        "cotrackpro_http_connections_open",
        "gauge",
        "Webhook connections open now.",
        &[("", c.open.load(Ordering::Relaxed) as u64)],
    );
    metric(
        "cotrackpro_http_connections_max",
        "gauge",
        "HTTP_MAX_CONNECTIONS.",
        &[("", max_connections as u64)],
    );
    metric(
        "cotrackpro_http_connections_accepted_total",
        "counter",
        "Webhook connections accepted.",
        &[("", get(&c.accepted))],
    );
    metric(
        "cotrackpro_http_refused_total",
        "counter",
        "Connections and requests the HTTP tier answered itself, by reason.",
        &[
            ("{reason=\"connections\"}", get(&c.refused_over_cap)),
            ("{reason=\"busy\"}", get(&c.refused_busy)),
            ("{reason=\"timeout\"}", get(&c.timeouts)),
            ("{reason=\"header_too_large\"}", get(&c.heads_too_large)),
            ("{reason=\"body_too_large\"}", get(&c.bodies_too_large)),
            ("{reason=\"malformed\"}", get(&c.malformed)),
        ],
    );
    metric(
        "cotrackpro_http_accept_errors_total",
        "counter",
        "accept(2) failures on HTTP_PORT (out of descriptors and others).",
        &[("", get(&c.accept_errors))],
    );
    out
}
