//! The calls section: how many calls at once, the personas and their voices (per role and per
//! dialled number), and [`CallTuning`], how a live call behaves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::personas::{is_valid_voice_id, Role};

use super::read::{Float, Reader, Report, Whole};
use crate::phone;

/// Calls one server core carries within every service level, from the capacity search
/// (`bench --capacity`; README, "Sizing a VM"): 675 passed (worst hop p99 4.9 ms, all calls
/// live at once) before the load generator ran out at 800; 500 keeps a quarter of that in
/// reserve and makes a 2-core VM's default 1,000, what the unit's limits are sized for. When
/// `MAX_CONCURRENT_CALLS` is not set, the cap is this many per core the process may run on
/// ([`default_max_concurrent`]). Update it when a new measurement says otherwise.
pub const CALLS_PER_CORE: usize = 500;

/// `default` is one core's worth; unset, the cap is [`default_max_concurrent`] of the cores.
const MAX_CONCURRENT_CALLS: Whole = Whole {
    name: "MAX_CONCURRENT_CALLS",
    default: CALLS_PER_CORE as u64,
    min: 1,
    max: 10_000,
};

/// The admission cap when none is configured: [`CALLS_PER_CORE`] for each of `cores`, within
/// the variable's range.
pub fn default_max_concurrent(cores: usize) -> usize {
    (CALLS_PER_CORE * cores.max(1)).clamp(
        MAX_CONCURRENT_CALLS.min as usize,
        MAX_CONCURRENT_CALLS.max as usize,
    )
}

/// The cores this process may run on (its CPU affinity and cgroup quota, as std reads them).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
/// The original's name for [`MAX_CONCURRENT_CALLS`]; both are accepted.
const MAX_CONCURRENT_SESSIONS: Whole = Whole {
    name: "MAX_CONCURRENT_SESSIONS",
    ..MAX_CONCURRENT_CALLS
};
const DEFAULT_ROLE: &str = "DEFAULT_ROLE";
const VOICEMAIL_MESSAGE: &str = "VOICEMAIL_MESSAGE";
/// Says who called and asks for a call back, and nothing private: whoever plays the machine
/// back may not be the person we called.
pub const DEFAULT_VOICEMAIL_MESSAGE: &str = "Hello, this is an automated call from CoTrackPro. \
Sorry we missed you. Please call us back at this number when it suits you. Thank you, goodbye.";
const MAX_VOICEMAIL_CHARS: usize = 500;
const VOICE_MAP: &str = "VOICE_MAP";
const INBOUND_PHONE_VOICE_MAP: &str = "INBOUND_PHONE_VOICE_MAP";

