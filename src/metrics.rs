//! Process-wide call metrics: counters and the latency of recent turns, for `GET /metrics`
//! (Prometheus text format) and the `demo` command.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// What one turn took, end of the caller's speech first (milliseconds from it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnLatency {
    pub call_sid: String,
    pub turn: u64,
    /// The caller's words.
    pub said: String,
    pub speech_end_to_commit_ms: Option<u64>,
    pub first_token_ms: Option<u64>,
    pub first_sentence_ms: Option<u64>,
    pub first_audio_ms: Option<u64>,
    pub first_frame_ms: Option<u64>,
}

/// Turns kept for the latency summaries.
const RECENT_TURNS: usize = 1000;

#[derive(Debug, Default)]
pub struct Metrics {
    pub calls_started: AtomicU64,
    pub calls_completed: AtomicU64,
    pub calls_failed: AtomicU64,
    pub calls_reaped: AtomicU64,
    pub calls_refused: AtomicU64,
    /// Threads the system would not start (each refused its call, or its connection).
    pub thread_spawn_failures: AtomicU64,
    pub barge_ins: AtomicU64,
    pub tool_calls: AtomicU64,
    pub turns: AtomicU64,
    /// Media-port connections closed before their stream started, by why (see
    /// [`MediaDrop`]).
    pub media_dropped: [AtomicU64; MediaDrop::ALL.len()],
    /// Caller audio frames that came before `start` (dropped, never sent to speech-to-text).
    pub media_frames_before_start: AtomicU64,
    /// Key presses dropped: not a key, or over the per-call limit.
    pub dtmf_dropped: AtomicU64,
    /// Marks Twilio never echoed within `MARK_TIMEOUT_MS`, taken as played.
    pub marks_overdue: AtomicU64,
    recent: Mutex<VecDeque<TurnLatency>>,
}

/// Why a media-port connection was closed before its stream started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaDrop {
    /// Its source had the most connections waiting for a handshake or `start`: the oldest of
    /// them made room for a new one.
    PeerLimit,
    /// Every place for connections waiting was taken: the oldest made room.
    GlobalLimit,
    /// The handshake request was not complete in time.
    HandshakeTimeout,
    /// No `start` came in time after the handshake.
    StartTimeout,
}

impl MediaDrop {
    pub const ALL: [MediaDrop; 4] = [
        MediaDrop::PeerLimit,
        MediaDrop::GlobalLimit,
        MediaDrop::HandshakeTimeout,
        MediaDrop::StartTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaDrop::PeerLimit => "peer_limit",
            MediaDrop::GlobalLimit => "global_limit",
            MediaDrop::HandshakeTimeout => "handshake_timeout",
            MediaDrop::StartTimeout => "start_timeout",
        }
    }
}

