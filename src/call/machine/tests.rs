//! The call's rules, one test each, with made-up times: no socket, no thread, no clock.

use super::*;
use crate::call::workers::SttLost;
use crate::config::{Config, Env};
use crate::providers::anthropic::client::LlmError;
use crate::providers::anthropic::stream::Usage;
use crate::providers::anthropic::{Block, Speaker};
use crate::providers::elevenlabs_stt::SttError;
use crate::providers::elevenlabs_tts::TtsError;
use crate::speech::ulaw::{self, FRAME_BYTES};

/// The configuration and clips a test machine borrows (leaked: a test's machine lives as long
/// as the test, and a `'static` borrow keeps the fixture simple).
fn rules_with(extra: &[(&str, &str)]) -> Rules<'static> {
    let mut env = Env::from_pairs([("SERVER_DOMAIN", "voice.example.com")]);
    for (key, value) in extra {
        env.set(key, value);
    }
    let config: &'static Config = match Config::from_env(&env) {
        Ok(config) => Box::leak(Box::new(config)),
        Err(errors) => panic!("test configuration refused: {errors:?}"),
    };
    let clips: &'static Clips = Box::leak(Box::default());
    Rules {
        calls: &config.calls,
        clips,
        reply_deadline: Duration::from_secs(60),
        history_keep: 40,
    }
}

/// A machine and a clock the test moves by hand.
pub(super) struct Bench {
    pub(super) machine: Machine<'static>,
    t0: Instant,
    pub(super) now: Instant,
}

pub(super) const SID: &str = "CA0123456789abcdef0123456789abcdef";
const STREAM: &str = "MZ0123456789abcdef0123456789abcdef";

impl Bench {
    pub(super) fn new() -> Bench {
        Bench::with(&[])
    }

    pub(super) fn with(extra: &[(&str, &str)]) -> Bench {
        let t0 = Instant::now();
        Bench {
            machine: Machine::new(rules_with(extra), t0, 1_700_000_000_000, "unknown-1".into()),
            t0,
            now: t0,
        }
    }

    pub(super) fn tuning(&self) -> &crate::config::CallTuning {
        &self.machine.rules.calls.tuning
    }

    /// Moves the clock to `ms` after the call opened.
    pub(super) fn at(&mut self, ms: u64) -> &mut Bench {
        self.now = self.t0 + Duration::from_millis(ms);
        self
    }

    pub(super) fn step(&mut self, input: Input) -> Vec<Action> {
        self.machine.step(self.now, input)
    }

    /// Moves the clock to the machine's next deadline and lets it act.
    pub(super) fn wait(&mut self) -> Vec<Action> {
        let deadline = self.machine.next_deadline().expect("a deadline");
        assert!(deadline >= self.now, "a deadline in the past");
        self.now = deadline;
        let actions = self.step(Input::Deadline);
        // Whatever it decided, it must not ask to be woken for the same moment again.
        if let Some(next) = self.machine.next_deadline() {
            assert!(next > self.now, "the deadline did not move on");
        }
        actions
    }

    pub(super) fn start(&mut self) -> Vec<Action> {
        self.start_with(&[("role", "attorney")])
    }

    pub(super) fn start_with(&mut self, parameters: &[(&str, &str)]) -> Vec<Action> {
        self.step(Input::Twilio(Inbound::Start(StreamStart {
            call_sid: SID.into(),
            stream_sid: STREAM.into(),
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            custom_parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            media_format_ok: true,
        })))
    }

    /// The piece's audio arrives in full (`bytes` of it) and its mark goes out.
    pub(super) fn play(&mut self, turn: u64, seq: u32, bytes: usize) -> Vec<Action> {
        let mut actions = self.step(Input::Tts {
            turn,
            seq,
            out: TtsOut::Audio(vec![0xFF; bytes]),
        });
        actions.extend(self.step(Input::Tts {
            turn,
            seq,
            out: TtsOut::Done { chars: 10 },
        }));
        actions
    }

    pub(super) fn echo(&mut self, turn: u64, seq: u32) -> Vec<Action> {
        self.step(Input::Twilio(Inbound::Mark {
            name: format!("{turn}-{seq}"),
        }))
    }

    /// Starts the call and plays the greeting to its mark.
    pub(super) fn greeted(&mut self) {
        self.start();
        self.play(0, 0, 320);
        self.echo(0, 0);
    }

    pub(super) fn say(&mut self, text: &str) -> Vec<Action> {
        self.step(Input::Stt(SttOut::Committed(text.into())))
    }

    pub(super) fn partial(&mut self, text: &str) -> Vec<Action> {
        self.step(Input::Stt(SttOut::Partial(text.into())))
    }

    pub(super) fn llm(&mut self, turn: u64, out: LlmOut) -> Vec<Action> {
        self.step(Input::Llm { turn, out })
    }

    pub(super) fn reply_done(&mut self, turn: u64, text: &str) -> Vec<Action> {
        self.llm(
            turn,
            LlmOut::Done {
                new_turns: vec![Turn::assistant(text)],
                usage: Usage::default(),
                error: None,
            },
        )
    }
}

