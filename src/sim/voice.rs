//! Audio for the simulators: a cheap voice — a buzzy
//! vowel-like tone per syllable with pauses between words — whose length follows the text, so
//! simulated speech is audible in the demo's WAV file and takes as long as speech would.

// The μ-law codec lives with the media code; re-exported for the simulators and tests.
pub use crate::speech::ulaw::{decode_ulaw, encode_ulaw, rms, SAMPLE_RATE, ULAW_SILENCE};

/// How long a simulated character takes to say (about 150 words a minute).
pub const MS_PER_CHAR: u32 = 65;

/// Speech-like μ-law audio for `text`: [`MS_PER_CHAR`] per character, voiced for letters and
/// quiet for spaces and punctuation. `pitch_hz` tells voices apart.
pub fn speak(text: &str, pitch_hz: f32) -> Vec<u8> {
    let per_char = (SAMPLE_RATE * MS_PER_CHAR / 1000) as usize;
    let mut out = Vec::with_capacity(text.chars().count() * per_char);
    let mut phase = 0.0f32;
    for (idx, c) in text.chars().enumerate() {
        if !c.is_alphanumeric() {
            out.extend(std::iter::repeat_n(ULAW_SILENCE, per_char));
            continue;
        }
        // A little melody so it does not drone: the pitch drifts with the character.
        let f0 = pitch_hz * (1.0 + 0.08 * ((idx % 5) as f32 - 2.0) / 2.0);
        for n in 0..per_char {
            let t = n as f32 / per_char as f32;
            // Attack and release within each character, so syllables are heard.
            let envelope = (t * 8.0).min(1.0) * ((1.0 - t) * 6.0).min(1.0);
            // The phase in cycles, kept in [0, 1).
            phase = (phase + f0 / SAMPLE_RATE as f32).fract();
            // The fundamental plus two formant-ish harmonics: vowel-like rather than a beep.
            let value = sine(phase) + 0.5 * sine(3.0 * phase) + 0.25 * sine(7.0 * phase);
            out.push(encode_ulaw((value * envelope * 6000.0) as i16));
        }
    }
    out
}

/// Points per cycle of the sine table.
const SINE_POINTS: usize = 1024;

/// `sin(2π·cycles)` from a table: the load generator synthesizes speech for every reply, and
/// a table is several times cheaper than `sin`, with an error far below μ-law's steps.
fn sine(cycles: f32) -> f32 {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..SINE_POINTS)
            .map(|i| (std::f32::consts::TAU * i as f32 / SINE_POINTS as f32).sin())
            .collect()
    });
    let index = (cycles.fract() * SINE_POINTS as f32) as usize;
    table[index.min(SINE_POINTS - 1)]
}

/// Phrases [`speak_cached`] keeps (about 20 KiB each); past this the cache starts over. The
/// bench's callers speak in 200 voices, a few phrases each.
const CACHED_PHRASES: usize = 1024;

/// [`speak`], remembered: the same text in the same voice is synthesized once per process.
/// The load generator says the same few phrases thousands of times, and synthesis (a few
/// `sin` per sample) was a tenth of its CPU.
pub fn speak_cached(text: &str, pitch_hz: f32) -> std::sync::Arc<[u8]> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Cache = Mutex<HashMap<(String, u32), Arc<[u8]>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (text.to_string(), pitch_hz.to_bits());
    if let Some(audio) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return audio.clone();
    }
    // Synthesized outside the lock: other threads are not held up by it.
    let audio: Arc<[u8]> = speak(text, pitch_hz).into();
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= CACHED_PHRASES {
        cache.clear();
    }
    cache.insert(key, audio.clone());
    audio
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_speech_is_the_same_speech() {
        let once = speak_cached("Cached words", 150.0);
        let twice = speak_cached("Cached words", 150.0);
        assert!(std::sync::Arc::ptr_eq(&once, &twice), "synthesized once");
        assert_eq!(&once[..], &speak("Cached words", 150.0)[..]);
        assert_ne!(
            &speak_cached("Cached words", 151.0)[..],
            &once[..],
            "per voice"
        );
    }

    #[test]
    fn speech_length_follows_the_text_and_is_audible() {
        let short = speak("Hello.", 150.0);
        let long = speak("Hello, I am here with you.", 150.0);
        assert_eq!(short.len(), 6 * (SAMPLE_RATE * MS_PER_CHAR / 1000) as usize);
        assert!(long.len() > 4 * short.len());
        assert!(rms(&long) > 1000.0, "audible: {}", rms(&long));
        assert_eq!(rms(&speak("   ", 150.0)), 0.0);
    }
}
