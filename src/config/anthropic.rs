//! The Anthropic section: the conversation model, where to reach it, and how long and how much
//! one answer may take.

use std::time::Duration;

use super::read::{Reader, Report, Text, Url, Whole, HTTP_SCHEMES};
use super::{BaseUrl, Secret};

const API_KEY: &str = "ANTHROPIC_API_KEY";
const MODEL: Text = Text {
    name: "ANTHROPIC_MODEL",
    default: "claude-sonnet-4-5",
};
const BASE_URL: Url = Url {
    name: "ANTHROPIC_BASE_URL",
    default: "https://api.anthropic.com",
    schemes: HTTP_SCHEMES,
};
const STREAM_TIMEOUT_MS: Whole = Whole {
    name: "ANTHROPIC_STREAM_TIMEOUT_MS",
    default: 45_000,
    min: 1_000,
    max: 600_000,
};
const FIRST_TOKEN_TIMEOUT_MS: Whole = Whole {
    name: "ANTHROPIC_FIRST_TOKEN_TIMEOUT_MS",
    default: 10_000,
    min: 200,
    max: 120_000,
};
const STALL_TIMEOUT_MS: Whole = Whole {
    name: "ANTHROPIC_STALL_TIMEOUT_MS",
    default: 10_000,
    min: 200,
    max: 120_000,
};
const MAX_RETRIES: Whole = Whole {
    name: "ANTHROPIC_MAX_RETRIES",
    default: 2,
    min: 0,
    max: 5,
};
const MAX_TOKENS: Whole = Whole {
    name: "ANTHROPIC_MAX_TOKENS",
    default: 512,
    min: 16,
    max: 8192,
};
const MAX_HISTORY_MESSAGES: Whole = Whole {
    name: "ANTHROPIC_MAX_HISTORY_MESSAGES",
    default: 40,
    min: 2,
    max: 400,
};

#[derive(Clone, Debug)]
pub struct AnthropicConfig {
    pub api_key: Option<Secret>,
    pub model: String,
    pub base_url: BaseUrl,
    /// Cap on a whole response.
    pub stream_timeout: Duration,
    /// Longest wait for the first words of a response (from sending the request).
    pub first_token_timeout: Duration,
    /// Longest silence on the stream once words have come (a stalled stream).
    pub stall_timeout: Duration,
    /// Retries of a request that failed before any words (the official SDK's default is 2).
    pub max_retries: u32,
    pub max_tokens: u32,
    pub max_history_messages: usize,
}

impl AnthropicConfig {
    pub(super) fn read(r: &mut Reader<'_>) -> AnthropicConfig {
        AnthropicConfig {
            api_key: r.secret(API_KEY),
            model: r.text(&MODEL),
            base_url: r.url(&BASE_URL),
            stream_timeout: r.millis(&STREAM_TIMEOUT_MS),
            first_token_timeout: r.millis(&FIRST_TOKEN_TIMEOUT_MS),
            stall_timeout: r.millis(&STALL_TIMEOUT_MS),
            max_retries: r.whole(&MAX_RETRIES) as u32,
            // The ranges make these casts lossless.
            max_tokens: r.whole(&MAX_TOKENS) as u32,
            max_history_messages: r.whole(&MAX_HISTORY_MESSAGES) as usize,
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.secret(API_KEY, &self.api_key);
        out.value(MODEL.name, &self.model);
        out.value(BASE_URL.name, &self.base_url);
        out.millis(STREAM_TIMEOUT_MS.name, self.stream_timeout);
        out.millis(FIRST_TOKEN_TIMEOUT_MS.name, self.first_token_timeout);
        out.millis(STALL_TIMEOUT_MS.name, self.stall_timeout);
        out.value(MAX_RETRIES.name, self.max_retries);
        out.value(MAX_TOKENS.name, self.max_tokens);
        out.value(MAX_HISTORY_MESSAGES.name, self.max_history_messages);
    }

    /// The variables production needs that are not set.
    pub(super) fn missing_for_production(&self) -> Vec<&'static str> {
        self.api_key
            .is_none()
            .then_some(API_KEY)
            .into_iter()
            .collect()
    }

    pub(super) fn provider_urls(&self) -> Vec<(&'static str, &BaseUrl)> {
        vec![(BASE_URL.name, &self.base_url)]
    }
}
