//! How a call ended, as a type: who or what ended it decides the status recorded, whether the
//! Twilio socket may still be written to, and the reason in the log. (Before this was a type,
//! those decisions were string prefixes of the reason.)

use std::fmt;

use crate::records::event::CallStatus;
use crate::twilio::stream_token::TokenError;

/// Why a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Twilio sent `stop`: the caller (or the far end) hung up.
    CallerHungUp,
    /// Twilio closed the WebSocket without a `stop`.
    TwilioClosed,
    /// Twilio sent a close frame (with this code): it is answered with one.
    ClosedByTwilio(Option<u16>),
    /// Twilio sent a message over the size limit: the stream is closed with 1009.
    MessageTooBig,
    /// Twilio sent nothing for `MEDIA_READ_TIMEOUT_MS` (it sends a frame every 20 ms).
    TwilioSilent,
    /// The Twilio connection failed while reading.
    TwilioLost(String),
    /// A write to Twilio failed and the reader did not say the caller hung up.
    TwilioWriteFailed,
    /// Twilio sent this many invalid messages (a flood ends the call).
    TwilioInvalid(u32),
    /// The stream never sent its `start` message.
    NoStart,
    /// The `start` message did not carry a valid, unused token for its call.
    Unauthorized(TokenError),
    /// The `start` names a call that is over (its record is final): a finished call is never
    /// reopened, and its record is not touched.
    CallOver,
    /// The stream's audio is not 8 kHz mono μ-law.
    UnsupportedMedia,
    /// Speech-to-text could not be had before the call started.
    SpeechToTextUnavailable,
    /// Speech-to-text was lost during the call (the trouble goodbye was said).
    SpeechToTextLost,
    /// The caller stayed silent through every reprompt (the silence goodbye was said).
    CallerSilent,
    /// `MAX_CALL_DURATION_SECS` passed (the time-up goodbye was said).
    MaxDuration,
    /// No sign of the caller (speech, a key) for `IDLE_REAP_SECS`.
    Idle,
    /// The server's shutdown drain ran out.
    ServerShutdown,
    /// The call's own event channel closed (its threads are gone).
    ChannelClosed,
    /// A bug: the call thread panicked.
    Internal,
    /// The system refused to start one of the call's threads (this one): the call is refused
    /// with close code 1013, "try again later".
    NoThread(String),
    /// An answering machine took the outbound call: the voicemail message was left (or its
    /// time ran out) and we hung up.
    Voicemail,
    /// A fax machine took the outbound call: we hung up at once.
    Fax,
    /// The assistant ended the call (its `end_call` tool) after its last words played; the
    /// reason is the model's, bounded ([`MAX_REASON_CHARS`]).
    AssistantEnded(String),
    /// The call was handed to a person: Twilio redirected it to `<Dial>` this number and ended
    /// the stream. `by` is who asked: the assistant (`transfer_call`) or the caller (`0`).
    Transferred { number: String, by: EndedBy },
}

/// The longest reason the assistant may give for ending a call that the record keeps.
pub const MAX_REASON_CHARS: usize = 200;

/// Who ended a call, for the record's `endedBy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    /// The caller hung up (or the far end did).
    Caller,
    /// The assistant decided: its `end_call` tool, or a transfer to a person.
    Assistant,
    /// The service: a timer, a failure, a shutdown.
    System,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Assistant => "assistant",
            EndedBy::System => "system",
        }
    }
}

impl End {
    /// The final status the call's record gets.
    pub fn status(&self) -> CallStatus {
        match self {
            End::CallerHungUp
            | End::TwilioClosed
            | End::ClosedByTwilio(_)
            | End::CallerSilent
            | End::MaxDuration
            | End::Voicemail
            | End::Fax
            | End::AssistantEnded(_)
            | End::Transferred { .. } => CallStatus::Completed,
            End::Idle => CallStatus::ForceReaped,
            End::TwilioSilent
            | End::TwilioLost(_)
            | End::TwilioWriteFailed
            | End::TwilioInvalid(_)
            | End::MessageTooBig
            | End::NoStart
            | End::Unauthorized(_)
            | End::CallOver
            | End::UnsupportedMedia
            | End::SpeechToTextUnavailable
            | End::SpeechToTextLost
            | End::ServerShutdown
            | End::ChannelClosed
            | End::Internal
            | End::NoThread(_) => CallStatus::Failed,
        }
    }

    /// Who ended the call: the caller, the assistant, or the service itself.
    pub fn ended_by(&self) -> EndedBy {
        match self {
            End::CallerHungUp | End::TwilioClosed | End::ClosedByTwilio(_) => EndedBy::Caller,
            End::AssistantEnded(_) => EndedBy::Assistant,
            End::Transferred { by, .. } => *by,
            _ => EndedBy::System,
        }
    }

    /// The record's `endReason`: kept for every call that did not end normally, for the
    /// calls the assistant ended (why it did, where the call went), and for an answering or
    /// fax machine.
    pub fn record_reason(&self) -> Option<String> {
        let kept = self.status() != CallStatus::Completed
            || matches!(
                self,
                End::AssistantEnded(_) | End::Transferred { .. } | End::Voicemail | End::Fax
            );
        kept.then(|| self.to_string())
    }

