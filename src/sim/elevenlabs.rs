//! Both ElevenLabs WebSockets — text-to-speech `stream-input` and realtime speech-to-text — and
//! the REST text-to-speech `generate-audio` uses, on one port, as the service has them under one
//! host. A connection goes to the simulator its request line names.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::elevenlabs_stt::{SttSim, SttSimOptions};
use super::elevenlabs_tts::{TtsSim, TtsSimOptions};
use super::http::{Responder, SimRequest};
use super::listener::Listener;

pub struct ElevenLabsSim {
    listener: Listener,
    tts: TtsSim,
    stt: SttSim,
}

impl ElevenLabsSim {
    pub fn start(tts: TtsSimOptions, stt: SttSimOptions) -> io::Result<ElevenLabsSim> {
        let (stt, serve_stt) = SttSim::detached(stt);
        let key = tts.api_key.clone();
        let (tts, serve_tts) = TtsSim::detached(tts);
        let listener = Listener::start("sim-elevenlabs", move |stream| {
            let (method, path) = request_line(&stream)?;
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
        format!("http://{}", self.listener.addr())
    }

    /// The base URL to set as `ELEVENLABS_WS_BASE`.
    pub fn ws_base_url(&self) -> String {
        format!("ws://{}", self.listener.addr())
    }

    pub fn tts(&self) -> &TtsSim {
        &self.tts
    }

    pub fn stt(&self) -> &SttSim {
        &self.stt
    }
}

/// The method and path of the HTTP request waiting on `stream`, read without consuming it.
fn request_line(stream: &TcpStream) -> io::Result<(String, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.peek(&mut buf)?;
        let head = &buf[..n];
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&head[..end]);
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or("").to_string();
            return Ok((method, words.next().unwrap_or("").to_string()));
        }
        if n == buf.len() || n == 0 || Instant::now() > deadline {
            return Ok((String::new(), String::new()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
