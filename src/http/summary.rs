//! What `GET /records/summary` answers: the totals of every call that started in a range (not
//! of one page), and one entry per UTC day for the dashboard's chart — calls, cost and the p95
//! turn latency. Each day's cost is [`rollup::compute`] of that day, so the chart agrees with
//! the rollup files. Pure: summaries in, values out.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Prices;
use crate::cost;
use crate::records::event::{CallStatus, CostSummary};
use crate::records::index::Summary;
use crate::rollup;
use crate::timestamp::{self, MS_PER_DAY};

/// The most days a summary lists (the newest ones when a range is longer).
pub const MAX_DAYS: usize = 366;

/// A call's estimated cost by component, in USD at the configured prices.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CostBreakdown {
    pub claude_input: f64,
    pub claude_output: f64,
    pub claude_cache_write: f64,
    pub claude_cache_read: f64,
    pub tts: f64,
    pub stt: f64,
}

impl CostBreakdown {
    /// Each component priced alone by [`cost::estimate_usd`], so the parts use the one formula
    /// the total does.
    pub fn of(usage: &CostSummary, prices: &Prices) -> CostBreakdown {
        let only = |usage: CostSummary| cost::estimate_usd(&usage, prices);
        let none = CostSummary::default();
        CostBreakdown {
            claude_input: only(CostSummary {
                claude_input_tokens: usage.claude_input_tokens,
                ..none.clone()
            }),
            claude_output: only(CostSummary {
                claude_output_tokens: usage.claude_output_tokens,
                ..none.clone()
            }),
            claude_cache_write: only(CostSummary {
                claude_cache_creation_tokens: usage.claude_cache_creation_tokens,
                ..none.clone()
            }),
            claude_cache_read: only(CostSummary {
                claude_cache_read_tokens: usage.claude_cache_read_tokens,
                ..none.clone()
            }),
            tts: only(CostSummary {
                tts_chars: usage.tts_chars,
                ..none.clone()
            }),
            stt: only(CostSummary {
                stt_secs: usage.stt_secs,
                ..none
            }),
        }
    }

    fn add(&mut self, other: &CostBreakdown) {
        let add = |total: &mut f64, more: f64| {
            *total = cost::round6(cost::saturating_add_f64(*total, more));
        };
        add(&mut self.claude_input, other.claude_input);
        add(&mut self.claude_output, other.claude_output);
        add(&mut self.claude_cache_write, other.claude_cache_write);
        add(&mut self.claude_cache_read, other.claude_cache_read);
        add(&mut self.tts, other.tts);
        add(&mut self.stt, other.stt);
    }
}

/// The calls of a range, by status, with what the ended ones cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeTotals {
    /// Every call that started in the range, whatever its status.
    pub call_count: u64,
    pub active: u64,
    pub completed: u64,
    pub failed: u64,
    pub force_reaped: u64,
    /// Calls with no cost summary (still active, or lost before their end was written): in
    /// `callCount`, not in the sums below.
    pub without_cost_summary: u64,
    pub total_duration_secs: u64,
    pub total_turns: u64,
    pub estimated_cost_usd: f64,
    pub cost_breakdown_usd: CostBreakdown,
    /// Nearest-rank p95 of every turn's time to its first audio frame; `None`: no turn had one.
    pub p95_first_frame_ms: Option<u32>,
}

/// One UTC day of the chart.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Day {
    pub date: String,
    pub call_count: u64,
    pub failed: u64,
    pub force_reaped: u64,
    pub estimated_cost_usd: f64,
    pub p95_first_frame_ms: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeSummary {
    pub totals: RangeTotals,
    /// Every day of the range, oldest first, days without calls included (at most
    /// [`MAX_DAYS`], the newest).
    pub days: Vec<Day>,
}

