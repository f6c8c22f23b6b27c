//! cotrackpro-voice: a phone line to the CoTrackPro personas. Twilio calls in, the caller's
//! speech is transcribed by ElevenLabs, answered by Anthropic Claude in the persona's voice,
//! and spoken back by ElevenLabs; one OS thread per call, no async runtime.
//!
//! Modules by layer, each importing only from the layers below it (`tests/module_graph.rs`
//! keeps it so); `ARCHITECTURE.md` has the picture and the invariants.

// The binary's shell and the commands that are not the server.
pub mod cli;
pub mod commands;
pub mod sim;

// Serving: the listeners and the state they share.
pub mod app;
pub mod http;
pub mod media;
pub mod serve;

// What a request or a call does.
pub mod auth;
pub mod call;
pub mod calls;
pub mod cost;
pub mod metrics;
pub mod outbound;
pub mod rate_limit;
pub mod records;
pub mod rollup;

// The outside world's formats and clients.
pub mod providers;
pub mod twilio;

// Leaves: configuration and plain values.
pub mod config;
pub mod http_client;
pub mod ids;
pub mod logging;
pub mod personas;
pub mod phone;
pub mod poll;
pub mod resolve;
pub mod speech;
pub mod stack;
pub mod timestamp;
pub mod tls;
// systemd's readiness and watchdog (sd_notify), and the accept loops' beats it watches.
pub mod watchdog;
