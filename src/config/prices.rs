//! The prices section: provider prices for cost estimates, in USD, overridable as they change.

use super::read::{Float, Reader, Report};

/// Provider prices for cost estimates, in USD (env-overridable as prices change).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub claude_input_per_mtok: f64,
    pub claude_output_per_mtok: f64,
    pub claude_cache_write_per_mtok: f64,
    pub claude_cache_read_per_mtok: f64,
    pub tts_per_1k_chars: f64,
    pub stt_per_min: f64,
}

/// The prices the estimates use unless the environment says otherwise (the original's: Claude
/// Sonnet and ElevenLabs Flash v2.5 list prices).
pub const DEFAULT_PRICES: Prices = Prices {
    claude_input_per_mtok: 3.00,
    claude_output_per_mtok: 15.00,
    claude_cache_write_per_mtok: 3.75,
    claude_cache_read_per_mtok: 0.30,
    tts_per_1k_chars: 0.10,
    stt_per_min: 0.008,
};

/// A price per million tokens: from 0 to 1000 USD.
const fn per_mtok(name: &'static str, default: f64) -> Float {
    Float {
        name,
        default,
        min: 0.0,
        max: 1000.0,
    }
}

/// A speech price (per 1,000 characters, per minute): from 0 to 100 USD.
const fn speech(name: &'static str, default: f64) -> Float {
    Float {
        name,
        default,
        min: 0.0,
        max: 100.0,
    }
}

const D: Prices = DEFAULT_PRICES;
const CLAUDE_INPUT: Float = per_mtok("CLAUDE_INPUT_PRICE_PER_MTOK", D.claude_input_per_mtok);
const CLAUDE_OUTPUT: Float = per_mtok("CLAUDE_OUTPUT_PRICE_PER_MTOK", D.claude_output_per_mtok);
const CLAUDE_CACHE_WRITE: Float = per_mtok(
    "CLAUDE_CACHE_WRITE_PRICE_PER_MTOK",
    D.claude_cache_write_per_mtok,
);
const CLAUDE_CACHE_READ: Float = per_mtok(
    "CLAUDE_CACHE_READ_PRICE_PER_MTOK",
    D.claude_cache_read_per_mtok,
);
const TTS: Float = speech("ELEVENLABS_TTS_PRICE_PER_1K_CHARS", D.tts_per_1k_chars);
const STT: Float = speech("ELEVENLABS_STT_PRICE_PER_MIN", D.stt_per_min);

impl Prices {
    pub(super) fn read(r: &mut Reader<'_>) -> Prices {
        Prices {
            claude_input_per_mtok: r.float(&CLAUDE_INPUT),
            claude_output_per_mtok: r.float(&CLAUDE_OUTPUT),
            claude_cache_write_per_mtok: r.float(&CLAUDE_CACHE_WRITE),
            claude_cache_read_per_mtok: r.float(&CLAUDE_CACHE_READ),
            tts_per_1k_chars: r.float(&TTS),
            stt_per_min: r.float(&STT),
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.value(CLAUDE_INPUT.name, self.claude_input_per_mtok);
        out.value(CLAUDE_OUTPUT.name, self.claude_output_per_mtok);
        out.value(CLAUDE_CACHE_WRITE.name, self.claude_cache_write_per_mtok);
        out.value(CLAUDE_CACHE_READ.name, self.claude_cache_read_per_mtok);
        out.value(TTS.name, self.tts_per_1k_chars);
        out.value(STT.name, self.stt_per_min);
    }
}
