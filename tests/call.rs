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
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let sims = Simulators::start_with(SimTiming {
            first_token_ms: Some(30),
            token_ms: Some(2),
            tts_first_byte_ms: Some(10),
            stt_commit_ms: Some(10),
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

    pub fn caller(&self) -> SimCaller {
        SimCaller::connect(
            self.server.media_addr,
            CallerOptions {
                playback_speed: 25,
                ..CallerOptions::default()
            },
        )
        .expect("caller connects")
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