const BARGE_IN_MIN_CHARS: Whole = Whole {
    name: "BARGE_IN_MIN_CHARS",
    default: 3,
    min: 0,
    max: 200,
};
/// After a barge-in `clear`, how long the caller may stay silent (no committed words, no new
/// partial) before the assistant takes it as a false interruption (a cough) and resumes; 0
/// turns resuming off. It must be longer than the speech-to-text's end-of-utterance silence
/// (`STT_VAD_SILENCE_SECS`), so that a real interruption commits first: unset, it is this
/// default or that silence and [`RESUME_MARGIN`], whichever is longer ([`read_resume_after`]).
const RESUME_AFTER_MS: Whole = Whole {
    name: "RESUME_AFTER_MS",
    default: 1_500,
    min: 0,
    max: 10_000,
};
/// What an unset `RESUME_AFTER_MS` leaves after `STT_VAD_SILENCE_SECS`: the last partial can
/// come a little before the speech ends, and the commit takes the service a moment.
const RESUME_MARGIN: Duration = Duration::from_millis(700);
/// Words added to the built-in backchannel list of the call's language (comma-separated).
const BACKCHANNEL_WORDS: &str = "BACKCHANNEL_WORDS";
const REPROMPT_AFTER_MS: Whole = Whole {
    name: "REPROMPT_AFTER_MS",
    default: 12_000,
    min: 1_000,
    max: 600_000,
};
const MAX_REPROMPTS: Whole = Whole {
    name: "MAX_REPROMPTS",
    default: 2,
    min: 0,
    max: 20,
};
const MAX_CALL_SECS: Whole = Whole {
    name: "MAX_CALL_SECS",
    default: 7200,
    min: 1,
    max: 86_400,
};
const MEDIA_READ_TIMEOUT_MS: Whole = Whole {
    name: "MEDIA_READ_TIMEOUT_MS",
    default: 5_000,
    min: 500,
    max: 120_000,
};
/// How long after its audio should have finished playing a mark may take to come back before
/// the piece is taken as heard (a client that never echoes marks must not hold a call open).
const MARK_TIMEOUT_MS: Whole = Whole {
    name: "MARK_TIMEOUT_MS",
    default: 5_000,
    min: 500,
    max: 60_000,
};
const MAX_TOOL_ROUNDS: Whole = Whole {
    name: "MAX_TOOL_ROUNDS",
    default: 3,
    min: 0,
    max: 10,
};
const STT_VAD_SILENCE_SECS: Float = Float {
    name: "STT_VAD_SILENCE_SECS",
    default: 0.8,
    min: 0.3,
    max: 3.0,
};
const STT_LANGUAGE_CODE: &str = "STT_LANGUAGE_CODE";
/// How the caller's turn ends: `smart` (the call decides from the words, committing by hand)
/// or `vad` (the service's silence detector alone, as before).
const TURN_END: &str = "TURN_END";
/// Silence after words that end a sentence or ask a question before the turn ends.
const TURN_END_SHORT_MS: Whole = Whole {
    name: "TURN_END_SHORT_MS",
    default: 300,
    min: 100,
    max: 3_000,
};
/// Silence after words that trail off ("and", "so", "um") before the turn ends; also the
/// longest any turn waits once words were heard.
const TURN_END_LONG_MS: Whole = Whole {
    name: "TURN_END_LONG_MS",
    default: 1_500,
    min: 300,
    max: 5_000,
};
const STT_MAX_RECONNECTS: Whole = Whole {
    name: "STT_MAX_RECONNECTS",
    default: 3,
    min: 0,
    max: 20,
};
const STT_SILENT_SERVICE_SECS: Whole = Whole {
    name: "STT_SILENT_SERVICE_SECS",
    default: 20,
    min: 2,
    max: 600,
};
/// Caller audio goes to speech-to-text in chunks this long (whole 20 ms frames): longer chunks
/// wake the reader and the provider less often, and the frames before a chunk's last wait for
/// it. 100: the bench's measurement (README, "STT_CHUNK_MS"): a third of the wake-ups and half
/// the CPU of 20 ms chunks for the same median wait; 200 saves little more and delays it.
const STT_CHUNK_MS: Whole = Whole {
    name: "STT_CHUNK_MS",
    default: 100,
    min: 20,
    max: 200,
};
const SENTENCE_IDLE_FLUSH_MS: Whole = Whole {
    name: "SENTENCE_IDLE_FLUSH_MS",
    default: 500,
    min: 50,
    max: 10_000,
};
const AUDIO_DIR: &str = "AUDIO_DIR";
const SHUTDOWN_DRAIN_SECS: Whole = Whole {
    name: "SHUTDOWN_DRAIN_SECS",
    default: 30,
    min: 0,
    max: 3600,
};
const IDLE_REAP_SECS: Whole = Whole {
    name: "IDLE_REAP_SECS",
    default: 900,
    min: 1,
    max: 86_400,
};

/// Per-number persona overrides (`INBOUND_PHONE_VOICE_MAP`), keyed by the dialled `To` number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberOverride {
    pub role: Option<Role>,
    pub voice_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CallsConfig {
    pub max_concurrent: usize,
    /// The persona used when `?role=` is missing or unknown.
    pub default_role: Role,
    /// Voice per role: the defaults with `VOICE_MAP` applied.
    pub voices: BTreeMap<Role, String>,
    pub number_overrides: BTreeMap<String, NumberOverride>,
    pub tuning: CallTuning,
    /// Where a call may be transferred to a person, and what is said first.
    pub transfer: super::transfer::TransferConfig,
}

