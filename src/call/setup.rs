//! The providers a call uses, built once from the configuration and shared by every call:
//! the speech settings, the model and its tools, the pre-rendered clips.

use std::sync::Arc;

use super::clips::Clips;
use super::workers::LlmSetup;
use crate::config::{Config, TurnEndMode};
use crate::providers::anthropic::client::AnthropicClient;
use crate::providers::elevenlabs_stt::{CommitStrategy, SttSettings};
use crate::providers::elevenlabs_tts::{TtsSettings, DEFAULT_INACTIVITY_SECS};
use crate::providers::mcp::{default_tools, McpClient, ToolCatalog};
use crate::twilio::rest::TwilioRest;

/// The providers a call uses, built once from the configuration and shared by every call.
pub struct Setup {
    pub tts: Option<TtsSettings>,
    pub stt: Option<SttSettings>,
    pub llm: Option<Arc<LlmSetup>>,
    pub clips: Clips,
    /// The server's one MCP session, shared by every call (each call uses a
    /// [`McpClient::handle`] of it); ended by [`Setup::end_sessions`].
    pub mcp: Option<Arc<McpClient>>,
    /// Twilio's REST API, for transfers to a person (needs the account SID and auth token).
    pub twilio: Option<TwilioRest>,
}

impl Setup {
    pub fn from_config(config: &Config) -> Setup {
        let el = &config.elevenlabs;
        let tts = el.api_key.clone().map(|api_key| TtsSettings {
            ws_base: el.ws_base.clone(),
            api_key,
            model_id: el.model_id.clone(),
            connect_timeout: el.connect_timeout,
            inactivity_secs: DEFAULT_INACTIVITY_SECS,
        });
        let tuning = &config.calls.tuning;
        let stt = el.api_key.clone().map(|api_key| SttSettings {
            ws_base: el.ws_base.clone(),
            api_key,
            model_id: "scribe_v2_realtime".to_string(),
            language_code: tuning.stt_language.clone(),
            vad_silence_secs: tuning.vad_silence_secs,
            connect_timeout: el.connect_timeout,
            silent_service_limit: tuning.stt_silent_service,
            chunk: tuning.stt_chunk,
            commit: match tuning.turn_end {
                TurnEndMode::Smart => CommitStrategy::Manual,
                TurnEndMode::Vad => CommitStrategy::Vad,
            },
        });
        let mcp = config.mcp.url.as_ref().map(|url| {
            Arc::new(McpClient::new(
                &url.to_string(),
                config.mcp.token.clone(),
                config.mcp.timeout,
            ))
        });
        let tools = ToolCatalog::new(default_tools());
        if let Some(mcp) = &mcp {
            // The refresh opens the shared session; calls use it after.
            let client = Arc::new(mcp.handle());
            if let Err(err) = ToolCatalog::refresh_in_background(&tools, client) {
                log::warn!(error:% = err; "mcp.tools.refresh not started");
            }
        }
        let llm = config.anthropic.api_key.clone().map(|api_key| {
            Arc::new(LlmSetup {
                anthropic: config.anthropic.clone(),
                client: AnthropicClient::new(&config.anthropic, api_key),
                max_tool_rounds: tuning.max_tool_rounds,
                tools,
                mcp: mcp.clone(),
            })
        });
        let twilio = match (&config.twilio.account_sid, &config.twilio.auth_token) {
            (Some(sid), Some(token)) => Some(TwilioRest::new(
                &config.twilio.api_base.to_string(),
                sid,
                token.clone(),
            )),
            _ => None,
        };
        Setup {
            tts,
            stt,
            llm,
            clips: Clips::load(&tuning.audio_dir),
            mcp,
            twilio,
        }
    }

    /// Ends the sessions held with providers for the whole server (the MCP session, with
    /// `DELETE`): at shutdown, after the calls have ended.
    pub fn end_sessions(&self) {
        if let Some(mcp) = &self.mcp {
            mcp.end_session();
        }
    }
}
