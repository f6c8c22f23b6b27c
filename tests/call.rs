//! End-to-end calls: a simulated Twilio caller against the real server, whose providers are the
//! simulators on loopback. What the phone receives is asserted in order.
//!
//! The tests of this module run one at a time (they count the process's `call-` threads, and a
//! call's timing should not depend on what else the machine runs).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cotrackpro_voice::records::event::{CallRecord, CallStatus};
use cotrackpro_voice::records::index::sid_key;
use cotrackpro_voice::sim::anthropic::Reply;
use cotrackpro_voice::sim::caller::{CallerOptions, Heard, SimCaller};
use cotrackpro_voice::sim::{SimTiming, Simulators};
use serde_json::json;

use crate::support::TestServer;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The server wired to fresh simulators.
pub struct Rig {
    pub sims: Simulators,
    pub server: TestServer,
    _turn: MutexGuard<'static, ()>,
}

impl Rig {
    pub fn start(extra: &[(&str, &str)]) -> Rig {
        Rig::start_on(Simulators::start_with, extra)
    }

    /// The rig with every provider served over TLS (`https://`/`wss://localhost`), the server
    /// trusting the simulators' CA through `PROVIDER_CA_FILE`.
    pub fn start_tls(extra: &[(&str, &str)]) -> Rig {
        Rig::start_on(Simulators::start_tls, extra)
    }

    fn start_on(
        start: fn(SimTiming) -> std::io::Result<Simulators>,
        extra: &[(&str, &str)],
    ) -> Rig {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let sims = start(SimTiming {
            first_token_ms: Some(30),
            token_ms: Some(2),
            tts_first_byte_ms: Some(10),
            stt_commit_ms: Some(10),
            ..SimTiming::default()
        })
        .expect("simulators start");
        let mut env: Vec<(String, String)> = sims
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.push(("STT_VAD_SILENCE_SECS".into(), "0.5".into()));
        env.push(("AUDIO_DIR".into(), "./no-such-audio-dir".into()));
        for (k, v) in extra {
            env.push((k.to_string(), v.to_string()));
        }
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = TestServer::start(&pairs);
        Rig {
            sims,
            server,
            _turn: turn,
        }
    }

    /// A caller who dialled in as Twilio does: the webhook's TwiML, then the stream with its
    /// parameters (the per-call token among them).
    pub fn caller(&self) -> SimCaller {
        SimCaller::dial(
            self.server.addr,
            self.server.media_addr,
            "parent",
            CallerOptions {
                playback_speed: 25,
                ..CallerOptions::default()
            },
        )
        .expect("caller connects")
    }

    /// A caller who has heard the greeting in full.
    pub fn greeted(&self) -> SimCaller {
        let caller = self.caller();
        assert!(
            caller.wait_for_echoes(1, WAIT),
            "the greeting played: {:?}",
            shape(&caller.log())
        );
        caller
    }

    /// What the caller will say, in order (the STT simulator shares the script).
    pub fn script(&self, utterances: &[&str]) {
        self.sims
            .elevenlabs
            .stt()
            .push_utterances(utterances.iter().map(|u| u.to_string()));
    }

    /// Waits until no call is live, then returns the record of `call_sid`.
    pub fn record_after_end(&self, call_sid: &str) -> CallRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.app().calls.active() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.server.app().calls.active(), 0, "the call ended");
        let key = sid_key(call_sid).expect("a call SID");
        let record = self.server.records().get(&key).expect("records readable");
        record.expect("the call has a record")
    }
}

/// The lines of a call's transcript, in order.
pub(crate) fn heard(record: &CallRecord) -> Vec<String> {
    record
        .transcript
        .entries()
        .into_iter()
        .map(|e| e.text)
        .collect()
}

/// The caller says `text`, then waits until `echoes` pieces in all have been heard.
fn say_and_hear(caller: &SimCaller, text: &str, echoes: usize) {
    caller.say(text);
    assert!(
        caller.wait_for_echoes(echoes, WAIT),
        "{echoes} pieces heard after {text:?}: {:?}",
        shape(&caller.log())
    );
}

/// Hangs up, then asserts that every thread of the call ends within a second or so.
fn hang_up_and_see_every_thread_end_within_a_second(caller: SimCaller) {
    let hung_up = Instant::now();
    caller.hang_up();
    while !call_threads().is_empty() && hung_up.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(call_threads(), Vec::<String>::new());
    assert!(
        hung_up.elapsed() < Duration::from_millis(1500),
        "every thread of the call ended {:?} after the hang-up",
        hung_up.elapsed()
    );
}