/// How a live call behaves: barge-in, silence, limits. Every value is validated at start-up.
#[derive(Clone, Debug, PartialEq)]
pub struct CallTuning {
    /// Two or more content words of a partial, while assistant audio plays, interrupt it only
    /// when together longer than this many characters (a stop word interrupts alone; see
    /// `call::barge_rules`).
    pub barge_in_min_chars: usize,
    /// Caller silence after the assistant finished before "are you still there?".
    pub reprompt_after: Duration,
    /// Reprompts without an answer before a polite hang-up.
    pub max_reprompts: u32,
    /// The longest call; then a closing phrase and hang-up (the original's 2 hours).
    pub max_duration: Duration,
    /// No message from Twilio for this long means the connection is dead (it sends a media
    /// frame every 20 ms for the whole call).
    pub media_read_timeout: Duration,
    /// A mark not echoed this long after its audio should have finished playing: the piece is
    /// taken as heard and the client logged as broken (`MARK_TIMEOUT_MS`).
    pub mark_timeout: Duration,
    /// Tool rounds one reply may take before the model must answer in words.
    pub max_tool_rounds: u32,
    /// Speech-to-text: the silence that ends the caller's utterance, and the language.
    pub vad_silence_secs: f64,
    pub stt_language: String,
    /// Speech-to-text reconnects within one call before it is given up as lost.
    pub stt_reconnects: u32,
    /// The caller speaks and the speech-to-text service says nothing at all (no partial, no
    /// commit, no error) for this long: the session is replaced, as a reconnect.
    pub stt_silent_service: Duration,
    /// Caller audio is sent to speech-to-text in chunks this long (`STT_CHUNK_MS`): 20–200 ms,
    /// whole 20 ms frames.
    pub stt_chunk: Duration,
    /// Buffered text spoken anyway when the model pauses this long mid-sentence.
    pub sentence_idle_flush: Duration,
    /// Pre-rendered phrases (`generate-audio`); missing ones are spoken live.
    pub audio_dir: PathBuf,
    /// How long a shutdown waits for live calls to end.
    pub shutdown_drain: Duration,
    /// A call with no sign of the caller (speech, keys) this long is ended as `force-reaped`
    /// (the original's 15-minute reap; the reprompts normally end such a call long before).
    pub idle_reap: Duration,
    /// What an outbound call says to an answering machine after its beep, then hangs up
    /// (`VOICEMAIL_MESSAGE`). Anyone may play a voicemail back: it names no one and no case.
    pub voicemail_message: String,
    /// Silence after a barge-in's `clear` before the assistant resumes what the caller did not
    /// hear (`RESUME_AFTER_MS`); zero: a barge-in always cuts the reply.
    pub resume_after: Duration,
    /// Words added to the language's built-in backchannel list (`BACKCHANNEL_WORDS`), lower
    /// case.
    pub backchannel_words: Vec<String>,
    /// How the caller's turn ends (`TURN_END`), and the silences of the smart rule: after a
    /// complete sentence or a question (`TURN_END_SHORT_MS`), after words that trail off
    /// (`TURN_END_LONG_MS`, also the longest wait of all).
    pub turn_end: TurnEndMode,
    pub turn_end_short: Duration,
    pub turn_end_long: Duration,
}

/// Who decides that the caller finished speaking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEndMode {
    /// The call machine, from the words of the latest partial transcript and the silence
    /// after them; it commits each utterance by hand (`commit_strategy=manual`).
    Smart,
    /// The speech-to-text service's voice detector after `STT_VAD_SILENCE_SECS` of silence
    /// (`commit_strategy=vad`).
    Vad,
}

impl TurnEndMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnEndMode::Smart => "smart",
            TurnEndMode::Vad => "vad",
        }
    }
}

impl std::fmt::Display for TurnEndMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CallsConfig {
    pub fn voice_for(&self, role: Role) -> &str {
        self.voices
            .get(&role)
            .map_or(role.default_voice_id(), String::as_str)
    }