/// What went to Twilio, as `media` (one per frame), `mark:NAME`, `clear`, `pong`.
pub(super) fn twilio(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Twilio(text) => {
                let v: serde_json::Value = serde_json::from_str(text).expect("json");
                let event = v["event"].as_str().unwrap_or("?").to_string();
                vec![match event.as_str() {
                    "mark" => format!("mark:{}", v["mark"]["name"].as_str().unwrap_or("?")),
                    _ => event,
                }]
            }
            Action::Media(ulaw) => {
                assert_eq!(ulaw.len() % FRAME_BYTES, 0, "whole frames");
                vec!["media".to_string(); ulaw.len() / FRAME_BYTES]
            }
            Action::Pong(_) => vec!["pong".into()],
            _ => Vec::new(),
        })
        .collect()
}

/// The speech queued: (turn, seq, text or "clip"), prewarms left out.
pub(super) fn spoken(actions: &[Action]) -> Vec<(u64, u32, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Speak { turn, seq, speech } => match speech {
                Speech::Text(text) => Some((*turn, *seq, text.clone())),
                Speech::Clip(_) => Some((*turn, *seq, "clip".into())),
                Speech::Prewarm => None,
            },
            _ => None,
        })
        .collect()
}

pub(super) fn texts(actions: &[Action]) -> Vec<String> {
    spoken(actions).into_iter().map(|(_, _, t)| t).collect()
}

pub(super) fn ended(actions: &[Action]) -> Option<&End> {
    actions.iter().find_map(|a| match a {
        Action::End(end) => Some(end),
        _ => None,
    })
}

pub(super) fn asked(actions: &[Action]) -> Option<(u64, &[Turn])> {
    actions.iter().find_map(|a| match a {
        Action::Ask { turn, history } => Some((*turn, history.as_slice())),
        _ => None,
    })
}

pub(super) fn words(turn: &Turn) -> String {
    turn.blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn start_greets_in_the_persona_and_its_voice() {
    let mut bench = Bench::new();
    let actions = bench.start_with(&[("role", "attorney"), ("direction", "outbound")]);
    let Some(Action::Started(stream)) = actions.first() else {
        panic!("no start: {actions:?}");
    };
    assert_eq!(stream.role, Role::Attorney);
    assert_eq!(stream.direction, Direction::Outbound);
    assert_eq!(
        stream.voice,
        bench.machine.rules.calls.voice_for(Role::Attorney)
    );
    assert_eq!(texts(&actions), vec![prompts::greeting(Role::Attorney)]);
    // The history opens with the connection and the greeting.
    assert_eq!(bench.machine.history().len(), 2);
}

#[test]
fn an_unknown_role_or_a_bad_voice_falls_back_to_the_defaults() {
    let mut bench = Bench::new();
    let actions = bench.start_with(&[("role", "pirate"), ("voiceId", "../../etc")]);
    let Some(Action::Started(stream)) = actions.first() else {
        panic!("no start");
    };
    let calls = bench.machine.rules.calls;
    assert_eq!(stream.role, calls.default_role);
    assert_eq!(stream.voice, calls.voice_for(calls.default_role));
}

#[test]
fn audio_goes_out_in_whole_frames_and_the_mark_follows_the_last() {
    let mut bench = Bench::new();
    bench.start();
    // 400 bytes: two whole frames now, 80 bytes held for the next audio of the piece.
    let first = bench.step(Input::Tts {
        turn: 0,
        seq: 0,
        out: TtsOut::Audio(vec![0x7F; 400]),
    });
    assert_eq!(twilio(&first), vec!["media", "media"]);
    let done = bench.step(Input::Tts {
        turn: 0,
        seq: 0,
        out: TtsOut::Done { chars: 20 },
    });
    // The rest padded with silence to a whole frame, then the mark.
    assert_eq!(twilio(&done), vec!["media", "mark:0-0"]);
    let Action::Media(payload) = &done[0] else {
        panic!("media first");
    };
    assert_eq!(payload.len(), FRAME_BYTES);
    assert_eq!(&payload[..80], &[0x7F; 80][..]);
    assert!(payload[80..].iter().all(|b| *b == ulaw::ULAW_SILENCE));
    assert!(bench.machine.is_speaking());
    bench.echo(0, 0);
    assert!(!bench.machine.is_speaking());
}

#[test]
fn a_committed_utterance_asks_the_model_and_its_sentences_are_spoken() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.at(3_000);
    let actions = bench.say("I need help with the schedule");
    assert!(matches!(actions.first(), Some(Action::NewTurn(1))));
    let (turn, history) = asked(&actions).expect("the model is asked");
    assert_eq!(turn, 1);
    assert_eq!(
        words(history.last().unwrap()),
        "I need help with the schedule"
    );
    // A stream is opened ahead for the reply.
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Speak {
            speech: Speech::Prewarm,
            ..
        }
    )));
    let actions = bench.llm(1, LlmOut::Delta("Of course, I can help. Let me".into()));
    assert_eq!(
        spoken(&actions),
        vec![(1, 0, "Of course, I can help.".into())]
    );
    // The rest waits for its end, and the end of the reply flushes it.
    assert!(spoken(&bench.llm(1, LlmOut::Delta(" explain".into()))).is_empty());
    let actions = bench.reply_done(1, "Of course, I can help. Let me explain");
    assert_eq!(texts(&actions), vec!["Let me explain"]);
}

