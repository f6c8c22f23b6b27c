//! `GET /health`: liveness for the operator, the proxy and the dashboard.

use serde_json::json;

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
