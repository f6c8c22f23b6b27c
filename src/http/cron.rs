//! `GET /api/cron/cost-rollup`: the original's HTTP trigger for the daily rollup (it was a
//! Vercel Cron target), Bearer `CRON_SECRET`. The systemd timer runs `cotrackpro-voice rollup`
//! instead; this stays for schedulers that can only call a URL. `?date=YYYY-MM-DD` picks the
//! day (default: yesterday, UTC).

use serde_json::json;

use super::{Incoming, Reply};
use crate::app::App;
use crate::auth::{check_bearer, BearerCheck};
use crate::{rollup, timestamp};

pub fn cost_rollup(app: &App, req: &Incoming) -> Reply {
    let config = &app.config;
    match check_bearer(
        req.header("Authorization"),
        config.cron_secret.as_ref(),
        config.app_env,
        "CRON_SECRET",
    ) {
        BearerCheck::Refused(err) => return Reply::auth_refused(err),
        BearerCheck::OpenInDevelopment => {
            log::warn!("cost rollup triggered without CRON_SECRET (allowed in development only)")
        }
        BearerCheck::Allowed => {}
    }
    let day = match req.query_param("date") {
        None => rollup::yesterday(),
        Some(text) => match timestamp::parse_date(&text) {
            Some(day) => day,
            None => return Reply::error_with_details(400, "Invalid date", "expected YYYY-MM-DD"),
        },
    };
    match rollup::run(&app.records, &config.prices, day) {
        Ok((rollup, _)) => {
            let mut body = json!(rollup);
            body["ok"] = json!(true);
            Reply::json(200, &body)
        }
        Err(err) => Reply::error_with_details(500, "Rollup failed", &err.to_string()),
    }
}
