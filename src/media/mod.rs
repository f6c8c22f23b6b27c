//! The media-stream listener (`MEDIA_PORT`): our own `TcpListener`, the WebSocket handshake
//! and Twilio's signature on it, the admission cap, and one thread per call running
//! [`crate::call`]. Twilio's messages on the stream are `twilio::media_messages`.

pub mod pending;
pub mod server;
