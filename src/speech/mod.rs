//! What a call hears and says, as pure pieces shared by the call, the simulators and the
//! commands: G.711 μ-law audio, the one audio format of the service (`ulaw.rs`), and the
//! model's streamed text cut into sentences for text-to-speech (`sentences.rs`), and the JSON
//! messages that carry audio as base64, built in a reused buffer (`audio_message.rs`).
//! A leaf: it imports nothing of the crate.

pub mod audio_message;
pub mod sentences;
pub mod ulaw;