#[test]
fn barge_in_clears_what_plays_and_nothing_of_the_old_turn_is_sent_after() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Tell me about custody");
    bench.llm(
        1,
        LlmOut::Delta("Custody has two parts. The first is legal. ".into()),
    );
    bench.play(1, 0, 320);
    bench.echo(1, 0);
    // The second sentence is being sent when the caller cuts in.
    bench.step(Input::Tts {
        turn: 1,
        seq: 1,
        out: TtsOut::Audio(vec![0xFF; 320]),
    });
    let actions = bench.partial("wait I have a question");
    assert_eq!(twilio(&actions), vec!["clear"]);
    assert!(actions.iter().any(|a| matches!(a, Action::NewTurn(2))));
    assert!(!bench.machine.is_speaking());
    assert_eq!(bench.machine.turn(), 2);
    // The old turn's audio, its end, and the model's late words are all dropped.
    assert!(bench.play(1, 1, 640).is_empty());
    assert!(bench
        .llm(1, LlmOut::Delta("More words. ".into()))
        .is_empty());
    // Twilio echoes the cleared mark at once: it was not heard.
    assert!(bench.echo(1, 1).is_empty());
    // The history says what was heard, and that the caller cut in.
    let last = bench.machine.history().last().unwrap();
    assert_eq!(
        words(last),
        "Custody has two parts. [interrupted by the caller]"
    );
}

#[test]
fn filler_and_our_own_echo_do_not_interrupt() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Tell me about custody");
    bench.llm(
        1,
        LlmOut::Delta("Let me explain the process to you. ".into()),
    );
    bench.play(1, 0, 320);
    assert!(bench.machine.is_speaking());
    assert!(twilio(&bench.partial("uh-huh")).is_empty());
    assert!(twilio(&bench.partial("uh, okay")).is_empty());
    assert!(twilio(&bench.partial("explain the process")).is_empty());
    assert!(bench.machine.is_speaking());
    assert_eq!(bench.machine.turn(), 1);
    // Committed, a backchannel is kept in the transcript but is neither a clear nor a turn.
    let actions = bench.say("Mm-hmm.");
    assert!(twilio(&actions).is_empty(), "{:?}", twilio(&actions));
    assert_eq!(asked(&actions), None);
    assert!(bench.machine.is_speaking());
    assert_eq!(bench.machine.turn(), 1);
    let summary = bench.machine.summary(bench.now);
    assert!(summary
        .transcript
        .iter()
        .any(|e| e.role == "user" && e.text == "Mm-hmm."));
    // Words that are more than that still take the turn.
    let actions = bench.say("Okay wait, stop.");
    assert!(twilio(&actions).contains(&"clear".to_string()));
    assert!(asked(&actions).is_some());
}

#[test]
fn a_backchannel_is_only_sounds_of_listening() {
    use crate::call::playback::is_backchannel;
    for yes in ["mm-hmm", "Uh-huh.", "okay", "Yeah, right.", "hmm"] {
        assert!(is_backchannel(yes), "{yes}");
    }
    for no in ["", "...", "okay wait", "yes please", "stop", "right now"] {
        assert!(!is_backchannel(no), "{no}");
    }
}

#[test]
fn the_history_keeps_only_the_sentences_heard() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("What should I bring");
    let reply = "Bring your documents please. Also bring the order. And a pen.";
    bench.llm(1, LlmOut::Delta(reply.into()));
    bench.reply_done(1, reply);
    let before = bench.machine.history().len();
    bench.play(1, 0, 320);
    bench.echo(1, 0);
    bench.play(1, 1, 320);
    // The caller speaks before the second sentence's mark comes back.
    let actions = bench.say("Sorry what was that");
    let (turn, history) = asked(&actions).expect("a new turn is asked");
    assert!(turn > 1);
    // The full reply is replaced by what was heard, marked as interrupted; then the new
    // utterance.
    assert_eq!(history.len(), before + 1);
    assert!(history.iter().all(|t| words(t) != reply));
    assert_eq!(
        words(&history[before - 1]),
        "Bring your documents please. [interrupted by the caller]"
    );
    assert_eq!(words(&history[before]), "Sorry what was that");
}

