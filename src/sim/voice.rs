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
            phase += f0 / SAMPLE_RATE as f32;
            let w = std::f32::consts::TAU * phase;
            // The fundamental plus two formant-ish harmonics: vowel-like rather than a beep.
            let value = w.sin() + 0.5 * (3.0 * w).sin() + 0.25 * (7.0 * w).sin();
            out.push(encode_ulaw((value * envelope * 6000.0) as i16));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