    pub(super) fn read(r: &mut Reader<'_>) -> CallsConfig {
        CallsConfig {
            max_concurrent: read_max_concurrent(r),
            default_role: r.parse(DEFAULT_ROLE, Role::Parent, |v| {
                Role::parse(v).ok_or_else(|| format!("must be one of {}", Role::allowed_list()))
            }),
            voices: r.parse(VOICE_MAP, BTreeMap::new(), parse_voice_map),
            number_overrides: r.parse(
                INBOUND_PHONE_VOICE_MAP,
                BTreeMap::new(),
                parse_number_overrides,
            ),
            tuning: CallTuning::read(r),
            transfer: super::transfer::TransferConfig::read(r),
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.value(MAX_CONCURRENT_CALLS.name, self.max_concurrent);
        out.value(DEFAULT_ROLE, self.default_role);
        self.tuning.report(out);
        let voices = self
            .voices
            .iter()
            .map(|(role, voice)| format!("{role}={voice}"))
            .collect::<Vec<_>>()
            .join(",");
        out.value(VOICE_MAP, voices);
        out.value(
            INBOUND_PHONE_VOICE_MAP,
            format!("{} number(s)", self.number_overrides.len()),
        );
        self.transfer.report(out);
    }
}

impl CallTuning {
    fn read(r: &mut Reader<'_>) -> CallTuning {
        // Under systemd next to the records (the sandbox's one writable place, where
        // `generate-audio --env-file …` run by the operator can put it), else ./audio.
        let default_audio_dir = r
            .state_directory()
            .map_or_else(|| "audio".to_string(), |dir| format!("{dir}/audio"));
        let turn_end_short = r.millis(&TURN_END_SHORT_MS);
        // The ranges make the casts below lossless.
        CallTuning {
            barge_in_min_chars: r.whole(&BARGE_IN_MIN_CHARS) as usize,
            reprompt_after: r.millis(&REPROMPT_AFTER_MS),
            max_reprompts: r.whole(&MAX_REPROMPTS) as u32,
            max_duration: r.secs(&MAX_CALL_SECS),
            media_read_timeout: r.millis(&MEDIA_READ_TIMEOUT_MS),
            mark_timeout: r.millis(&MARK_TIMEOUT_MS),
            max_tool_rounds: r.whole(&MAX_TOOL_ROUNDS) as u32,
            vad_silence_secs: r.float(&STT_VAD_SILENCE_SECS),
            stt_language: r.parse(STT_LANGUAGE_CODE, "en".to_string(), |v| {
                let ok = (2..=8).contains(&v.len())
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if ok {
                    Ok(v.to_string())
                } else {
                    Err(format!(
                        "must be a language code such as en or es, got {v:?}"
                    ))
                }
            }),
            stt_reconnects: r.whole(&STT_MAX_RECONNECTS) as u32,
            stt_silent_service: r.secs(&STT_SILENT_SERVICE_SECS),
            stt_chunk: read_stt_chunk(r),
            sentence_idle_flush: r.millis(&SENTENCE_IDLE_FLUSH_MS),
            audio_dir: PathBuf::from(r.string(AUDIO_DIR, &default_audio_dir)),
            shutdown_drain: r.secs(&SHUTDOWN_DRAIN_SECS),
            idle_reap: r.secs(&IDLE_REAP_SECS),
            voicemail_message: read_voicemail_message(r),
            resume_after: Duration::ZERO,
            backchannel_words: r.parse(BACKCHANNEL_WORDS, Vec::new(), parse_backchannel_words),
            turn_end: r.parse(TURN_END, TurnEndMode::Smart, |v| match v {
                "smart" => Ok(TurnEndMode::Smart),
                "vad" => Ok(TurnEndMode::Vad),
                other => Err(format!("must be smart or vad, got {other:?}")),
            }),
            turn_end_short,
            turn_end_long: read_turn_end_long(r, turn_end_short),
        }
        .with_resume_after(r)
    }

    fn with_resume_after(mut self, r: &mut Reader<'_>) -> CallTuning {
        self.resume_after = read_resume_after(r, self.vad_silence_secs);
        self
    }