    /// Whether our side should still send a close frame: not when the connection is closed
    /// or broken (a close frame from Twilio is answered: RFC 6455 §5.5.1). (After `stop` it is still open, and a close ends it cleanly; a peer that
    /// floods us with invalid messages is told why it is closed.)
    pub fn may_close_socket(&self) -> bool {
        !matches!(
            self,
            End::TwilioClosed | End::TwilioSilent | End::TwilioLost(_) | End::TwilioWriteFailed
        )
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::CallerHungUp => f.write_str("caller hung up"),
            End::TwilioClosed => f.write_str("twilio closed the stream"),
            End::ClosedByTwilio(_) => f.write_str("twilio closed the stream (close answered)"),
            End::MessageTooBig => f.write_str("twilio sent a message over the size limit"),
            End::TwilioSilent => f.write_str("twilio sent nothing within MEDIA_READ_TIMEOUT_MS"),
            End::TwilioLost(why) => write!(f, "twilio connection lost: {why}"),
            End::TwilioWriteFailed => f.write_str("twilio connection lost while sending"),
            End::TwilioInvalid(count) => write!(f, "{count} invalid messages from twilio"),
            End::NoStart => f.write_str("twilio sent no start message"),
            End::Unauthorized(why) => write!(f, "stream refused: {why}"),
            End::CallOver => f.write_str("stream refused: the call is over"),
            End::UnsupportedMedia => f.write_str("unsupported media format"),
            End::SpeechToTextUnavailable => f.write_str("speech-to-text unavailable"),
            End::SpeechToTextLost => f.write_str("speech-to-text lost"),
            End::CallerSilent => f.write_str("caller silent"),
            End::MaxDuration => f.write_str("maximum call length reached"),
            End::Idle => f.write_str("idle: no sign of the caller"),
            End::ServerShutdown => f.write_str("server shutting down"),
            End::ChannelClosed => f.write_str("call channel closed"),
            End::Internal => f.write_str("internal error"),
            End::NoThread(name) => write!(f, "the server could not start thread {name}"),
            End::Voicemail => f.write_str("answering machine: voicemail left"),
            End::Fax => f.write_str("answered by a fax machine"),
            End::AssistantEnded(reason) => write!(f, "the assistant ended the call: {reason}"),
            End::Transferred { number, .. } => {
                write!(
                    f,
                    "transferred to a person at {}",
                    crate::phone::mask(number)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_follows_who_ended_the_call() {
        assert_eq!(End::CallerHungUp.status(), CallStatus::Completed);
        assert_eq!(End::MaxDuration.status(), CallStatus::Completed);
        assert_eq!(End::CallerSilent.status(), CallStatus::Completed);
        assert_eq!(End::Idle.status(), CallStatus::ForceReaped);
        assert_eq!(End::ClosedByTwilio(None).status(), CallStatus::Completed);
        assert_eq!(End::MessageTooBig.status(), CallStatus::Failed);
        assert_eq!(End::CallOver.status(), CallStatus::Failed);
        assert_eq!(End::TwilioWriteFailed.status(), CallStatus::Failed);
        assert_eq!(End::SpeechToTextLost.status(), CallStatus::Failed);
        assert_eq!(End::Internal.status(), CallStatus::Failed);
        assert_eq!(End::Voicemail.status(), CallStatus::Completed);
        assert_eq!(End::Fax.status(), CallStatus::Completed);
    }

    #[test]
    fn a_socket_twilio_ended_is_not_written_to() {
        assert!(End::CallerHungUp.may_close_socket());
        assert!(!End::TwilioClosed.may_close_socket());
        assert!(!End::TwilioLost("reset".into()).may_close_socket());
        assert!(End::TwilioInvalid(50).may_close_socket());
        assert!(End::ClosedByTwilio(Some(1000)).may_close_socket());
        assert!(End::MessageTooBig.may_close_socket());
        assert!(End::MaxDuration.may_close_socket());
        assert!(End::ServerShutdown.may_close_socket());
        assert!(End::Idle.may_close_socket());
        assert!(End::Voicemail.may_close_socket());
        assert!(End::Fax.may_close_socket());
    }

    #[test]
    fn the_record_says_who_ended_the_call_and_why() {
        assert_eq!(End::CallerHungUp.ended_by(), EndedBy::Caller);
        assert_eq!(
            End::AssistantEnded("bye".into()).ended_by(),
            EndedBy::Assistant
        );
        let transferred = |by| End::Transferred {
            number: "+15551234567".into(),
            by,
        };
        assert_eq!(transferred(EndedBy::Caller).ended_by(), EndedBy::Caller);
        assert_eq!(
            transferred(EndedBy::Assistant).ended_by(),
            EndedBy::Assistant
        );
        assert_eq!(End::MaxDuration.ended_by(), EndedBy::System);
        assert_eq!(End::CallerHungUp.record_reason(), None);
        assert_eq!(
            End::AssistantEnded("the caller said goodbye".into())
                .record_reason()
                .as_deref(),
            Some("the assistant ended the call: the caller said goodbye")
        );
        assert_eq!(
            transferred(EndedBy::Caller).record_reason().as_deref(),
            Some("transferred to a person at +1***4567")
        );
        assert_eq!(
            End::AssistantEnded("x".into()).status(),
            CallStatus::Completed
        );
        assert!(End::AssistantEnded("x".into()).may_close_socket());
    }

    #[test]
    fn reasons_read_as_before() {
        assert_eq!(
            End::TwilioInvalid(50).to_string(),
            "50 invalid messages from twilio"
        );
        assert_eq!(End::Idle.to_string(), "idle: no sign of the caller");
    }
}
