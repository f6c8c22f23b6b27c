//! The speech-to-text worker: the caller's audio out, transcripts in, on one provider socket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{SttLost, SttOut};

use crate::call::audio_feed::AudioInbox;
use crate::call::Event;
use crate::poll::{self, Watch};
use crate::providers::elevenlabs_stt::{SttError, SttEvent, SttSettings, SttStream};

/// Speech-to-text for one call: forwards the caller's audio (base64 as Twilio sent it) the
/// moment it arrives and reports transcripts the moment they arrive; reconnects up to
/// `reconnects` times. A session whose service says nothing at all (no message of any kind)
/// for `settings.silent_service_limit` after the caller's speech was sent to it is taken for
/// dead: closed, logged and replaced, counted as a reconnect. `sent_bytes` counts the audio forwarded (what ElevenLabs bills),
/// readable by the call at any moment.
///
/// Ends when the `audio` feed is dropped (the session is closed first) or `out` is gone; after
/// too many failures it reports [`SttOut::Lost`] and ends.
pub fn stt(
    settings: &SttSettings,
    reconnects: u32,
    audio: AudioInbox,
    out: &Sender<Event>,
    sent_bytes: &AtomicU64,
) {
    let mut failures = 0u32;
    loop {
        if !audio.is_open() {
            // The call is over: no new session for nobody.
            return;
        }
        let opened = Instant::now();
        let mut stream =
            match SttStream::open_retrying(settings, 3, Duration::from_millis(250), |pause| {
                audio.pause(pause)
            }) {
                Ok(stream) => stream,
                Err(err) => {
                    if audio.is_open() {
                        let _ = out.send(Event::Stt(SttOut::Lost(SttLost::Provider(err))));
                    }
                    return;
                }
            };
        let ended = stt_session(
            &mut stream,
            &audio,
            out,
            sent_bytes,
            settings.silent_service_limit,
        );
        stream.close();
        let failure = match ended {
            Ok(()) => return,
            Err(err) => err,
        };
        // Reconnects are counted per trouble spell: a session that held for a while resets
        // the count (a long call may see unrelated drops, or the service's session limit).
        if opened.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures += 1;
        if failures > reconnects {
            let _ = out.send(Event::Stt(SttOut::Lost(SttLost::Provider(failure))));
            return;
        }
        if let SttError::Unresponsive(after) = &failure {
            log::warn!(silentSecs = after.as_secs_f64(), attempt = failures; "stt.watchdog.unresponsive");
        }
        log::warn!(error:% = failure, attempt = failures; "stt.reconnect");
    }
}

/// One session: waits on the provider socket and the audio feed together, forwarding audio
/// and transcripts as they come. `Ok` when the call is over (feed closed, or nobody listens),
/// `Err` when the session failed, or when the service stayed mute for `silent_limit` after
/// the caller's speech went to it ([`SttError::Unresponsive`]).
fn stt_session(
    stream: &mut SttStream,
    audio: &AudioInbox,
    out: &Sender<Event>,
    sent_bytes: &AtomicU64,
    silent_limit: Duration,
) -> Result<(), SttError> {
    // Something may already be buffered from the handshake (session_started).
    let mut readable = true;
    // The liveness watchdog: the first speech sent since the service last said anything. The
    // wait below has a deadline only while this is set — a caller who is silent is not
    // answered by the service either, and a wait with nothing to wait for has no deadline.
    let mut unanswered_speech: Option<Instant> = None;
    let mut heard = stream.messages_heard();
    loop {
        if readable {
            // Until WouldBlock: that also empties rustls' and tungstenite's buffers, so the
            // socket's readiness is again the whole truth for the next wait.
            while let Some(event) = stream.try_next_event()? {
                let forwarded = match event {
                    SttEvent::Partial(text) => out.send(Event::Stt(SttOut::Partial(text))),
                    SttEvent::Committed(text) => out.send(Event::Stt(SttOut::Committed(text))),
                    SttEvent::SessionStarted(id) => {
                        log::debug!(sessionId = id.as_str(); "stt.session_started");
                        Ok(())
                    }
                };
                if forwarded.is_err() {
                    return Ok(());
                }
            }
            if stream.messages_heard() != heard {
                heard = stream.messages_heard();
                unanswered_speech = None;
            }
        }
        let deadline = unanswered_speech.map(|since| since + silent_limit);
        if let Some(since) = unanswered_speech.filter(|s| s.elapsed() >= silent_limit) {
            return Err(SttError::Unresponsive(since.elapsed()));
        }
        let fd = stream
            .fd()
            .ok_or_else(|| SttError::Protocol("the socket has no descriptor".into()))?;
        let mut watches = [
            Watch::read_write(fd, stream.wants_write()),
            Watch::read(audio.fd()),
        ];
        // The next event is audio, a transcript, or the end of the call; the only deadline is
        // the watchdog's, while speech waits for any word from the service.
        poll::wait(&mut watches, deadline)
            .map_err(|e| SttError::Closed(format!("waiting for the socket: {e}")))?;
        let (writable, fed) = (watches[0].writable(), watches[1].readable());
        readable = watches[0].readable();
        if fed {
            for frame in audio.take() {
                let payload = frame.payload;
                stream.send_audio(&payload)?;
                if frame.loud && unanswered_speech.is_none() {
                    unanswered_speech = Some(Instant::now());
                }
                // Base64 without decoding: every 4 characters are 3 bytes, minus the padding.
                let padding = payload.bytes().rev().take_while(|b| *b == b'=').count();
                let bytes = (payload.len() / 4 * 3).saturating_sub(padding);
                sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            if !audio.is_open() {
                return Ok(());
            }
        }
        if writable && stream.wants_write() {
            stream.flush()?;
        }
    }
}
