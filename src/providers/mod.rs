//! Clients for the providers a call talks to — Anthropic (the persona's words), ElevenLabs
//! (speech in and out), the CoTrackPro MCP server (tools) — each
//! speaking the provider's real wire protocol. Pure parts (parsing, request building) are kept
//! apart from the sockets so they are tested without any.

pub mod anthropic;
pub mod cancel;
pub mod elevenlabs_stt;
pub mod elevenlabs_tts;
pub mod mcp;
pub mod sse;
pub mod ws;
