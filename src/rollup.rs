//! The daily cost rollup: one UTC day's calls (by start time) summed in total and per role —
//! calls, minutes, turns, Claude tokens including cache writes and reads, TTS characters
//! including cached ones, STT seconds and the estimated USD at the configured prices.
//!
//! Unlike the original (completed calls only, silently truncated after 200 pages), every call
//! that started that day is read; calls without a cost summary (still active, or lost before
//! their completion was written) are counted by status under `skipped` and named in the log.
//! The result is written to `RECORDS_DIR/rollups/YYYY-MM-DD.json`, replacing an earlier run's.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Prices;
use crate::cost;
use crate::records::event::CostSummary;
use crate::records::index::Summary;
use crate::timestamp::{self, MS_PER_DAY};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub call_count: u64,
    pub total_duration_secs: u64,
    pub total_minutes: f64,
    pub total_turns: u64,
    pub claude_input_tokens: u64,
    pub claude_output_tokens: u64,
    pub claude_cache_creation_tokens: u64,
    pub claude_cache_read_tokens: u64,
    pub tts_chars: u64,
    pub tts_chars_cached: u64,
    pub stt_secs: f64,
    pub estimated_cost_usd: f64,
}

impl Totals {
    /// Adds one call. Saturating: every count here was read from the records file, which
    /// anyone with access to it can edit, and a plain `+=` of a huge one panics (debug) or
    /// wraps to a small total (release).
    fn add(&mut self, summary: &Summary, usage: &CostSummary, prices: &Prices) {
        let add = |total: &mut u64, more: u64| *total = total.saturating_add(more);
        add(&mut self.call_count, 1);
        add(
            &mut self.total_duration_secs,
            summary.duration_secs().unwrap_or(0),
        );
        self.total_minutes = cost::round6(self.total_duration_secs as f64 / 60.0);
        add(&mut self.total_turns, summary.turn_count());
        add(&mut self.claude_input_tokens, usage.claude_input_tokens);
        add(&mut self.claude_output_tokens, usage.claude_output_tokens);
        add(
            &mut self.claude_cache_creation_tokens,
            usage.claude_cache_creation_tokens,
        );
        add(
            &mut self.claude_cache_read_tokens,
            usage.claude_cache_read_tokens,
        );
        add(&mut self.tts_chars, usage.tts_chars);
        add(&mut self.tts_chars_cached, usage.tts_chars_cached);
        self.stt_secs = cost::round6(cost::saturating_add_f64(self.stt_secs, usage.stt_secs));
        self.estimated_cost_usd = cost::round6(cost::saturating_add_f64(
            self.estimated_cost_usd,
            cost::estimate_usd(usage, prices),
        ));
    }
}

/// Calls of the day that had no cost summary, by status.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub without_cost_summary: u64,
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    pub date: String,
    pub window_start: String,
    pub window_end: String,
    pub totals: Totals,
    pub by_role: BTreeMap<String, Totals>,
    pub skipped: Skipped,
}

/// The rollup of the UTC day `day` (days since the epoch) over `calls`.
pub fn compute<'a>(
    day: i64,
    calls: impl IntoIterator<Item = &'a Summary>,
    prices: &Prices,
) -> Rollup {
    let start_ms = day * MS_PER_DAY;
    let end_ms = start_ms + MS_PER_DAY;
    let mut rollup = Rollup {
        date: timestamp::format_date(day),
        window_start: timestamp::format_ms(start_ms),
        window_end: timestamp::format_ms(end_ms),
        totals: Totals::default(),
        by_role: BTreeMap::new(),
        skipped: Skipped::default(),
    };
    for summary in calls {
        if !(start_ms..end_ms).contains(&summary.started_at_ms) {
            continue;
        }
        let Some(usage) = summary.cost() else {
            rollup.skipped.without_cost_summary += 1;
            *rollup
                .skipped
                .by_status
                .entry(summary.status.as_str().to_string())
                .or_default() += 1;
            continue;
        };
        rollup.totals.add(summary, &usage, prices);
        let role = summary.role.map_or("unknown", |r| r.as_str()).to_string();
        rollup
            .by_role
            .entry(role)
            .or_default()
            .add(summary, &usage, prices);
    }
    rollup
}

/// Yesterday in UTC, the day the 06:00 timer rolls up.
pub fn yesterday() -> i64 {
    timestamp::now_ms().div_euclid(MS_PER_DAY) - 1
}

