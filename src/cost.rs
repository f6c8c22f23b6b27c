//! What a call costs: provider usage (Claude tokens including cache writes and reads, TTS
//! characters, STT seconds) priced with the configured rates. Pure arithmetic, and saturating:
//! counts come from Anthropic and from the records file, and a plain `+` of a huge one panics
//! in a debug build and wraps to a small number in a release one.

use std::ops::AddAssign;

use crate::config::Prices;
use crate::providers::anthropic::stream::Usage;

/// What a call cost, with the raw usage behind the estimate (the original's fields), as the
/// call's record keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CostSummary {
    pub claude_input_tokens: u64,
    pub claude_output_tokens: u64,
    pub claude_cache_creation_tokens: u64,
    pub claude_cache_read_tokens: u64,
    pub tts_chars: u64,
    pub tts_chars_cached: u64,
    pub stt_secs: f64,
    pub estimated_cost_usd: f64,
}

/// What each component of `cost` came to at `prices`, in USD, named as `/metrics` names them:
/// `claude_input`, `claude_output`, `claude_cache_write`, `claude_cache_read`, `tts`, `stt`.
pub fn spend_by_component(cost: &CostSummary, prices: &Prices) -> [(&'static str, f64); 6] {
    let per_mtok = |tokens: u64, price: f64| tokens as f64 / 1e6 * price;
    [
        (
            "claude_input",
            per_mtok(cost.claude_input_tokens, prices.claude_input_per_mtok),
        ),
        (
            "claude_output",
            per_mtok(cost.claude_output_tokens, prices.claude_output_per_mtok),
        ),
        (
            "claude_cache_write",
            per_mtok(
                cost.claude_cache_creation_tokens,
                prices.claude_cache_write_per_mtok,
            ),
        ),
        (
            "claude_cache_read",
            per_mtok(
                cost.claude_cache_read_tokens,
                prices.claude_cache_read_per_mtok,
            ),
        ),
        (
            "tts",
            cost.tts_chars as f64 / 1000.0 * prices.tts_per_1k_chars,
        ),
        ("stt", cost.stt_secs / 60.0 * prices.stt_per_min),
    ]
}
use serde::{Deserialize, Serialize};

/// The estimated USD for this usage, rounded to 6 decimals as the original did. Characters
/// played from pre-rendered audio (`tts_chars_cached`) cost nothing.
pub fn estimate_usd(usage: &CostSummary, prices: &Prices) -> f64 {
    let usd = usage.claude_input_tokens as f64 / 1e6 * prices.claude_input_per_mtok
        + usage.claude_output_tokens as f64 / 1e6 * prices.claude_output_per_mtok
        + usage.claude_cache_creation_tokens as f64 / 1e6 * prices.claude_cache_write_per_mtok
        + usage.claude_cache_read_tokens as f64 / 1e6 * prices.claude_cache_read_per_mtok
        + usage.tts_chars as f64 / 1000.0 * prices.tts_per_1k_chars
        + usage.stt_secs / 60.0 * prices.stt_per_min;
    round6(finite(usd))
}

/// `x` rounded to 6 decimals. A value too large to scale (past about 1e302) is returned as
/// it is: far below that, an `f64` has no sixth decimal to round anyway.
pub fn round6(x: f64) -> f64 {
    let scaled = x * 1e6;
    if scaled.is_finite() {
        scaled.round() / 1e6
    } else {
        x
    }
}

/// `a + b`, held at the largest finite `f64` (either sign) instead of reaching infinity,
/// which JSON cannot hold (serde_json writes it as `null`, which then does not read back).
///
/// ```
/// use cotrackpro_voice::cost::saturating_add_f64;
/// assert_eq!(saturating_add_f64(0.5, 0.25), 0.75);
/// assert_eq!(saturating_add_f64(f64::MAX, f64::MAX), f64::MAX);
/// ```
pub fn saturating_add_f64(a: f64, b: f64) -> f64 {
    finite(a + b)
}

/// `x` with infinities held at the largest finite value and NaN as 0.
fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f64::MAX, f64::MAX)
    }
}

/// What one call used, added up as it happens; [`CallUsage::summary`] prices it at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallUsage {
    usage: CostSummary,
}

/// The model's tokens, every response of every turn (tool rounds included).
impl AddAssign<&Usage> for CallUsage {
    fn add_assign(&mut self, claude: &Usage) {
        let u = &mut self.usage;
        // Anthropic's counts are whatever its JSON said: saturate rather than overflow.
        u.claude_input_tokens = u.claude_input_tokens.saturating_add(claude.input_tokens);
        u.claude_output_tokens = u.claude_output_tokens.saturating_add(claude.output_tokens);
        u.claude_cache_creation_tokens = u
            .claude_cache_creation_tokens
            .saturating_add(claude.cache_creation_input_tokens);
        u.claude_cache_read_tokens = u
            .claude_cache_read_tokens
            .saturating_add(claude.cache_read_input_tokens);
    }
}

impl CallUsage {
    /// Characters sent to live text-to-speech (billed).
    pub fn add_tts_chars(&mut self, chars: u64) {
        self.usage.tts_chars = self.usage.tts_chars.saturating_add(chars);
    }

