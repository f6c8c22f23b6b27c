//! The words heard of a piece cut off (`heard.rs`), with made-up times: the history and the
//! transcript keep the whole words played before the `clear`, marked as cut off.

use super::heard::{words_heard, Timed, CUT_OFF};
use super::tests::rules_with;
use super::*;
use crate::providers::anthropic::{Block, Speaker};
use crate::providers::elevenlabs_tts::{AlignedChar, Alignment};

const SID: &str = "CA0123456789abcdef0123456789abcdef";
const SENTENCE: &str = "Under the order you must first file the motion.";
/// Each character of the made-up voice: 65 ms, 520 bytes of audio.
const CHAR_MS: u32 = 65;
const CHAR_BYTES: usize = 520;

/// A started call, greeted, whose caller asked something (turn 1), and a clock.
struct Call {
    machine: Machine<'static>,
    t0: Instant,
}

impl Call {
    /// A call whose barge-ins cut at once (no pause for a resume: `barge.rs`) and whose
    /// commits are the service's (no commit asked: `turn_end.rs`), the model asked.
    fn asked() -> Call {
        let t0 = Instant::now();
        let rules = rules_with(&[("RESUME_AFTER_MS", "0"), ("TURN_END", "vad")]);
        let mut call = Call {
            machine: Machine::new(rules, t0, 1_700_000_000_000, "unknown-1".into()),
            t0,
        };
        call.step(0, Input::Twilio(Inbound::Start(start())));
        call.tts(0, 0, 0, TtsOut::Audio(vec![0xFF; 320]));
        call.tts(0, 0, 0, TtsOut::Done { chars: 0 });
        call.echo(100, 0, 0);
        call.step(100, Input::Stt(SttOut::Committed("What do I do".into())));
        call
    }

    fn step(&mut self, ms: u64, input: Input) -> Vec<Action> {
        self.machine
            .step(self.t0 + Duration::from_millis(ms), input)
    }

    fn tts(&mut self, ms: u64, turn: u64, seq: u32, out: TtsOut) -> Vec<Action> {
        self.step(ms, Input::Tts { turn, seq, out })
    }

    fn echo(&mut self, ms: u64, turn: u64, seq: u32) {
        self.step(
            ms,
            Input::Twilio(Inbound::Mark {
                name: format!("{turn}-{seq}"),
            }),
        );
    }

    /// The model's words for turn 1 (whole sentences, spoken as pieces 0, 1, …).
    fn reply(&mut self, ms: u64, text: &str) {
        self.step(
            ms,
            Input::Llm {
                turn: 1,
                out: LlmOut::Delta(format!("{text} ")),
            },
        );
    }

    /// Characters `from..to` of `text` arrive at `ms` as one chunk: their alignment (a
    /// character every 65 ms), then their audio.
    fn chunk(&mut self, ms: u64, seq: u32, text: &str, from: usize, to: usize, aligned: bool) {
        if aligned {
            self.tts(ms, 1, seq, TtsOut::Alignment(alignment(&text[from..to])));
        }
        self.tts(
            ms,
            1,
            seq,
            TtsOut::Audio(vec![0xFF; (to - from) * CHAR_BYTES]),
        );
    }

    /// The whole of `text` as one piece: its chunks at `ms`, then its end.
    fn piece(&mut self, ms: u64, seq: u32, text: &str, aligned: bool) {
        self.chunk(ms, seq, text, 0, text.len(), aligned);
        self.tts(ms, 1, seq, TtsOut::Done { chars: 0 });
    }

    fn barge_in(&mut self, ms: u64) -> Vec<Action> {
        self.step(
            ms,
            Input::Stt(SttOut::Partial("wait, stop, I have a question".into())),
        )
    }

