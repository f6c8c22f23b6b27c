//! The per-call stream token: what proves that a media stream belongs to a call we answered.
//!
//! Twilio's signature on the WebSocket upgrade (when it sends one) covers only the fixed URL
//! `wss://{WS_DOMAIN}/call/stream`: it is the same for every call, so anyone who once saw it
//! could open streams at our expense forever. Instead, the TwiML of each call (answered by a
//! signed webhook) carries a `<Parameter name="token">`: an HMAC, under a secret only this
//! server holds, of the CallSid and an expiry a few minutes ahead. Twilio hands the parameters
//! back in the stream's `start` message; the call admits the stream only if the token is
//! valid for the CallSid in that same `start`, not expired, and not used before — and only then
//! contacts a provider.
//!
//! Format: `{expiry unix seconds}.{base64url(HMAC-SHA1(secret, "{CallSid}.{expiry}"))}`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// How long a token is good for after the TwiML is served: Twilio opens the stream at once.
pub const TOKEN_TTL_SECS: i64 = 300;
/// The name of the `<Parameter>` that carries it.
pub const PARAMETER: &str = "token";

type HmacSha1 = Hmac<Sha1>;

/// Why a stream was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// The `start` message has no token parameter.
    Missing,
    /// Not a token of ours (wrong shape).
    Malformed,
    /// Not made for this CallSid, or not by this server.
    Invalid,
    Expired,
    /// Already used to open a stream.
    Replayed,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "the start message carries no stream token",
            TokenError::Malformed => "the stream token is malformed",
            TokenError::Invalid => "the stream token is not valid for this call",
            TokenError::Expired => "the stream token has expired",
            TokenError::Replayed => "the stream token was already used",
        })
    }
}

impl std::error::Error for TokenError {}

/// Mints and admits tokens. One per server: its secret is random per process (a restart
/// invalidates only the tokens of calls being connected at that instant), and it remembers
/// the tokens used until they expire.
pub struct StreamTokens {
    secret: [u8; 32],
    /// Used tokens and their expiry.
    used: Mutex<HashMap<String, i64>>,
}

impl fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamTokens([secret])")
    }
}

impl StreamTokens {
    pub fn new(secret: [u8; 32]) -> StreamTokens {
        StreamTokens {
            secret,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// With a fresh random secret.
    pub fn random() -> StreamTokens {
        StreamTokens::new(crate::ids::random_bytes::<32>())
    }

    /// A token for `call_sid`, valid for [`TOKEN_TTL_SECS`] from `now_secs`.
    pub fn mint(&self, call_sid: &str, now_secs: i64) -> String {
        let expiry = now_secs + TOKEN_TTL_SECS;
        let tag = self.tag(call_sid, expiry).finalize().into_bytes();
        format!(
            "{expiry}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks `token` for `call_sid` at `now_secs` and, if it is good, uses it up.
    pub fn admit(
        &self,
        token: Option<&str>,
        call_sid: &str,
        now_secs: i64,
    ) -> Result<(), TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        let (expiry_text, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let expiry: i64 = expiry_text.parse().map_err(|_| TokenError::Malformed)?;
        // Only the spelling we mint: `+300` or `0300` would verify as `300` and, being another
        // string, slip past the used-token check below (one token, many streams).
        if expiry.to_string() != expiry_text {
            return Err(TokenError::Malformed);
        }
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        // Constant time: a guess learns nothing from how long the refusal took.
        self.tag(call_sid, expiry)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Invalid)?;
        if now_secs > expiry {
            return Err(TokenError::Expired);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, until| *until >= now_secs);
        if used.insert(token.to_string(), expiry).is_some() {
            return Err(TokenError::Replayed);
        }
        Ok(())
    }

    fn tag(&self, call_sid: &str, expiry: i64) -> HmacSha1 {
        let mut mac =
            HmacSha1::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(call_sid.as_bytes());
        mac.update(b".");
        mac.update(expiry.to_string().as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "CA0123456789abcdef0123456789abcdef";
    const OTHER: &str = "CAfedcba9876543210fedcba9876543210";

    #[test]
    fn a_token_opens_one_stream_of_its_own_call_within_its_time() {
        let tokens = StreamTokens::new([7; 32]);
        let token = tokens.mint(SID, 1_000);
        assert_eq!(
            tokens.admit(Some(&token), OTHER, 1_001),
            Err(TokenError::Invalid)
        );
        assert_eq!(tokens.admit(Some(&token), SID, 1_001), Ok(()));
        assert_eq!(
            tokens.admit(Some(&token), SID, 1_002),
            Err(TokenError::Replayed)
        );
    }

    #[test]
    fn expired_forged_and_missing_tokens_are_refused() {
        let tokens = StreamTokens::new([7; 32]);
        let token = tokens.mint(SID, 1_000);
        assert_eq!(
            tokens.admit(Some(&token), SID, 1_000 + TOKEN_TTL_SECS + 1),
            Err(TokenError::Expired)
        );
        // Another server's secret, or a changed expiry, does not verify.
        let foreign = StreamTokens::new([8; 32]).mint(SID, 1_000);
        assert_eq!(
            tokens.admit(Some(&foreign), SID, 1_001),
            Err(TokenError::Invalid)
        );
        let (_, tag) = token.split_once('.').unwrap();
        let stretched = format!("{}.{tag}", 1_000 + TOKEN_TTL_SECS * 100);
        assert_eq!(
            tokens.admit(Some(&stretched), SID, 1_001),
            Err(TokenError::Invalid)
        );
        assert_eq!(tokens.admit(None, SID, 1_001), Err(TokenError::Missing));
        assert_eq!(
            tokens.admit(Some("nope"), SID, 1_001),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            tokens.admit(Some("12.***"), SID, 1_001),
            Err(TokenError::Malformed)
        );
    }

    // Found by tests/fuzz/twilio_media.rs: a used token with its expiry respelled opened a
    // second stream.
    #[test]
    fn a_respelled_expiry_does_not_replay_a_token() {
        let tokens = StreamTokens::new([7; 32]);
        let token = tokens.mint(SID, 1_000);
        assert_eq!(tokens.admit(Some(&token), SID, 1_001), Ok(()));
        for respelled in [
            format!("+{token}"),
            format!("0{token}"),
            format!("00{token}"),
        ] {
            assert_eq!(
                tokens.admit(Some(&respelled), SID, 1_001),
                Err(TokenError::Malformed),
                "{respelled}"
            );
        }
    }

    #[test]
    fn used_tokens_are_forgotten_once_expired() {
        let tokens = StreamTokens::new([7; 32]);
        for n in 0..10 {
            let token = tokens.mint(&format!("CA{n:032x}"), 1_000);
            tokens
                .admit(Some(&token), &format!("CA{n:032x}"), 1_001)
                .unwrap();
        }
        let fresh = tokens.mint(SID, 5_000);
        tokens.admit(Some(&fresh), SID, 5_001).unwrap();
        assert_eq!(tokens.used.lock().unwrap().len(), 1);
    }
}
