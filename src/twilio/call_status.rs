//! The call statuses Twilio reports (`CallStatus` of its webhooks and status callbacks), and
//! how far along a call each one is. What a status means for our records is
//! `records::event::CallStatus::from_twilio`.

/// Every `CallStatus` Twilio reports, in the order a call goes through them.
pub const TWILIO_STATUSES: [&str; 9] = [
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
];

/// How far along Twilio's call progress a `CallStatus` is. Callbacks can arrive out of order
/// and be retried: the recorded Twilio status only ever moves forward.
pub fn twilio_progress(twilio: &str) -> u8 {
    match twilio {
        "queued" => 1,
        "initiated" => 2,
        "ringing" => 3,
        "in-progress" => 4,
        "completed" | "busy" | "failed" | "no-answer" | "canceled" => 5,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_grows_along_the_listed_order_and_unknowns_are_zero() {
        let progress: Vec<u8> = TWILIO_STATUSES.iter().map(|s| twilio_progress(s)).collect();
        assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
        assert_eq!(progress[0], 1);
        assert!(TWILIO_STATUSES[4..].iter().all(|s| twilio_progress(s) == 5));
        assert_eq!(twilio_progress("exploded"), 0);
    }
}
