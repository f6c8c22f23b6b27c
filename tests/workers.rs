//! A call's speech workers against the simulators, with no tick: speech-to-text
//! ([`SttLink`], driven here as the Twilio reader drives it) forwards audio and transcripts as
//! they come and sleeps in between, and ends with its reader; the TTS
//! worker opens its one socket at once and sleeps while it holds it, a barge-in cuts a piece
//! being spoken without costing the socket, and the call's end ends it at once.

use std::sync::atomic::AtomicU64;

use cotrackpro_voice::providers::cancel::Cancel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};

use cotrackpro_voice::call::workers::{self, Speech, SttLink, SttOut, TtsHandle, TtsJob, TtsOut};
use cotrackpro_voice::call::Event;
use cotrackpro_voice::config::{BaseUrl, Secret};
use cotrackpro_voice::poll::{self, Watch};
use cotrackpro_voice::providers::elevenlabs_stt::SttSettings;
use cotrackpro_voice::providers::elevenlabs_tts::TtsSettings;
use cotrackpro_voice::sim::elevenlabs_stt::{SttSim, SttSimOptions};
use cotrackpro_voice::sim::elevenlabs_tts::{TtsSim, TtsSimOptions};
use cotrackpro_voice::sim::voice;

const VOICE: &str = "EXAVITQu4vr4xnSDxMaL";

/// Voluntary context switches of this process's thread named `name` (Linux): each is a sleep
/// the thread woke from.
fn wakeups(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        if field("Name:") == Some(name) {
            return field("voluntary_ctxt_switches:").unwrap().parse().unwrap();
        }
    }
    panic!("no thread named {name}");
}

fn ended_within(handle: &JoinHandle<()>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn transcript(events: &Receiver<Event>, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        match events.recv_deadline(deadline).ok()? {
            Event::Stt(SttOut::Committed(text)) => return Some(text),
            Event::Stt(SttOut::Lost(why)) => panic!("stt lost: {why}"),
            _ => {}
        }
    }
}

#[test]
fn speech_to_text_forwards_audio_at_once_sleeps_between_and_ends_with_the_reader() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_utterances(["Hello there".to_string()]);
    let driver = LinkDriver::start("w-stt", stt_settings(&sim, Duration::from_secs(20)), 3);

    // Once the session is up, the link wakes its reader for nothing: no read timeout, no
    // tick (a 20 ms tick would be about 15 wake-ups here).
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = wakeups("w-stt");
    std::thread::sleep(Duration::from_millis(300));
    let idle = wakeups("w-stt") - before;
    assert!(idle <= 2, "the idle reader woke {idle} times in 300 ms");

    // A chunk is forwarded as soon as it is handed over.
    let frames = speech_frames("hello there", 700);
    let fed = Instant::now();
    driver.feed(frames[0].clone());
    while sim.received(0).is_empty() {
        assert!(
            fed.elapsed() < Duration::from_secs(2),
            "the chunk was not forwarded"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The rest in chunks of five frames (100 ms), as the reader gathers them.
    for chunk in frames[1..].chunks(5) {
        driver.feed(chunk.concat());
    }
    assert_eq!(
        transcript(&driver.events, Duration::from_secs(5)).as_deref(),
        Some("Hello there")
    );

    // The end of the reader ends the session (after the audio handed over before it).
    let chunks = 1 + frames[1..].chunks(5).count();
    let (worker, sent) = driver.end();
    assert!(ended_within(&worker, Duration::from_secs(1)));
    // The simulator may still be reading the last chunks (it paused to commit).
    let deadline = Instant::now() + Duration::from_secs(2);
    while sim.received(0).len() < chunks && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.received(0).len(), chunks);
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(
        sent.load(std::sync::atomic::Ordering::Relaxed),
        bytes as u64
    );
}

fn tts_settings(sim: &TtsSim) -> TtsSettings {
    TtsSettings {
        ws_base: BaseUrl::parse(&sim.base_url(), &["ws", "wss"]).unwrap(),
        api_key: Secret::new(TtsSimOptions::default().api_key),
        model_id: "eleven_flash_v2_5".into(),
        connect_timeout: Duration::from_secs(5),
        inactivity_secs: 20,
    }
}

fn job(seq: u32, speech: Speech, cancel: &Arc<Cancel>) -> TtsJob {
    TtsJob {
        turn: 1,
        seq,
        speech,
        cancel: cancel.clone(),
    }
}

