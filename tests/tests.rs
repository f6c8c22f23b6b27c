//! The one integration-test binary: each module covers an area of the running server.

mod support;

mod anthropic;
mod api_keys;
mod call;
mod call_command;
mod call_control;
mod cli;
mod dashboard;
mod demo;
mod elevenlabs_stt;
mod elevenlabs_tts;
mod fuzz;
mod generate_audio;
mod http_limits;
mod http_routes;
mod logs;
mod mcp;
mod media_limits;
mod metrics_exposition;
mod module_graph;
mod outbound;
mod provider_tls;
mod records_api;
mod records_durability;
mod rollup;
mod signatures;
mod sim_command;
mod simulator_golden;
mod systemd_notify;
mod systemd_units;
mod twilio_rest;
mod twiml_interop;
mod workers;