#[test]
fn a_tool_round_says_the_hold_phrase_and_is_recorded() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Look up my case");
    let actions = bench.llm(1, LlmOut::Delta("Let me look that up".into()));
    assert!(spoken(&actions).is_empty());
    let actions = bench.llm(1, LlmOut::ToolsStarted(vec!["case_lookup".into()]));
    // The words before the tool call, then the hold phrase.
    assert_eq!(
        texts(&actions),
        vec![
            "Let me look that up".to_string(),
            Phrase::Hold.text().into()
        ]
    );
    bench.llm(
        1,
        LlmOut::ToolFinished {
            name: "case_lookup".into(),
            ok: true,
            duration_ms: 120,
        },
    );
    let actions = bench.llm(1, LlmOut::Delta("Your hearing is on Monday.".into()));
    assert!(spoken(&actions).is_empty());
    let actions = bench.reply_done(1, "Your hearing is on Monday.");
    assert_eq!(texts(&actions), vec!["Your hearing is on Monday."]);
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.tool_calls.len(), 1);
    assert_eq!(summary.tool_calls[0].tool_name, "case_lookup");
    assert!(summary.tool_calls[0].success);
}

#[test]
fn an_apology_is_said_once_per_turn_and_never_for_a_failed_phrase() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Help me");
    bench.llm(
        1,
        LlmOut::Delta("First part here. Second part here. ".into()),
    );
    let actions = bench.step(Input::Tts {
        turn: 1,
        seq: 0,
        out: TtsOut::Failed(failure()),
    });
    // The failed piece's mark goes out (it plays as nothing), then the apology.
    assert_eq!(twilio(&actions), vec!["mark:1-0"]);
    assert_eq!(texts(&actions), vec![Phrase::Apology.text()]);
    let apology_seq = spoken(&actions)[0].1;
    // A second failure in the turn, and the apology failing itself: no more apologies.
    let again = bench.step(Input::Tts {
        turn: 1,
        seq: 1,
        out: TtsOut::Failed(failure()),
    });
    assert!(spoken(&again).is_empty());
    let phrase_failed = bench.step(Input::Tts {
        turn: 1,
        seq: apology_seq,
        out: TtsOut::Failed(failure()),
    });
    assert!(spoken(&phrase_failed).is_empty());
    // The model failing afterwards does not apologise again either.
    let failed = bench.llm(
        1,
        LlmOut::Done {
            new_turns: vec![],
            usage: Usage::default(),
            error: Some(LlmError::Stream {
                kind: "overloaded_error".into(),
                message: "Overloaded".into(),
            }),
        },
    );
    assert!(spoken(&failed).is_empty());
}

/// A text-to-speech failure, as the worker reports it.
fn failure() -> TtsError {
    TtsError::Closed("the stream closed early".into())
}

/// Speech-to-text given up on, as the worker reports it.
fn stt_lost() -> SttLost {
    SttLost::Provider(SttError::Closed("reset by peer".into()))
}

#[test]
fn a_failed_model_apologises_and_leaves_no_orphan_tool_result() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Check my file");
    let tool_result = Turn {
        speaker: Speaker::User,
        blocks: vec![Block::ToolResult {
            tool_use_id: "t1".into(),
            content: "found".into(),
            is_error: false,
        }],
    };
    let actions = bench.llm(
        1,
        LlmOut::Done {
            new_turns: vec![tool_result],
            usage: Usage::default(),
            error: Some(LlmError::Timeout("the stream stalled".into())),
        },
    );
    assert_eq!(texts(&actions), vec![Phrase::Apology.text()]);
    let last = bench.machine.history().last().unwrap();
    assert_eq!(last.speaker, Speaker::Assistant);
}

#[test]
fn a_reply_that_never_ends_is_closed_with_an_apology() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.at(1_000);
    bench.say("Hello");
    let reply_deadline = bench.machine.rules.reply_deadline;
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.t0 + Duration::from_millis(1_000) + reply_deadline)
    );
    let actions = bench.wait();
    assert_eq!(texts(&actions), vec![Phrase::Apology.text()]);
    // Whatever the worker sends later for the turn is ignored.
    assert!(bench.reply_done(1, "Too late. ").is_empty());
}

#[test]
fn words_without_an_ending_are_spoken_after_the_idle_flush() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Hello");
    bench.at(2_000);
    let actions = bench.llm(1, LlmOut::Delta("Well I think that you".into()));
    assert!(spoken(&actions).is_empty());
    let flush = bench.tuning().sentence_idle_flush;
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.t0 + Duration::from_millis(2_000) + flush)
    );
    let actions = bench.wait();
    assert_eq!(texts(&actions), vec!["Well I think that you"]);
}