    /// The assistant's last words in the history.
    fn history_note(&self) -> String {
        let last = self.machine.history().last().expect("a history");
        assert_eq!(last.speaker, Speaker::Assistant);
        last.blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn assistant_transcript(&mut self, ms: u64) -> Vec<String> {
        self.machine
            .summary(self.t0 + Duration::from_millis(ms))
            .transcript
            .into_iter()
            .filter(|e| e.role == "assistant")
            .map(|e| e.text)
            .collect()
    }
}

fn start() -> StreamStart {
    StreamStart {
        call_sid: SID.into(),
        stream_sid: "MZ0123456789abcdef0123456789abcdef".into(),
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        custom_parameters: vec![("role".into(), "attorney".into())],
        media_format_ok: true,
    }
}

/// `text` said a character every 65 ms from the start of its chunk.
fn alignment(text: &str) -> Alignment {
    let mut chars = Vec::new();
    for (i, (at, c)) in text.char_indices().enumerate() {
        let start_ms = i as u32 * CHAR_MS;
        chars.push(AlignedChar {
            end: at + c.len_utf8(),
            start_ms,
            end_ms: start_ms + CHAR_MS,
        });
    }
    Alignment {
        text: text.into(),
        chars,
    }
}

/// The same, as `words_heard` takes it.
fn timed(text: &str) -> Vec<Timed> {
    alignment(text)
        .chars
        .iter()
        .map(|c| Timed {
            end: c.end,
            end_ms: u64::from(c.end_ms),
        })
        .collect()
}

/// When the caller has heard `chars` characters of a piece whose audio went out at `sent_ms`.
fn after_chars(sent_ms: u64, chars: u64) -> u64 {
    sent_ms + chars * u64::from(CHAR_MS)
}

#[test]
fn only_whole_words_played_count_as_heard() {
    let text = "Under the order.";
    let chars = timed(text);
    // "Under" ends at 5 × 65 ms; the space after it is known, so the word is whole.
    assert_eq!(words_heard(text, &chars, 325, false), "Under");
    // Half of "the": only "Under".
    assert_eq!(words_heard(text, &chars, 500, false), "Under");
    assert_eq!(words_heard(text, &chars, 585, false), "Under the");
    assert_eq!(words_heard(text, &chars, 0, false), "");
    // The last word: whole only when the alignment is known to end there.
    assert_eq!(words_heard(text, &chars, 10_000, false), "Under the");
    assert_eq!(words_heard(text, &chars, 10_000, true), "Under the order.");
    // An alignment that stops mid-word (the next chunk's not yet here) keeps the words before.
    let part = "Under th";
    assert_eq!(words_heard(part, &timed(part), 10_000, false), "Under");
    // Offsets that do not fit the text stop the words there (no panic).
    let odd = [Timed { end: 99, end_ms: 0 }];
    assert_eq!(words_heard("Under", &odd, 10_000, true), "");
}

#[test]
fn a_sentence_cut_mid_way_keeps_the_words_played_marked_as_cut_off() {
    let mut call = Call::asked();
    call.reply(200, SENTENCE);
    // The first 20 characters arrive, then the rest: one piece, two chunks.
    call.chunk(300, 0, SENTENCE, 0, 20, true);
    call.chunk(400, 0, SENTENCE, 20, SENTENCE.len(), true);
    call.tts(400, 1, 0, TtsOut::Done { chars: 48 });
    // "Under the order you" is 19 characters: the caller cuts in just after them.
    let actions = call.barge_in(after_chars(300, 19) + 10);
    assert!(actions.iter().any(|a| matches!(a, Action::NewTurn(2))));
    let kept = format!("Under the order you{CUT_OFF}");
    assert_eq!(
        call.history_note(),
        format!("{kept} [interrupted by the caller]")
    );
    let said = call.assistant_transcript(5_000);
    assert_eq!(said.last(), Some(&kept), "{said:?}");
    // The words of the second chunk: the cut came before them.
    assert!(!said.iter().any(|s| s.contains("must")));
}

#[test]
fn a_cut_in_the_middle_of_a_word_keeps_the_words_before_it() {
    let mut call = Call::asked();
    call.reply(200, SENTENCE);
    call.piece(300, 0, SENTENCE, true);
    // Half-way through "order" (characters 10 to 14).
    call.barge_in(after_chars(300, 12));
    assert_eq!(
        call.history_note(),
        format!("Under the{CUT_OFF} [interrupted by the caller]")
    );
}

#[test]
fn the_next_model_request_holds_the_words_heard_after_the_reply_ended() {
    let mut call = Call::asked();
    call.reply(200, SENTENCE);
    call.step(
        250,
        Input::Llm {
            turn: 1,
            out: LlmOut::Done {
                new_turns: vec![Turn::assistant(SENTENCE)],
                usage: Default::default(),
                error: None,
            },
        },
    );
    call.piece(300, 0, SENTENCE, true);
    let cut_at = after_chars(300, 9) + 1;
    let actions = call.step(
        cut_at,
        Input::Stt(SttOut::Committed("wait, stop, I have a question".into())),
    );
    let history = actions
        .iter()
        .find_map(|a| match a {
            Action::Ask { history, .. } => Some(history.clone()),
            _ => None,
        })
        .expect("the model is asked");
    let texts: Vec<String> = history
        .iter()
        .map(|t| {
            t.blocks
                .iter()
                .filter_map(|b| match b {
                    Block::Text(text) => Some(text.as_str()),
                    _ => None,
                })
                .collect()
        })
        .collect();
    // The whole reply is gone; the words heard stand in for it, then the new question.
    assert!(!texts.iter().any(|t| t == SENTENCE));
    assert_eq!(
        texts[texts.len() - 2],
        format!("Under the{CUT_OFF} [interrupted by the caller]")
    );
    assert_eq!(texts[texts.len() - 1], "wait, stop, I have a question");
}

#[test]
fn a_piece_played_to_its_end_is_heard_whole_even_before_its_mark_and_the_next_is_cut() {
    let mut call = Call::asked();
    let first = "Keep a diary.";
    call.reply(200, first);
    call.reply(200, SENTENCE);
    call.piece(300, 0, first, true);
    call.piece(300, 1, SENTENCE, true);
    // The first (13 characters, padded to a whole frame) has played; its mark is not back
    // yet; then 5 more.
    call.barge_in(after_chars(300, 13 + 5) + 30);
    assert_eq!(
        call.history_note(),
        format!("{first} Under{CUT_OFF} [interrupted by the caller]")
    );
    let said = call.assistant_transcript(5_000);
    assert_eq!(
        &said[said.len() - 2..],
        &[first.to_string(), format!("Under{CUT_OFF}")]
    );
}

#[test]
fn a_piece_without_alignment_keeps_nothing_unless_it_played_to_its_end() {
    let mut call = Call::asked();
    let first = "Keep a diary.";
    call.reply(200, first);
    call.reply(200, SENTENCE);
    call.piece(300, 0, first, false);
    call.piece(300, 1, SENTENCE, false);
    call.barge_in(after_chars(300, 13 + 20));
    assert_eq!(
        call.history_note(),
        format!("{first} [interrupted by the caller]")
    );

    // Cut mid-way with no alignment: nothing heard, so no note at all.
    let mut call = Call::asked();
    call.reply(200, SENTENCE);
    call.piece(300, 0, SENTENCE, false);
    let before = call.machine.history().len();
    call.barge_in(after_chars(300, 20));
    assert_eq!(call.machine.history().len(), before);
    assert_eq!(call.machine.history()[before - 1].speaker, Speaker::User);
}

#[test]
fn a_late_mark_moves_the_next_piece_later_on_the_playback_clock() {
    let mut call = Call::asked();
    let first = "Keep a diary.";
    call.reply(200, first);
    call.reply(200, SENTENCE);
    call.piece(300, 0, first, true);
    call.piece(300, 1, SENTENCE, true);
    // By the send times the first ends at 300 + 13 × 65 = 1145 ms; Twilio says it ended at
    // 2000 ms (it started late), so the second starts then, not at 1145.
    call.echo(2_000, 1, 0);
    call.barge_in(after_chars(2_000, 12));
    assert_eq!(
        call.history_note(),
        format!("{first} Under the{CUT_OFF} [interrupted by the caller]")
    );
}

#[test]
fn audio_that_arrives_late_plays_from_when_it_was_sent() {
    let mut call = Call::asked();
    call.reply(200, SENTENCE);
    // "Under " (6 characters) plays from 300 to 690 ms; the rest arrives at 1000 ms.
    call.chunk(300, 0, SENTENCE, 0, 6, true);
    call.chunk(1_000, 0, SENTENCE, 6, SENTENCE.len(), true);
    // By 1000 + 4 × 65 the caller heard "Under the " — not the 6 + 4 characters by the
    // first chunk's clock plus the gap.
    call.barge_in(after_chars(1_000, 4) + 1);
    assert_eq!(
        call.history_note(),
        format!("Under the{CUT_OFF} [interrupted by the caller]")
    );
}

#[test]
fn alignment_of_a_piece_no_longer_playing_is_ignored() {
    let mut call = Call::asked();
    call.reply(200, SENTENCE);
    call.piece(300, 0, SENTENCE, true);
    call.barge_in(after_chars(300, 9) + 1);
    // The old turn's late chunk changes nothing, and the next cut of turn 2 starts afresh.
    assert!(call
        .tts(2_000, 1, 0, TtsOut::Alignment(alignment(SENTENCE)))
        .is_empty());
    assert_eq!(
        call.history_note(),
        format!("Under the{CUT_OFF} [interrupted by the caller]")
    );
}

#[test]
fn an_early_mark_moves_the_next_piece_earlier_on_the_playback_clock() {
    let mut call = Call::asked();
    let first = "Keep a diary.";
    call.reply(200, first);
    call.reply(200, SENTENCE);
    call.piece(300, 0, first, true);
    call.piece(300, 1, SENTENCE, true);
    // By the send times the second starts at about 1160 ms; Twilio says the first ended at
    // 500 ms (a phone that played it faster), so the second has played from then.
    call.echo(500, 1, 0);
    call.barge_in(after_chars(500, 12));
    assert_eq!(
        call.history_note(),
        format!("{first} Under the{CUT_OFF} [interrupted by the caller]")
    );
}