/// A TTS worker on its own thread, and the call's ends of it.
struct TtsWorker {
    handle: TtsHandle,
    events: Receiver<Event>,
    worker: JoinHandle<()>,
}

fn tts_worker(thread: &str, sim: &TtsSim) -> TtsWorker {
    let settings = tts_settings(sim);
    let (handle, inbox) = workers::tts_channel(8).unwrap();
    let (events_tx, events) = bounded::<Event>(256);
    let worker = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || workers::tts(&settings, VOICE, &inbox, &events_tx))
        .unwrap();
    TtsWorker {
        handle,
        events,
        worker,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_tts_worker_opens_its_socket_at_once_sleeps_and_closes_it_at_the_end() {
    let sim = TtsSim::start(TtsSimOptions::default()).unwrap();
    let TtsWorker {
        handle,
        events: _events,
        worker,
    } = tts_worker("w-tts-idle", &sim);
    // Before any speech: the socket is open for the greeting.
    wait_until("the socket opened", || sim.sessions().len() == 1);
    std::thread::sleep(Duration::from_millis(50));
    let before = wakeups("w-tts-idle");
    std::thread::sleep(Duration::from_millis(300));
    let idle = wakeups("w-tts-idle") - before;
    assert!(idle <= 1, "the worker woke {idle} times in 300 ms");

    // The call's end: the worker says close_socket and ends at once.
    drop(handle);
    assert!(ended_within(&worker, Duration::from_millis(500)));
    wait_until("close_socket arrived", || {
        sim.sessions()[0].1.last() == Some(&serde_json::json!({"close_socket": true}))
    });
    assert_eq!(sim.sessions().len(), 1);
}

/// A TTS worker whose piece of turn 1 would take 10 s to give its first audio.
fn stalled_piece(thread: &str, text: &str) -> (TtsSim, TtsWorker) {
    let sim = TtsSim::start(TtsSimOptions {
        first_byte: Duration::from_secs(10),
        ..TtsSimOptions::default()
    })
    .unwrap();
    let worker = tts_worker(thread, &sim);
    let cancel = Arc::new(Cancel::new());
    worker
        .handle
        .send(job(0, Speech::Text(text.into()), &cancel))
        .unwrap();
    // Its context opened and its text flushed: the simulator is "generating".
    wait_until("the piece was sent", || {
        sim.sessions().first().is_some_and(|(_, m)| m.len() >= 2)
    });
    std::thread::sleep(Duration::from_millis(50));
    (sim, worker)
}

#[test]
fn the_end_of_the_call_ends_a_worker_waiting_for_a_piece_at_once() {
    let (_sim, worker) = stalled_piece("w-tts-end", "Hello, how can I help?");
    let cut = Instant::now();
    worker.handle.shutdown();
    assert!(ended_within(&worker.worker, Duration::from_millis(500)));
    assert!(cut.elapsed() < Duration::from_millis(500));
}

#[test]
fn a_new_turn_cuts_a_stalled_piece_of_the_old_one_and_its_speech_goes_next() {
    let (sim, worker) = stalled_piece("w-tts-turn", "Let me explain the whole process.");

    // Barge-in, as the call does it: the cut, then the new turn's piece.
    let cut = Instant::now();
    worker.handle.cut_turns_before(2);
    worker
        .handle
        .send(TtsJob {
            turn: 2,
            seq: 0,
            speech: Speech::Clip(Arc::new(vec![0x7F; 320])),
            cancel: Arc::new(Cancel::new()),
        })
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(event) = worker.events.recv_timeout(Duration::from_secs(2)) {
        if let Event::Tts { turn, out, .. } = event {
            let done = turn == 2 && matches!(out, TtsOut::Done { .. });
            seen.push((turn, out));
            if done {
                break;
            }
        }
    }
    // Well before the stalled piece's first audio (10 s): the old piece ended as cut short
    // (billed, no audio), and the new turn's speech was delivered whole.
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "took {:?}",
        cut.elapsed()
    );
    assert!(
        matches!(seen.first(), Some((1, TtsOut::Done { chars })) if *chars > 0),
        "{seen:?}"
    );
    assert!(
        matches!(seen.last(), Some((2, TtsOut::Done { .. }))),
        "{seen:?}"
    );
    // The barge-in cost the socket nothing: still the one socket.
    assert_eq!(sim.sessions().len(), 1);
    worker.handle.shutdown();
    assert!(ended_within(&worker.worker, Duration::from_millis(500)));
}