/// The summary of `calls` (already limited to the range) over the days `first_day..=last_day`
/// (`None`: the days of the first and last call).
pub fn summarize(
    calls: &[&Summary],
    first_day: Option<i64>,
    last_day: Option<i64>,
    prices: &Prices,
) -> RangeSummary {
    let mut by_day: BTreeMap<i64, Vec<&Summary>> = BTreeMap::new();
    for &call in calls {
        by_day
            .entry(call.started_at_ms.div_euclid(MS_PER_DAY))
            .or_default()
            .push(call);
    }
    let last = last_day.or_else(|| by_day.keys().next_back().copied());
    let first = first_day.or_else(|| by_day.keys().next().copied());
    let days = match (first, last) {
        (Some(first), Some(last)) if first <= last => {
            let first = first.max(last - (MAX_DAYS as i64 - 1));
            (first..=last)
                .map(|day| {
                    let calls = by_day.get(&day).map(Vec::as_slice).unwrap_or(&[]);
                    day_of(day, calls, prices)
                })
                .collect()
        }
        _ => Vec::new(),
    };
    RangeSummary {
        totals: totals(calls, prices),
        days,
    }
}

fn totals(calls: &[&Summary], prices: &Prices) -> RangeTotals {
    let mut totals = RangeTotals::default();
    let mut latencies = Vec::new();
    for call in calls {
        totals.call_count += 1;
        *match call.status {
            CallStatus::Active => &mut totals.active,
            CallStatus::Completed => &mut totals.completed,
            CallStatus::Failed => &mut totals.failed,
            CallStatus::ForceReaped => &mut totals.force_reaped,
        } += 1;
        latencies.extend_from_slice(call.first_frame_ms());
        let Some(usage) = call.cost() else {
            totals.without_cost_summary += 1;
            continue;
        };
        totals.total_duration_secs = totals
            .total_duration_secs
            .saturating_add(call.duration_secs().unwrap_or(0));
        totals.total_turns = totals.total_turns.saturating_add(call.turn_count());
        totals.estimated_cost_usd = cost::round6(cost::saturating_add_f64(
            totals.estimated_cost_usd,
            cost::estimate_usd(&usage, prices),
        ));
        totals
            .cost_breakdown_usd
            .add(&CostBreakdown::of(&usage, prices));
    }
    totals.p95_first_frame_ms = p95(&mut latencies);
    totals
}

fn day_of(day: i64, calls: &[&Summary], prices: &Prices) -> Day {
    let rollup = rollup::compute(day, calls.iter().copied(), prices);
    let count = |status: CallStatus| calls.iter().filter(|c| c.status == status).count() as u64;
    let mut latencies: Vec<u32> = calls
        .iter()
        .flat_map(|c| c.first_frame_ms().iter().copied())
        .collect();
    Day {
        date: timestamp::format_date(day),
        call_count: calls.len() as u64,
        failed: count(CallStatus::Failed),
        force_reaped: count(CallStatus::ForceReaped),
        estimated_cost_usd: rollup.totals.estimated_cost_usd,
        p95_first_frame_ms: p95(&mut latencies),
    }
}