/// The names of this process's threads that belong to calls.
pub fn call_threads() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
                let name = name.trim().to_string();
                if name.starts_with("call-") {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn echoes(log: &[(Instant, Heard)]) -> Vec<String> {
    log.iter()
        .filter_map(|(_, h)| match h {
            Heard::Echoed(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn marks(log: &[(Instant, Heard)]) -> Vec<String> {
    log.iter()
        .filter_map(|(_, h)| match h {
            Heard::Mark(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The log with runs of media collapsed: `media`, `mark 1-0`, `clear`, …
fn shape(log: &[(Instant, Heard)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, heard) in log {
        let item = match heard {
            Heard::Media(_) => "media".to_string(),
            Heard::Mark(name) => format!("mark {name}"),
            Heard::Echoed(_) => continue,
            Heard::Clear => "clear".to_string(),
            Heard::Closed(code) => format!("closed {code:?}"),
        };
        if item == "media" && out.last().is_some_and(|l| l == "media") {
            continue;
        }
        out.push(item);
    }
    out
}

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn a_call_over_tls_to_every_provider_is_greeted_and_answered() {
    let rig = Rig::start_tls(&[]);
    let env = rig.sims.env();
    let value = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    assert!(value("ELEVENLABS_WS_BASE").is_some_and(|v| v.starts_with("wss://localhost:")));
    assert!(value("ANTHROPIC_BASE_URL").is_some_and(|v| v.starts_with("https://localhost:")));
    assert!(value("PROVIDER_CA_FILE").is_some());
    rig.sims
        .anthropic
        .push([Reply::Text("I can help you write that down.".into())]);
    rig.script(&["I need to write down what happened"]);
    let caller = rig.caller();
    assert!(
        caller.wait_for_echoes(1, WAIT),
        "the greeting played over wss: {:?}",
        shape(&caller.log())
    );
    caller.say("I need to write down what happened");
    assert!(
        caller.wait_for_echoes(2, WAIT),
        "the reply played: {:?}",
        shape(&caller.log())
    );
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.turn_count, 1);
    assert_eq!(
        rig.sims.anthropic.requests().len(),
        1,
        "the model was asked over https"
    );
}

#[test]
fn a_call_with_two_turns_is_heard_recorded_and_costed() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::Text(
            "I can help you write that down. Let's start with the date it happened.".into(),
        ),
        Reply::Text("Thank you. I've noted that for you.".into()),
    ]);
    rig.script(&["I need to write down what happened", "It was last Tuesday"]);
    let caller = rig.caller();
    assert!(
        caller.wait_for_echoes(1, WAIT),
        "the greeting played: {:?}",
        shape(&caller.log())
    );
    caller.say("I need to write down what happened");
    assert!(
        caller.wait_for_echoes(3, WAIT),
        "the first reply played: {:?}",
        shape(&caller.log())
    );
    caller.say("It was last Tuesday");
    assert!(
        caller.wait_for_echoes(4, WAIT),
        "the second reply played: {:?}",
        shape(&caller.log())
    );
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();

    assert_eq!(
        shape(&log),
        ["media", "mark 0-0", "media", "mark 1-0", "media", "mark 1-1", "media", "mark 2-0"],
        "greeting, two sentences, one sentence; no clear"
    );
    assert_eq!(echoes(&log), marks(&log), "every mark was played in order");
    assert!(
        log.iter()
            .all(|(_, h)| !matches!(h, Heard::Media(n) if *n != 160)),
        "every media message is one 20 ms frame of 160 bytes"
    );

    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.turn_count, 2);
    assert_eq!(record.barge_ins, 0);
    let transcript: Vec<(String, String)> = record
        .transcript
        .entries()
        .into_iter()
        .map(|e| (e.role, e.text))
        .collect();
    assert_eq!(transcript.len(), 6, "{transcript:?}");
    assert_eq!(transcript[0].0, "assistant");
    assert!(
        transcript[0].1.contains("transcribed"),
        "the greeting says so: {}",
        transcript[0].1
    );
    assert_eq!(
        transcript[1],
        ("user".into(), "I need to write down what happened".into())
    );
    assert_eq!(
        transcript[2],
        ("assistant".into(), "I can help you write that down.".into())
    );
    assert_eq!(
        transcript[3],
        (
            "assistant".into(),
            "Let's start with the date it happened.".into()
        )
    );
    assert_eq!(transcript[4], ("user".into(), "It was last Tuesday".into()));
    assert_eq!(
        transcript[5],
        (
            "assistant".into(),
            "Thank you. I've noted that for you.".into()
        )
    );

    let cost = record.cost_summary.expect("a cost summary");
    assert!(
        cost.claude_input_tokens > 0 && cost.claude_output_tokens > 0,
        "{cost:?}"
    );
    let spoken = transcript
        .iter()
        .filter(|(role, _)| role == "assistant")
        .map(|(_, text)| text.chars().count() as u64 + 1)
        .sum::<u64>();
    assert_eq!(cost.tts_chars, spoken, "every spoken character billed once");
    assert!(
        cost.stt_secs > 1.0,
        "the caller's audio was counted: {}",
        cost.stt_secs
    );
    assert!(cost.estimated_cost_usd > 0.0);

    // The model saw the conversation: greeting, both utterances, the first reply.
    let requests = rig.sims.anthropic.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().expect("messages");
    let roles: Vec<&str> = messages.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
    assert_eq!(
        messages[4]["content"][0]["text"],
        json!("It was last Tuesday")
    );

    let deadline = Instant::now() + Duration::from_secs(2);
    while !call_threads().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        call_threads(),
        Vec::<String>::new(),
        "every call thread ended"
    );
}

fn media_between(log: &[(Instant, Heard)], from: Instant, to: Instant) -> usize {
    log.iter()
        .filter(|(at, h)| *at > from && *at < to && matches!(h, Heard::Media(_)))
        .count()
}

fn wait_threads_gone() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !call_threads().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    call_threads()
}

const FIRST: &str = "The first thing to do is write down the date and the time it happened.";
const SECOND: &str = "The second thing is to note who was there and what each person said to you.";
const THIRD: &str = "The third thing is to keep any messages, photos or school notes that show it.";

#[test]
fn barge_in_clears_twilio_cancels_the_turn_and_keeps_only_what_was_heard() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::Text(format!("{FIRST} {SECOND} {THIRD}")),
        Reply::Text("Of course. Go ahead, I'm listening.".into()),
    ]);
    rig.script(&["How do I document this", "wait a moment please"]);
    let caller = rig.caller();
    assert!(caller.wait_for_echoes(1, WAIT), "the greeting played");
    caller.set_playback_speed(1);
    caller.say("How do I document this");
    // Once the first sentence has been heard in full, the caller talks over the second.
    assert!(
        caller.wait_for(WAIT, |log| log
            .iter()
            .any(|(_, h)| *h == Heard::Echoed("1-0".into()))),
        "the first sentence played: {:?}",
        shape(&caller.log())
    );
    caller.say("wait a moment please");
    assert!(
        caller.wait_for(WAIT, |log| log.iter().any(|(_, h)| *h == Heard::Clear)),
        "the server cleared Twilio's buffer: {:?}",
        shape(&caller.log())
    );
    caller.set_playback_speed(25);
    assert!(
        caller.wait_for(WAIT, |log| log.iter().any(
            |(_, h)| matches!(h, Heard::Echoed(name) if name.starts_with("3-"))
        )),
        "the answer to the interruption played: {:?}",
        shape(&caller.log())
    );
    let done_speaking = caller
        .speech_done_at()
        .expect("the caller finished speaking");
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();

    let clear_at = log
        .iter()
        .find(|(_, h)| *h == Heard::Clear)
        .map(|(at, _)| *at)
        .expect("a clear");
    assert_eq!(
        media_between(&log, clear_at, done_speaking),
        0,
        "no audio of the cancelled turn after the clear: {:?}",
        shape(&log)
    );
    let after_clear: Vec<String> = shape(&log)
        .into_iter()
        .skip_while(|s| s != "clear")
        .filter(|s| s.starts_with("mark"))
        .collect();
    assert!(
        !after_clear.is_empty() && after_clear.iter().all(|m| m.starts_with("mark 3-")),
        "no mark of the cancelled turn after the clear: {after_clear:?}"
    );

    // The model is told what the caller heard, and that they cut in — not the whole reply.
    let requests = rig.sims.anthropic.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1]["messages"].as_array().expect("messages");
    let interrupted = &messages[messages.len() - 2];
    assert_eq!(interrupted["role"], json!("assistant"));
    // The first sentence, and the words of the second heard before the cut (if any: see
    // `heard_words` for those).
    let note = interrupted["content"][0]["text"].as_str().unwrap_or("");
    assert!(
        note.starts_with(FIRST) && note.ends_with(" [interrupted by the caller]"),
        "{note}"
    );
    assert!(!note.contains(SECOND) && !note.contains("third"), "{note}");

    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.barge_ins, 1);
    let said = heard(&record);
    assert!(said.contains(&FIRST.to_string()), "{said:?}");
    assert!(
        !said.contains(&SECOND.to_string()),
        "the cut-off sentence was not heard: {said:?}"
    );
    assert!(!said.contains(&THIRD.to_string()), "{said:?}");
    assert_eq!(wait_threads_gone(), Vec::<String>::new());
}

