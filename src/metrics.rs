//! Call metrics for `GET /metrics`, in Prometheus' conventions (text format 0.0.4): counters
//! that only go up and end in `_total`, latency histograms in seconds, base units, HELP and TYPE
//! for every family. Also the latency of recent turns, for the `demo` command.
//!
//! Events deep in the providers and workers, which hold no handle on [`Metrics`] (provider
//! errors and retries, STT reconnects, TTS failures, tool errors), go to the process-wide
//! [`EVENTS`]; a server is one process, so that is the same thing in production.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
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

/// Turns kept for the `demo` command's table (`/metrics` uses the histograms).
const RECENT_TURNS: usize = 1000;

/// Upper bounds of the latency histograms' buckets, in seconds: fine where a turn's stages
/// fall (tens to hundreds of milliseconds), coarse past the seconds where a caller gives up.
pub const LATENCY_BUCKETS_SECS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// A Prometheus histogram in seconds: a few atomics, so observing never blocks. Counts are kept
/// per bucket and summed into cumulative `le` buckets when rendered; the sum is kept in whole
/// microseconds so that it is an atomic integer and never goes down.
#[derive(Debug)]
pub struct Histogram {
    /// One per bound in [`LATENCY_BUCKETS_SECS`], then `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS_SECS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `micros` microseconds.
    pub fn observe_micros(&self, micros: u64) {
        let secs = micros as f64 / 1e6;
        let idx = LATENCY_BUCKETS_SECS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the `_bucket`, `_sum` and `_count` samples of one labelled series (`labels` is
    /// `""` or `name="value",...` without braces).
    fn write_samples(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (idx, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS_SECS
                .get(idx)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        // The count is the `+Inf` bucket: read once, so the two agree in one scrape.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A counter family with labels, for label sets known only when they happen (provider and
/// error kind, route and status class). A map under a mutex: these are counted on error paths
/// and once per request, never per audio frame.
#[derive(Debug, Default)]
pub struct LabeledCounter {
    /// Rendered label set (`provider="anthropic",kind="http"`) to value.
    samples: Mutex<BTreeMap<String, f64>>,
}

impl LabeledCounter {
    pub const fn new() -> LabeledCounter {
        LabeledCounter {
            samples: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `by` (finite and positive, or nothing is added: a counter never goes down) to the
    /// series of `labels`.
    pub fn add(&self, labels: &[(&str, &str)], by: f64) {
        if !(by.is_finite() && by > 0.0) {
            return;
        }
        let key = label_set(labels);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let value = samples.entry(key).or_insert(0.0);
        // Held at the largest finite value rather than reaching infinity.
        *value = (*value + by).min(f64::MAX);
    }

    pub fn inc(&self, labels: &[(&str, &str)]) {
        self.add(labels, 1.0);
    }

    /// The value of one series (0 when it never happened).
    pub fn get(&self, labels: &[(&str, &str)]) -> f64 {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.get(&label_set(labels)).copied().unwrap_or(0.0)
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        write_family(out, name, "counter", help);
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for (labels, value) in samples.iter() {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// `name="value",...` with each value escaped as the text format asks (`\\`, `\"`, `\n`).
fn label_set(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (idx, (name, value)) in labels.iter().enumerate() {
        if idx > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

fn write_family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Process-wide counters of events in the providers and workers (see the module's docs).
#[derive(Debug)]
pub struct Events {
    /// Requests to a provider that failed for good, by `provider` and `kind`.
    pub provider_errors: LabeledCounter,
    /// Requests to a provider tried again, by `provider` and the `kind` of failure.
    pub provider_retries: LabeledCounter,
    /// Speech-to-text sessions replaced during a call.
    pub stt_reconnects: AtomicU64,
    /// Text-to-speech pieces that could not be spoken, by `kind`.
    pub tts_failures: LabeledCounter,
    /// Tool calls that answered an error (the tool's own error, or none reachable).
    pub tool_errors: AtomicU64,
}

pub static EVENTS: Events = Events {
    provider_errors: LabeledCounter::new(),
    provider_retries: LabeledCounter::new(),
    stt_reconnects: AtomicU64::new(0),
    tts_failures: LabeledCounter::new(),
    tool_errors: AtomicU64::new(0),
};

impl Events {
    /// A provider request failed for good.
    pub fn provider_error(&self, provider: &str, kind: &str) {
        self.provider_errors
            .inc(&[("provider", provider), ("kind", kind)]);
    }

    /// A provider request failed and is tried again.
    pub fn provider_retry(&self, provider: &str, kind: &str) {
        self.provider_retries
            .inc(&[("provider", provider), ("kind", kind)]);
    }

    fn render(&self, out: &mut String) {
        self.provider_errors.write(
            out,
            "cotrackpro_provider_errors_total",
            "Provider requests that failed for good, by provider and kind.",
        );
        self.provider_retries.write(
            out,
            "cotrackpro_provider_retries_total",
            "Provider requests tried again, by provider and kind of failure.",
        );
        write_metric(
            out,
            "cotrackpro_stt_reconnects_total",
            "counter",
            "Speech-to-text sessions replaced during a call.",
            &[("", self.stt_reconnects.load(Ordering::Relaxed))],
        );
        self.tts_failures.write(
            out,
            "cotrackpro_tts_failures_total",
            "Text-to-speech pieces that could not be spoken, by kind.",
        );
        write_metric(
            out,
            "cotrackpro_tool_errors_total",
            "counter",
            "CoTrackPro tool calls that answered an error.",
            &[("", self.tool_errors.load(Ordering::Relaxed))],
        );
    }
}

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
    /// Media-port connections waiting for their handshake or `start` now.
    pub media_waiting: AtomicU64,
    /// Key presses dropped: not a key, or over the per-call limit.
    pub dtmf_dropped: AtomicU64,
    /// Marks Twilio never echoed within `MARK_TIMEOUT_MS`, taken as played.
    pub marks_overdue: AtomicU64,
    /// Seconds from the end of the caller's speech to each stage, as [`STAGES`].
    stage_seconds: [Histogram; STAGES.len()],
    /// Seconds of each hop between consecutive stages, as [`HOPS`].
    hop_seconds: [Histogram; HOPS.len()],
    /// Estimated USD of ended calls, by `component`.
    pub spend_usd: LabeledCounter,
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
        for ((_, stage), histogram) in STAGES.iter().zip(&self.stage_seconds) {
            if let Some(ms) = stage(latency) {
                histogram.observe_micros(ms.saturating_mul(1000));
            }
        }
        for ((_, from, to), histogram) in HOPS.iter().zip(&self.hop_seconds) {
            let start = if *from == 0 {
                Some(0)
            } else {
                STAGES[*from - 1].1(latency)
            };
            if let (Some(start), Some(end)) = (start, STAGES[*to].1(latency)) {
                if let Some(ms) = end.checked_sub(start) {
                    histogram.observe_micros(ms.saturating_mul(1000));
                }
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_TURNS {
            recent.pop_front();
        }
        recent.push_back(latency.clone());
    }

    /// Adds an ended call's estimated cost to the spend counters, by component (the parts
    /// [`crate::cost::spend_by_component`] gives).
    pub fn add_spend(&self, parts: &[(&str, f64)]) {
        for (component, usd) in parts {
            self.spend_usd.add(&[("component", component)], *usd);
        }
    }

    /// The latest turns, oldest first.
    pub fn recent_turns(&self) -> Vec<TurnLatency> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}

/// Reads one stage's milliseconds (from the end of the caller's speech) from a turn.
type Stage = fn(&TurnLatency) -> Option<u64>;

/// Latency stages of a turn, as exported (label value, field).
const STAGES: [(&str, Stage); 5] = [
    ("commit", |l| l.speech_end_to_commit_ms),
    ("first_token", |l| l.first_token_ms),
    ("first_sentence", |l| l.first_sentence_ms),
    ("first_audio", |l| l.first_audio_ms),
    ("first_frame", |l| l.first_frame_ms),
];

/// The hops the server times itself, between consecutive stages: (label value, from, to),
/// where `from` 0 is the end of the caller's speech and `n` is the end of `STAGES[n - 1]`.
const HOPS: [(&str, usize, usize); 5] = [
    // Speech-to-text: the end of speech until the transcript is committed.
    ("stt_commit", 0, 0),
    // The model: commit until its first words.
    ("llm_first_token", 1, 1),
    // The sentence splitter waiting for a whole first sentence.
    ("first_sentence", 2, 2),
    // Text-to-speech: the sentence sent until its first audio.
    ("tts_first_audio", 3, 3),
    // Our own pacing: first audio until its first frame is written to Twilio.
    ("first_frame_out", 4, 4),
];

/// The quantile `q` of one histogram series in a scraped exposition, estimated as Prometheus'
/// `histogram_quantile` does: linearly within the bucket where the rank falls (the lowest
/// bucket from 0; a rank in `+Inf` answers the highest finite bound). `label` is the series'
/// one label (`stage="first_frame"`); `None` when the series is missing or empty.
pub fn histogram_quantile(text: &str, name: &str, label: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{{label},le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let (le, value) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    None
}

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
            "cotrackpro_media_connections_waiting",
            "gauge",
            "Media-port connections waiting for their handshake or start.",
            &[("", get(&self.media_waiting))],
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

        write_family(
            &mut out,
            "cotrackpro_turn_stage_seconds",
            "histogram",
            "Seconds from the end of the caller's speech to each stage of the answer, by stage.",
        );
        for ((stage, _), histogram) in STAGES.iter().zip(&self.stage_seconds) {
            let labels = label_set(&[("stage", stage)]);
            histogram.write_samples(&mut out, "cotrackpro_turn_stage_seconds", &labels);
        }
        write_family(
            &mut out,
            "cotrackpro_turn_hop_seconds",
            "histogram",
            "Seconds of each hop of a turn the server times itself (between consecutive stages), by hop.",
        );
        for ((hop, _, _), histogram) in HOPS.iter().zip(&self.hop_seconds) {
            let labels = label_set(&[("hop", hop)]);
            histogram.write_samples(&mut out, "cotrackpro_turn_hop_seconds", &labels);
        }
        self.spend_usd.write(
            &mut out,
            "cotrackpro_spend_usd_total",
            "Estimated USD spent by ended calls, by component (from the configured prices).",
        );
        EVENTS.render(&mut out);
        write_family(
            &mut out,
            "cotrackpro_build_info",
            "gauge",
            "Always 1; the version of the running server is its label.",
        );
        let version = label_set(&[("version", env!("CARGO_PKG_VERSION"))]);
        let _ = writeln!(out, "cotrackpro_build_info{{{version}}} 1");
        if let Some(process) = ProcessStats::read() {
            process.render(&mut out);
        }
        out
    }
}

/// The process's own figures, read from `/proc/self` at each scrape (a few small reads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited or unknown.
    pub max_fds: Option<u64>,
    pub threads: u64,
}

impl ProcessStats {
    /// `None` where there is no `/proc` (not Linux) or it cannot be read.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let (ticks, page) = (u64::try_from(ticks).ok()?, u64::try_from(page).ok()?);
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `limit`, which lives through the call.
        let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY)
            .then_some(limit.rlim_cur);
        let stats = ProcessStats::parse(&stat, &statm, ticks, page, open_fds)?;
        Some(ProcessStats { max_fds, ..stats })
    }

    /// The figures from `/proc/self/stat` and `/proc/self/statm` (see proc(5)); `ticks` is
    /// `_SC_CLK_TCK`, `page_bytes` `_SC_PAGESIZE`.
    pub fn parse(
        stat: &str,
        statm: &str,
        ticks: u64,
        page_bytes: u64,
        open_fds: u64,
    ) -> Option<ProcessStats> {
        if ticks == 0 {
            return None;
        }
        // The command name (field 2) may hold spaces and parentheses: count from after its
        // last `)`. Then field 3 is the first; utime, stime are 14 and 15, num_threads 20.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let cpu_ticks = field(14)?.saturating_add(field(15)?);
        let resident_pages = statm.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        Some(ProcessStats {
            cpu_seconds: cpu_ticks as f64 / ticks as f64,
            resident_bytes: resident_pages.saturating_mul(page_bytes),
            open_fds,
            max_fds: None,
            threads: field(20)?,
        })
    }

    fn render(&self, out: &mut String) {
        write_family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        let _ = writeln!(out, "process_cpu_seconds_total {}", self.cpu_seconds);
        write_metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            &[("", self.resident_bytes)],
        );
        write_metric(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            &[("", self.open_fds)],
        );
        if let Some(max_fds) = self.max_fds {
            write_metric(
                out,
                "process_max_fds",
                "gauge",
                "The open file descriptor limit (soft RLIMIT_NOFILE).",
                &[("", max_fds)],
            );
        }
        write_metric(
            out,
            "process_threads",
            "gauge",
            "Threads of the process.",
            &[("", self.threads)],
        );
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
    /// Responses the routes gave, by `route` and status `code` class (`2xx`...).
    pub responses: LabeledCounter,
    /// Seconds from a request's first byte to its answer being ready, by route as
    /// [`HTTP_ROUTES`].
    durations: [Histogram; HTTP_ROUTES.len()],
}

/// The routes' fixed names (`http`'s routes), then `unknown` for paths no route serves.
pub const HTTP_ROUTES: [&str; 10] = [
    "health",
    "call_incoming",
    "call_status",
    "call_outbound",
    "records",
    "cron_cost_rollup",
    "dashboard",
    "metrics",
    "call_amd",
    "unknown",
];

impl HttpCounters {
    /// Counts a response of a route (one of [`HTTP_ROUTES`]) with `status`, answered
    /// `elapsed` after the request's first byte.
    pub fn response(&self, route: &str, status: u16, elapsed: std::time::Duration) {
        let idx = HTTP_ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(HTTP_ROUTES.len() - 1);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.durations[idx].observe_micros(micros);
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.responses.inc(&[("route", route), ("code", class)]);
    }

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
        self.responses.write(
            &mut out,
            "cotrackpro_http_responses_total",
            "Responses of the routes, by route and status class (the tier's own refusals are in cotrackpro_http_refused_total).",
        );
        write_family(
            &mut out,
            "cotrackpro_http_request_duration_seconds",
            "histogram",
            "Seconds from a request's first byte to its answer being ready, by route.",
        );
        for (route, histogram) in HTTP_ROUTES.iter().zip(&self.durations) {
            let labels = label_set(&[("route", route)]);
            histogram.write_samples(
                &mut out,
                "cotrackpro_http_request_duration_seconds",
                &labels,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_the_differences_between_consecutive_stages() {
        let metrics = Metrics::default();
        metrics.record_turn(&TurnLatency {
            speech_end_to_commit_ms: Some(40),
            first_token_ms: Some(440),
            first_sentence_ms: Some(460),
            first_audio_ms: Some(700),
            first_frame_ms: Some(703),
            ..TurnLatency::default()
        });
        // A turn missing a stage times neither hop beside it.
        metrics.record_turn(&TurnLatency {
            speech_end_to_commit_ms: Some(30),
            ..TurnLatency::default()
        });
        let text = metrics.render(0, 0);
        for (hop, sum, count) in [
            ("stt_commit", "0.07", 2),
            ("llm_first_token", "0.4", 1),
            ("first_sentence", "0.02", 1),
            ("tts_first_audio", "0.24", 1),
            ("first_frame_out", "0.003", 1),
        ] {
            let sum_line = format!("cotrackpro_turn_hop_seconds_sum{{hop=\"{hop}\"}} {sum}\n");
            let count_line =
                format!("cotrackpro_turn_hop_seconds_count{{hop=\"{hop}\"}} {count}\n");
            assert!(text.contains(&sum_line), "{sum_line}{text}");
            assert!(text.contains(&count_line), "{count_line}");
        }
    }

    #[test]
    fn a_histogram_puts_a_value_on_a_bound_in_that_bucket_and_past_the_last_in_inf() {
        let histogram = Histogram::new();
        for micros in [5_000, 5_001, 60_000_000] {
            histogram.observe_micros(micros);
        }
        let mut out = String::new();
        histogram.write_samples(&mut out, "h", "");
        assert!(out.contains("h_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.01\"} 2\n"));
        assert!(out.contains("h_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("h_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("h_sum 60.010001\n"));
        assert!(out.contains("h_count 3\n"));
    }

    #[test]
    fn labeled_counters_escape_values_and_never_go_down() {
        let counter = LabeledCounter::new();
        counter.inc(&[("kind", "a\"b\\c\nd")]);
        counter.add(&[("kind", "x")], 0.25);
        for refused in [-1.0, f64::NAN, f64::INFINITY, 0.0] {
            counter.add(&[("kind", "x")], refused);
        }
        assert_eq!(counter.get(&[("kind", "x")]), 0.25);
        let mut out = String::new();
        counter.write(&mut out, "c_total", "Help.");
        assert!(out.starts_with("# HELP c_total Help.\n# TYPE c_total counter\n"));
        assert!(
            out.contains("c_total{kind=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("c_total{kind=\"x\"} 0.25\n"));
    }

    #[test]
    fn spend_is_counted_by_component() {
        let metrics = Metrics::default();
        let parts = [("claude_input", 6.0), ("tts", 0.5), ("stt", 0.016)];
        metrics.add_spend(&parts);
        metrics.add_spend(&parts);
        let usd = |c: &str| metrics.spend_usd.get(&[("component", c)]);
        assert_eq!(usd("claude_input"), 12.0);
        assert_eq!(usd("tts"), 1.0);
        assert_eq!(usd("stt"), 0.032);
        assert_eq!(usd("claude_output"), 0.0);
    }

    #[test]
    fn process_stats_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 17 0 \
                    12345 123456789 2000 18446744073709551615";
        let stats = ProcessStats::parse(stat, "30000 2000 500 1 0 900 0\n", 100, 4096, 9);
        assert_eq!(
            stats,
            Some(ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2000 * 4096,
                open_fds: 9,
                max_fds: None,
                threads: 17,
            })
        );
        assert_eq!(ProcessStats::parse("garbage", "1 2", 100, 4096, 1), None);
        assert_eq!(ProcessStats::parse(stat, "", 100, 4096, 1), None);
        assert!(ProcessStats::read().is_some_and(|p| p.threads >= 1 && p.resident_bytes > 0));
    }

    #[test]
    fn quantiles_are_estimated_from_the_buckets_as_prometheus_does() {
        let metrics = Metrics::default();
        for ms in [60, 70, 80, 90, 200, 300, 400, 450, 600, 20_000] {
            metrics.record_turn(&TurnLatency {
                first_frame_ms: Some(ms),
                ..TurnLatency::default()
            });
        }
        let text = metrics.render(0, 0);
        let q = |q| {
            histogram_quantile(
                &text,
                "cotrackpro_turn_stage_seconds",
                "stage=\"first_frame\"",
                q,
            )
        };
        // 4 of 10 in (0.05, 0.1], 1 in (0.1, 0.25]: rank 5 is that bucket's top; rank 6 is
        // the first of 3 in (0.25, 0.5].
        let median = q(0.5).expect("a median");
        assert!((median - 0.25).abs() < 1e-9, "{median}");
        let p60 = q(0.6).expect("a p60");
        assert!((p60 - (0.25 + 0.25 / 3.0)).abs() < 1e-9, "{p60}");
        // The top rank lands in +Inf: the highest finite bound.
        assert_eq!(q(1.0), Some(10.0));
        assert_eq!(
            histogram_quantile(
                &text,
                "cotrackpro_turn_stage_seconds",
                "stage=\"commit\"",
                0.5
            ),
            None
        );
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.95), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn renders_counters_and_latency_histograms() {
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
        // first_frame saw 0.1, 0.2 and 0.3 s: cumulative buckets, the sum in seconds.
        let series = |suffix: &str| format!("cotrackpro_turn_stage_seconds{suffix} ");
        for (le, count) in [
            ("0.05", 0),
            ("0.1", 1),
            ("0.25", 2),
            ("0.5", 3),
            ("+Inf", 3),
        ] {
            let line = series(&format!("_bucket{{stage=\"first_frame\",le=\"{le}\"}}"));
            assert!(text.contains(&format!("{line}{count}\n")), "{line}\n{text}");
        }
        assert!(text.contains(&format!("{}0.6\n", series("_sum{stage=\"first_frame\"}"))));
        assert!(text.contains(&format!("{}3\n", series("_count{stage=\"first_frame\"}"))));
        assert!(text.contains(&format!("{}0\n", series("_count{stage=\"first_token\"}"))));
        assert!(!text.contains("summary"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("a value");
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
        }
    }
}