/// The nearest-rank 95th percentile.
fn p95(values: &mut [u32]) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() * 95).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PRICES;
    use crate::records::event::{Event, EventKind, TurnLatencyRecord};
    use crate::records::index::{sid_key, Index};

    const DAY: i64 = 20_000;

    fn call(
        index: &mut Index,
        n: u32,
        started_ms: i64,
        status: CallStatus,
        cost: Option<CostSummary>,
        first_frames: &[u64],
    ) {
        let sid = format!("CA{n:032x}");
        let created = Event {
            role: Some("parent".into()),
            caller_number: Some("+1***0123".into()),
            started_at: Some(timestamp::format_ms(started_ms)),
            status: Some(CallStatus::Active),
            ..Event::new(EventKind::Created, &sid, "t", i64::MAX)
        };
        index.apply(&created, u64::from(n) * 10);
        let done = Event {
            status: Some(status),
            cost_summary: cost,
            duration_secs: Some(60),
            turn_count: Some(2),
            turn_latencies: Some(
                first_frames
                    .iter()
                    .enumerate()
                    .map(|(i, &ms)| TurnLatencyRecord {
                        turn: i as u64 + 1,
                        first_frame_ms: Some(ms),
                        ..TurnLatencyRecord::default()
                    })
                    .collect(),
            ),
            ..Event::new(EventKind::Completed, &sid, "t", i64::MAX)
        };
        index.apply(&done, u64::from(n) * 10 + 5);
    }

    fn summaries(index: &Index, n: u32) -> Vec<&Summary> {
        (1..=n)
            .filter_map(|i| sid_key(&format!("CA{i:032x}")))
            .filter_map(|key| index.get(&key))
            .collect()
    }

    #[test]
    fn totals_cover_every_call_and_days_fill_the_range() {
        let mut index = Index::default();
        let usage = CostSummary {
            claude_input_tokens: 1_000_000,
            claude_output_tokens: 100_000,
            tts_chars: 2_000,
            stt_secs: 60.0,
            ..CostSummary::default()
        };
        let at = |day: i64, hour: i64| day * MS_PER_DAY + hour * 3_600_000;
        call(
            &mut index,
            1,
            at(DAY, 1),
            CallStatus::Completed,
            Some(usage.clone()),
            &[100, 200],
        );
        call(&mut index, 2, at(DAY, 2), CallStatus::Failed, None, &[]);
        call(
            &mut index,
            3,
            at(DAY + 2, 3),
            CallStatus::ForceReaped,
            Some(usage.clone()),
            &[900],
        );
        let calls = summaries(&index, 3);
        let summary = summarize(&calls, Some(DAY - 1), Some(DAY + 2), &DEFAULT_PRICES);

        let t = &summary.totals;
        assert_eq!(
            (t.call_count, t.completed, t.failed, t.force_reaped),
            (3, 1, 1, 1)
        );
        assert_eq!(t.without_cost_summary, 1);
        assert_eq!(t.total_turns, 4);
        let one = cost::estimate_usd(&usage, &DEFAULT_PRICES);
        assert!((t.estimated_cost_usd - 2.0 * one).abs() < 1e-6);
        let b = &t.cost_breakdown_usd;
        let parts = b.claude_input
            + b.claude_output
            + b.claude_cache_write
            + b.claude_cache_read
            + b.tts
            + b.stt;
        assert!((parts - t.estimated_cost_usd).abs() < 1e-5, "{b:?}");
        assert!(b.claude_input > 0.0 && b.tts > 0.0 && b.stt > 0.0);
        assert_eq!(b.claude_cache_read, 0.0);
        assert_eq!(t.p95_first_frame_ms, Some(900));

        let dates: Vec<&str> = summary.days.iter().map(|d| d.date.as_str()).collect();
        assert_eq!(dates.len(), 4, "{dates:?}");
        assert_eq!(dates[1], timestamp::format_date(DAY));
        let counts: Vec<u64> = summary.days.iter().map(|d| d.call_count).collect();
        assert_eq!(counts, vec![0, 2, 0, 1]);
        assert_eq!(summary.days[1].failed, 1);
        assert_eq!(summary.days[3].force_reaped, 1);
        assert_eq!(summary.days[1].p95_first_frame_ms, Some(200));
        assert_eq!(summary.days[0].p95_first_frame_ms, None);
        assert!((summary.days[1].estimated_cost_usd - one).abs() < 1e-6);
    }

    #[test]
    fn without_a_range_the_days_run_from_the_first_call_to_the_last_and_are_bounded() {
        let mut index = Index::default();
        call(
            &mut index,
            1,
            DAY * MS_PER_DAY,
            CallStatus::Completed,
            None,
            &[],
        );
        call(
            &mut index,
            2,
            (DAY + 1000) * MS_PER_DAY,
            CallStatus::Completed,
            None,
            &[],
        );
        let summary = summarize(&summaries(&index, 2), None, None, &DEFAULT_PRICES);
        assert_eq!(summary.days.len(), MAX_DAYS);
        assert_eq!(
            summary.days[MAX_DAYS - 1].date,
            timestamp::format_date(DAY + 1000)
        );
        assert_eq!(
            summary.totals.call_count, 2,
            "totals still cover every call"
        );
        assert!(summarize(&[], None, None, &DEFAULT_PRICES).days.is_empty());
    }

    #[test]
    fn p95_is_nearest_rank() {
        assert_eq!(p95(&mut []), None);
        assert_eq!(p95(&mut [7]), Some(7));
        let mut hundred: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(p95(&mut hundred), Some(95));
        let mut twenty: Vec<u32> = (1..=20).collect();
        assert_eq!(p95(&mut twenty), Some(19));
    }
}