    fn report(&self, out: &mut Report) {
        out.value(BARGE_IN_MIN_CHARS.name, self.barge_in_min_chars);
        out.millis(REPROMPT_AFTER_MS.name, self.reprompt_after);
        out.value(MAX_REPROMPTS.name, self.max_reprompts);
        out.secs(MAX_CALL_SECS.name, self.max_duration);
        out.millis(MEDIA_READ_TIMEOUT_MS.name, self.media_read_timeout);
        out.millis(MARK_TIMEOUT_MS.name, self.mark_timeout);
        out.value(MAX_TOOL_ROUNDS.name, self.max_tool_rounds);
        out.value(STT_VAD_SILENCE_SECS.name, self.vad_silence_secs);
        out.value(STT_LANGUAGE_CODE, &self.stt_language);
        out.value(STT_MAX_RECONNECTS.name, self.stt_reconnects);
        out.secs(STT_SILENT_SERVICE_SECS.name, self.stt_silent_service);
        out.millis(STT_CHUNK_MS.name, self.stt_chunk);
        out.millis(SENTENCE_IDLE_FLUSH_MS.name, self.sentence_idle_flush);
        out.value(AUDIO_DIR, self.audio_dir.display());
        out.secs(SHUTDOWN_DRAIN_SECS.name, self.shutdown_drain);
        out.secs(IDLE_REAP_SECS.name, self.idle_reap);
        out.value(VOICEMAIL_MESSAGE, &self.voicemail_message);
        out.millis(RESUME_AFTER_MS.name, self.resume_after);
        out.value(BACKCHANNEL_WORDS, self.backchannel_words.join(","));
        out.value(TURN_END, self.turn_end);
        out.millis(TURN_END_SHORT_MS.name, self.turn_end_short);
        out.millis(TURN_END_LONG_MS.name, self.turn_end_long);
    }
}

/// `VOICEMAIL_MESSAGE`: some words, short enough to be left whole before a machine stops
/// recording (many stop after 30 to 60 seconds; 500 characters take about 30).
fn read_voicemail_message(r: &mut Reader<'_>) -> String {
    r.parse(
        VOICEMAIL_MESSAGE,
        DEFAULT_VOICEMAIL_MESSAGE.to_string(),
        |v| {
            if v.chars().count() > MAX_VOICEMAIL_CHARS {
                Err(format!(
                    "must be at most {MAX_VOICEMAIL_CHARS} characters (about 30 seconds spoken)"
                ))
            } else if v.chars().any(char::is_control) {
                Err("must be one line of text".to_string())
            } else {
                Ok(v.to_string())
            }
        },
    )
}

/// `RESUME_AFTER_MS`: zero (off), or longer than the speech-to-text's end-of-utterance
/// silence; unset, the default or that silence and [`RESUME_MARGIN`], whichever is longer.
fn read_resume_after(r: &mut Reader<'_>, vad_silence_secs: f64) -> Duration {
    let vad = Duration::from_secs_f64(vad_silence_secs);
    if !r.is_set(RESUME_AFTER_MS.name) {
        return Duration::from_millis(RESUME_AFTER_MS.default).max(vad + RESUME_MARGIN);
    }
    let resume = r.millis(&RESUME_AFTER_MS);
    if !resume.is_zero() && resume <= vad {
        r.error(
            RESUME_AFTER_MS.name,
            format!(
                "must be 0 (off) or longer than {STT_VAD_SILENCE_SECS} ({vad_silence_secs} s): \
                 a caller who really interrupts must be heard before the answer resumes",
                STT_VAD_SILENCE_SECS = STT_VAD_SILENCE_SECS.name
            ),
        );
        return Duration::from_millis(RESUME_AFTER_MS.default).max(vad + RESUME_MARGIN);
    }
    resume
}

/// `BACKCHANNEL_WORDS`: comma-separated single words (letters, apostrophes, hyphens), kept in
/// lower case; empty entries are skipped.
fn parse_backchannel_words(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for word in raw.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let ok = word.chars().count() <= 40
            && word
                .chars()
                .all(|c| c.is_alphabetic() || c == '\'' || c == '-');
        if !ok {
            return Err(format!(
                "must be single words separated by commas (letters, ' and -), got {word:?}"
            ));
        }
        out.push(word.to_lowercase());
    }
    if out.len() > 200 {
        return Err(format!("at most 200 words, got {}", out.len()));
    }
    Ok(out)
}

/// `TURN_END_LONG_MS`: in range, and not shorter than `TURN_END_SHORT_MS` (a trailing phrase
/// must never end a turn sooner than a finished sentence).
fn read_turn_end_long(r: &mut Reader<'_>, short: Duration) -> Duration {
    let long = r.millis(&TURN_END_LONG_MS);
    if long < short {
        r.error(
            TURN_END_LONG_MS.name,
            format!(
                "must not be shorter than {} ({} ms), got {} ms",
                TURN_END_SHORT_MS.name,
                short.as_millis(),
                long.as_millis()
            ),
        );
        return short;
    }
    long
}

