//! The words a caller heard of a piece cut off mid-way, so that a barge-in four seconds into a
//! long sentence keeps those four seconds in the history instead of nothing.
//!
//! The rule:
//! - Twilio plays what it is sent in order and in real time. Each piece's audio is placed on
//!   that clock as it is sent: a send plays from when the audio before it ends (or from when
//!   it is sent, if that is later). When a mark comes back, the piece before it has just ended:
//!   the audio after it is placed again from that moment (an echo reaches us a little after
//!   the audio ended, so this errs towards fewer words).
//! - The text-to-speech service sends an alignment with each chunk of audio: the characters it
//!   speaks and when each starts and ends within the chunk. Placed at the chunk's offset in the
//!   piece's audio, they tell which characters had finished playing when `clear` went out.
//! - The words kept are the whole words among them: a word counts once its last character has
//!   played and the character after it is known to be a space (or the piece's text ends there).
//!   They are kept with [`CUT_OFF`] after them, in the history and the transcript alike.
//! - Pieces cut off are looked at in order: one that had played to its end (its mark was not
//!   yet back) is kept whole, as if its mark had come; the first that had not ends the search.
//! - A piece with no alignment (a pre-rendered clip, or a service that sent none) keeps nothing
//!   unless it had played to its end: guessing words from the share of audio played could tell
//!   the model the caller heard what they did not.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Machine;
use crate::call::playback::{Kind, Piece};
use crate::providers::elevenlabs_tts::Alignment;

/// What follows the words heard of a piece cut off: they stop mid-sentence on purpose.
pub const CUT_OFF: &str = " — [cut off]";
/// What the history says of a greeting the caller cut off before hearing a word of it.
pub const GREETING_UNHEARD: &str = "[the greeting was cut off before the caller heard it]";

/// Pieces whose audio is followed at once: those sent and not yet heard (a turn's sentences
/// and phrases). Past this the oldest is forgotten (its words are then not kept if cut).
const MAX_PIECES: usize = 32;
/// Characters of alignment kept per piece (a sentence is a few hundred); past this the rest of
/// the piece has none.
const MAX_CHARS: usize = 4096;
/// Sends placed on the clock per piece (one per chunk of audio, a few a second); past this the
/// rest of the piece is not placed, so fewer of its words count as heard.
const MAX_SENDS: usize = 1024;

/// Where each piece's audio is on Twilio's playback clock, and what its alignment says.
#[derive(Debug, Default)]
pub(super) struct Spoken {
    pieces: VecDeque<PieceAudio>,
    /// When the audio sent so far ends playing, as far as sends and echoes tell.
    plays_until: Option<Instant>,
}

#[derive(Debug)]
struct PieceAudio {
    turn: u64,
    seq: u32,
    /// Audio received from text-to-speech: where the next alignment's chunk starts.
    received_bytes: usize,
    sent_bytes: usize,
    sends: Vec<Send>,
    /// The aligned characters, joined, and for each its end in `text` and in the piece's audio.
    text: String,
    chars: Vec<Timed>,
    /// Alignment past [`MAX_CHARS`] arrived: the rest of the piece has none.
    full: bool,
    /// All of its audio has arrived.
    done: bool,
}

/// Audio of a piece sent to Twilio in one go.
#[derive(Debug, Clone, Copy)]
struct Send {
    /// Its offset in the piece's audio, in bytes.
    offset: usize,
    bytes: usize,
    sent_at: Instant,
    /// When it starts playing, as far as we know.
    plays_from: Instant,
}

/// One aligned character: the byte offset after it in the piece's aligned text, and when it
/// ends in the piece's audio (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timed {
    pub end: usize,
    pub end_ms: u64,
}

/// What the caller heard of a piece cut off.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Whole,
    Part(String),
    Nothing,
}

impl Spoken {
    fn piece(&mut self, turn: u64, seq: u32) -> &mut PieceAudio {
        let found = self
            .pieces
            .iter()
            .position(|p| p.turn == turn && p.seq == seq);
        let index = match found {
            Some(index) => index,
            None => {
                if self.pieces.len() >= MAX_PIECES {
                    self.pieces.pop_front();
                }
                self.pieces.push_back(PieceAudio {
                    turn,
                    seq,
                    received_bytes: 0,
                    sent_bytes: 0,
                    sends: Vec::new(),
                    text: String::new(),
                    chars: Vec::new(),
                    full: false,
                    done: false,
                });
                self.pieces.len() - 1
            }
        };
        &mut self.pieces[index]
    }

    /// The alignment of the piece's next chunk of audio (it comes just before the audio).
    pub(super) fn aligned(&mut self, turn: u64, seq: u32, alignment: Alignment) {
        let piece = self.piece(turn, seq);
        if piece.full || piece.chars.len() + alignment.chars.len() > MAX_CHARS {
            piece.full = true;
            return;
        }
        // 8 kHz μ-law: 8 bytes a millisecond.
        let offset_ms = (piece.received_bytes / 8) as u64;
        let before = piece.text.len();
        piece.text.push_str(&alignment.text);
        piece.chars.extend(alignment.chars.iter().map(|c| Timed {
            end: before + c.end.min(alignment.text.len()),
            end_ms: offset_ms + u64::from(c.end_ms),
        }));
    }

