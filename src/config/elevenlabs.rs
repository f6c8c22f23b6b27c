//! The ElevenLabs section: the key and model for speech both ways, and where to reach them
//! (REST for clips, WebSocket for live speech).

use std::time::Duration;

use super::read::{Reader, Report, Text, Url, Whole, HTTP_SCHEMES, WS_SCHEMES};
use super::{BaseUrl, Secret};

const API_KEY: &str = "ELEVENLABS_API_KEY";
const MODEL_ID: Text = Text {
    name: "ELEVENLABS_MODEL_ID",
    default: "eleven_flash_v2_5",
};
const API_BASE: Url = Url {
    name: "ELEVENLABS_API_BASE",
    default: "https://api.elevenlabs.io",
    schemes: HTTP_SCHEMES,
};
const WS_BASE: Url = Url {
    name: "ELEVENLABS_WS_BASE",
    default: "wss://api.elevenlabs.io",
    schemes: WS_SCHEMES,
};
const CONNECT_TIMEOUT_MS: Whole = Whole {
    name: "ELEVENLABS_CONNECT_TIMEOUT_MS",
    default: 10_000,
    min: 100,
    max: 60_000,
};

#[derive(Clone, Debug)]
pub struct ElevenLabsConfig {
    pub api_key: Option<Secret>,
    pub model_id: String,
    pub api_base: BaseUrl,
    pub ws_base: BaseUrl,
    pub connect_timeout: Duration,
}

impl ElevenLabsConfig {
    pub(super) fn read(r: &mut Reader<'_>) -> ElevenLabsConfig {
        ElevenLabsConfig {
            api_key: r.secret(API_KEY),
            model_id: r.text(&MODEL_ID),
            api_base: r.url(&API_BASE),
            ws_base: r.url(&WS_BASE),
            connect_timeout: r.millis(&CONNECT_TIMEOUT_MS),
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        out.secret(API_KEY, &self.api_key);
        out.value(MODEL_ID.name, &self.model_id);
        out.value(API_BASE.name, &self.api_base);
        out.value(WS_BASE.name, &self.ws_base);
        out.millis(CONNECT_TIMEOUT_MS.name, self.connect_timeout);
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
        vec![
            (API_BASE.name, &self.api_base),
            (WS_BASE.name, &self.ws_base),
        ]
    }
}