/// Writes `rollup` to `dir/rollups/<date>.json` (temp file + rename: a re-run replaces it).
pub fn write(dir: &Path, rollup: &Rollup) -> std::io::Result<PathBuf> {
    let rollups = dir.join("rollups");
    fs::create_dir_all(&rollups)?;
    let path = rollups.join(format!("{}.json", rollup.date));
    let tmp = rollups.join(format!(".{}.json.tmp", rollup.date));
    let mut file = fs::File::create(&tmp)?;
    let mut json = serde_json::to_vec_pretty(rollup).map_err(std::io::Error::other)?;
    json.push(b'\n');
    file.write_all(&json)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Computes, logs and writes the rollup of `day` from `store`: what the timer, the command
/// and the HTTP trigger all do.
pub fn run(
    store: &crate::records::RecordStore,
    prices: &Prices,
    day: i64,
) -> std::io::Result<(Rollup, PathBuf)> {
    log::info!(date = timestamp::format_date(day).as_str(); "cost.rollup.starting");
    let calls = store.summaries();
    let rollup = compute(day, calls.iter().map(|(_, summary)| summary), prices);
    let path = write(store.dir(), &rollup).inspect_err(|err| {
        log::error!(date = rollup.date.as_str(), error:% = err; "cost.rollup.failed");
    })?;
    log(&rollup);
    Ok((rollup, path))
}

/// The `cost.rollup.daily` log line: the totals as fields, per-role totals as an object.
pub fn log(rollup: &Rollup) {
    let t = &rollup.totals;
    let by_role = serde_json::to_value(&rollup.by_role).unwrap_or_default();
    crate::logging::with_fields(&[("byRole", by_role)], || {
        log::info!(
            date = rollup.date.as_str(),
            callCount = t.call_count,
            totalDurationSecs = t.total_duration_secs,
            totalTurns = t.total_turns,
            claudeInputTokens = t.claude_input_tokens,
            claudeOutputTokens = t.claude_output_tokens,
            claudeCacheCreationTokens = t.claude_cache_creation_tokens,
            claudeCacheReadTokens = t.claude_cache_read_tokens,
            ttsChars = t.tts_chars,
            ttsCharsCached = t.tts_chars_cached,
            sttSecs = t.stt_secs,
            estimatedCostUsd = t.estimated_cost_usd,
            skippedWithoutCostSummary = rollup.skipped.without_cost_summary;
            "cost.rollup.daily"
        )
    });
    if rollup.skipped.without_cost_summary > 0 {
        let by_status = serde_json::to_value(&rollup.skipped.by_status).unwrap_or_default();
        crate::logging::with_fields(&[("byStatus", by_status)], || {
            log::warn!(
                date = rollup.date.as_str(),
                count = rollup.skipped.without_cost_summary;
                "cost.rollup.skipped: calls without a cost summary are not in the totals"
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personas::Role;
    use crate::records::event::{fold, CallStatus, Event, EventKind};

    const PRICES: Prices = crate::config::DEFAULT_PRICES;

    fn call(day: i64, offset_ms: i64, role: Option<Role>, cost: Option<CostSummary>) -> Summary {
        let started = timestamp::format_ms(day * MS_PER_DAY + offset_ms);
        let mut summary = Summary::default();
        let created = Event {
            role: Some(role.map_or("no-such-role", Role::as_str).to_string()),
            started_at: Some(started.clone()),
            status: Some(CallStatus::Active),
            ..Event::new(EventKind::Created, "CA0", &started, i64::MAX)
        };
        fold(&mut summary, &created);
        if let Some(cost) = cost {
            let completed = Event {
                status: Some(CallStatus::Completed),
                duration_secs: Some(90),
                turn_count: Some(4),
                cost_summary: Some(cost),
                ..Event::new(EventKind::Completed, "CA0", &started, i64::MAX)
            };
            fold(&mut summary, &completed);
        }
        summary
    }

    fn usage(input: u64, tts: u64) -> CostSummary {
        CostSummary {
            claude_input_tokens: input,
            tts_chars: tts,
            stt_secs: 30.0,
            ..CostSummary::default()
        }
    }

    #[test]
    fn sums_one_utc_day_per_role_and_reports_what_it_skipped() {
        let day = 20_416; // 2025-11-24
        let calls = vec![
            call(day, 0, Some(Role::Judge), Some(usage(1_000_000, 1000))),
            call(day, MS_PER_DAY - 1, Some(Role::Judge), Some(usage(0, 0))),
            call(day, 5, None, Some(usage(0, 1000))),
            call(day, 10, Some(Role::Parent), None),
            call(
                day - 1,
                MS_PER_DAY - 1,
                Some(Role::Judge),
                Some(usage(5, 5)),
            ),
            call(day + 1, 0, Some(Role::Judge), Some(usage(5, 5))),
        ];
        let rollup = compute(day, &calls, &PRICES);
        assert_eq!(rollup.date, "2025-11-24");
        assert_eq!(rollup.window_start, "2025-11-24T00:00:00.000Z");
        assert_eq!(rollup.window_end, "2025-11-25T00:00:00.000Z");
        assert_eq!(rollup.totals.call_count, 3);
        assert_eq!(rollup.totals.total_duration_secs, 270);
        assert_eq!(rollup.totals.total_minutes, 4.5);
        assert_eq!(rollup.totals.total_turns, 12);
        assert_eq!(rollup.totals.claude_input_tokens, 1_000_000);
        assert_eq!(rollup.totals.tts_chars, 2000);
        assert_eq!(rollup.totals.stt_secs, 90.0);
        // 3.00 + 0.10 + 0.004 + 0 + 0.004 + 0.10 + 0.004
        assert_eq!(rollup.totals.estimated_cost_usd, 3.212);
        assert_eq!(rollup.by_role["judge"].call_count, 2);
        assert_eq!(rollup.by_role["unknown"].call_count, 1);
        assert!(!rollup.by_role.contains_key("parent"));
        assert_eq!(rollup.skipped.without_cost_summary, 1);
        assert_eq!(rollup.skipped.by_status["active"], 1);
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        // The index keeps a call's counts in 32 bits, but the totals take any `CostSummary`:
        // huge ones, and totals already at their limit, stay at the limit.
        let huge = CostSummary {
            claude_input_tokens: u64::MAX,
            claude_output_tokens: u64::MAX,
            claude_cache_creation_tokens: u64::MAX,
            claude_cache_read_tokens: u64::MAX,
            tts_chars: u64::MAX,
            tts_chars_cached: u64::MAX,
            stt_secs: f64::MAX,
            estimated_cost_usd: f64::MAX,
        };
        let summary = call(20_416, 0, Some(Role::Judge), Some(usage(0, 0)));
        let mut t = Totals::default();
        t.add(&summary, &huge, &PRICES);
        t.add(&summary, &huge, &PRICES);
        assert_eq!(t.call_count, 2);
        assert_eq!(t.total_duration_secs, 180);
        assert_eq!(t.claude_input_tokens, u64::MAX);
        assert_eq!(t.claude_output_tokens, u64::MAX);
        assert_eq!(t.claude_cache_creation_tokens, u64::MAX);
        assert_eq!(t.claude_cache_read_tokens, u64::MAX);
        assert_eq!(t.tts_chars, u64::MAX);
        assert_eq!(t.tts_chars_cached, u64::MAX);
        assert_eq!(t.stt_secs, f64::MAX, "held at the largest finite value");
        let each = cost::estimate_usd(&huge, &PRICES);
        assert!(each.is_finite() && each > 1e300);
        assert_eq!(t.estimated_cost_usd, 2.0 * each);
        // The rollup file holds numbers, not `null`s.
        let json = serde_json::to_value(&t).unwrap();
        assert!(
            json["sttSecs"].is_f64() && json["estimatedCostUsd"].is_f64(),
            "{json}"
        );

        let mut full = Totals {
            call_count: u64::MAX,
            total_duration_secs: u64::MAX,
            total_turns: u64::MAX,
            ..Totals::default()
        };
        full.add(&summary, &usage(1, 1), &PRICES);
        assert_eq!(
            (full.call_count, full.total_duration_secs, full.total_turns),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        assert!(full.total_minutes.is_finite() && full.total_minutes > 3e17);
        assert_eq!((full.claude_input_tokens, full.tts_chars), (1, 1));
    }

    #[test]
    fn an_empty_day_is_all_zeros() {
        let rollup = compute(100, std::iter::empty(), &PRICES);
        assert_eq!(rollup.totals, Totals::default());
        assert!(rollup.by_role.is_empty());
    }
}
