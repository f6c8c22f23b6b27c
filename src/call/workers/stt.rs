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
/// `reconnects` times. `sent_bytes` counts the audio forwarded (what ElevenLabs bills),
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
        let ended = stt_session(&mut stream, &audio, out, sent_bytes);
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
        log::warn!(error:% = failure, attempt = failures; "stt.reconnect");
    }
}

/// One session: waits on the provider socket and the audio feed together, forwarding audio
/// and transcripts as they come. `Ok` when the call is over (feed closed, or nobody listens),
/// `Err` when the session failed.
fn stt_session(
    stream: &mut SttStream,
    audio: &AudioInbox,
    out: &Sender<Event>,
    sent_bytes: &AtomicU64,
) -> Result<(), SttError> {
    // Something may already be buffered from the handshake (session_started).
    let mut readable = true;
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
        }
        let fd = stream
            .fd()
            .ok_or_else(|| SttError::Protocol("the socket has no descriptor".into()))?;
        let mut watches = [
            Watch::read_write(fd, stream.wants_write()),
            Watch::read(audio.fd()),
        ];
        // No deadline: the next event is audio, a transcript, or the end of the call.
        poll::wait(&mut watches, None)
            .map_err(|e| SttError::Closed(format!("waiting for the socket: {e}")))?;
        let (writable, fed) = (watches[0].writable(), watches[1].readable());
        readable = watches[0].readable();
        if fed {
            for payload in audio.take() {
                stream.send_audio(&payload)?;
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