#[test]
fn a_tool_call_plays_the_hold_phrase_and_feeds_the_result_back() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([
        Reply::ToolUse {
            preface: "Let me look that up for you.".into(),
            name: "check_safety".into(),
            input: json!({"context": "custody exchange went badly"}),
        },
        Reply::Text("Here is what I found about exchange logs.".into()),
    ]);
    rig.script(&["How do I keep an exchange log"]);
    let caller = rig.greeted();
    say_and_hear(&caller, "How do I keep an exchange log", 4);
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();
    assert_eq!(
        shape(&log),
        ["media", "mark 0-0", "media", "mark 1-0", "media", "mark 1-1", "media", "mark 1-2"],
    );
    let calls = rig.sims.mcp.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "check_safety");
    assert_eq!(
        calls[0].1,
        json!({"context": "custody exchange went badly"})
    );

    let requests = rig.sims.anthropic.requests();
    assert_eq!(
        requests.len(),
        2,
        "one round for the tool, one for the answer"
    );
    let last = requests[1]["messages"]
        .as_array()
        .expect("messages")
        .last()
        .cloned();
    let result = &last.expect("a last message")["content"][0];
    assert_eq!(result["type"], json!("tool_result"));
    assert!(result.get("is_error").is_none(), "{result}");
    assert!(
        result["content"]
            .as_str()
            .is_some_and(|c| c.contains("Tier 3")),
        "{result}"
    );

    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.tool_calls.len(), 1);
    assert!(record.tool_calls[0].success);
    let said = heard(&record);
    assert!(
        said.iter().any(|t| t.contains("working on that")),
        "the hold phrase is in the record: {said:?}"
    );
}

#[test]
fn an_unreachable_tool_server_becomes_an_error_result_the_model_talks_about() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/mcp", closed.local_addr().expect("addr"));
    drop(closed);
    let rig = Rig::start(&[("COTRACKPRO_MCP_URL", &url), ("MCP_TOOL_TIMEOUT_MS", "500")]);
    rig.sims.anthropic.push([
        Reply::ToolUse {
            preface: "Let me check.".into(),
            name: "search_docs".into(),
            input: json!({"query": "x"}),
        },
        Reply::Text("I couldn't reach the documents just now.".into()),
    ]);
    rig.script(&["Can you look something up"]);
    let caller = rig.greeted();
    say_and_hear(&caller, "Can you look something up", 4);
    let call_sid = caller.call_sid().to_string();
    drop(caller);
    let requests = rig.sims.anthropic.requests();
    let last = requests[1]["messages"]
        .as_array()
        .expect("messages")
        .last()
        .cloned();
    let result = &last.expect("a last message")["content"][0];
    assert_eq!(result["type"], json!("tool_result"));
    assert_eq!(result["is_error"], json!(true));
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.tool_calls.len(), 1);
    assert!(!record.tool_calls[0].success);
    assert_eq!(record.status, CallStatus::Completed);
}

#[test]
fn a_failing_model_is_an_apology_and_the_call_goes_on() {
    let rig = Rig::start(&[]);
    let overloaded = || Reply::Status {
        status: 529,
        kind: "overloaded_error".into(),
        retry_after_secs: Some(0),
    };
    rig.sims.anthropic.push([
        overloaded(),
        overloaded(),
        overloaded(),
        Reply::Text("Thank you for waiting. I'm here now.".into()),
    ]);
    rig.script(&["Are you there", "Hello again"]);
    let caller = rig.greeted();
    say_and_hear(&caller, "Are you there", 2);
    say_and_hear(&caller, "Hello again", 4);
    let call_sid = caller.call_sid().to_string();
    drop(caller);
    let record = rig.record_after_end(&call_sid);
    let said = heard(&record);
    assert!(
        said[2].contains("technical hiccup"),
        "the apology was heard: {said:?}"
    );
    assert_eq!(said[4..], ["Thank you for waiting.", "I'm here now."]);
    assert_eq!(record.turn_count, 2);
}

/// A voice that answers a sentence with no audio at all (isFinal and nothing else) is a
/// failure, not a silent success: the caller hears the apology.
#[test]
fn a_reply_voiced_with_no_audio_is_an_apology_not_silence() {
    let rig = Rig::start(&[]);
    rig.sims
        .anthropic
        .push([Reply::Text("This reply comes back without a sound.".into())]);
    rig.script(&["Say something"]);
    let caller = rig.greeted();
    // The sentence and its one retry come back mute; the apology has its voice.
    rig.sims.elevenlabs.tts().mute_next(2);
    say_and_hear(&caller, "Say something", 3);
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();
    assert_eq!(shape(&log)[2..], ["mark 1-0", "media", "mark 1-1"]);
    let record = rig.record_after_end(&call_sid);
    let apology = cotrackpro_voice::personas::prompts::Phrase::Apology.text();
    assert_eq!(heard(&record).last().map(String::as_str), Some(apology));
}

