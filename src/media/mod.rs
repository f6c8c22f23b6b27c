//! The call over Twilio's Media Stream (`MEDIA_PORT`): the messages of the stream, and the
//! pure pieces of a turn (cutting the model's text into sentences). The media server, the call
//! thread and its state machine are being built on these.

pub mod sentences;
pub mod server;
pub mod ulaw;
