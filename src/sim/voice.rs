//! Audio for the simulators: G.711 μ-law encoding and decoding, and a cheap voice — a buzzy
//! vowel-like tone per syllable with pauses between words — whose length follows the text, so
//! simulated speech is audible in the demo's WAV file and takes as long as speech would.

/// 8 kHz: Twilio's and ElevenLabs' `ulaw_8000`.
pub const SAMPLE_RATE: u32 = 8000;

/// How long a simulated character takes to say (about 150 words a minute).
pub const MS_PER_CHAR: u32 = 65;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// One 16-bit sample to μ-law.
pub fn encode_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// One μ-law byte to a 16-bit sample.
pub fn decode_ulaw(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// The μ-law byte for silence.
pub const ULAW_SILENCE: u8 = 0xFF;

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

/// Root-mean-square level of μ-law audio (0 for silence), for voice-activity detection.
pub fn rms(ulaw: &[u8]) -> f32 {
    if ulaw.is_empty() {
        return 0.0;
    }
    let sum: f64 = ulaw
        .iter()
        .map(|b| f64::from(decode_ulaw(*b)).powi(2))
        .sum();
    (sum / ulaw.len() as f64).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_within_its_quantization() {
        assert_eq!(encode_ulaw(0), ULAW_SILENCE);
        assert_eq!(decode_ulaw(ULAW_SILENCE), 0);
        for sample in [-32_000i16, -1000, -100, -1, 1, 100, 1000, 8000, 32_000] {
            let back = decode_ulaw(encode_ulaw(sample));
            let error = (i32::from(back) - i32::from(sample)).abs();
            // μ-law keeps about 4% of the magnitude, never worse than its largest step.
            assert!(
                error <= (i32::from(sample).abs() / 16).max(8),
                "{sample} -> {back}"
            );
            // The smallest magnitudes quantize to zero (0x7F is μ-law's "negative zero").
            if sample.abs() >= 8 {
                assert_eq!(back.signum(), sample.signum(), "{sample}");
            }
        }
        // Every byte decodes and re-encodes to itself (except the two zeros).
        for byte in 0..=255u8 {
            let again = encode_ulaw(decode_ulaw(byte));
            assert!(again == byte || decode_ulaw(byte) == 0, "{byte:#x}");
        }
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