#[test]
fn a_failing_voice_is_retried_once_then_the_prerecorded_apology_plays() {
    let audio = crate::support::TempDir::new("clips");
    let voice = "EXAVITQu4vr4xnSDxMaL";
    std::fs::create_dir_all(audio.path().join(voice)).expect("dir");
    let clip = cotrackpro_voice::sim::voice::speak("sorry", 150.0);
    std::fs::write(audio.path().join(voice).join("apology.ulaw"), &clip).expect("clip");
    let manifest = json!({"format": "ulaw_8000", "clips": [{
        "voice": voice, "name": "apology",
        "text": cotrackpro_voice::personas::prompts::Phrase::Apology.text(),
        "file": format!("{voice}/apology.ulaw")}]});
    std::fs::write(audio.path().join("manifest.json"), manifest.to_string()).expect("manifest");
    let dir = audio.path().display().to_string();
    let rig = Rig::start(&[("AUDIO_DIR", &dir)]);
    rig.sims
        .anthropic
        .push([Reply::Text("This reply cannot be voiced today.".into())]);
    rig.script(&["Say something"]);
    let caller = rig.greeted();
    let sessions_before = rig.sims.elevenlabs.tts().sessions().len();
    rig.sims.elevenlabs.tts().fail_next(2);
    say_and_hear(&caller, "Say something", 3);
    let call_sid = caller.call_sid().to_string();
    let log = caller.hang_up();
    // The failed sentence's mark, then the clip (its audio is exactly the file's).
    assert_eq!(shape(&log)[2..], ["mark 1-0", "media", "mark 1-1"]);
    let clip_bytes: usize = log
        .iter()
        .skip_while(|(_, h)| *h != Heard::Mark("1-0".into()))
        .filter_map(|(_, h)| match h {
            Heard::Media(n) => Some(*n),
            _ => None,
        })
        .sum();
    assert_eq!(
        clip_bytes,
        clip.len().div_ceil(160) * 160,
        "the clip, padded to whole frames"
    );
    // The failure closed the call's socket; the retry went on a second one, and when that
    // failed too a third was opened at once for what the persona says next.
    let sessions = rig.sims.elevenlabs.tts().sessions();
    assert_eq!(sessions.len(), sessions_before + 2);
    let texts: Vec<String> = sessions
        .iter()
        .flat_map(|(_, messages)| messages.iter())
        .filter(|m| m["flush"] == json!(true))
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.starts_with("This reply cannot"))
            .count(),
        2,
        "one try and one retry: {texts:?}"
    );
    let record = rig.record_after_end(&call_sid);
    let cost = record.cost_summary.expect("cost");
    assert_eq!(
        cost.tts_chars_cached,
        cotrackpro_voice::personas::prompts::Phrase::Apology
            .text()
            .chars()
            .count() as u64
    );
}

#[test]
fn losing_speech_to_text_ends_the_call_with_a_goodbye() {
    use cotrackpro_voice::sim::elevenlabs_stt::Fault;
    let rig = Rig::start(&[("STT_MAX_RECONNECTS", "1")]);
    // The session drops after 2 s of audio; the one reconnect allowed fails at once.
    let stt = rig.sims.elevenlabs.stt();
    stt.push_fault(Fault::Drop { after_chunks: 100 });
    stt.push_fault(Fault::Error {
        message_type: "transcriber_error".into(),
        after_chunks: 1,
    });
    let caller = rig.greeted();
    assert!(
        caller.wait_closed(Duration::from_secs(20)),
        "{:?}",
        shape(&caller.log())
    );
    let call_sid = caller.call_sid().to_string();
    let log = caller.log();
    drop(caller);
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Failed);
    let said = heard(&record);
    assert!(
        said.last()
            .is_some_and(|t| t.contains("trouble hearing you")),
        "the goodbye was heard before the hang-up: {said:?} {:?}",
        shape(&log)
    );
    assert_eq!(wait_threads_gone(), Vec::<String>::new());
}

#[test]
fn hanging_up_mid_reply_ends_every_thread_and_keeps_the_record() {
    let rig = Rig::start(&[]);
    rig.sims
        .anthropic
        .push([Reply::Text(format!("{FIRST} {SECOND} {THIRD}"))]);
    rig.script(&["Tell me everything"]);
    let caller = rig.greeted();
    caller.set_playback_speed(1);
    caller.say("Tell me everything");
    assert!(caller.wait_for(WAIT, |log| log
        .iter()
        .any(|(_, h)| *h == Heard::Mark("1-0".into()))));
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.turn_count, 1);
    assert_eq!(wait_threads_gone(), Vec::<String>::new());
}

#[test]
fn over_the_cap_a_stream_is_closed_with_1013() {
    let rig = Rig::start(&[("MAX_CONCURRENT_CALLS", "1")]);
    let first = rig.caller();
    assert!(first.wait_for_echoes(1, WAIT));
    let second = rig.caller();
    assert!(second.wait_closed(WAIT));
    assert_eq!(
        second.log().last().map(|(_, h)| h.clone()),
        Some(Heard::Closed(Some(1013)))
    );
    assert_eq!(rig.server.app().calls.active(), 1, "the first call goes on");
    // The refused call's record has its verdict; it does not stay active.
    let key = sid_key(second.call_sid()).expect("a call SID");
    let record = rig
        .server
        .records()
        .get(&key)
        .expect("records")
        .expect("a record");
    assert_eq!(record.status, CallStatus::Failed);
    assert!(record
        .end_reason
        .unwrap_or_default()
        .contains("MAX_CONCURRENT_CALLS"));
}

