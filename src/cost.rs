//! What a call costs: provider usage (Claude tokens including cache writes and reads, TTS
//! characters, STT seconds) priced with the configured rates. Pure arithmetic.

use crate::config::Prices;
use crate::records::event::CostSummary;

/// The estimated USD for this usage, rounded to 6 decimals as the original did. Characters
/// played from pre-rendered audio (`tts_chars_cached`) cost nothing.
pub fn estimate_usd(usage: &CostSummary, prices: &Prices) -> f64 {
    let usd = usage.claude_input_tokens as f64 / 1e6 * prices.claude_input_per_mtok
        + usage.claude_output_tokens as f64 / 1e6 * prices.claude_output_per_mtok
        + usage.claude_cache_creation_tokens as f64 / 1e6 * prices.claude_cache_write_per_mtok
        + usage.claude_cache_read_tokens as f64 / 1e6 * prices.claude_cache_read_per_mtok
        + usage.tts_chars as f64 / 1000.0 * prices.tts_per_1k_chars
        + usage.stt_secs / 60.0 * prices.stt_per_min;
    round6(usd)
}

pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICES: Prices = crate::config::DEFAULT_PRICES;

    #[test]
    fn the_readme_example_call() {
        // The original README's cost.call.summary example, priced at the default rates.
        let usage = CostSummary {
            claude_input_tokens: 1250,
            claude_output_tokens: 850,
            claude_cache_creation_tokens: 1875,
            claude_cache_read_tokens: 18_500,
            tts_chars: 2200,
            tts_chars_cached: 195,
            stt_secs: 142.4,
            estimated_cost_usd: 0.0,
        };
        // 0.00375 + 0.01275 + 0.00703125 + 0.00555 + 0.22 + 0.018986667
        assert_eq!(estimate_usd(&usage, &PRICES), 0.268068);
    }

    #[test]
    fn each_price_applies_to_its_own_meter() {
        let one = |f: fn(&mut CostSummary)| {
            let mut usage = CostSummary::default();
            f(&mut usage);
            estimate_usd(&usage, &PRICES)
        };
        assert_eq!(one(|u| u.claude_input_tokens = 1_000_000), 3.0);
        assert_eq!(one(|u| u.claude_output_tokens = 1_000_000), 15.0);
        assert_eq!(one(|u| u.claude_cache_creation_tokens = 1_000_000), 3.75);
        assert_eq!(one(|u| u.claude_cache_read_tokens = 1_000_000), 0.3);
        assert_eq!(one(|u| u.tts_chars = 1000), 0.1);
        assert_eq!(one(|u| u.tts_chars_cached = 1000), 0.0);
        assert_eq!(one(|u| u.stt_secs = 60.0), 0.008);
    }
}
