//! Heap allocations per media frame on a call's two hot paths, in the steady state, counted by
//! a global allocator (a binary of its own: a global allocator is per binary).
//!
//! - Inbound: a Twilio `media` message read from the call's real socket (`TwilioSocket`'s
//!   reading half) → `TwilioReader::on_message` (parse, decode, loudness, into the chunk) →
//!   `SttStream::send_audio` for each whole chunk, written to a speech-to-text simulator on
//!   loopback. Every function is the one the server's `call-N-rx` thread runs.
//! - Outbound: μ-law → `call::socket::send_media`, which the call thread runs for the machine's
//!   `Action::Media`, written through the real socket's writing half.
//!
//! Only the test thread's allocations are counted (a thread-local switch), so the simulator's
//! threads and the test harness do not blur the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::bounded;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use cotrackpro_voice::call::reader::{Flow, TwilioReader};
use cotrackpro_voice::call::socket::{self, TwilioSocket};
use cotrackpro_voice::call::Event;
use cotrackpro_voice::config::{BaseUrl, Secret};
use cotrackpro_voice::providers::elevenlabs_stt::{SttSettings, SttStream};
use cotrackpro_voice::sim::elevenlabs_stt::{SttSim, SttSimOptions};
use cotrackpro_voice::sim::{voice, SimTiming, Simulators};
use cotrackpro_voice::tls::{self, ExtraCas};
use cotrackpro_voice::twilio::media_messages::MediaFrames;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while a thread's locals are being torn down.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning what it returned and the allocations this thread made meanwhile.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}

#[test]
fn the_counter_sees_allocations() {
    let (boxed, allocations) = counted(|| Box::new([0u8; 64]));
    assert_eq!(allocations, 1);
    drop(boxed);
    let (text, allocations) = counted(|| serde_json::json!({"a": [1, 2]}).to_string());
    assert!(allocations >= 3, "{allocations}");
    drop(text);
}

/// Frames before counting starts: buffers grow to their size, the channel and the sockets
/// settle.
const WARM_UP: usize = 100;
/// Frames counted.
const COUNTED: usize = 500;

/// A connected pair on loopback: the server's end split as a call gets it, and the peer's end.
fn twilio_pair() -> (TwilioSocket, WebSocket<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, addr) = listener.accept().unwrap();
    for tcp in [&ours, &peer] {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let split = TwilioSocket::split(ours, Vec::new(), addr).unwrap();
    (split, WebSocket::from_raw_socket(peer, Role::Client, None))
}

/// The caller's speech in 20 ms frames, as Twilio's `media` messages (its documented shape).
fn twilio_media(count: usize) -> Vec<String> {
    let mut audio = Vec::new();
    while audio.len() < count * 160 {
        audio.extend(voice::speak("one two three four five six seven", 150.0));
    }
    audio
        .chunks(160)
        .take(count)
        .enumerate()
        .map(|(n, frame)| {
            let payload = base64::engine::general_purpose::STANDARD.encode(frame);
            format!(
                r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{payload}"}},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}}"#,
                n + 2,
                n + 1,
                n * 20
            )
        })
        .collect()
}

/// Where speech-to-text is: a plain simulator, or the simulators over TLS (as in production),
/// kept alive while it is used.
enum Stt {
    Plain(SttSim),
    Tls(Box<Simulators>),
}

impl Stt {
    fn start(tls: bool) -> Stt {
        if !tls {
            let sim = SttSim::start(SttSimOptions::default()).unwrap();
            sim.keep_audio(false);
            return Stt::Plain(sim);
        }
        let sims = Simulators::start_tls(SimTiming::default()).unwrap();
        sims.elevenlabs.stt().keep_audio(false);
        let cas = ExtraCas::from_pem_file(sims.ca_file().unwrap()).unwrap();
        tls::trust(&cas);
        Stt::Tls(Box::new(sims))
    }

    fn ws_base(&self) -> String {
        match self {
            Stt::Plain(sim) => sim.base_url(),
            Stt::Tls(sims) => sims
                .env()
                .into_iter()
                .find(|(k, _)| *k == "ELEVENLABS_WS_BASE")
                .map(|(_, v)| v)
                .unwrap(),
        }
    }
}