#[test]
fn silence_is_reprompted_then_the_call_says_goodbye_and_ends_after_its_mark() {
    // Marks come back here; their deadline must not come before the reprompt's.
    let mut bench = Bench::with(&[("MAX_REPROMPTS", "2"), ("MARK_TIMEOUT_MS", "60000")]);
    bench.greeted();
    let quiet = bench.now;
    let after = bench.tuning().reprompt_after;
    assert_eq!(bench.machine.next_deadline(), Some(quiet + after));
    for reprompt in 1..=2u32 {
        let actions = bench.wait();
        assert_eq!(
            texts(&actions),
            vec![Phrase::Reprompt.text()],
            "reprompt {reprompt}"
        );
        let (turn, seq, _) = spoken(&actions)[0].clone();
        bench.play(turn, seq, 160);
        // No reprompt clock while the reprompt plays.
        assert!(bench.machine.next_deadline().unwrap() > bench.now + after);
        bench.echo(turn, seq);
    }
    let actions = bench.wait();
    assert_eq!(texts(&actions), vec![Phrase::GoodbyeSilence.text()]);
    assert!(ended(&actions).is_none(), "the goodbye plays first");
    let (turn, seq, _) = spoken(&actions)[0].clone();
    bench.play(turn, seq, 160);
    // The caller speaking now changes nothing: the call is closing.
    assert!(asked(&bench.say("wait")).is_none());
    let actions = bench.echo(turn, seq);
    assert_eq!(ended(&actions), Some(&End::CallerSilent));
    assert_eq!(
        End::CallerSilent.status(),
        crate::records::event::CallStatus::Completed
    );
}

#[test]
fn the_caller_speaking_resets_the_reprompts_and_loud_audio_holds_the_clock() {
    let mut bench = Bench::new();
    bench.greeted();
    let after = bench.tuning().reprompt_after;
    let quiet = bench.now;
    // Noise on the line (no words yet) moves the reprompt later.
    let noise = quiet + Duration::from_secs(2);
    bench.step(Input::Voice(noise));
    assert_eq!(
        bench.machine.next_deadline(),
        Some(noise + VOICE_HOLD + after)
    );
    // A partial re-arms the clock from now.
    bench.at(5_000);
    bench.partial("so");
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.t0 + Duration::from_millis(5_000) + after)
    );
}

#[test]
fn the_maximum_duration_says_time_is_up_and_ends_after_the_goodbye() {
    // The piece is still playing at the limit: its mark is not overdue yet.
    let mut bench = Bench::with(&[("MAX_CALL_SECS", "60"), ("MARK_TIMEOUT_MS", "60000")]);
    bench.greeted();
    bench.say("Tell me everything");
    bench.llm(1, LlmOut::Delta("There is a lot to say. ".into()));
    bench.play(1, 0, 320);
    let max = bench.tuning().max_duration;
    bench.at(max.as_millis() as u64);
    let actions = bench.step(Input::Deadline);
    // What played is cut off, and the goodbye follows.
    assert_eq!(twilio(&actions), vec!["clear"]);
    assert_eq!(texts(&actions), vec![Phrase::GoodbyeTimeUp.text()]);
    assert!(ended(&actions).is_none());
    // A barge-in cannot cut the goodbye off.
    let (turn, seq, _) = spoken(&actions)[0].clone();
    bench.play(turn, seq, 320);
    assert!(twilio(&bench.partial("no wait a moment")).is_empty());
    let actions = bench.echo(turn, seq);
    assert_eq!(ended(&actions), Some(&End::MaxDuration));
}

#[test]
fn a_goodbye_that_never_plays_ends_the_call_after_the_grace() {
    let mut bench = Bench::with(&[("MAX_CALL_SECS", "60")]);
    bench.greeted();
    bench.at(60_000);
    let actions = bench.step(Input::Deadline);
    assert_eq!(texts(&actions), vec![Phrase::GoodbyeTimeUp.text()]);
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.now + CLOSING_GRACE)
    );
    let actions = bench.wait();
    assert_eq!(ended(&actions), Some(&End::MaxDuration));
}

#[test]
fn a_failed_write_ends_the_call_unless_the_caller_hung_up_meanwhile() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.at(1_000);
    bench.step(Input::WriteFailed);
    // Nothing more is written.
    bench.say("Hello there");
    assert!(twilio(&bench.play(1, 0, 320)).is_empty());
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.t0 + Duration::from_millis(1_000) + WRITE_FAILURE_GRACE)
    );
    let actions = bench.wait();
    assert_eq!(ended(&actions), Some(&End::TwilioWriteFailed));

    let mut bench = Bench::new();
    bench.greeted();
    bench.step(Input::WriteFailed);
    let actions = bench.step(Input::Twilio(Inbound::Stop));
    assert_eq!(ended(&actions), Some(&End::CallerHungUp));
}

#[test]
fn stale_work_of_an_earlier_turn_is_dropped() {
    let mut bench = Bench::new();
    bench.greeted();
    let (first, _) = asked(&bench.say("First question")).unwrap();
    // The caller goes on before the answer: both are answered together, in a new turn.
    let actions = bench.say("Actually a second question");
    let (second, history) = asked(&actions).unwrap();
    assert!(second > first);
    assert_eq!(words(&history[history.len() - 2]), "First question");
    assert!(bench
        .llm(first, LlmOut::Delta("Answer to the first. ".into()))
        .is_empty());
    assert!(bench.reply_done(first, "Answer to the first.").is_empty());
    assert!(bench.play(first, 0, 320).is_empty());
    let actions = bench.llm(second, LlmOut::Delta("Answer to the second. ".into()));
    assert_eq!(
        spoken(&actions),
        vec![(second, 0, "Answer to the second.".into())]
    );
}

