//! G.711 μ-law at 8 kHz, the one audio format of the service (Twilio's `audio/x-mulaw` and
//! ElevenLabs' `ulaw_8000`): one sample each way, silence, and the level of a buffer (the call
//! uses it to tell speech from silence in the caller's audio; the simulators and the WAV
//! writer use the rest).

/// 8 kHz: Twilio's and ElevenLabs' `ulaw_8000`.
pub const SAMPLE_RATE: u32 = 8000;

/// Bytes of one 20 ms frame, the unit Twilio streams in.
pub const FRAME_BYTES: usize = 160;

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

/// Caller audio louder than this (RMS of the decoded samples) counts as speech.
pub const VOICE_RMS: f32 = 500.0;

/// Whether a frame of μ-law audio is loud enough to be someone speaking (or a noise).
pub fn is_voice(ulaw: &[u8]) -> bool {
    rms(ulaw) > VOICE_RMS
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
}