#[test]
fn a_call_whose_thread_cannot_start_is_refused_with_1013_and_the_server_goes_on() {
    let rig = Rig::start(&[]);
    let app = rig.server.app();
    let failures = || {
        app.metrics
            .thread_spawn_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // A worker started once the stream is admitted: the call has a record, which says why.
    app.calls.refuse_threads_named(Some("-llm"));
    let refused = rig.caller();
    assert!(refused.wait_closed(WAIT));
    assert_eq!(
        refused.log().last().map(|(_, h)| h.clone()),
        Some(Heard::Closed(Some(1013)))
    );
    let record = rig.record_after_end(refused.call_sid());
    assert_eq!(record.status, CallStatus::Failed);
    let reason = record.end_reason.clone().unwrap_or_default();
    assert!(reason.contains("-llm"), "{reason:?}");
    assert_eq!(failures(), 1);
    assert!(app
        .metrics
        .render(0, 0)
        .contains("cotrackpro_thread_spawn_failures_total 1\n"));

    // The reader, the call's first thread: refused the same way, and the call's record says so.
    app.calls.refuse_threads_named(Some("-rx"));
    let options = CallerOptions::default();
    let parameters = cotrackpro_voice::sim::caller::stream_parameters(
        rig.server.addr,
        "parent",
        &options.call_sid,
    )
    .expect("TwiML");
    let mut socket = cotrackpro_voice::sim::caller::open_stream(
        rig.server.media_addr,
        &CallerOptions {
            parameters,
            ..options.clone()
        },
    )
    .expect("the stream");
    let code = loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(err) => panic!("no close frame: {err}"),
        }
    };
    assert_eq!(code, Some(1013));
    assert_eq!(failures(), 2);
    drop(socket);
    let record = rig.record_after_end(&options.call_sid);
    assert_eq!(record.status, CallStatus::Failed);
    assert!(record.end_reason.unwrap_or_default().contains("-rx"));

    // The server carries on: the next call is greeted and ends as usual.
    app.calls.refuse_threads_named(None);
    let caller = rig.caller();
    assert!(caller.wait_for_echoes(1, WAIT), "the greeting played");
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.end_reason, None);
    assert_eq!(wait_threads_gone(), Vec::<String>::new());
}

/// A compaction (here, or a `compact` process) holds the records lock: the call's first line
/// waits for it on the records writer, not on the call, so the greeting plays meanwhile.
#[test]
fn a_greeting_is_sent_while_a_compaction_holds_the_records_lock() {
    use cotrackpro_voice::sim::caller::{new_sid, stream_parameters};
    use cotrackpro_voice::twilio::stream_token;
    let rig = Rig::start(&[]);
    let app = rig.server.app();
    // A call the webhook never saw (no record yet), admitted with its own token: the call
    // itself must write its first line.
    let call_sid = new_sid("CA");
    let mut parameters =
        stream_parameters(rig.server.addr, "parent", &new_sid("CA")).expect("the TwiML");
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    for (name, value) in parameters.iter_mut() {
        if name == stream_token::PARAMETER {
            *value = app.stream_tokens.mint(&call_sid, now_secs);
        }
    }
    let lock = std::fs::File::open(rig.server.records().dir().join("calls.lock")).expect("lock");
    lock.lock().expect("the records lock");

    let caller = SimCaller::connect(
        rig.server.media_addr,
        CallerOptions {
            call_sid: call_sid.clone(),
            parameters,
            playback_speed: 25,
            ..CallerOptions::default()
        },
    )
    .expect("the stream");
    assert!(
        caller.wait_for_echoes(1, WAIT),
        "the greeting played while the lock was held: {:?}",
        shape(&caller.log())
    );

    drop(lock);
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    assert_eq!(
        record.role, "parent",
        "the first line was written after all"
    );
    assert_eq!(record.status, CallStatus::Completed);
}