    /// `received` bytes of the piece's audio arrived, and `sent` bytes of it went to Twilio at
    /// `now` (whole frames: some may wait for the next audio).
    pub(super) fn audio(
        &mut self,
        now: Instant,
        turn: u64,
        seq: u32,
        received: usize,
        sent: usize,
    ) {
        let from = self.plays_until.map_or(now, |until| until.max(now));
        let piece = self.piece(turn, seq);
        piece.received_bytes += received;
        if sent == 0 || piece.sends.len() >= MAX_SENDS {
            return;
        }
        piece.sends.push(Send {
            offset: piece.sent_bytes,
            bytes: sent,
            sent_at: now,
            plays_from: from,
        });
        piece.sent_bytes += sent;
        self.plays_until = Some(from + audio_duration(sent));
    }

    /// All of the piece's audio has arrived.
    pub(super) fn done(&mut self, turn: u64, seq: u32) {
        self.piece(turn, seq).done = true;
    }

    /// Twilio echoed the piece's mark at `now`: it and those before it have played, so what
    /// follows plays from now (or from when it was sent, if later), each send after the last.
    pub(super) fn played_through(&mut self, now: Instant, turn: u64, seq: u32) {
        if let Some(index) = self
            .pieces
            .iter()
            .position(|p| p.turn == turn && p.seq == seq)
        {
            self.pieces.drain(..=index);
        }
        let mut until = now;
        for piece in &mut self.pieces {
            for send in &mut piece.sends {
                send.plays_from = send.sent_at.max(until);
                until = send.plays_from + audio_duration(send.bytes);
            }
        }
        self.plays_until = Some(until);
    }

    /// Forgets everything (a `clear`: nothing sent before it plays any more).
    pub(super) fn clear(&mut self) {
        self.pieces.clear();
        self.plays_until = None;
    }

    /// What of `piece` the caller heard by `now`.
    fn heard(&self, now: Instant, piece: &Piece) -> Heard {
        let Some(audio) = self
            .pieces
            .iter()
            .find(|p| p.turn == piece.turn && p.seq == piece.seq)
        else {
            return Heard::Nothing;
        };
        let played = audio.played_bytes(now);
        if audio.done && audio.sent_bytes > 0 && played >= audio.sent_bytes {
            return Heard::Whole;
        }
        let words = words_heard(&audio.text, &audio.chars, (played / 8) as u64, audio.done);
        if words.is_empty() {
            Heard::Nothing
        } else if audio.done && !audio.full && words == audio.text.trim() {
            // Every word had played; what was left was silence.
            Heard::Whole
        } else {
            Heard::Part(words.to_string())
        }
    }
}

impl PieceAudio {
    /// Bytes of the piece's audio played by `now`.
    fn played_bytes(&self, now: Instant) -> usize {
        let mut played = 0;
        for send in &self.sends {
            let Some(elapsed) = now.checked_duration_since(send.plays_from) else {
                break;
            };
            played = send.offset + (elapsed.as_micros() / 125).min(send.bytes as u128) as usize;
        }
        played
    }
}

/// How long `bytes` of 8 kHz μ-law take to play.
fn audio_duration(bytes: usize) -> Duration {
    Duration::from_micros(bytes as u64 * 125)
}

/// The whole words of `text` heard once `played_ms` of its audio had played: a word counts
/// when its last character had ended and the character after it is a space (or, when the
/// alignment is `complete`, the text ends there). `chars[i]` ends at byte `chars[i].end` of
/// `text`, at `chars[i].end_ms`.
pub(super) fn words_heard<'t>(
    text: &'t str,
    chars: &[Timed],
    played_ms: u64,
    complete: bool,
) -> &'t str {
    let mut keep = 0;
    let mut start = 0;
    for (i, c) in chars.iter().enumerate() {
        if c.end_ms > played_ms {
            break;
        }
        let end = c.end;
        let Some(this) = text.get(start..end) else {
            break;
        };
        let word_ends = match chars.get(i + 1) {
            Some(next) => text.get(end..next.end).is_some_and(|n| n.trim().is_empty()),
            None => complete,
        };
        if this.trim().is_empty() || word_ends {
            keep = end;
        }
        start = end;
    }
    text[..keep].trim()
}

impl Machine<'_> {
    /// `clear` cut off `cut` at `now`: the words heard of it go into the transcript and, for
    /// the model's sentences, into what the history keeps of the turn (see the module docs).
    /// Returns how many of its first pieces were heard whole (a resume starts after them).
    pub(super) fn keep_words_heard(&mut self, now: Instant, cut: &[Piece]) -> usize {
        let mut whole_pieces = 0;
        for piece in cut {
            let (text, whole) = match self.spoken.heard(now, piece) {
                Heard::Whole => (piece.text.clone(), true),
                Heard::Part(words) => (format!("{words}{CUT_OFF}"), false),
                Heard::Nothing => {
                    if piece.kind == Kind::Greeting {
                        self.greeting_cut = Some(GREETING_UNHEARD.to_string());
                    }
                    break;
                }
            };
            self.note_transcript(now, "assistant", &text);
            match piece.kind {
                Kind::Reply => self.heard.push((piece.turn, text)),
                Kind::Greeting if !whole => self.greeting_cut = Some(text),
                _ => {}
            }
            if !whole {
                break;
            }
            whole_pieces += 1;
        }
        self.spoken.clear();
        whole_pieces
    }
}
