//! `cotrackpro-voice demo`: the whole product on loopback with no keys. It starts the
//! simulated providers and the real server wired to them, then a simulated caller phones in
//! and speaks a scripted conversation — a question it follows with "mm-hmm" (a backchannel: no
//! interruption), a question that needs a CoTrackPro tool, a question it interrupts
//! mid-answer, and goodbye, over whose answer it coughs (a false interruption: the answer
//! resumes). It prints the conversation as the record kept it, with each turn's latencies, and
//! writes both sides of the call to a WAV file.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::call::barge_rules::Listening;
use crate::personas::Role;
use crate::records::index::sid_key;
use crate::serve::Server;
use crate::sim::anthropic::Reply;
use crate::sim::caller::{CallerOptions, Heard, SimCaller};
use crate::sim::Simulators;

pub struct DemoOptions {
    pub role: Role,
    pub wav: PathBuf,
    /// How many times faster than real time the phone plays the assistant (1 = a real call).
    pub speed: usize,
}

/// One step of the caller's script, and what the simulated model answers.
struct Step {
    says: &'static str,
    replies: Vec<Reply>,
    /// What the caller does over the answer once its first sentence has been heard.
    during: During,
}

enum During {
    Nothing,
    /// Sounds of listening: the answer goes on.
    Backchannel(&'static str),
    /// A noise the speech-to-text hears as `heard_as` but never commits: the answer is cleared,
    /// then resumes.
    Cough {
        sound: &'static str,
        heard_as: &'static str,
    },
    /// Words that take the turn, and the model's answer to them.
    Interrupt(&'static str, Reply),
}

fn script() -> Vec<Step> {
    vec![
        Step {
            says: "Hi. I need help writing down what happened at the exchange last Friday.",
            replies: vec![Reply::Text(
                "I'm glad you called, and I can help with that. We will go through it together, one small step at a time, and nothing has to be perfect. Let's start with when the exchange was, and where it happened.".into(),
            )],
            during: During::Backchannel("Mm-hmm."),
        },
        Step {
            says: "Is there a template I can use for an exchange log?",
            replies: vec![
                Reply::ToolUse {
                    preface: "Let me set that up for you.".into(),
                    name: "generate_artifact".into(),
                    input: json!({"artifact_type": "exchange log", "sessionId": "demo"}),
                },
                Reply::Text(
                    "I've started an exchange log draft for you. It has a place for the date, the time, who was there, and what was said.".into(),
                ),
            ],
            during: During::Nothing,
        },
        Step {
            says: "What else should I keep?",
            replies: vec![Reply::Text(
                "Keep every text message about the exchange, with its date. Keep notes from the school or the doctor if they mention it. Write down the names of anyone who saw what happened. And keep your own notes short, factual and calm.".into(),
            )],
            during: During::Interrupt(
                "Sorry, can I stop you there for a second?",
                Reply::Text("Of course. Take your time, I'm listening.".into()),
            ),
        },
        Step {
            says: "That's all for today. Thank you, goodbye.",
            replies: vec![Reply::Text(
                "You're welcome. You did well today, and writing things down as they happen will help you. Call back any time, and if you are ever in danger, call 911.".into(),
            )],
            during: During::Cough {
                sound: "ahem ahem ahem",
                heard_as: "hey wait",
            },
        },
    ]
}

const STEP_TIMEOUT: Duration = Duration::from_secs(90);

pub fn run(options: &DemoOptions) -> Result<(), Box<dyn Error>> {
    let sims = Simulators::start()?;
    let records_dir = std::env::temp_dir().join(format!("cotrackpro-demo-{}", std::process::id()));
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    // The log settings are the operator's, as for `serve` (the others are the demo's own).
    let mut settings = vec![("LOG_LEVEL", level)];
    for key in ["LOG_FORMAT", "JOURNAL_STREAM"] {
        if let Ok(value) = std::env::var(key) {
            settings.push((key, value));
        }
    }
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = super::start_on_loopback(&sims, &records_dir, &settings)?;
    let result = converse(&server, &sims, options);
    server.shutdown();
    let _ = std::fs::remove_dir_all(&records_dir);
    result
}

fn converse(
    server: &Server,
    sims: &Simulators,
    options: &DemoOptions,
) -> Result<(), Box<dyn Error>> {
    let app = &server.app;
    println!(
        "cotrackpro-voice demo: a simulated caller phones the {} persona (simulated providers, no keys)\n",
        options.role
    );
    let steps = script();
    let stt = sims.elevenlabs.stt();
    for step in &steps {
        sims.anthropic.push(step.replies.iter().cloned());
        stt.push_utterances([step.says.to_string()]);
        match &step.during {
            During::Nothing => {}
            During::Backchannel(words) => stt.push_utterances([words.to_string()]),
            During::Cough { heard_as, .. } => stt.push_cough(heard_as),
            During::Interrupt(words, reply) => {
                sims.anthropic.push([reply.clone()]);
                stt.push_utterances([words.to_string()]);
            }
        }
    }
    let caller = SimCaller::dial(
        server.http_addr(),
        server.media_addr(),
        options.role.as_str(),
        CallerOptions {
            playback_speed: options.speed,
            ..CallerOptions::default()
        },
    )?;
    println!(
        "☎  call {} connected; the greeting plays…",
        caller.call_sid()
    );
    if !caller.wait_for_echoes(1, STEP_TIMEOUT) {
        return Err("the greeting did not play".into());
    }
    for step in &steps {
        let from = caller.log().len();
        println!("🗣  caller: {}", step.says);
        if matches!(step.during, During::Backchannel(_) | During::Cough { .. }) {
            // In real time while the caller is heard over the answer: the answer must still be
            // playing when the speech-to-text has understood them.
            caller.set_playback_speed(1);
        }
        caller.say(step.says);
        if matches!(step.during, During::Nothing) {
            await_reply(&caller, from)?;
            continue;
        }
        let heard_one = caller.wait_for(STEP_TIMEOUT, |log| {
            log[from.min(log.len())..]
                .iter()
                .any(|(_, h)| matches!(h, Heard::Echoed(_)))
        });
        if !heard_one {
            return Err("the answer did not start".into());
        }
        let over = caller.log().len();
        match &step.during {
            During::Nothing => {}
            During::Backchannel(words) => {
                println!("🗣  caller (while the answer plays): {words}");
                caller.say(words);
                await_reply(&caller, from)?;
                caller.set_playback_speed(options.speed);
                if cleared_since(&caller, over) {
                    return Err("the backchannel interrupted the answer".into());
                }
                println!("   👂 only a backchannel: no clear was sent, and the answer went on");
            }
            During::Cough { sound, heard_as } => {
                println!(
                    "🗣  caller coughs over the answer ({sound}; the speech-to-text hears \"{heard_as}\", then commits nothing)"
                );
                caller.say(sound);
                if !caller.wait_for(STEP_TIMEOUT, |log| {
                    log[over.min(log.len())..]
                        .iter()
                        .any(|(_, h)| *h == Heard::Clear)
                }) {
                    return Err("the cough did not clear the answer".into());
                }
                caller.set_playback_speed(options.speed);
                println!("   ✋ the server cleared Twilio's buffer and paused the answer");
                let after_clear = caller.log().len();
                await_reply(&caller, after_clear)?;
                if !resumed_same_turn(&caller.log(), from, after_clear) {
                    return Err("the answer did not resume after the cough".into());
                }
                println!(
                    "   ↩ no words followed the cough: the answer resumed from the sentence the caller had not heard"
                );
            }
            During::Interrupt(words, _) => {
                println!("🗣  caller (talking over the answer): {words}");
                caller.say(words);
                if !caller.wait_for(STEP_TIMEOUT, |log| {
                    log[over.min(log.len())..]
                        .iter()
                        .any(|(_, h)| *h == Heard::Clear)
                }) {
                    return Err("the barge-in was not heard".into());
                }
                println!(
                    "   ✋ the server cleared Twilio's buffer and dropped the rest of that answer"
                );
                await_reply(&caller, caller.log().len())?;
            }
        }
    }
    let call_sid = caller.call_sid().to_string();
    let (caller_track, assistant_track) = caller.tracks();
    caller.hang_up();
    println!("☎  the caller hung up\n");

    let deadline = Instant::now() + Duration::from_secs(5);
    while app.calls.active() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let key = sid_key(&call_sid).ok_or("the demo call SID is not valid")?;
    let record = app.records.get(&key)?.ok_or("the call left no record")?;
    let latencies: Vec<_> = app
        .metrics
        .recent_turns()
        .into_iter()
        .filter(|l| l.call_sid == call_sid)
        .collect();

    println!("The conversation, as the record keeps it (what the caller actually heard):");
    let mut turn = 0u64;
    let listening = Listening::for_language("en", &[]);
    for entry in record.transcript.entries() {
        let who = if entry.role == "user" {
            "caller".to_string()
        } else {
            options.role.as_str().to_string()
        };
        let backchannel = entry.role == "user" && listening.is_backchannel(&entry.text);
        if backchannel {
            println!("  {who:>10} › {}   (a backchannel: not a turn)", entry.text);
            continue;
        }
        println!("  {who:>10} › {}", entry.text);
        if entry.role == "user" && !entry.text.starts_with("[keypad") {
            turn += 1;
            if let Some(l) = latencies.iter().find(|l| l.turn == turn) {
                let ms = |v: Option<u64>| v.map_or_else(|| "–".to_string(), |v| format!("{v} ms"));
                println!(
                    "  {:>10}   ⏱ after the caller stopped: transcript {} · first token {} · first sentence {} · first audio {} · first frame to Twilio {}",
                    "",
                    ms(l.speech_end_to_commit_ms),
                    ms(l.first_token_ms),
                    ms(l.first_sentence_ms),
                    ms(l.first_audio_ms),
                    ms(l.first_frame_ms)
                );
            }
        }
    }
    if let Some(cost) = &record.cost_summary {
        println!(
            "\nStatus {}, {} turns, {} barge-in(s), {} tool call(s); {}",
            record.status.as_str(),
            record.turn_count,
            record.barge_ins,
            record.tool_calls.len(),
            cost_line(cost)
        );
    }
    crate::sim::wav::write_stereo(&options.wav, &caller_track, &assistant_track)?;
    println!(
        "Both sides of the call ({:.0} s; caller left, assistant right): {}",
        caller_track.len() as f64 / 8000.0,
        options.wav.display()
    );
    Ok(())
}

/// What the call used and cost. Every priced quantity is shown: the cache writes and reads are
/// priced apart from plain input tokens, so without them the figures do not add up to the total.
fn cost_line(cost: &crate::records::event::CostSummary) -> String {
    format!(
        "Claude {} in + {} cache write + {} cache read / {} out tokens, TTS {} characters ({} pre-rendered), STT {:.1} s: about ${:.4}",
        cost.claude_input_tokens,
        cost.claude_cache_creation_tokens,
        cost.claude_cache_read_tokens,
        cost.claude_output_tokens,
        cost.tts_chars,
        cost.tts_chars_cached,
        cost.stt_secs,
        cost.estimated_cost_usd
    )
}

/// Whether the phone was sent a `clear` since the log's entry `from`.
fn cleared_since(caller: &SimCaller, from: usize) -> bool {
    caller
        .log()
        .iter()
        .skip(from)
        .any(|(_, h)| *h == Heard::Clear)
}

/// Whether the marks after the log's entry `after` belong to the same turn as those between
/// `from` and it: the answer resumed (a cut answer's reply is a new turn).
fn resumed_same_turn(log: &[(Instant, Heard)], from: usize, after: usize) -> bool {
    let turn_of = |h: &Heard| match h {
        Heard::Mark(name) => name.split('-').next().map(str::to_string),
        _ => None,
    };
    let before = log[from.min(log.len())..after.min(log.len())]
        .iter()
        .filter_map(|(_, h)| turn_of(h))
        .next_back();
    let next = log[after.min(log.len())..]
        .iter()
        .find_map(|(_, h)| turn_of(h));
    before.is_some() && before == next
}

/// Waits for the caller to finish speaking, then for the answer to start and play out.
fn await_reply(caller: &SimCaller, from: usize) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while caller.is_speaking() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = caller.wait_for(STEP_TIMEOUT, |log| {
        log[from.min(log.len())..]
            .iter()
            .any(|(_, h)| matches!(h, Heard::Mark(_)))
    });
    if !started || !caller.wait_until_quiet(Duration::from_millis(1200), STEP_TIMEOUT) {
        return Err("the answer did not arrive".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::event::CostSummary;

    #[test]
    fn the_cost_line_shows_the_cache_tokens_it_is_priced_on() {
        let cost = CostSummary {
            claude_input_tokens: 120,
            claude_output_tokens: 340,
            claude_cache_creation_tokens: 2_100,
            claude_cache_read_tokens: 18_500,
            tts_chars: 400,
            tts_chars_cached: 90,
            stt_secs: 31.25,
            estimated_cost_usd: 0.0123,
        };
        assert_eq!(
            cost_line(&cost),
            "Claude 120 in + 2100 cache write + 18500 cache read / 340 out tokens, TTS 400 characters (90 pre-rendered), STT 31.2 s: about $0.0123"
        );
    }
}