impl Metrics {
    /// Counts a media-port connection closed before its stream started; returns the count
    /// for that reason, this one included.
    pub fn media_drop(&self, why: MediaDrop) -> u64 {
        self.media_dropped[why as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn media_dropped(&self, why: MediaDrop) -> u64 {
        self.media_dropped[why as usize].load(Ordering::Relaxed)
    }

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

/// Reads one stage's milliseconds from a turn.
type Stage = fn(&TurnLatency) -> Option<u64>;

/// Latency stages of a turn, as exported (label value, field).
const STAGES: [(&str, Stage); 5] = [
    ("commit", |l| l.speech_end_to_commit_ms),
    ("first_token", |l| l.first_token_ms),
    ("first_sentence", |l| l.first_sentence_ms),
    ("first_audio", |l| l.first_audio_ms),
    ("first_frame", |l| l.first_frame_ms),
];

/// The value at quantile `q` of sorted `values` (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Appends one metric in the Prometheus text format: its help, its type, and a line per
/// sample (`labels` is `""` or `{name="value"}`).
pub fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, value) in samples {
        out.push_str(&format!("{name}{labels} {value}\n"));
    }
}

impl Metrics {
    /// The Prometheus text exposition (version 0.0.4) of these metrics and the live calls.
    pub fn render(&self, active: usize, peak: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            write_metric(&mut out, name, kind, help, samples)
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(
            "cotrackpro_calls_active",
            "gauge",
            "Calls in progress.",
            &[("", active as u64)],
        );
        metric(
            "cotrackpro_calls_peak",
            "gauge",
            "Most calls in progress at once since start-up.",
            &[("", peak as u64)],
        );
        metric(
            "cotrackpro_calls_started_total",
            "counter",
            "Calls whose stream started.",
            &[("", get(&self.calls_started))],
        );
        metric(
            "cotrackpro_calls_ended_total",
            "counter",
            "Calls ended, by final status.",
            &[
                ("{status=\"completed\"}", get(&self.calls_completed)),
                ("{status=\"failed\"}", get(&self.calls_failed)),
                ("{status=\"force-reaped\"}", get(&self.calls_reaped)),
            ],
        );
        metric(
            "cotrackpro_calls_refused_total",
            "counter",
            "Streams refused at MAX_CONCURRENT_CALLS.",
            &[("", get(&self.calls_refused))],
        );
        metric(
            "cotrackpro_thread_spawn_failures_total",
            "counter",
            "Threads the system would not start; the call they were for was refused (1013).",
            &[("", get(&self.thread_spawn_failures))],
        );
        metric(
            "cotrackpro_turns_total",
            "counter",
            "Caller turns answered.",
            &[("", get(&self.turns))],
        );
        metric(
            "cotrackpro_barge_ins_total",
            "counter",
            "Times the caller talked over the assistant.",
            &[("", get(&self.barge_ins))],
        );
        metric(
            "cotrackpro_tool_calls_total",
            "counter",
            "CoTrackPro tool calls.",
            &[("", get(&self.tool_calls))],
        );
        let drops: Vec<(String, u64)> = MediaDrop::ALL
            .iter()
            .map(|why| {
                (
                    format!("{{reason=\"{}\"}}", why.as_str()),
                    self.media_dropped(*why),
                )
            })
            .collect();
        let drops: Vec<(&str, u64)> = drops.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "cotrackpro_media_connections_dropped_total",
            "counter",
            "Media-port connections closed before their stream started, by reason.",
            &drops,
        );
        metric(
            "cotrackpro_media_frames_before_start_total",
            "counter",
            "Caller audio frames received before start, dropped.",
            &[("", get(&self.media_frames_before_start))],
        );
        metric(
            "cotrackpro_dtmf_dropped_total",
            "counter",
            "Key presses dropped: not one of 0-9*#ABCD, or over the per-call limit.",
            &[("", get(&self.dtmf_dropped))],
        );
        metric(
            "cotrackpro_marks_overdue_total",
            "counter",
            "Marks never echoed within MARK_TIMEOUT_MS, taken as played.",
            &[("", get(&self.marks_overdue))],
        );

        let recent = self.recent_turns();
        out.push_str("# HELP cotrackpro_turn_latency_ms Milliseconds from the end of the caller's speech to each stage of the answer, over recent turns.\n# TYPE cotrackpro_turn_latency_ms summary\n");
        for (stage, field) in STAGES {
            let mut values: Vec<u64> = recent.iter().filter_map(field).collect();
            values.sort_unstable();
            for q in [0.5, 0.95, 0.99] {
                if let Some(v) = quantile(&values, q) {
                    out.push_str(&format!(
                        "cotrackpro_turn_latency_ms{{stage=\"{stage}\",quantile=\"{q}\"}} {v}\n"
                    ));
                }
            }
            out.push_str(&format!(
                "cotrackpro_turn_latency_ms_sum{{stage=\"{stage}\"}} {}\ncotrackpro_turn_latency_ms_count{{stage=\"{stage}\"}} {}\n",
                values.iter().sum::<u64>(),
                values.len()
            ));
        }
        out
    }
}