#[test]
fn a_stream_without_start_fails_and_one_with_a_wrong_format_is_refused() {
    let mut bench = Bench::new();
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.t0 + START_TIMEOUT)
    );
    let actions = bench.wait();
    assert_eq!(ended(&actions), Some(&End::NoStart));

    let mut bench = Bench::new();
    let actions = bench.step(Input::Twilio(Inbound::Start(StreamStart {
        call_sid: SID.into(),
        stream_sid: STREAM.into(),
        account_sid: String::new(),
        custom_parameters: vec![],
        media_format_ok: false,
    })));
    assert_eq!(ended(&actions), Some(&End::UnsupportedMedia));
    assert!(!actions.iter().any(|a| matches!(a, Action::Started(_))));
}

#[test]
fn a_silent_line_is_reaped_and_a_key_press_counts_as_the_caller() {
    let mut bench = Bench::with(&[("IDLE_REAP_SECS", "30"), ("REPROMPT_AFTER_MS", "600000")]);
    bench.greeted();
    bench.at(20_000);
    bench.step(Input::Twilio(Inbound::Dtmf { digit: "5".into() }));
    // The key is a turn of its own once the keypad gap has passed; its empty answer ends it.
    let actions = bench.wait();
    let (turn, _) = asked(&actions).expect("the key went to the model");
    bench.reply_done(turn, "");
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.t0 + Duration::from_secs(50))
    );
    let actions = bench.wait();
    assert_eq!(ended(&actions), Some(&End::Idle));
    let summary = bench.machine.summary(bench.now);
    assert_eq!(
        summary.end.status(),
        crate::records::event::CallStatus::ForceReaped
    );
    assert!(summary.transcript.iter().any(|e| e.text == "[keypad: 5]"));
}

#[test]
fn losing_speech_to_text_says_goodbye_during_a_call_and_fails_before_one() {
    let mut bench = Bench::new();
    let actions = bench.step(Input::Stt(SttOut::Lost(stt_lost())));
    assert_eq!(ended(&actions), Some(&End::SpeechToTextUnavailable));

    let mut bench = Bench::new();
    bench.greeted();
    let actions = bench.step(Input::Stt(SttOut::Lost(stt_lost())));
    assert_eq!(texts(&actions), vec![Phrase::GoodbyeTrouble.text()]);
    let (turn, seq, _) = spoken(&actions)[0].clone();
    bench.play(turn, seq, 160);
    assert_eq!(ended(&bench.echo(turn, seq)), Some(&End::SpeechToTextLost));
}

#[test]
fn pings_are_answered_and_shutdown_ends_the_call() {
    let mut bench = Bench::new();
    bench.greeted();
    let actions = bench.step(Input::Ping(b"keepalive".to_vec()));
    assert!(matches!(actions.as_slice(), [Action::Pong(p)] if p == b"keepalive"));
    let actions = bench.step(Input::Shutdown);
    assert_eq!(ended(&actions), Some(&End::ServerShutdown));
    // Nothing is decided after the end.
    assert!(bench.step(Input::Ping(vec![])).is_empty());
    assert_eq!(bench.machine.next_deadline(), None);
}

#[test]
fn speech_that_could_not_be_queued_is_forgotten() {
    let mut bench = Bench::new();
    let actions = bench.start();
    let (turn, seq, _) = spoken(&actions)[0].clone();
    assert!(bench.machine.is_speaking());
    bench.step(Input::SpeechDropped { turn, seq });
    assert!(!bench.machine.is_speaking());
    // The line is quiet, so the reprompt clock runs.
    assert!(bench.machine.next_deadline().unwrap() <= bench.now + bench.tuning().reprompt_after);
}

#[test]
fn a_model_that_cannot_be_asked_apologises() {
    let mut bench = Bench::new();
    bench.greeted();
    let actions = bench.say("Hello");
    let (turn, _) = asked(&actions).unwrap();
    let actions = bench.step(Input::AskFailed {
        turn,
        why: AskError::NotConfigured,
    });
    assert_eq!(texts(&actions), vec![Phrase::Apology.text()]);
}

#[test]
fn the_turn_latency_is_measured_from_the_end_of_speech() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.step(Input::Voice(bench.t0 + Duration::from_millis(1_000)));
    bench.at(1_400);
    bench.say("How long does this take");
    bench.at(1_900);
    bench.llm(1, LlmOut::Delta("It takes a few weeks usually. ".into()));
    bench.at(2_300);
    let actions = bench.play(1, 0, 320);
    let latency = actions
        .iter()
        .find_map(|a| match a {
            Action::Latency(l) => Some(l.clone()),
            _ => None,
        })
        .expect("a latency at the first frame");
    assert_eq!(latency.speech_end_to_commit_ms, Some(400));
    assert_eq!(latency.first_token_ms, Some(900));
    assert_eq!(latency.first_sentence_ms, Some(900));
    assert_eq!(latency.first_frame_ms, Some(1_300));
    assert_eq!(latency.said, "How long does this take");
    assert_eq!(latency.call_sid, SID);
    // The record keeps it too.
    let summary = bench.machine.summary(bench.now);
    assert_eq!(
        summary.turn_latencies,
        [crate::records::event::TurnLatencyRecord {
            turn: 1,
            speech_end_to_commit_ms: Some(400),
            first_token_ms: Some(900),
            first_frame_ms: Some(1_300),
        }]
    );
}