/// Allocations per inbound frame, Twilio's socket to the STT socket, with chunks of `chunk`.
fn inbound_allocations_per_frame(chunk: Duration, tls: bool) -> f64 {
    let sim = Stt::start(tls);
    let settings = SttSettings {
        ws_base: BaseUrl::parse(&sim.ws_base(), &["ws", "wss"]).unwrap(),
        api_key: Secret::new(SttSimOptions::default().api_key),
        model_id: "scribe_v2_realtime".into(),
        language_code: "en".into(),
        vad_silence_secs: 0.5,
        connect_timeout: Duration::from_secs(5),
        silent_service_limit: Duration::from_secs(20),
        chunk,
        commit: cotrackpro_voice::providers::elevenlabs_stt::CommitStrategy::Vad,
    };
    let mut stt = SttStream::open(&settings).unwrap();
    let chunk_bytes = chunk.as_millis() as usize / 20 * 160;

    let (twilio, mut caller) = twilio_pair();
    let mut reading = twilio.reader;
    let (events_tx, _events) = bounded::<Event>(16);
    let voiced = AtomicU64::new(0);
    let mut reader = TwilioReader::new(&events_tx, &voiced, Instant::now());

    let messages = twilio_media(WARM_UP + COUNTED);
    let mut total = 0;
    let mut sent_bytes = 0;
    for (n, text) in messages.iter().enumerate() {
        caller.send(Message::text(text.as_str())).unwrap();
        let (forwarded, allocations) = counted(|| {
            let message = reading.read().unwrap();
            assert_eq!(reader.on_message(message), Flow::Go);
            // What the reader does with a whole chunk.
            let (audio, _) = reader.chunk();
            if audio.len() < chunk_bytes {
                return 0;
            }
            stt.send_audio(audio).unwrap();
            let bytes = audio.len() as u64;
            reader.clear_chunk();
            bytes
        });
        if n >= WARM_UP {
            total += allocations;
        }
        sent_bytes += forwarded;
        // What the service says back is read outside the count (a few a second, not per frame).
        while stt.try_next_event().unwrap().is_some() {}
        if stt.wants_write() {
            stt.flush().unwrap();
        }
    }
    // Every frame went through, and was heard as speech.
    let (rest, _) = reader.chunk();
    if !rest.is_empty() {
        stt.send_audio(rest).unwrap();
        sent_bytes += rest.len() as u64;
    }
    assert_eq!(sent_bytes, messages.len() as u64 * 160);
    assert_ne!(voiced.load(std::sync::atomic::Ordering::Relaxed), 0);
    total as f64 / COUNTED as f64
}

#[test]
fn an_inbound_frame_allocates_nothing_on_its_way_to_speech_to_text() {
    // Before this path was reworked: 31 a frame, counted the same way (a JSON value, the
    // payload copied as a String into the feed, a second JSON value and its text for the STT
    // message). Now none: the message is parsed in place, decoded into the reader's
    // buffer, joined in the chunk's buffer and encoded into the STT message's.
    for chunk_ms in [20, 100] {
        let per_frame = inbound_allocations_per_frame(Duration::from_millis(chunk_ms), false);
        eprintln!("inbound, {chunk_ms} ms chunks: {per_frame:.3} allocations per frame");
        assert!(per_frame <= 0.01, "{per_frame:.3} allocations per frame");
    }
}

#[test]
fn over_tls_what_is_left_is_rustls_own() {
    // Production's STT socket is TLS: rustls encodes each record it encrypts into a new buffer
    // and queues that (`CommonState::queue_tls_message`): one allocation per message written,
    // which no setting of ours reaches. With
    // 20 ms chunks that is a message, so an allocation, per frame; longer chunks divide it.
    for (chunk_ms, bound) in [(20, 1.01), (100, 0.21)] {
        let per_frame = inbound_allocations_per_frame(Duration::from_millis(chunk_ms), true);
        eprintln!("inbound over TLS, {chunk_ms} ms chunks: {per_frame:.3} allocations per frame");
        assert!(per_frame <= bound, "{per_frame:.3} allocations per frame");
    }
}

#[test]
fn an_outbound_frame_allocates_nothing_on_its_way_to_twilio() {
    let (twilio, mut caller) = twilio_pair();
    let mut writer = twilio.writer;
    let mut frames = MediaFrames::new("MZ18ad3ab5a668481ce02b83e7395059f0");
    let audio = voice::speak("one two three four five six seven eight nine ten", 150.0);
    // Text-to-speech hands the call audio in pieces of several frames.
    let piece = &audio[..160 * 5];
    let pieces = (WARM_UP + COUNTED) / 5;
    let mut total = 0;
    for n in 0..pieces {
        // The call thread queues a piece's frames, then writes them at the end of its step.
        let ((), allocations) = counted(|| {
            socket::send_media(&mut writer, &mut frames, piece).unwrap();
            writer.flush().unwrap();
        });
        if n >= WARM_UP / 5 {
            total += allocations;
        }
        // The caller gets each frame as Twilio's `media` message carrying its audio.
        for frame in piece.chunks(160) {
            let Message::Text(text) = caller.read().unwrap() else {
                panic!("not text")
            };
            let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            assert_eq!(value["event"], "media");
            let payload = base64::engine::general_purpose::STANDARD
                .decode(value["media"]["payload"].as_str().unwrap())
                .unwrap();
            assert_eq!(payload, frame);
        }
    }
    let per_frame = total as f64 / COUNTED as f64;
    // Before: 17 a frame, counted the same way (the payload's String, a JSON value, its text).
    // The frame is now built in a buffer that tungstenite's copy frees for the next.
    eprintln!("outbound: {per_frame:.3} allocations per frame");
    assert!(per_frame <= 0.01, "{per_frame:.3} allocations per frame");
}