/// The webhook listener's counters (`cotrackpro_http_*` in `/metrics`), kept by its accept loop
/// (`http::listener`). What each refusal answered is in the README's "The HTTP tier".
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections open now (reading, queued, being answered, or idle between requests).
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    /// Refused at once: `HTTP_MAX_CONNECTIONS` reached.
    pub refused_over_cap: AtomicU64,
    /// Refused at once: every worker busy and the queue full.
    pub refused_busy: AtomicU64,
    /// `accept` failures (out of descriptors and others).
    pub accept_errors: AtomicU64,
    /// 408: head and body not in within the deadline.
    pub timeouts: AtomicU64,
    /// 431: request line and headers over the limit.
    pub heads_too_large: AtomicU64,
    /// 413: a `Content-Length` over `HTTP_MAX_BODY_BYTES`.
    pub bodies_too_large: AtomicU64,
    /// 400, 411, 505: not a request we serve.
    pub malformed: AtomicU64,
}

impl HttpCounters {
    /// These counters in the Prometheus text format, after [`Metrics::render`]'s.
    pub fn render(&self, max_connections: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            write_metric(&mut out, name, kind, help, samples)
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(
            "cotrackpro_http_connections_open",
            "gauge",
            "Webhook connections open now.",
            &[("", self.open.load(Ordering::Relaxed) as u64)],
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
            &[("", get(&self.accepted))],
        );
        metric(
            "cotrackpro_http_refused_total",
            "counter",
            "Connections and requests the HTTP tier answered itself, by reason.",
            &[
                ("{reason=\"connections\"}", get(&self.refused_over_cap)),
                ("{reason=\"busy\"}", get(&self.refused_busy)),
                ("{reason=\"timeout\"}", get(&self.timeouts)),
                ("{reason=\"header_too_large\"}", get(&self.heads_too_large)),
                ("{reason=\"body_too_large\"}", get(&self.bodies_too_large)),
                ("{reason=\"malformed\"}", get(&self.malformed)),
            ],
        );
        metric(
            "cotrackpro_http_accept_errors_total",
            "counter",
            "accept(2) failures on HTTP_PORT (out of descriptors and others).",
            &[("", get(&self.accept_errors))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.95), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn renders_counters_and_latency_summaries() {
        let metrics = Metrics::default();
        metrics.calls_started.fetch_add(3, Ordering::Relaxed);
        metrics.calls_failed.fetch_add(1, Ordering::Relaxed);
        for ms in [100, 300, 200] {
            metrics.record_turn(&TurnLatency {
                first_frame_ms: Some(ms),
                ..TurnLatency::default()
            });
        }
        let text = metrics.render(2, 5);
        assert!(text.contains("cotrackpro_calls_active 2\n"), "{text}");
        assert!(text.contains("cotrackpro_calls_peak 5\n"));
        assert!(text.contains("cotrackpro_calls_started_total 3\n"));
        assert!(text.contains("cotrackpro_calls_ended_total{status=\"failed\"} 1\n"));
        assert!(text.contains("cotrackpro_turns_total 3\n"));
        metrics.media_drop(MediaDrop::PeerLimit);
        let text = metrics.render(2, 5);
        assert!(
            text.contains("cotrackpro_media_connections_dropped_total{reason=\"peer_limit\"} 1\n")
        );
        assert!(text
            .contains("cotrackpro_media_connections_dropped_total{reason=\"start_timeout\"} 0\n"));
        assert!(text
            .contains("cotrackpro_turn_latency_ms{stage=\"first_frame\",quantile=\"0.5\"} 200\n"));
        assert!(text.contains("cotrackpro_turn_latency_ms_sum{stage=\"first_frame\"} 600\n"));
        assert!(text.contains("cotrackpro_turn_latency_ms_count{stage=\"first_token\"} 0\n"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("a value");
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