#[test]
fn a_flood_of_invalid_messages_ends_the_call_cleanly() {
    let rig = Rig::start(&[]);
    let caller = rig.greeted();
    caller.send_raw("{not json");
    caller.send_raw(r#"{"event":"media","media":{"payload":"***"}}"#);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!caller.is_closed(), "a few bad messages are skipped");
    for _ in 0..60 {
        caller.send_raw(r#"{"event":"bogus"}"#);
    }
    assert!(caller.wait_closed(WAIT));
    let record = rig.record_after_end(caller.call_sid());
    assert_eq!(record.status, CallStatus::Failed);
}

/// A caller whose WebSocket library pings (Python `websockets`, as a proxy with keep-alive
/// would) gets its pongs and stays connected. The library closes the connection when a pong
/// is late; here it pings every 0.2 s for 4 s (20 pings), the same rule as its default of
/// every 20 s over a 3-minute call, in a test's time.
#[test]
fn a_caller_whose_library_pings_stays_connected() {
    let rig = Rig::start(&[("REPROMPT_AFTER_MS", "60000")]);
    let url = format!("ws://{}/call/stream", rig.server.media_addr);
    let result = crate::support::run_python(
        "keepalive_caller.py",
        &[&url, "0.2", "0.5", "4"],
        &json!({ "parameters": keepalive_parameters(&rig) }),
    );
    assert_eq!(result["close"], serde_json::Value::Null, "{result}");
    assert_eq!(result["open"], true, "{result}");
    // A round trip was measured: a pong came back for a ping.
    assert!(
        result["latency"].as_f64().is_some_and(|l| l > 0.0),
        "{result}"
    );
    // It heard the greeting meanwhile.
    assert!(
        result["received"].as_u64().is_some_and(|n| n > 10),
        "{result}"
    );
    let record = rig.record_after_end(&format!("CA{}", "1".repeat(32)));
    assert_eq!(record.status, CallStatus::Completed);
}

/// The same at full scale: pings every 20 s (the library's default) over a 3-minute call.
/// Ignored by default (it takes 3 minutes); run it with `--ignored`.
#[test]
#[ignore]
fn a_caller_pinging_every_20_s_stays_connected_for_3_minutes() {
    let rig = Rig::start(&[("REPROMPT_AFTER_MS", "600000")]);
    let url = format!("ws://{}/call/stream", rig.server.media_addr);
    let result = crate::support::run_python_within(
        "keepalive_caller.py",
        &[&url, "20", "20", "180"],
        &json!({ "parameters": keepalive_parameters(&rig) }),
        Duration::from_secs(240),
    );
    assert_eq!(result["close"], serde_json::Value::Null, "{result}");
    assert_eq!(result["open"], true, "{result}");
    assert!(
        result["latency"].as_f64().is_some_and(|l| l > 0.0),
        "{result}"
    );
}

/// The stream parameters of the keep-alive caller's call (`CA1…1`), from its TwiML.
fn keepalive_parameters(rig: &Rig) -> serde_json::Value {
    let sid = format!("CA{}", "1".repeat(32));
    let parameters =
        cotrackpro_voice::sim::caller::stream_parameters(rig.server.addr, "parent", &sid)
            .expect("the TwiML");
    serde_json::Value::Object(
        parameters
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    )
}

#[test]
fn keys_pressed_reach_the_model_as_one_turn_and_each_is_recorded() {
    let rig = Rig::start(&[]);
    let caller = rig.greeted();
    caller.press('1');
    caller.press('2');
    // The keys' turn is answered (its audio and mark reach the caller).
    assert!(
        caller.wait_for(WAIT, |log| log
            .iter()
            .any(|(_, h)| *h == Heard::Mark("1-0".into()))),
        "{:?}",
        shape(&caller.log())
    );
    let requests = rig.sims.anthropic.requests();
    let last = requests.last().expect("the model was asked");
    let asked = last["messages"].to_string();
    assert!(
        asked.contains("(the caller pressed 1 2 on the keypad)"),
        "{asked}"
    );
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    let said = heard(&record);
    assert_eq!(said[1..3], ["[keypad: 1]", "[keypad: 2]"], "{said:?}");
}

#[test]
fn silence_brings_a_reprompt_then_a_goodbye() {
    let rig = Rig::start(&[("REPROMPT_AFTER_MS", "1000"), ("MAX_REPROMPTS", "1")]);
    let caller = rig.greeted();
    assert!(caller.wait_closed(WAIT), "{:?}", shape(&caller.log()));
    let log = caller.log();
    assert_eq!(
        shape(&log),
        [
            "media",
            "mark 0-0",
            "media",
            "mark 0-1",
            "media",
            "mark 0-2",
            "closed Some(1000)"
        ]
    );
    let record = rig.record_after_end(caller.call_sid());
    assert_eq!(record.status, CallStatus::Completed);
    let said = heard(&record);
    assert!(said[1].contains("whenever you're ready"), "{said:?}");
    assert!(said[2].contains("end the call now"), "{said:?}");
}

#[test]
fn the_maximum_call_length_ends_with_a_closing_phrase() {
    let rig = Rig::start(&[("MAX_CALL_SECS", "2")]);
    let caller = rig.caller();
    assert!(caller.wait_closed(WAIT), "{:?}", shape(&caller.log()));
    let record = rig.record_after_end(caller.call_sid());
    assert_eq!(record.status, CallStatus::Completed);
    let said = heard(&record);
    assert!(
        said.last().is_some_and(|t| t.contains("time limit")),
        "{said:?}"
    );
}

#[test]
fn the_stream_handshake_is_checked() {
    use std::io::{Read, Write};
    let rig = Rig::start(&[
        ("VALIDATE_TWILIO_SIGNATURE", "true"),
        ("TWILIO_AUTH_TOKEN", crate::support::AUTH_TOKEN),
    ]);
    let raw = |request: &str| {
        let mut stream = std::net::TcpStream::connect(rig.server.media_addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("write");
        // Bytes, not a string: after a 101 come WebSocket frames (a close, when no `start`
        // follows the upgrade).
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let answer = raw(&format!("GET /other HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = raw("GET /call/stream HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A signature is checked when one comes: a wrong one is refused.
    let answer = raw(&format!(
        "GET /call/stream HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: bm9wZQ==\r\n{upgrade}\r\n"
    ));
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "bad signature: {answer}"
    );
    // Its absence is not a refusal (Twilio may not sign the upgrade): the token decides.
    let answer = raw(&format!(
        "GET /call/stream HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 101"), "no signature: {answer}");

    let url = format!("wss://{}/call/stream", crate::support::DOMAIN);
    let signature =
        cotrackpro_voice::twilio::signature::compute(crate::support::AUTH_TOKEN, &url, &[]);
    let options = CallerOptions {
        signature: Some(signature),
        playback_speed: 25,
        ..CallerOptions::default()
    };
    let token = rig
        .server
        .app()
        .stream_tokens
        .mint(&options.call_sid, now_secs());
    let caller = SimCaller::connect(
        rig.server.media_addr,
        CallerOptions {
            parameters: vec![("role".into(), "parent".into()), ("token".into(), token)],
            ..options
        },
    )
    .expect("a signed stream is accepted");
    assert!(caller.wait_for_echoes(1, WAIT));
}

fn now_secs() -> i64 {
    cotrackpro_voice::timestamp::now_ms() / 1000
}

/// The stream is admitted by the token its TwiML carried, for its own call, once; anything
/// else is closed (1008) before a provider is contacted.
#[test]
fn a_stream_is_admitted_only_with_its_own_unused_token() {
    let rig = Rig::start(&[]);
    let refused = |parameters: Vec<(String, String)>, call_sid: &str| {
        let caller = SimCaller::connect(
            rig.server.media_addr,
            CallerOptions {
                call_sid: call_sid.to_string(),
                parameters,
                playback_speed: 25,
                ..CallerOptions::default()
            },
        )
        .expect("the stream opens");
        assert!(caller.wait_closed(WAIT));
        assert_eq!(
            caller.log().last().map(|(_, h)| h.clone()),
            Some(Heard::Closed(Some(1008))),
            "{:?}",
            shape(&caller.log())
        );
        let deadline = Instant::now() + WAIT;
        while rig.server.app().calls.active() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rig.server.app().calls.active(), 0);
    };
    let sid = format!("CA{}", "0".repeat(32));
    let other = format!("CA{}", "1".repeat(32));
    // No token at all.
    refused(vec![("role".into(), "parent".into())], &sid);
    // A token of another call.
    let theirs = rig.server.app().stream_tokens.mint(&other, now_secs());
    refused(vec![("token".into(), theirs)], &sid);
    // None of it reached a provider.
    assert_eq!(rig.sims.elevenlabs.stt().sessions(), 0);
    assert!(rig.sims.elevenlabs.tts().sessions().is_empty());
    assert!(rig.sims.anthropic.requests().is_empty());

    // The call's own token opens it, once.
    let parameters =
        cotrackpro_voice::sim::caller::stream_parameters(rig.server.addr, "parent", &sid)
            .expect("the TwiML");
    assert!(
        parameters.iter().any(|(k, _)| k == "token"),
        "{parameters:?}"
    );
    let caller = SimCaller::connect(
        rig.server.media_addr,
        CallerOptions {
            call_sid: sid.clone(),
            parameters: parameters.clone(),
            playback_speed: 25,
            ..CallerOptions::default()
        },
    )
    .expect("the stream opens");
    assert!(
        caller.wait_for_echoes(1, WAIT),
        "{:?}",
        shape(&caller.log())
    );
    caller.hang_up();
    // Replayed: refused.
    refused(parameters, &sid);
}

#[test]
fn a_silent_dead_connection_is_noticed_by_the_read_timeout() {
    use cotrackpro_voice::sim::caller::{open_stream, stream_parameters};
    let rig = Rig::start(&[("MEDIA_READ_TIMEOUT_MS", "600")]);
    let options = CallerOptions::default();
    let parameters =
        stream_parameters(rig.server.addr, "parent", &options.call_sid).expect("TwiML");
    // The stream starts, then nothing more is sent (and nothing read).
    let _socket = open_stream(
        rig.server.media_addr,
        &CallerOptions {
            parameters,
            ..options.clone()
        },
    )
    .expect("the stream");
    let deadline = Instant::now() + Duration::from_secs(1);
    while rig.server.app().calls.active() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rig.server.app().calls.active(), 1);
    // The server gives up on its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.server.app().calls.active() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rig.server.app().calls.active(), 0);
    assert_eq!(wait_threads_gone(), Vec::<String>::new());
    let record = rig.record_after_end(&options.call_sid);
    assert_eq!(record.status, CallStatus::Failed);
    assert!(
        record
            .end_reason
            .as_deref()
            .is_some_and(|r| r.contains("MEDIA_READ_TIMEOUT_MS")),
        "{:?}",
        record.end_reason
    );
}

#[test]
fn the_service_logs_the_cost_summary_and_drains_live_calls_on_sigterm() {
    use crate::support::{serve_binary, TempDir};
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let sims = Simulators::start_with(SimTiming {
        first_token_ms: Some(30),
        token_ms: Some(2),
        tts_first_byte_ms: Some(10),
        stt_commit_ms: Some(10),
        ..SimTiming::default()
    })
    .expect("simulators start");
    sims.anthropic
        .push([Reply::Text("Yes, I can help you with that today.".into())]);
    sims.elevenlabs
        .stt()
        .push_utterances(["Can you help me".to_string()]);
    let mut env: Vec<(&str, String)> = sims.env();
    env.push(("STT_VAD_SILENCE_SECS", "0.5".into()));
    env.push(("SHUTDOWN_DRAIN_SECS", "1".into()));
    env.push(("AUDIO_DIR", "./no-such-audio-dir".into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let records = TempDir::new("sigterm");
    let (server, http, listening) = serve_binary(&records, &pairs);
    let media: std::net::SocketAddr = listening["media"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the listening line names the media address");
    let options = || CallerOptions {
        playback_speed: 25,
        ..CallerOptions::default()
    };

    let caller = SimCaller::dial(http, media, "parent", options()).expect("caller connects");
    assert!(caller.wait_for_echoes(1, WAIT));
    say_and_hear(&caller, "Can you help me", 2);
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let line = server.wait_for_line("the cost summary", |l| l.contains("cost.call.summary"));
    let summary: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(summary["callSid"], json!(call_sid));
    assert_eq!(summary["turnCount"], json!(1));
    assert_eq!(summary["bargeIns"], json!(0));
    assert_eq!(summary["toolCalls"], json!(0));
    let greeting =
        cotrackpro_voice::personas::prompts::greeting(cotrackpro_voice::personas::Role::Parent);
    let spoken = greeting.chars().count() + 1 + "Yes, I can help you with that today.".len() + 1;
    assert_eq!(summary["ttsChars"], json!(spoken));
    assert!(
        summary["claudeInputTokens"].as_u64().is_some_and(|n| n > 0),
        "{line}"
    );
    assert!(
        summary["sttSecs"].as_f64().is_some_and(|s| s > 0.5),
        "{line}"
    );
    assert!(
        summary["estimatedCostUsd"]
            .as_f64()
            .is_some_and(|c| c > 0.0),
        "{line}"
    );

    // A call is live when systemd stops the service: it gets the drain, then ends.
    let live = SimCaller::dial(http, media, "parent", options()).expect("caller connects");
    assert!(live.wait_for_echoes(1, WAIT));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    server.wait_for_line("the shutdown", |l| l.contains("shutdown requested"));
    let ended = server.wait_for_line("the call's end", |l| l.contains("call.ended"));
    assert!(ended.contains("server shutting down"), "{ended}");
    assert!(ended.contains("\"failed\""), "{ended}");
    assert!(live.wait_closed(WAIT));
    server.wait_for_line("the exit", |l| l.contains("\"stopped\""));
    let mut child = server;
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = child.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service exits after the drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
}

#[test]
fn a_call_with_no_sign_of_the_caller_is_reaped_and_recorded_as_such() {
    let rig = Rig::start(&[
        ("REPROMPT_AFTER_MS", "1000"),
        ("MAX_REPROMPTS", "20"),
        ("IDLE_REAP_SECS", "3"),
    ]);
    let caller = rig.caller();
    assert!(caller.wait_closed(WAIT), "{:?}", shape(&caller.log()));
    let record = rig.record_after_end(caller.call_sid());
    assert_eq!(record.status, CallStatus::ForceReaped);
}

#[test]
fn the_twilio_simulator_carries_out_a_created_call_against_the_server() {
    use cotrackpro_voice::config::Secret;
    use cotrackpro_voice::sim::twilio::Callee;
    use cotrackpro_voice::sim::{SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN};
    use cotrackpro_voice::twilio::rest::{CreateCall, TwilioRest};
    let rig = Rig::start(&[("VALIDATE_TWILIO_SIGNATURE", "true")]);
    rig.sims.twilio.dial_into(Callee {
        http_base: format!("http://{}", rig.server.addr),
        media_addr: rig.server.media_addr,
        playback_speed: 25,
    });
    let domain = crate::support::DOMAIN;
    let rest = TwilioRest::new(
        &rig.sims.twilio.base_url(),
        SIM_TWILIO_ACCOUNT_SID,
        Secret::new(SIM_TWILIO_AUTH_TOKEN),
    );
    let created = rest
        .create_call(&CreateCall {
            to: "+14165550123".into(),
            from: "+12125550100".into(),
            url: format!("https://{domain}/call/incoming?role=judge"),
            status_callback: Some(format!("https://{domain}/call/status")),
            status_callback_events: ["initiated", "ringing", "answered", "completed"]
                .map(String::from)
                .to_vec(),
            timeout_secs: None,
            time_limit_secs: None,
            amd_callback: None,
        })
        .expect("the simulator creates the call");
    let deadline = Instant::now() + WAIT;
    while rig.sims.twilio.answered().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let answered = rig.sims.twilio.answered();
    assert_eq!(answered.len(), 1);
    let call = &answered[0];
    assert_eq!(call.error, None, "{call:?}");
    assert_eq!(call.sid, created.sid);
    assert!(call.heard_greeting, "{call:?}");
    assert!(call.parameters.contains(&("role".into(), "judge".into())));
    assert!(call
        .parameters
        .contains(&("direction".into(), "outbound".into())));
    let codes: Vec<(&str, u16)> = call
        .callbacks
        .iter()
        .map(|(s, c)| (s.as_str(), *c))
        .collect();
    assert_eq!(
        codes,
        [
            ("initiated", 204),
            ("ringing", 204),
            ("in-progress", 204),
            ("completed", 204)
        ],
        "every signed callback was accepted"
    );
    let record = rig.record_after_end(&created.sid);
    assert_eq!(record.role, "judge");
    assert_eq!(
        record.direction,
        cotrackpro_voice::records::event::Direction::Outbound
    );
    assert_eq!(record.twilio_status.as_deref(), Some("completed"));
    assert!(record.transcript.entries()[0].text.contains("transcribed"));
}

#[test]
fn a_model_that_goes_quiet_is_an_apology_within_the_first_token_timeout() {
    let rig = Rig::start(&[("ANTHROPIC_FIRST_TOKEN_TIMEOUT_MS", "400")]);
    let stall = || Reply::Stall(Duration::from_secs(5));
    rig.sims.anthropic.push([stall(), stall(), stall()]);
    rig.script(&["Hello are you there"]);
    let caller = rig.greeted();
    say_and_hear(&caller, "Hello are you there", 2);
    let call_sid = caller.call_sid().to_string();
    drop(caller);
    let record = rig.record_after_end(&call_sid);
    let said = heard(&record);
    assert!(said[2].contains("technical hiccup"), "{said:?}");
    assert_eq!(record.status, CallStatus::Completed);
}

#[test]
fn hanging_up_while_the_model_stalls_ends_every_thread_within_a_second() {
    let rig = Rig::start(&[("ANTHROPIC_FIRST_TOKEN_TIMEOUT_MS", "20000")]);
    rig.sims
        .anthropic
        .push([Reply::Stall(Duration::from_secs(30))]);
    rig.script(&["Are you there"]);
    let caller = rig.greeted();
    caller.say("Are you there");
    let deadline = Instant::now() + WAIT;
    while rig.sims.anthropic.requests().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        rig.sims.anthropic.requests().len(),
        1,
        "the model was asked"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        call_threads().iter().any(|t| t.ends_with("-llm")),
        "{:?}",
        call_threads()
    );
    hang_up_and_see_every_thread_end_within_a_second(caller);
}

#[test]
fn hanging_up_during_a_slow_tool_call_ends_every_thread_within_a_second() {
    let rig = Rig::start(&[("MCP_TOOL_TIMEOUT_MS", "20000")]);
    rig.sims.anthropic.push([Reply::ToolUse {
        preface: "Let me check that.".into(),
        name: "check_safety".into(),
        input: json!({"context": "worried"}),
    }]);
    rig.sims.mcp.set_delay(Duration::from_secs(30));
    rig.script(&["Can you check something"]);
    let caller = rig.greeted();
    caller.say("Can you check something");
    // The hold phrase plays while the tool runs.
    assert!(
        caller.wait_for_echoes(3, WAIT),
        "{:?}",
        shape(&caller.log())
    );
    hang_up_and_see_every_thread_end_within_a_second(caller);
}

#[test]
fn a_message_over_the_size_limit_ends_the_call() {
    let rig = Rig::start(&[]);
    let caller = rig.greeted();
    caller.send_raw(&format!(
        r#"{{"event":"media","media":{{"payload":"{}"}}}}"#,
        "A".repeat(100 * 1024)
    ));
    assert!(caller.wait_closed(WAIT));
    let record = rig.record_after_end(caller.call_sid());
    assert_eq!(record.status, CallStatus::Failed);
    assert_eq!(wait_threads_gone(), Vec::<String>::new());
}

#[test]
fn ten_calls_share_one_mcp_session_which_the_server_ends_at_shutdown() {
    let rig = Rig::start(&[]);
    for i in 0..10 {
        rig.sims.anthropic.push([
            Reply::ToolUse {
                preface: "Let me look that up for you.".into(),
                name: "check_safety".into(),
                input: json!({"context": format!("call {i}")}),
            },
            Reply::Text("Here is what I found.".into()),
        ]);
        rig.script(&["How do I keep an exchange log"]);
        let caller = rig.greeted();
        say_and_hear(&caller, "How do I keep an exchange log", 4);
        let call_sid = caller.call_sid().to_string();
        caller.hang_up();
        let record = rig.record_after_end(&call_sid);
        assert_eq!(record.tool_calls.len(), 1, "call {i}");
        assert!(record.tool_calls[0].success, "call {i}");
    }
    assert_eq!(rig.sims.mcp.calls().len(), 10);
    assert_eq!(
        rig.sims.mcp.sessions_opened(),
        1,
        "one initialize for the server's tool list and ten calls"
    );
    assert!(rig.sims.mcp.deleted_sessions().is_empty());
    let Rig {
        sims,
        server,
        _turn,
    } = rig;
    drop(server); // Server::shutdown
    assert_eq!(sims.mcp.deleted_sessions(), ["sim-session-1"]);
}
