//! `GET /health`: liveness for the operator, the proxy and the dashboard; `GET /metrics`: the
//! call counters and turn latencies in Prometheus text format, behind the records API's gate
//! (Bearer `READ_API_KEY`, or `OUTBOUND_API_KEY`: a scraper sends the read key as its bearer
//! token).

use serde_json::json;

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
    text.push_str(&app.http_counters.render(app.config.http.max_connections));
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: text.into_bytes(),
        headers: Vec::new(),
    }
}