#[test]
fn the_transcript_is_what_was_heard_and_said() {
    let mut bench = Bench::new();
    bench.greeted();
    bench.say("Hello");
    bench.llm(1, LlmOut::Delta("Hi, how can I help? ".into()));
    bench.play(1, 0, 320);
    bench.echo(1, 0);
    let summary = bench.machine.summary(bench.now);
    let roles: Vec<(&str, &str)> = summary
        .transcript
        .iter()
        .map(|e| (e.role.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("assistant", prompts::greeting(Role::Attorney).as_str()),
            ("user", "Hello"),
            ("assistant", "Hi, how can I help?"),
        ]
    );
    assert_eq!(summary.caller_turns, 1);
    assert!(summary.transcript[0]
        .timestamp
        .starts_with("2023-11-14T22:13:20"));
}

#[test]
fn keys_pressed_together_reach_the_model_as_one_turn_after_the_gap() {
    let mut bench = Bench::new();
    bench.greeted();
    let key = |bench: &mut Bench, digit: &str| {
        bench.step(Input::Twilio(Inbound::Dtmf {
            digit: digit.into(),
        }))
    };
    bench.at(10_000);
    assert_eq!(asked(&key(&mut bench, "1")), None);
    // The second key within the gap waits with the first.
    bench.at(11_000);
    assert_eq!(asked(&key(&mut bench, "2")), None);
    // Whatever else wakes the machine meanwhile, the keys go at the gap after the last.
    let mut actions = bench.wait();
    while asked(&actions).is_none() && bench.now < bench.t0 + Duration::from_secs(13) {
        actions = bench.wait();
    }
    assert_eq!(
        bench.now,
        bench.t0 + Duration::from_millis(11_000) + KEYPAD_GAP
    );
    let (turn, history) = asked(&actions).expect("the keys went to the model");
    assert_eq!(
        history.last().map(words).as_deref(),
        Some("(the caller pressed 1 2 on the keypad)")
    );
    // Each key is in the record as it was pressed; the batch is not added again.
    let summary = bench.machine.summary(bench.now);
    let keys: Vec<&str> = summary
        .transcript
        .iter()
        .filter(|e| e.role == "user")
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(keys, ["[keypad: 1]", "[keypad: 2]"]);

    // A key pressed while the answer plays interrupts it, as words would.
    bench.llm(turn, LlmOut::Delta("Thank you for choosing. ".into()));
    bench.play(turn, 0, 1600);
    bench.at(12_600);
    key(&mut bench, "9");
    let mut actions = bench.wait();
    while asked(&actions).is_none() && bench.now < bench.t0 + Duration::from_secs(15) {
        actions = bench.wait();
    }
    assert!(
        twilio(&actions).contains(&"clear".to_string()),
        "{:?}",
        twilio(&actions)
    );
    let (_, history) = asked(&actions).expect("the key went to the model");
    assert_eq!(
        history.last().map(words).as_deref(),
        Some("(the caller pressed 9 on the keypad)")
    );
}

#[test]
fn only_real_keys_are_kept_and_at_most_the_per_call_limit() {
    let mut bench = Bench::new();
    bench.greeted();
    let dtmf = |digit: &str| {
        Input::Twilio(Inbound::Dtmf {
            digit: digit.into(),
        })
    };
    for digit in ["12", "", "x", "*#", "e", "\u{661}"] {
        bench.step(dtmf(digit));
    }
    for digit in ["0", "9", "*", "#", "A", "D"] {
        bench.step(dtmf(digit));
    }
    let summary = bench.machine.summary(bench.now);
    let keys: Vec<&str> = summary
        .transcript
        .iter()
        .filter(|e| e.text.starts_with("[keypad"))
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "[keypad: 0]",
            "[keypad: 9]",
            "[keypad: *]",
            "[keypad: #]",
            "[keypad: A]",
            "[keypad: D]"
        ]
    );
    assert_eq!(summary.dtmf_dropped, 6);

    let mut bench = Bench::new();
    bench.greeted();
    for _ in 0..MAX_DTMF_PER_CALL + 50 {
        bench.step(dtmf("5"));
    }
    let summary = bench.machine.summary(bench.now);
    let kept = summary
        .transcript
        .iter()
        .filter(|e| e.text == "[keypad: 5]")
        .count();
    assert_eq!(kept, MAX_DTMF_PER_CALL as usize);
    assert_eq!(summary.dtmf_dropped, 50);
}

