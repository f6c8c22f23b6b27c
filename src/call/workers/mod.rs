//! A call's providers: speech-to-text (run on the Twilio reader's thread), and the worker
//! threads of the model (with its tool loop) and of text-to-speech. Each owns its provider
//! socket and reports to the call thread through the call's event channel. Work for a turn carries that turn's cancel flag, checked between provider events: a
//! cancelled turn's work stops, and whatever it still produces is dropped by the call thread by
//! turn number anyway.
//!
//! No worker wakes on a tick; each waits for an event or a real deadline, and ends by an event:
//! - speech-to-text ([`SttLink`]) is waited on by the Twilio reader, with `poll(2)`, together
//!   with the Twilio socket; it ends with the reader;
//! - text-to-speech waits with `poll(2)` on its one provider socket and its [`TtsHandle`]'s
//!   wake-up descriptor, until its plan's next deadline (a piece's, the keep-alive); it ends
//!   when the call calls [`TtsHandle::shutdown`] or drops the handle;
//! - the model worker ends when its job channel closes ([`CallLlm::shutdown`] interrupts a
//!   stream in flight).
pub mod call_tools;
mod llm;
mod stt;
mod tts;
mod tts_plan;

use std::sync::Arc;

pub use self::llm::{llm, CallLlm, LlmSetup};
pub use self::stt::SttLink;
pub use self::tts::{tts, tts_channel, TtsHandle, TtsInbox};
use crate::providers::anthropic::client::LlmError;
use crate::providers::anthropic::stream::Usage;
use crate::providers::anthropic::Turn;
use crate::providers::cancel::Cancel;
use crate::providers::elevenlabs_stt::SttError;
use crate::providers::elevenlabs_tts::{Alignment, TtsError};

/// What speech-to-text tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum SttOut {
    Partial(String),
    Committed(String),
    /// The caller cannot be heard for the rest of the call.
    Lost(SttLost),
}

/// Why speech-to-text is gone for good.
#[derive(Debug, Clone, PartialEq)]
pub enum SttLost {
    /// No ElevenLabs key: there is no speech-to-text on this server.
    NotConfigured,
    /// The service failed, and could not be reached again within the allowed reconnects.
    Provider(SttError),
    /// The process could not set the worker up (no descriptors or threads left).
    NoResources(String),
}

impl std::fmt::Display for SttLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SttLost::NotConfigured => {
                write!(f, "speech-to-text is not configured (ELEVENLABS_API_KEY)")
            }
            SttLost::Provider(err) => write!(f, "{err}"),
            SttLost::NoResources(what) => {
                write!(f, "speech-to-text could not be started: {what}")
            }
        }
    }
}

/// What the model worker tells the call, for one turn.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmOut {
    /// The first words of the turn are on their way (for latency).
    Delta(String),
    /// The model asked for tools; the call plays the hold phrase.
    ToolsStarted(Vec<String>),
    /// One tool call ended.
    ToolFinished {
        name: String,
        ok: bool,
        duration_ms: u64,
    },
    /// The turn's response is complete (or failed, or was cancelled).
    Done {
        /// The turns to append to the conversation: assistant turns and tool results.
        new_turns: Vec<Turn>,
        usage: Usage,
        /// Set when the model failed; what was streamed before stays valid.
        error: Option<LlmError>,
    },
    /// The model called `end_call`: the call ends once what it said has played.
    EndCall { reason: String },
    /// The model called `transfer_call`: the call is handed to a person.
    Transfer,
}

/// What text-to-speech tells the call, for one piece of speech.
#[derive(Debug, Clone, PartialEq)]
pub enum TtsOut {
    /// μ-law 8 kHz audio, in order.
    Audio(Vec<u8>),
    /// All of the piece's audio has been delivered; `chars` were billed.
    Done { chars: u64 },
    /// The piece could not be spoken (after one retry).
    Failed(TtsError),
    /// Which characters the next `Audio` of the piece speaks, and when within it (sent just
    /// before that audio; a chunk without one has no alignment).
    Alignment(Alignment),
}

/// What to speak.
#[derive(Debug, Clone)]
pub enum Speech {
    Text(String),
    /// Pre-rendered μ-law audio, played in order with the live speech around it.
    Clip(Arc<Vec<u8>>),
    /// Make sure the call's socket is open (one that dropped is reopened now), so the next
    /// sentence does not wait for the connection.
    Prewarm,
}

#[derive(Debug, Clone)]
pub struct TtsJob {
    pub turn: u64,
    pub seq: u32,
    pub speech: Speech,
    pub cancel: Arc<Cancel>,
}

/// One response to produce.
pub struct LlmJob {
    pub turn: u64,
    pub history: Vec<Turn>,
    pub cancel: Arc<Cancel>,
}
