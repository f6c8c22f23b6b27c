//! The media port and a call under abuse, against the real server on 127.0.0.1 (issue 15): a
//! flood of idle connections, audio before `start`, a stream reusing a finished call's
//! CallSid, status callbacks in every legitimate order, a flood of key presses, a client that
//! never echoes marks, an oversized message and a close frame. Each test is bounded in time
//! and in the connections and messages it makes.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cotrackpro_voice::call::machine::MAX_DTMF_PER_CALL;
use cotrackpro_voice::media::server::{MAX_PENDING_PER_SOURCE, START_TIMEOUT};
use cotrackpro_voice::metrics::MediaDrop;
use cotrackpro_voice::records::event::CallStatus;
use cotrackpro_voice::sim::caller::{
    new_sid, open_stream, stream_parameters, CallerOptions, Heard, SimCaller,
};
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::call::Rig;

const WAIT: Duration = Duration::from_secs(15);

const UPGRADE: &str = "GET /call/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A caller dialled in through the webhook, as Twilio does, with these options.
fn dial(rig: &Rig, options: CallerOptions) -> SimCaller {
    SimCaller::dial(rig.server.addr, rig.server.media_addr, "parent", options)
        .expect("caller connects")
}

fn fast() -> CallerOptions {
    CallerOptions {
        playback_speed: 25,
        ..CallerOptions::default()
    }
}

/// A raw stream of a call the webhook answered: upgrade, `connected`, `start`.
fn raw_stream(rig: &Rig, call_sid: &str) -> WebSocket<TcpStream> {
    let parameters = stream_parameters(rig.server.addr, "parent", call_sid).expect("TwiML");
    open_stream(
        rig.server.media_addr,
        &CallerOptions {
            call_sid: call_sid.to_string(),
            parameters,
            ..CallerOptions::default()
        },
    )
    .expect("the stream")
}

