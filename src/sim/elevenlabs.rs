//! Both ElevenLabs WebSockets — text-to-speech `stream-input` and realtime speech-to-text — on
//! one port, as the service has them under one host (`ELEVENLABS_WS_BASE` is one setting).
//! A connection goes to the simulator its request path names.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::elevenlabs_stt::{SttSim, SttSimOptions};
use super::elevenlabs_tts::{TtsSim, TtsSimOptions};
use super::listener::Listener;

pub struct ElevenLabsSim {
    listener: Listener,
    tts: TtsSim,
    stt: SttSim,
}

impl ElevenLabsSim {
    pub fn start(tts: TtsSimOptions, stt: SttSimOptions) -> io::Result<ElevenLabsSim> {
        let (tts, serve_tts) = TtsSim::detached(tts);
        let (stt, serve_stt) = SttSim::detached(stt);
        let listener = Listener::start("sim-elevenlabs", move |stream| {
            if request_path(&stream)?.starts_with("/v1/speech-to-text/") {
                serve_stt(stream)
            } else {
                serve_tts(stream)
            }
        })?;
        Ok(ElevenLabsSim { listener, tts, stt })
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

/// The path of the HTTP request waiting on `stream`, read without consuming it.
fn request_path(stream: &TcpStream) -> io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.peek(&mut buf)?;
        let head = &buf[..n];
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&head[..end]);
            return Ok(line.split_whitespace().nth(1).unwrap_or("").to_string());
        }
        if n == buf.len() || n == 0 || Instant::now() > deadline {
            return Ok(String::new());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
