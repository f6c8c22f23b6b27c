//! cotrackpro-voice: a phone line to the CoTrackPro personas. Twilio calls in, the caller's
//! speech is transcribed by ElevenLabs, answered by Anthropic Claude in the persona's voice,
//! and spoken back by ElevenLabs; one OS thread per call, no async runtime.
//!
//! Modules in reading order; `ARCHITECTURE.md` has the picture and the invariants.

pub mod cli;
pub mod config;
pub mod demo;
pub mod dialing;
pub mod logging;
pub mod metrics;
pub mod serve;

pub mod app;
pub mod auth;
pub mod bench;
pub mod call;
pub mod calls;
pub mod http;
pub mod media;
pub mod rate_limit;
pub mod records;
pub mod rollup;
pub mod sim;

pub mod cost;
pub mod idempotency;
pub mod ids;
pub mod personas;
pub mod phone;
pub mod poll;
pub mod prerender;
pub mod providers;
pub mod timestamp;
pub mod twilio_signature;
pub mod twiml;
