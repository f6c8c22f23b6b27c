//! Process-wide call metrics: counters and the latency of recent turns, for `GET /metrics`
//! (Prometheus text format) and the `demo` command.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::call::TurnLatency;

/// Turns kept for the latency summaries.
const RECENT_TURNS: usize = 1000;

#[derive(Debug, Default)]
pub struct Metrics {
    pub calls_started: AtomicU64,
    pub calls_completed: AtomicU64,
    pub calls_failed: AtomicU64,
    pub calls_refused: AtomicU64,
    pub barge_ins: AtomicU64,
    pub tool_calls: AtomicU64,
    pub turns: AtomicU64,
    recent: Mutex<VecDeque<TurnLatency>>,
}

impl Metrics {
    pub fn record_turn(&self, latency: &TurnLatency) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_TURNS {
            recent.pop_front();
        }
        recent.push_back(latency.clone());
    }

    /// The latest turns, oldest first.
    pub fn recent_turns(&self) -> Vec<TurnLatency> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}
