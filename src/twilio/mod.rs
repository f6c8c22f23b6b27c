//! Twilio's wire formats, pure where they can be: request signatures (`signature.rs`), the
//! TwiML we answer with (`twiml.rs`), the Media Streams messages (`media_messages.rs`), the
//! call statuses Twilio reports (`call_status.rs`), the REST client (`rest.rs`) and the
//! per-call stream token (`stream_token.rs`) and answering-machine detection (`amd.rs`). Depends on leaves only (`config`'s values,
//! `ids`), never on `http` or `app`.

pub mod amd;
pub mod call_status;
pub mod media_messages;
pub mod rest;
pub mod signature;
pub mod stream_token;
pub mod twiml;

use crate::config::Domain;

/// The media stream's URL, `wss://{ws domain}/call/stream`: the TwiML gives it to Twilio, and
/// Twilio signs the WebSocket upgrade over exactly this text, so the handshake check rebuilds
/// it here too.
///
/// ```
/// use cotrackpro_voice::config::Domain;
/// let domain = Domain::parse("voice.example.com").unwrap();
/// assert_eq!(
///     cotrackpro_voice::twilio::stream_url(&domain),
///     "wss://voice.example.com/call/stream"
/// );
/// ```
pub fn stream_url(ws_domain: &Domain) -> String {
    format!("wss://{ws_domain}/call/stream")
}