/// `STT_CHUNK_MS`: in range, and whole 20 ms frames (Twilio's unit).
fn read_stt_chunk(r: &mut Reader<'_>) -> Duration {
    let chunk = r.millis(&STT_CHUNK_MS);
    if !chunk.as_millis().is_multiple_of(20) {
        r.error(
            STT_CHUNK_MS.name,
            format!(
                "must be a multiple of 20 (Twilio's frames are 20 ms), got {}",
                chunk.as_millis()
            ),
        );
        return Duration::from_millis(STT_CHUNK_MS.default);
    }
    chunk
}

fn read_max_concurrent(r: &mut Reader<'_>) -> usize {
    let new = r.is_set(MAX_CONCURRENT_CALLS.name);
    let old = r.is_set(MAX_CONCURRENT_SESSIONS.name);
    let calls = r.whole(&MAX_CONCURRENT_CALLS) as usize;
    let sessions = r.whole(&MAX_CONCURRENT_SESSIONS) as usize;
    match (new, old) {
        (true, true) if calls != sessions => {
            r.error(
                MAX_CONCURRENT_CALLS.name,
                format!(
                    "and {} disagree; set only {}",
                    MAX_CONCURRENT_SESSIONS.name, MAX_CONCURRENT_CALLS.name
                ),
            );
            calls
        }
        (false, true) => sessions,
        (false, false) => default_max_concurrent(cores()),
        _ => calls,
    }
}

fn parse_voice_map(v: &str) -> Result<BTreeMap<Role, String>, String> {
    let map: BTreeMap<String, String> = serde_json::from_str(v).map_err(|err| {
        format!("must be a JSON object of role to voice id, e.g. {{\"parent\":\"EXAVITQu4vr4xnSDxMaL\"}}: {err}")
    })?;
    let mut voices = BTreeMap::new();
    let mut problems = Vec::new();
    for (role_name, voice) in map {
        match Role::parse(&role_name) {
            None => problems.push(format!("unknown role {role_name:?}")),
            Some(_) if !is_valid_voice_id(&voice) => problems.push(format!(
                "voice id {voice:?} for {role_name} is not 16-32 letters and digits"
            )),
            Some(role) => {
                voices.insert(role, voice);
            }
        }
    }
    if problems.is_empty() {
        Ok(voices)
    } else {
        Err(format!(
            "{} (roles: {})",
            problems.join("; "),
            Role::allowed_list()
        ))
    }
}

fn parse_number_overrides(v: &str) -> Result<BTreeMap<String, NumberOverride>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Entry {
        role: Option<String>,
        voice_id: Option<String>,
    }
    let map: BTreeMap<String, Entry> = serde_json::from_str(v).map_err(|err| {
        format!("must be a JSON object like {{\"+15551234567\":{{\"role\":\"attorney\",\"voiceId\":\"…\"}}}}: {err}")
    })?;
    let mut overrides = BTreeMap::new();
    let mut problems = Vec::new();
    for (number, entry) in map {
        let Some(normalized) = phone::normalize(&number) else {
            problems.push(format!("{number:?} is not an E.164 number"));
            continue;
        };
        let role = match entry.role.as_deref().map(Role::parse) {
            Some(None) => {
                problems.push(format!("{number}: unknown role"));
                continue;
            }
            Some(role) => role,
            None => None,
        };
        if let Some(voice) = &entry.voice_id {
            if !is_valid_voice_id(voice) {
                problems.push(format!(
                    "{number}: voice id is not 16-32 letters and digits"
                ));
                continue;
            }
        }
        if role.is_none() && entry.voice_id.is_none() {
            problems.push(format!("{number}: give a role, a voiceId or both"));
            continue;
        }
        let value = NumberOverride {
            role,
            voice_id: entry.voice_id,
        };
        if overrides.insert(normalized.clone(), value).is_some() {
            problems.push(format!("{normalized} is listed twice"));
        }
    }
    if problems.is_empty() {
        Ok(overrides)
    } else {
        Err(problems.join("; "))
    }
}
