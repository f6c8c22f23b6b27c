//! The ElevenLabs WebSockets — text-to-speech (`multi-stream-input` and `stream-input`) and
//! realtime speech-to-text — and the REST text-to-speech `generate-audio` uses, on one port, as
//! the service has them under one host. A connection goes to the simulator its request line names.

use std::io;
use std::time::Duration;

use super::elevenlabs_stt::{SttSim, SttSimOptions};
use super::elevenlabs_tts::{TtsSim, TtsSimOptions};
use super::http::{Responder, SimRequest};
use super::listener::{Listener, SimStream, Tls};

pub struct ElevenLabsSim {
    listener: Listener,
    tts: TtsSim,
    stt: SttSim,
}

impl ElevenLabsSim {
    pub fn start(tts: TtsSimOptions, stt: SttSimOptions) -> io::Result<ElevenLabsSim> {
        ElevenLabsSim::start_with_tls(tts, stt, None)
    }

    /// [`ElevenLabsSim::start`], serving `https://` and `wss://localhost` when `tls` is given.
    pub fn start_with_tls(
        tts: TtsSimOptions,
        stt: SttSimOptions,
        tls: Tls,
    ) -> io::Result<ElevenLabsSim> {
        let (stt, serve_stt) = SttSim::detached(stt);
        let key = tts.api_key.clone();
        let (tts, serve_tts) = TtsSim::detached(tts);
        let listener = Listener::start("sim-elevenlabs", tls, move |mut stream| {
            let (method, path) = request_line(&mut stream)?;
            if path.starts_with("/v1/speech-to-text/") {
                serve_stt(stream)
            } else if method == "POST" {
                super::http::serve_connection(stream, &|req: &SimRequest, res: &mut Responder| {
                    super::elevenlabs_tts::rest(req, res, &key)
                })
            } else {
                serve_tts(stream)
            }
        })?;
        Ok(ElevenLabsSim { listener, tts, stt })
    }

    /// Delays each new connection by the network round trip `rtt` (its handshake and its
    /// first response; see `listener::Listener::set_rtt`).
    pub fn set_rtt(&self, rtt: Duration) {
        self.listener.set_rtt(rtt);
    }

    /// The base URL to set as `ELEVENLABS_API_BASE` (REST text-to-speech).
    pub fn api_base_url(&self) -> String {
        self.listener.url("http")
    }

    /// The base URL to set as `ELEVENLABS_WS_BASE`.
    pub fn ws_base_url(&self) -> String {
        self.listener.url("ws")
    }

    pub fn tts(&self) -> &TtsSim {
        &self.tts
    }

    pub fn stt(&self) -> &SttSim {
        &self.stt
    }
}

/// The method and path of the HTTP request waiting on `stream`, read without consuming it.
fn request_line(stream: &mut SimStream) -> io::Result<(String, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let line = String::from_utf8_lossy(stream.peek_line(1024)?);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    Ok((method, words.next().unwrap_or("").to_string()))
}
