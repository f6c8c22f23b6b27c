//! The records section: where call records live, how long they are kept, the records API's
//! rate limits, and `CRON_SECRET`, the token of the rollup's HTTP trigger.

use std::path::PathBuf;

use super::read::{Float, Reader, Report, Whole};
use super::{AppEnv, RateLimits, Secret};

const DIR: &str = "RECORDS_DIR";
const TTL_DAYS: Float = Float {
    name: "RECORDS_TTL_DAYS",
    default: 365.0,
    min: 0.0001,
    max: 36_500.0,
};
const RATE_LIMIT_PER_MIN: Whole = Whole {
    name: "RECORDS_RATE_LIMIT_PER_MIN",
    default: 120,
    min: 0,
    max: 100_000,
};
const RATE_LIMIT_PER_HOUR: Whole = Whole {
    name: "RECORDS_RATE_LIMIT_PER_HOUR",
    default: 2000,
    min: 0,
    max: 1_000_000,
};
const CRON_SECRET: &str = "CRON_SECRET";

#[derive(Clone, Debug)]
pub struct RecordsConfig {
    pub dir: PathBuf,
    /// Days a record is kept; fractions allowed (for testing expiry).
    pub ttl_days: f64,
    pub rate_limits: RateLimits,
}

impl RecordsConfig {
    pub(super) fn read(r: &mut Reader<'_>) -> RecordsConfig {
        let default_dir = r.state_directory().unwrap_or("./data");
        RecordsConfig {
            dir: PathBuf::from(r.string(DIR, default_dir)),
            ttl_days: r.float(&TTL_DAYS),
            rate_limits: RateLimits {
                // The ranges make these casts lossless.
                per_minute: r.whole(&RATE_LIMIT_PER_MIN) as u32,
                per_hour: r.whole(&RATE_LIMIT_PER_HOUR) as u32,
            },
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.value(DIR, self.dir.display());
        out.value(TTL_DAYS.name, self.ttl_days);
        out.value(RATE_LIMIT_PER_MIN.name, self.rate_limits.per_minute);
        out.value(RATE_LIMIT_PER_HOUR.name, self.rate_limits.per_hour);
    }
}

/// `CRON_SECRET` ([`super::Config::cron_secret`]): the Bearer token of
/// `GET /api/cron/cost-rollup`.
pub(super) fn read_cron_secret(r: &mut Reader<'_>, app_env: AppEnv) -> Option<Secret> {
    let secret = r.secret(CRON_SECRET);
    if app_env == AppEnv::Production && secret.is_none() {
        r.warn(format!(
            "{CRON_SECRET} is not set: GET /api/cron/cost-rollup will answer 503 in production (the systemd timer does not need it)"
        ));
    }
    secret
}

pub(super) fn report_cron_secret(secret: &Option<Secret>, out: &mut Report) {
    out.secret(CRON_SECRET, secret);
}
