//! Per-hop times taken at the simulators' sockets and in the simulated callers, which run in one
//! process and share one clock (`Instant`): the bench's figures for what the server adds
//! between a message arriving on one of its sockets and the matching message leaving on
//! another.
//!
//! Each hop is a set of pairs matched by a key that both ends can compute from what they see
//! on the wire (a hash of a payload or a text). The rule that keeps a match sound when many
//! calls run at once: a key started twice (two calls sent the same bytes) is ambiguous and
//! never counted; only the first end of a key counts; an end without a start, or before it,
//! is ignored. Memory is bounded: past [`MAX_KEYS`] keys a hop takes no new ones.
//!
//! - `twilio_to_stt`: a caller's media frame sent (every [`FRAME_SAMPLE`]th speech frame, by
//!   its payload's hash) → the same base64 payload received in an STT `input_audio_chunk`.
//! - `transcript_to_llm`: the STT `committed_transcript` sent → the Anthropic request whose
//!   last user message is that text arriving (its connection accepted, before any simulated
//!   round trip).
//! - `sentence_to_tts`: the Anthropic delta completing the reply's first sentence (cut as the
//!   server cuts, [`crate::speech::sentences::Sentences`]) sent → that sentence arriving on a
//!   TTS stream.
//! - `tts_to_twilio`: a TTS piece's first audio message sent → a caller receiving the media
//!   frame that is that audio's first 160 bytes (the server frames each piece from its start).
//! - `partial_to_clear`: the STT sim's first `partial_transcript` of an utterance sent, keyed
//!   by the payload of the utterance's first loud chunk (RMS above
//!   [`super::elevenlabs_stt::SPEECH_RMS`]) → the caller that spoke it receiving `clear`.
//!
//! Keys are unique only if what is sent is: the bench gives each caller its own pitch, each
//! utterance its own words, numbers the model's replies ([`super::anthropic::AnthropicSim::number_replies`])
//! and tags each TTS piece's first samples ([`super::elevenlabs_tts::TtsSim::tag_audio`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys a hop keeps at most (about 40 bytes each).
pub const MAX_KEYS: usize = 200_000;
/// The callers time one speech frame in this many (by payload hash, so both ends agree).
pub const FRAME_SAMPLE: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hop {
    TwilioToStt,
    TranscriptToLlm,
    SentenceToTts,
    TtsToTwilio,
    PartialToClear,
}

impl Hop {
    pub const ALL: [Hop; 5] = [
        Hop::TwilioToStt,
        Hop::TranscriptToLlm,
        Hop::SentenceToTts,
        Hop::TtsToTwilio,
        Hop::PartialToClear,
    ];

    /// The name in the bench's JSON (`hops_ms`).
    pub fn name(self) -> &'static str {
        match self {
            Hop::TwilioToStt => "twilio_to_stt",
            Hop::TranscriptToLlm => "transcript_to_llm",
            Hop::SentenceToTts => "sentence_to_tts",
            Hop::TtsToTwilio => "tts_to_twilio",
            Hop::PartialToClear => "partial_to_clear",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A stable (within this process) 64-bit key of what both ends see.
pub fn key_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Whether a caller's frame with this key is one of the sampled ones.
pub fn sampled(key: u64) -> bool {
    key.is_multiple_of(FRAME_SAMPLE)
}

#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    start: Option<Instant>,
    end: Option<Instant>,
    ambiguous: bool,
}

/// The pairs of every hop; shared (in an `Arc`) by the simulators and callers of one run.
#[derive(Debug, Default)]
pub struct HopClock {
    hops: [Mutex<HashMap<u64, Pair>>; 5],
}

/// What a [`HopClock`] measured: each hop's matched durations, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hops {
    pub by_hop: Vec<(Hop, Vec<Duration>)>,
}

impl Hops {
    pub fn get(&self, hop: Hop) -> &[Duration] {
        self.by_hop
            .iter()
            .find(|(h, _)| *h == hop)
            .map_or(&[], |(_, d)| d.as_slice())
    }
}