#[test]
fn the_transcript_is_bounded_and_says_where_it_was_cut() {
    let mut bench = Bench::new();
    bench.greeted();
    let long = "word ".repeat(2_000);
    bench.say(&long);
    let summary = bench.machine.summary(bench.now);
    let entry = &summary.transcript.last().expect("the utterance").text;
    assert!(entry.len() <= MAX_ENTRY_BYTES, "{}", entry.len());
    assert!(entry.ends_with(TRUNCATED));

    // Entries until the whole is over its bound: one marker, then nothing more.
    let mut bench = Bench::new();
    bench.greeted();
    let entry = "x".repeat(MAX_ENTRY_BYTES - 100);
    for _ in 0..(MAX_TRANSCRIPT_BYTES / entry.len() + 10) {
        bench.say(&entry);
    }
    let summary = bench.machine.summary(bench.now);
    let bytes: usize = summary.transcript.iter().map(|e| e.text.len()).sum();
    assert!(bytes <= MAX_TRANSCRIPT_BYTES + TRANSCRIPT_TRUNCATED.len());
    let last = summary.transcript.last().expect("entries");
    assert_eq!(last.text, TRANSCRIPT_TRUNCATED);
    assert_eq!(
        summary
            .transcript
            .iter()
            .filter(|e| e.text == TRANSCRIPT_TRUNCATED)
            .count(),
        1
    );
    assert_eq!(truncate_marked("é".repeat(10).as_str(), 15).len(), 14);
}

#[test]
fn a_mark_that_never_comes_back_is_taken_as_played_after_its_deadline() {
    let mut bench = Bench::with(&[("MARK_TIMEOUT_MS", "2000")]);
    bench.start();
    // One second of greeting audio (8,000 bytes) and its mark, sent at once.
    bench.play(0, 0, 8_000);
    assert!(bench.machine.is_speaking());
    let due = bench.t0 + Duration::from_millis(1_000 + 2_000);
    assert_eq!(bench.machine.next_deadline(), Some(due));
    // Nothing happens before it.
    bench.at(2_900);
    bench.step(Input::Deadline);
    assert!(bench.machine.is_speaking());
    let actions = bench.wait();
    assert_eq!(bench.now, due);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(!bench.machine.is_speaking(), "taken as played");
    // The reprompt clock runs from then.
    let after = bench.tuning().reprompt_after;
    assert_eq!(bench.machine.next_deadline(), Some(due + after));
    // A late echo of it changes nothing.
    assert!(bench.echo(0, 0).is_empty());
    let summary = bench.machine.summary(bench.now);
    assert_eq!(summary.marks_overdue, 1);
    assert!(
        summary.transcript.is_empty(),
        "the transcript keeps only what Twilio confirmed"
    );
}

#[test]
fn marks_queue_behind_the_audio_before_them_and_an_echo_clears_the_earlier_ones() {
    let mut bench = Bench::with(&[("MARK_TIMEOUT_MS", "1000")]);
    bench.greeted();
    bench.at(1_000);
    bench.say("Tell me");
    bench.llm(1, LlmOut::Delta("One sentence. Two sentence. ".into()));
    // Two pieces of two seconds each, sent at once: the second plays after the first.
    bench.play(1, 0, 16_000);
    bench.play(1, 1, 16_000);
    assert_eq!(
        bench.machine.next_deadline(),
        Some(bench.now + Duration::from_millis(2_000 + 1_000))
    );
    assert_eq!(
        bench.machine.marks_due.back().map(|(_, due)| *due),
        Some(bench.now + Duration::from_millis(4_000 + 1_000))
    );
    // The second's echo means the first played too: nothing is awaited any more.
    bench.echo(1, 1);
    assert!(bench.machine.marks_due.is_empty());
    assert_eq!(bench.machine.summary(bench.now).marks_overdue, 0);
}

#[test]
fn a_client_that_never_echoes_marks_is_reprompted_then_the_call_ends() {
    let mut bench = Bench::with(&[
        ("MARK_TIMEOUT_MS", "1000"),
        ("REPROMPT_AFTER_MS", "2000"),
        ("MAX_REPROMPTS", "2"),
    ]);
    let actions = bench.start();
    let (turn, seq, _) = spoken(&actions)[0].clone();
    bench.play(turn, seq, 1_600);
    let mut reprompts = 0;
    let mut end = None;
    for _ in 0..20 {
        let actions = bench.wait();
        for (turn, seq, text) in spoken(&actions) {
            if text == Phrase::Reprompt.text() {
                reprompts += 1;
            }
            // The phone gets the audio and the mark, and never answers.
            bench.play(turn, seq, 1_600);
        }
        if let Some(e) = ended(&actions) {
            end = Some(e.clone());
            break;
        }
    }
    assert_eq!(reprompts, 2);
    assert_eq!(end, Some(End::CallerSilent));
    assert!(
        bench.now < bench.t0 + Duration::from_secs(20),
        "ended after {:?}",
        bench.now - bench.t0
    );
}