    /// Characters played from pre-rendered audio (free, but reported).
    pub fn add_cached_chars(&mut self, chars: u64) {
        self.usage.tts_chars_cached = self.usage.tts_chars_cached.saturating_add(chars);
    }

    /// Seconds of the caller's audio sent to speech-to-text.
    pub fn add_stt_secs(&mut self, secs: f64) {
        self.usage.stt_secs = saturating_add_f64(self.usage.stt_secs, secs);
    }

    /// The usage with its estimated price.
    pub fn summary(&self, prices: &Prices) -> CostSummary {
        CostSummary {
            stt_secs: round6(self.usage.stt_secs),
            estimated_cost_usd: estimate_usd(&self.usage, prices),
            ..self.usage.clone()
        }
    }
}

/// The `cost.call.summary` log line, with the original's field names (dashboards match them).
pub fn log_call_summary(
    call_sid: &str,
    duration_secs: u64,
    turn_count: u64,
    barge_ins: u64,
    tool_calls: u64,
    cost: &CostSummary,
) {
    log::info!(
        callSid = call_sid,
        durationSecs = duration_secs,
        turnCount = turn_count,
        bargeIns = barge_ins,
        toolCalls = tool_calls,
        claudeInputTokens = cost.claude_input_tokens,
        claudeOutputTokens = cost.claude_output_tokens,
        claudeCacheCreationTokens = cost.claude_cache_creation_tokens,
        claudeCacheReadTokens = cost.claude_cache_read_tokens,
        ttsChars = cost.tts_chars,
        ttsCharsCached = cost.tts_chars_cached,
        sttSecs = cost.stt_secs,
        estimatedCostUsd = cost.estimated_cost_usd;
        "cost.call.summary"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn spend_by_component_prices_each_part() {
        let cost = CostSummary {
            claude_input_tokens: 1_000_000,
            claude_output_tokens: 100_000,
            claude_cache_creation_tokens: 0,
            claude_cache_read_tokens: 2_000_000,
            tts_chars: 5_000,
            tts_chars_cached: 9_000,
            stt_secs: 120.0,
            estimated_cost_usd: 0.0,
        };
        let parts = spend_by_component(&cost, &crate::config::DEFAULT_PRICES);
        assert_eq!(
            parts,
            [
                ("claude_input", 3.0),
                ("claude_output", 1.5),
                ("claude_cache_write", 0.0),
                ("claude_cache_read", 0.6),
                ("tts", 0.5),
                ("stt", 0.016),
            ]
        );
    }

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
    fn a_calls_usage_adds_up_and_is_priced_once() {
        let mut usage = CallUsage::default();
        usage += &Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cache_creation_input_tokens: 1875,
            cache_read_input_tokens: 0,
        };
        usage += &Usage {
            input_tokens: 250,
            output_tokens: 650,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 18_500,
        };
        usage.add_tts_chars(2200);
        usage.add_cached_chars(195);
        for _ in 0..7120 {
            usage.add_stt_secs(0.02); // 7,120 Twilio frames of 20 ms
        }
        let summary = usage.summary(&PRICES);
        assert_eq!(summary.claude_input_tokens, 1250);
        assert_eq!(summary.claude_output_tokens, 850);
        assert_eq!(summary.claude_cache_creation_tokens, 1875);
        assert_eq!(summary.claude_cache_read_tokens, 18_500);
        assert_eq!(summary.tts_chars_cached, 195);
        assert_eq!(
            summary.stt_secs, 142.4,
            "sums of 0.02 are rounded back to whole frames"
        );
        assert_eq!(summary.estimated_cost_usd, 0.268068);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let huge = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX - 1,
            cache_creation_input_tokens: u64::MAX,
            cache_read_input_tokens: u64::MAX,
        };
        let mut usage = CallUsage::default();
        usage += &huge;
        usage += &huge;
        usage.add_tts_chars(u64::MAX);
        usage.add_tts_chars(2);
        usage.add_cached_chars(u64::MAX);
        usage.add_cached_chars(u64::MAX);
        usage.add_stt_secs(f64::MAX);
        usage.add_stt_secs(f64::MAX);
        let summary = usage.summary(&PRICES);
        assert_eq!(summary.claude_input_tokens, u64::MAX);
        assert_eq!(summary.claude_output_tokens, u64::MAX);
        assert_eq!(summary.claude_cache_creation_tokens, u64::MAX);
        assert_eq!(summary.claude_cache_read_tokens, u64::MAX);
        assert_eq!(summary.tts_chars, u64::MAX);
        assert_eq!(summary.tts_chars_cached, u64::MAX);
        assert_eq!(summary.stt_secs, f64::MAX);
        assert!(summary.estimated_cost_usd.is_finite());
        assert!(summary.estimated_cost_usd > 1e300);
        // And it is written and read back as a number, not `null`.
        let line = serde_json::to_string(&summary).unwrap();
        let back: CostSummary = serde_json::from_str(&line).unwrap();
        assert_eq!(back, summary);
    }

    #[test]
    fn rounding_keeps_large_values() {
        assert_eq!(round6(0.1234565), 0.123457);
        assert_eq!(round6(f64::MAX), f64::MAX);
        assert_eq!(round6(1e303), 1e303);
        assert_eq!(saturating_add_f64(-f64::MAX, -f64::MAX), -f64::MAX);
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