/// Reads until the server's close frame; its code, or the error that came instead.
fn close_code(socket: &mut WebSocket<TcpStream>) -> Result<Option<u16>, String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match socket.read() {
            Ok(Message::Close(frame)) => return Ok(frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(err) if cotrackpro_voice::providers::ws::is_timeout(&err) => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    Err("no close within the wait".into())
}

/// About 100 idle connections a second from one source (half of them upgraded and then
/// silent, half silent from the start) while five real calls come in: each real call is
/// greeted, the flood never holds more than its share of the waiting places, and the
/// displaced connections are counted.
#[test]
fn a_flood_of_idle_connections_from_one_source_does_not_keep_real_calls_out() {
    let rig = Rig::start(&[]);
    let addr = rig.server.media_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = stop.clone();
    let flood = std::thread::Builder::new()
        .name("test-flood".into())
        .spawn(move || {
            let mut held = Vec::new();
            let mut n = 0u32;
            // At most 600 connections (6 s), fewer if the calls are through sooner.
            while !flooding.load(Ordering::Relaxed) && n < 600 {
                if let Ok(mut stream) = TcpStream::connect(addr) {
                    if n.is_multiple_of(2) {
                        let _ = stream.write_all(UPGRADE.as_bytes());
                    }
                    held.push(stream);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
        .expect("the flood starts");
    std::thread::sleep(Duration::from_millis(500));
    let mut most_waiting = 0;
    for i in 0..5 {
        let caller = dial(&rig, fast());
        assert!(
            caller.wait_for_echoes(1, WAIT),
            "real call {i} greeted during the flood: {:?}",
            caller.log().len()
        );
        most_waiting = most_waiting.max(
            rig.server
                .app()
                .metrics
                .media_waiting
                .load(Ordering::Relaxed) as usize,
        );
        let call_sid = caller.call_sid().to_string();
        caller.hang_up();
        // Ended (the next call does not overlap it), and recorded as a normal call.
        assert_eq!(
            rig.record_after_end(&call_sid).status,
            CallStatus::Completed
        );
    }
    stop.store(true, Ordering::Relaxed);
    let attempts = flood.join().expect("the flood ends");
    assert!(attempts >= 50, "the flood ran: {attempts}");
    let metrics = &rig.server.app().metrics;
    assert!(
        metrics.media_dropped(MediaDrop::PeerLimit) > 0,
        "the flood displaced itself"
    );
    // The flood's share, plus a real call's own connection (counted by this server, not by
    // thread names: other tests' servers run in this process too).
    assert!(
        most_waiting <= MAX_PENDING_PER_SOURCE + 1,
        "{most_waiting} waiting"
    );
    assert_eq!(
        rig.sims.elevenlabs.stt().sessions(),
        5,
        "speech-to-text only for the real calls"
    );
    assert_eq!(rig.server.app().calls.peak(), 1, "no slot for the flood");
}

/// A close frame before `start` is answered with one too.
#[test]
fn a_close_before_start_is_answered_with_a_close() {
    let rig = Rig::start(&[]);
    let mut socket = upgraded(&rig);
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .expect("the close is sent");
    assert_eq!(close_code(&mut socket), Ok(Some(1000)));
    assert_eq!(rig.server.app().calls.peak(), 0);
}

/// A stream that sends audio and never `start`: no call slot, no speech-to-text, the audio
/// counted and dropped, and the stream closed (1008) at the start deadline.
#[test]
fn audio_before_start_is_dropped_and_a_stream_without_start_is_closed() {
    let rig = Rig::start(&[]);
    let mut socket = upgraded(&rig);
    let frame = json!({"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                 "payload": "/////w=="}});
    for _ in 0..10 {
        socket
            .send(Message::text(frame.to_string()))
            .expect("a frame");
    }
    let opened = Instant::now();
    let code = close_code(&mut socket);
    assert_eq!(code, Ok(Some(1008)));
    let waited = opened.elapsed();
    assert!(
        waited >= START_TIMEOUT - Duration::from_millis(500) && waited < START_TIMEOUT * 2,
        "{waited:?}"
    );
    let app = rig.server.app();
    assert_eq!(
        app.metrics
            .media_frames_before_start
            .load(Ordering::Relaxed),
        10
    );
    assert_eq!(app.metrics.media_dropped(MediaDrop::StartTimeout), 1);
    assert_eq!(app.calls.peak(), 0, "it never held a call slot");
    assert_eq!(rig.sims.elevenlabs.stt().sessions(), 0);
}

/// A finished call's CallSid cannot open a stream again, even with a fresh token (the webhook
/// answering the same CallSid again mints one): the stream is closed (1008) and the record,
/// transcript included, stays as the call left it.
#[test]
fn a_second_stream_reusing_a_finished_calls_sid_cannot_rewrite_its_record() {
    let rig = Rig::start(&[]);
    let caller = dial(&rig, fast());
    assert!(caller.wait_for_echoes(1, WAIT));
    let call_sid = caller.call_sid().to_string();
    caller.hang_up();
    let before = rig.record_after_end(&call_sid);
    assert_eq!(before.status, CallStatus::Completed);
    assert!(!before.transcript.entries().is_empty());
    let file = rig.server.records().path().to_path_buf();
    let lines_before = std::fs::read_to_string(&file).expect("records").len();

    let mut second = raw_stream(&rig, &call_sid);
    assert_eq!(close_code(&mut second), Ok(Some(1008)));
    drop(second);
    let after = rig.record_after_end(&call_sid);
    assert_eq!(after, before);
    let lines_after = std::fs::read_to_string(&file).expect("records").len();
    assert_eq!(lines_after, lines_before, "no line was written");
    assert_eq!(
        rig.sims.elevenlabs.stt().sessions(),
        1,
        "the second stream reached no provider"
    );
}

/// Status callbacks in Twilio's legitimate orders: progress before the stream, the final
/// `completed` after it closed (it completes the record), and nothing after that.
#[test]
fn status_callbacks_before_and_after_the_stream_complete_the_record() {
    let rig = Rig::start(&[]);
    let call_sid = new_sid("CA");
    let status = |status: &str, seq: &str, duration: Option<&str>| {
        let mut form = vec![
            ("CallSid", call_sid.as_str()),
            ("CallStatus", status),
            ("SequenceNumber", seq),
        ];
        if let Some(d) = duration {
            form.push(("CallDuration", d));
        }
        rig.server
            .request("POST", "/call/status")
            .form(&form)
            .send()
            .status
    };
    // Before the webhook answered: no record is made.
    assert_eq!(status("initiated", "0", None), 204);
    assert!(rig.server.records().summary(&key(&call_sid)).is_none());
    let caller = dial(
        &rig,
        CallerOptions {
            call_sid: call_sid.clone(),
            ..fast()
        },
    );
    assert_eq!(status("in-progress", "2", None), 204);
    assert!(caller.wait_for_echoes(1, WAIT));
    caller.hang_up();
    let ended = rig.record_after_end(&call_sid);
    assert_eq!(ended.status, CallStatus::Completed);
    assert_eq!(status("completed", "3", Some("42")), 204);
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.twilio_status.as_deref(), Some("completed"));
    assert_eq!(record.duration_secs, Some(42));
    assert_eq!(record.transcript, ended.transcript);
    // A replay after Twilio's final status changes nothing.
    assert_eq!(status("failed", "4", Some("9999")), 204);
    assert_eq!(rig.record_after_end(&call_sid), record);
}

fn key(call_sid: &str) -> cotrackpro_voice::records::index::SidKey {
    cotrackpro_voice::records::index::sid_key(call_sid).expect("a call SID")
}

/// 300 key presses of 60,000 characters and 500 real ones: only the real ones are kept, up
/// to the per-call limit, and the record's line stays small.
#[test]
fn a_flood_of_key_presses_is_bounded() {
    let rig = Rig::start(&[("REPROMPT_AFTER_MS", "60000")]);
    let caller = dial(&rig, fast());
    assert!(caller.wait_for_echoes(1, WAIT));
    let huge = "7".repeat(60_000);
    let press = |digit: &str| {
        json!({"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "3",
               "dtmf": {"track": "inbound_track", "digit": digit}})
        .to_string()
    };
    for _ in 0..300 {
        caller.send_raw(&press(&huge));
    }
    for _ in 0..500 {
        caller.send_raw(&press("5"));
    }
    let app = rig.server.app();
    let call_sid = caller.call_sid().to_string();
    // The phone sends what is queued with its next frame (20 ms); `stop` then follows the key
    // presses on the socket, so the call has seen them all when it ends.
    std::thread::sleep(Duration::from_millis(1_000));
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    let keys = record
        .transcript
        .entries()
        .iter()
        .filter(|e| e.text.starts_with("[keypad"))
        .count();
    assert_eq!(keys, MAX_DTMF_PER_CALL as usize);
    assert_eq!(
        app.metrics.dtmf_dropped.load(Ordering::Relaxed),
        300 + 500 - u64::from(MAX_DTMF_PER_CALL)
    );
    let text = std::fs::read_to_string(rig.server.records().path()).expect("records");
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 64 * 1024, "a record line of {longest} bytes");
    assert!(!text.contains(&huge[..1000]));
}

/// A client that never echoes a mark: each piece is taken as played after its deadline, so
/// the reprompt and then the goodbye come, and the call ends (completed, not held open).
#[test]
fn marks_never_echoed_still_bring_the_reprompt_and_the_end_of_the_call() {
    let rig = Rig::start(&[
        ("REPROMPT_AFTER_MS", "1000"),
        ("MAX_REPROMPTS", "1"),
        ("MARK_TIMEOUT_MS", "500"),
    ]);
    let caller = dial(
        &rig,
        CallerOptions {
            echo_marks: false,
            ..fast()
        },
    );
    let started = Instant::now();
    // The greeting, the reprompt and the goodbye are each played out in real time before
    // their marks are given up on: well under a minute.
    assert!(caller.wait_closed(Duration::from_secs(60)));
    let log = caller.log();
    let marks: Vec<String> = log
        .iter()
        .filter_map(|(_, h)| match h {
            Heard::Mark(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(marks, ["0-0", "0-1", "0-2"], "greeting, reprompt, goodbye");
    assert!(!log.iter().any(|(_, h)| matches!(h, Heard::Echoed(_))));
    assert_eq!(
        log.last().map(|(_, h)| h.clone()),
        Some(Heard::Closed(Some(1000)))
    );
    let record = rig.record_after_end(caller.call_sid());
    assert_eq!(record.status, CallStatus::Completed);
    assert!(
        record.transcript.entries().is_empty(),
        "nothing confirmed heard"
    );
    assert!(
        rig.server
            .app()
            .metrics
            .marks_overdue
            .load(Ordering::Relaxed)
            >= 3
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// A message over the size limit is answered with close code 1009, not a reset.
#[test]
fn an_oversized_message_is_closed_with_1009() {
    let rig = Rig::start(&[]);
    let call_sid = new_sid("CA");
    let socket = raw_stream(&rig, &call_sid);
    let big = json!({"event": "media", "media": {"payload": "A".repeat(200 * 1024)}});
    closes_failed(&rig, socket, &call_sid, &big, 1009, "over the size limit");
}

/// Sends `message`; the server closes with `code`, and the call's record says it failed for
/// `reason`.
fn closes_failed(
    rig: &Rig,
    mut socket: WebSocket<TcpStream>,
    call_sid: &str,
    message: &serde_json::Value,
    code: u16,
    reason: &str,
) {
    socket
        .send(Message::text(message.to_string()))
        .expect("the message is sent");
    assert_eq!(close_code(&mut socket), Ok(Some(code)));
    drop(socket);
    let record = rig.record_after_end(call_sid);
    assert_eq!(record.status, CallStatus::Failed);
    let why = record.end_reason.unwrap_or_default();
    assert!(why.contains(reason), "{why}");
}

/// The WebSocket upgrade alone, the socket reading with a short timeout.
fn upgraded(rig: &Rig) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(rig.server.media_addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let url = format!("ws://{}/call/stream", rig.server.media_addr);
    tungstenite::client(url, stream).expect("the upgrade").0
}

/// A close frame from the client is answered with a close frame carrying its code.
#[test]
fn a_close_frame_is_answered_with_a_close_frame() {
    let rig = Rig::start(&[]);
    let call_sid = new_sid("CA");
    let mut socket = raw_stream(&rig, &call_sid);
    // The greeting starts: the call is live.
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Message::Text(_)) = socket.read() {
            break;
        }
    }
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .expect("the close is sent");
    assert_eq!(close_code(&mut socket), Ok(Some(1001)));
    drop(socket);
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
}

/// A stream whose audio is not 8 kHz μ-law is refused after its (good) token was checked:
/// the call's record gets the verdict and does not stay `active`.
#[test]
fn a_wrong_media_format_ends_the_call_with_its_verdict_on_file() {
    let rig = Rig::start(&[]);
    let call_sid = new_sid("CA");
    let parameters: serde_json::Map<String, serde_json::Value> =
        stream_parameters(rig.server.addr, "parent", &call_sid)
            .expect("TwiML")
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
    assert_eq!(
        rig.record_after_end(&call_sid).status,
        CallStatus::Active,
        "the webhook made the record"
    );
    let socket = upgraded(&rig);
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
        "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": call_sid,
                  "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1},
                  "customParameters": parameters}});
    closes_failed(
        &rig,
        socket,
        &call_sid,
        &start,
        1000,
        "unsupported media format",
    );
    assert_eq!(rig.sims.elevenlabs.stt().sessions(), 0);
}

/// An upgraded, silent connection the proxy on this machine forwarded for `client`.
fn upgraded_for(rig: &Rig, client: &str) -> WebSocket<TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(rig.server.media_addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let mut request = format!("ws://{}/call/stream", rig.server.media_addr)
        .into_client_request()
        .expect("a request");
    request.headers_mut().insert(
        "X-Forwarded-For",
        format!("6.6.6.6, {client}")
            .parse()
            .expect("a header value"),
    );
    // The 101 comes after the server has read the head, so the source is known by then.
    tungstenite::client(request, stream).expect("the upgrade").0
}

/// Whether the server still holds `socket` open (it says nothing before `start`).
fn still_open(socket: &mut WebSocket<TcpStream>) -> bool {
    matches!(socket.read(), Err(err) if cotrackpro_voice::providers::ws::is_timeout(&err))
}

/// The flood limits key a connection by the client a `TRUSTED_PROXY` forwarded (by default
/// the proxy on this machine), the webhook port's rule: one client's flood through the proxy
/// displaces only its own connections. With `TRUSTED_PROXY=none` the proxy is one source.
#[test]
fn the_flood_limits_believe_forwarded_for_only_from_a_trusted_proxy() {
    let rig = Rig::start(&[]);
    let mut bystander = upgraded_for(&rig, "192.0.2.2");
    let mut flood: Vec<_> = (0..=MAX_PENDING_PER_SOURCE)
        .map(|_| upgraded_for(&rig, "192.0.2.1"))
        .collect();
    let metrics = &rig.server.app().metrics;
    assert_eq!(
        metrics.media_dropped(MediaDrop::PeerLimit),
        1,
        "one over its share"
    );
    assert!(!still_open(&mut flood[0]), "the flood's oldest made room");
    assert!(
        still_open(&mut bystander),
        "another client is not displaced"
    );
    drop(rig);

    let rig = Rig::start(&[("TRUSTED_PROXY", "none")]);
    let mut bystander = upgraded_for(&rig, "192.0.2.2");
    let _flood: Vec<_> = (0..MAX_PENDING_PER_SOURCE)
        .map(|_| upgraded_for(&rig, "192.0.2.1"))
        .collect();
    assert_eq!(
        rig.server.app().metrics.media_dropped(MediaDrop::PeerLimit),
        1
    );
    assert!(
        !still_open(&mut bystander),
        "untrusted, every connection from the proxy is one source"
    );
}
