//! Answering-machine detection (AMD) on calls we place: the create-call parameters that ask
//! for it and the result Twilio posts back.
//!
//! Checked against Twilio's "Answering Machine Detection" page and the official `twilio`
//! Python package (`CallList.create`):
//! - `MachineDetection` is `Enable` (a result as soon as the answerer is known) or
//!   `DetectMessageEnd` (for a machine, the result waits for the end of its greeting, so a
//!   message can be left after the beep); any other value is refused with a 400.
//! - `AsyncAmd=true` connects the call at once and runs detection in the background; the
//!   result is posted to `AsyncAmdStatusCallback` with `AsyncAmdStatusCallbackMethod`
//!   (`POST`, the default). Without a callback URL Twilio only warns (21262).
//! - `MachineDetectionTimeout` (seconds, default 30): after it the result is `unknown`.
//! - The callback's form fields: `CallSid`, `AccountSid`, `AnsweredBy`, and
//!   `MachineDetectionDuration` (milliseconds). It is signed like every webhook
//!   (`X-Twilio-Signature` with the account's auth token over the callback URL).
//! - `AnsweredBy` is one of `human`, `machine_start` (only with `Enable`), `machine_end_beep`,
//!   `machine_end_silence`, `machine_end_other` (only with `DetectMessageEnd`), `fax`,
//!   `unknown`.

/// The create-call parameter and the value we send: we leave messages, so we wait for the
/// end of a machine's greeting.
pub const MACHINE_DETECTION: &str = "MachineDetection";
pub const DETECT_MESSAGE_END: &str = "DetectMessageEnd";
/// The values Twilio accepts for `MachineDetection`.
pub const MACHINE_DETECTION_VALUES: [&str; 2] = ["Enable", DETECT_MESSAGE_END];

/// Who answered a call, as Twilio's `AnsweredBy` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnsweredBy {
    Human,
    /// A machine, said as soon as it was recognized (`Enable` mode): its greeting still plays.
    MachineStart,
    /// The machine's greeting ended with a beep.
    MachineEndBeep,
    /// The machine's greeting ended in silence.
    MachineEndSilence,
    /// The machine's greeting ended some other way.
    MachineEndOther,
    Fax,
    /// Detection did not decide (its timeout, or too little audio).
    Unknown,
}

impl AnsweredBy {
    pub const ALL: [AnsweredBy; 7] = [
        AnsweredBy::Human,
        AnsweredBy::MachineStart,
        AnsweredBy::MachineEndBeep,
        AnsweredBy::MachineEndSilence,
        AnsweredBy::MachineEndOther,
        AnsweredBy::Fax,
        AnsweredBy::Unknown,
    ];

    /// Twilio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::MachineStart => "machine_start",
            AnsweredBy::MachineEndBeep => "machine_end_beep",
            AnsweredBy::MachineEndSilence => "machine_end_silence",
            AnsweredBy::MachineEndOther => "machine_end_other",
            AnsweredBy::Fax => "fax",
            AnsweredBy::Unknown => "unknown",
        }
    }

    /// The value as Twilio spells it; anything else is `None`.
    ///
    /// ```
    /// use cotrackpro_voice::twilio::amd::AnsweredBy;
    /// assert_eq!(AnsweredBy::parse("machine_end_beep"), Some(AnsweredBy::MachineEndBeep));
    /// assert_eq!(AnsweredBy::parse("Human"), None);
    /// ```
    pub fn parse(text: &str) -> Option<AnsweredBy> {
        AnsweredBy::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// Whether an answering machine (not a fax) took the call.
    pub fn is_machine(self) -> bool {
        matches!(
            self,
            AnsweredBy::MachineStart
                | AnsweredBy::MachineEndBeep
                | AnsweredBy::MachineEndSilence
                | AnsweredBy::MachineEndOther
        )
    }
}

impl std::fmt::Display for AnsweredBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_and_only_machines_are_machines() {
        for value in AnsweredBy::ALL {
            assert_eq!(AnsweredBy::parse(value.as_str()), Some(value));
        }
        assert_eq!(AnsweredBy::parse("machine"), None);
        assert_eq!(AnsweredBy::parse(""), None);
        let machines: Vec<_> = AnsweredBy::ALL
            .into_iter()
            .filter(|a| a.is_machine())
            .collect();
        assert_eq!(machines.len(), 4);
        assert!(!AnsweredBy::Fax.is_machine());
        assert!(!AnsweredBy::Unknown.is_machine());
    }
}