fn stt_settings(sim: &SttSim, silent_service_limit: Duration) -> SttSettings {
    SttSettings {
        ws_base: BaseUrl::parse(&sim.base_url(), &["ws", "wss"]).unwrap(),
        api_key: Secret::new(SttSimOptions::default().api_key),
        model_id: "scribe_v2_realtime".into(),
        language_code: "en".into(),
        vad_silence_secs: 0.5,
        connect_timeout: Duration::from_secs(5),
        silent_service_limit,
        chunk: Duration::from_millis(100),
        commit: cotrackpro_voice::providers::elevenlabs_stt::CommitStrategy::Vad,
    }
}

/// 20 ms μ-law frames of `text` spoken, then `silence_ms` of quiet.
fn speech_frames(text: &str, silence_ms: usize) -> Vec<Vec<u8>> {
    let mut audio = voice::speak(text, 150.0);
    audio.extend(std::iter::repeat_n(voice::ULAW_SILENCE, silence_ms * 8));
    audio.chunks(160).map(<[u8]>::to_vec).collect()
}

/// Every speech-to-text event until `quiet` passes without one.
fn stt_events_until_quiet(events: &Receiver<Event>, quiet: Duration) -> Vec<SttOut> {
    let mut got = Vec::new();
    while let Ok(event) = events.recv_timeout(quiet) {
        if let Event::Stt(out) = event {
            got.push(out);
        }
    }
    got
}

#[test]
fn a_commit_and_its_timestamped_twin_are_one_transcript() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.always_timestamps(true);
    sim.push_utterances(["Hello there".to_string(), "Second thing".to_string()]);
    let driver = LinkDriver::start(
        "w-stt-twins",
        stt_settings(&sim, Duration::from_secs(20)),
        3,
    );
    for text in ["hello there", "second thing"] {
        driver.say(text, 700);
        std::thread::sleep(Duration::from_millis(200));
    }
    let commits: Vec<String> = stt_events_until_quiet(&driver.events, Duration::from_millis(1500))
        .into_iter()
        .filter_map(|e| match e {
            SttOut::Committed(text) => Some(text),
            SttOut::Lost(why) => panic!("stt lost: {why}"),
            SttOut::Partial(_) => None,
        })
        .collect();
    assert_eq!(commits, ["Hello there", "Second thing"]);
    // The simulator did send both kinds for each utterance.
    assert_eq!(sim.sessions(), 1);
    let (worker, _) = driver.end();
    assert!(ended_within(&worker, Duration::from_secs(1)));
}

