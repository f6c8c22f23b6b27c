//! Simulated providers: real servers on loopback ports speaking each provider's wire protocol,
//! for the tests, and (planned) the `demo`, `sim` and `bench` commands. They are product code,
//! not test fixtures: a newcomer's first call runs against them.

pub mod anthropic;
pub mod elevenlabs_stt;
pub mod elevenlabs_tts;
pub mod http;
pub mod listener;
pub mod mcp;
pub mod twilio;
pub mod voice;