impl HopClock {
    pub fn new() -> HopClock {
        HopClock::default()
    }

    fn map(&self, hop: Hop) -> std::sync::MutexGuard<'_, HashMap<u64, Pair>> {
        self.hops[hop.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every pair (a new run on the same simulators).
    pub fn clear(&self) {
        for hop in Hop::ALL {
            self.map(hop).clear();
        }
    }

    /// The hop's first end saw `key` at `at`.
    pub fn start(&self, hop: Hop, key: u64, at: Instant) {
        let mut map = self.map(hop);
        if let Some(pair) = map.get_mut(&key) {
            if pair.start.is_some() {
                pair.ambiguous = true;
            } else {
                pair.start = Some(at);
            }
            return;
        }
        if map.len() < MAX_KEYS {
            map.insert(
                key,
                Pair {
                    start: Some(at),
                    ..Pair::default()
                },
            );
        }
    }

    /// The hop's second end saw `key` at `at` (only the first time counts; a key never
    /// started is ignored).
    pub fn end(&self, hop: Hop, key: u64, at: Instant) {
        if let Some(pair) = self.map(hop).get_mut(&key) {
            pair.end.get_or_insert(at);
        }
    }

    /// Each hop's matched, unambiguous durations, sorted.
    pub fn hops(&self) -> Hops {
        Hops {
            by_hop: Hop::ALL
                .iter()
                .map(|&hop| {
                    let mut durations: Vec<Duration> = self
                        .map(hop)
                        .values()
                        .filter(|p| !p.ambiguous)
                        .filter_map(|p| match (p.start, p.end) {
                            (Some(s), Some(e)) if e >= s => Some(e - s),
                            _ => None,
                        })
                        .collect();
                    durations.sort_unstable();
                    (hop, durations)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_match_by_key_and_ambiguous_or_reversed_ones_do_not_count() {
        let clock = HopClock::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A clean pair; only its first end counts.
        clock.start(Hop::TwilioToStt, 1, t0);
        clock.end(Hop::TwilioToStt, 1, t0 + ms(3));
        clock.end(Hop::TwilioToStt, 1, t0 + ms(9));
        // Two calls sent the same bytes: ambiguous.
        clock.start(Hop::TwilioToStt, 2, t0);
        clock.start(Hop::TwilioToStt, 2, t0 + ms(1));
        clock.end(Hop::TwilioToStt, 2, t0 + ms(2));
        // An end never started, and a start never ended.
        clock.end(Hop::TwilioToStt, 3, t0);
        clock.start(Hop::TwilioToStt, 4, t0);
        // Another hop keeps its own keys.
        clock.start(Hop::TtsToTwilio, 1, t0 + ms(1));
        clock.end(Hop::TtsToTwilio, 1, t0 + ms(6));
        // An end before its start (a false match) is dropped.
        clock.start(Hop::SentenceToTts, 5, t0 + ms(5));
        clock.end(Hop::SentenceToTts, 5, t0);
        let hops = clock.hops();
        assert_eq!(hops.get(Hop::TwilioToStt), &[ms(3)]);
        assert_eq!(hops.get(Hop::TtsToTwilio), &[ms(5)]);
        assert!(hops.get(Hop::SentenceToTts).is_empty());
        assert!(hops.get(Hop::PartialToClear).is_empty());
        assert_eq!(hops.by_hop.len(), 5);
    }

    #[test]
    fn keys_are_stable_and_sampling_agrees_on_both_ends() {
        assert_eq!(key_of("abc"), key_of(&"abc".to_string()));
        assert_ne!(key_of("abc"), key_of("abd"));
        let sampled_count = (0u64..10_000)
            .filter(|i| sampled(key_of(&i.to_string())))
            .count();
        assert!(
            sampled_count > 500 && sampled_count < 1_500,
            "{sampled_count}"
        );
    }
}