#[test]
fn an_stt_service_gone_silent_is_replaced_after_the_watchdogs_limit() {
    use cotrackpro_voice::sim::elevenlabs_stt::Fault;
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_fault(Fault::Silent);
    sim.push_utterances(["Are you there".to_string()]);
    let limit = Duration::from_millis(800);
    let driver = LinkDriver::start("w-stt-silent", stt_settings(&sim, limit), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A quiet caller gets no word from the service either: no reconnect for that.
    for frame in speech_frames("", 1200) {
        driver.feed(frame);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(limit + Duration::from_millis(400));
    assert_eq!(
        sim.sessions(),
        1,
        "silence from a quiet caller is not a fault"
    );
    // The caller speaks; the mute service is replaced once the limit passes.
    let spoke = Instant::now();
    driver.say("are you there", 0);
    while sim.sessions() < 2 && spoke.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let replaced = spoke.elapsed();
    assert_eq!(sim.sessions(), 2, "a second session was opened");
    assert!(
        replaced >= limit - Duration::from_millis(50) && replaced < limit * 3,
        "replaced after {replaced:?}"
    );
    // The new session hears the caller.
    driver.say("are you there", 700);
    assert_eq!(
        transcript(&driver.events, Duration::from_secs(5)).as_deref(),
        Some("Are you there")
    );
    let (worker, _) = driver.end();
    assert!(ended_within(&worker, Duration::from_secs(1)));
}

#[test]
fn a_piece_that_ends_without_audio_is_retried_once_then_a_failure() {
    let sim = TtsSim::start(TtsSimOptions::default()).unwrap();
    sim.mute_next(2);
    let worker = tts_worker("w-tts-mute", &sim);
    let cancel = Arc::new(Cancel::new());
    for (seq, text) in ["Nothing comes of this.", "This one is heard."]
        .into_iter()
        .enumerate()
    {
        worker
            .handle
            .send(job(seq as u32, Speech::Text(text.into()), &cancel))
            .unwrap();
    }
    let mut outs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while outs
        .iter()
        .filter(|o| matches!(o, TtsOut::Done { .. } | TtsOut::Failed(_)))
        .count()
        < 2
    {
        match worker.events.recv_deadline(deadline) {
            Ok(Event::Tts { out, .. }) => outs.push(out),
            Ok(_) => {}
            Err(_) => panic!("no end of both pieces: {outs:?}"),
        }
    }
    assert!(
        matches!(
            &outs[0],
            TtsOut::Failed(cotrackpro_voice::providers::elevenlabs_tts::TtsError::NoAudio { chars })
                if *chars > 0
        ),
        "{outs:?}"
    );
    // The next piece speaks: each chunk of its audio after its alignment (asked for).
    assert!(matches!(outs[1], TtsOut::Alignment(_)), "{outs:?}");
    assert!(matches!(outs[2], TtsOut::Audio(_)), "{outs:?}");
    assert!(matches!(outs.last(), Some(TtsOut::Done { .. })), "{outs:?}");
    // One try and one retry for the mute piece, then the next piece: three contexts, one
    // socket.
    let sessions = sim.sessions();
    assert_eq!(sessions.len(), 1);
    let contexts: Vec<&str> = sessions[0]
        .1
        .iter()
        .filter(|m| m.get("voice_settings").is_some())
        .filter_map(|m| m["context_id"].as_str())
        .collect();
    assert_eq!(contexts, ["1-0-1", "1-0-2", "1-1-3"]);
    drop(worker.handle);
    assert!(ended_within(&worker.worker, Duration::from_secs(1)));
}

/// A thread that drives an [`SttLink`] as the Twilio reader does: it waits on the link and on
/// the test's audio together, and ends (closing the session) when the test drops its feed.
struct LinkDriver {
    audio: crossbeam_channel::Sender<Vec<u8>>,
    wake: Option<poll::WakeSender>,
    events: Receiver<Event>,
    sent: Arc<AtomicU64>,
    worker: JoinHandle<()>,
}

impl LinkDriver {
    fn start(thread: &str, settings: SttSettings, reconnects: u32) -> LinkDriver {
        let (audio, audio_rx) = bounded::<Vec<u8>>(4096);
        let (wake, wake_rx) = poll::wake_pair().unwrap();
        let (events_tx, events) = bounded::<Event>(256);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let dial = format!("{thread}-dial");
        let worker = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                let mut link = SttLink::new(
                    Some(settings),
                    reconnects,
                    dial,
                    256 * 1024,
                    Arc::new(|name, stack, f| {
                        std::thread::Builder::new()
                            .name(name)
                            .stack_size(stack)
                            .spawn(f)
                            .map(drop)
                    }),
                    counter,
                );
                link.start(&events_tx);
                loop {
                    let (wake, link_watch) = poll::wait_either(
                        Watch::read(wake_rx.fd()),
                        link.watch(),
                        link.next_deadline(),
                    )
                    .unwrap();
                    let (woken, readable, writable) = (
                        wake.readable(),
                        link_watch.as_ref().is_some_and(Watch::readable),
                        link_watch.as_ref().is_some_and(Watch::writable),
                    );
                    let now = Instant::now();
                    if woken {
                        let open = wake_rx.drain();
                        for chunk in audio_rx.try_iter() {
                            let loud = cotrackpro_voice::speech::ulaw::is_voice(&chunk);
                            link.send(&chunk, loud, now, &events_tx);
                        }
                        if !open {
                            break;
                        }
                    }
                    if readable || writable {
                        link.on_ready(readable, writable, now, &events_tx);
                    }
                    link.on_time(now, &events_tx);
                }
                link.close();
            })
            .unwrap();
        LinkDriver {
            audio,
            wake: Some(wake),
            events,
            sent,
            worker,
        }
    }

    /// Hands the link one chunk of μ-law audio.
    fn feed(&self, chunk: Vec<u8>) {
        self.audio.send(chunk).unwrap();
        if let Some(wake) = &self.wake {
            wake.wake();
        }
    }

    /// 20 ms frames of `text` spoken, then `silence_ms` of quiet, fed one by one.
    fn say(&self, text: &str, silence_ms: usize) {
        for frame in speech_frames(text, silence_ms) {
            self.feed(frame);
        }
    }

    /// The end of the call: the driver closes the session and ends.
    fn end(mut self) -> (JoinHandle<()>, Arc<AtomicU64>) {
        self.wake = None;
        (self.worker, self.sent)
    }
}
