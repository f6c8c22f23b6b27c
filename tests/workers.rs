//! A call's speech workers against the simulators, with no tick: the STT worker forwards audio
//! and transcripts as they come and sleeps in between, and ends when its feed closes; the TTS
//! worker sleeps while it holds a spare stream, ends at once when its jobs close, and a piece
//! being read is cut short by its shutdown handle.

use std::sync::atomic::AtomicU64;

use cotrackpro_voice::providers::cancel::Cancel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};

use cotrackpro_voice::call::workers::{
    self, audio_feed, Speech, SttOut, TtsJob, TtsOut, TtsShutdown,
};
use cotrackpro_voice::call::Event;
use cotrackpro_voice::config::{BaseUrl, Secret};
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
fn the_stt_worker_forwards_audio_at_once_sleeps_between_and_ends_with_its_feed() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_utterances(["Hello there".to_string()]);
    let settings = SttSettings {
        ws_base: BaseUrl::parse(&sim.base_url(), &["ws", "wss"]).unwrap(),
        api_key: Secret::new(SttSimOptions::default().api_key),
        model_id: "scribe_v2_realtime".into(),
        language_code: "en".into(),
        vad_silence_secs: 0.5,
        connect_timeout: Duration::from_secs(5),
        silent_service_limit: Duration::from_secs(20),
        chunk: Duration::from_millis(20),
    };
    let (feed, inbox) = audio_feed(512).unwrap();
    let (events_tx, events) = bounded::<Event>(256);
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let worker = std::thread::Builder::new()
        .name("w-stt".into())
        .spawn(move || workers::stt(&settings, 3, inbox, &events_tx, &counter))
        .unwrap();

    // Once the session is up, the worker sleeps until something happens: no read timeout
    // wakes it (a 20 ms tick would be about 15 wake-ups here).
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = wakeups("w-stt");
    std::thread::sleep(Duration::from_millis(300));
    let idle = wakeups("w-stt") - before;
    assert!(idle <= 2, "the idle worker woke {idle} times in 300 ms");

    // A frame is forwarded as soon as it is fed.
    let mut audio = voice::speak("hello there", 150.0);
    audio.extend(std::iter::repeat_n(voice::ULAW_SILENCE, 700 * 8));
    let frames: Vec<&[u8]> = audio.chunks(160).collect();
    let fed = Instant::now();
    assert!(feed_frame(&feed, frames[0]));
    while sim.received(0).is_empty() {
        assert!(
            fed.elapsed() < Duration::from_secs(2),
            "the frame was not forwarded"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for frame in &frames[1..] {
        assert!(feed_frame(&feed, frame));
    }
    assert_eq!(
        transcript(&events, Duration::from_secs(5)).as_deref(),
        Some("Hello there")
    );

    // Dropping the feed ends the worker (after the audio queued before it).
    drop(feed);
    assert!(ended_within(&worker, Duration::from_secs(1)));
    // The simulator may still be reading the last frames (it paused to commit).
    let deadline = Instant::now() + Duration::from_secs(2);
    while sim.received(0).len() < frames.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.received(0).len(), frames.len());
    assert_eq!(
        sent.load(std::sync::atomic::Ordering::Relaxed),
        audio.len() as u64
    );
}

/// The μ-law of every audio chunk the simulator received in session `n`, one entry a chunk.
fn chunks_received(sim: &SttSim, n: usize) -> Vec<Vec<u8>> {
    sim.received(n)
        .iter()
        .filter_map(|m| m["audio_base_64"].as_str().map(str::to_string))
        .map(|b64| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap())
        .collect()
}

/// Waits (bounded) until the simulator has received `bytes` of audio in session 0.
fn wait_for_audio(sim: &SttSim, bytes: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let chunks = chunks_received(sim, 0);
        if chunks.iter().map(Vec::len).sum::<usize>() >= bytes || Instant::now() > deadline {
            return chunks;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_stt_worker_joins_frames_into_chunks_and_sends_a_partial_one_when_due_and_at_the_end() {
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_utterances(["Hello there".to_string()]);
    let settings = SttSettings {
        chunk: Duration::from_millis(100),
        ..stt_settings(&sim, Duration::from_secs(20))
    };
    let (feed, inbox) = audio_feed(512).unwrap();
    let (events_tx, events) = bounded::<Event>(256);
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let worker = std::thread::Builder::new()
        .name("w-stt-chunks".into())
        .spawn(move || workers::stt(&settings, 3, inbox, &events_tx, &counter))
        .unwrap();

    // Speech, then quiet, then one frame more than whole chunks.
    let mut audio = voice::speak("hello there", 150.0);
    audio.truncate(audio.len() / 160 * 160);
    audio.extend(std::iter::repeat_n(voice::ULAW_SILENCE, 700 * 8));
    let frames: Vec<Vec<u8>> = audio
        .chunks(160)
        .map(<[u8]>::to_vec)
        .chain(std::iter::once(vec![0x7F; 160]))
        .collect();
    let mut fed = Vec::new();
    for frame in &frames {
        assert!(feed_frame(&feed, frame));
        fed.extend_from_slice(frame);
    }
    // The service hears chunks of five frames as it heard frames.
    assert_eq!(
        transcript(&events, Duration::from_secs(5)).as_deref(),
        Some("Hello there")
    );
    // The last frame does not fill a chunk: it goes when its chunk is due.
    let chunks = wait_for_audio(&sim, fed.len());
    assert_eq!(
        chunks.concat(),
        fed,
        "the chunks' audio is the frames joined"
    );
    assert!(chunks.iter().all(|c| c.len() % 160 == 0 && c.len() <= 800));
    assert!(
        chunks.len() < frames.len(),
        "frames were joined: {} chunks for {} frames",
        chunks.len(),
        frames.len()
    );
    assert_eq!(chunks.last().map(Vec::len), Some(160));

    // At the end of the call what is left goes before the session closes.
    assert!(feed_frame(&feed, &[0x11; 160]));
    fed.extend_from_slice(&[0x11; 160]);
    drop(feed);
    assert!(ended_within(&worker, Duration::from_secs(2)));
    let chunks = wait_for_audio(&sim, fed.len());
    assert_eq!(chunks.concat(), fed);
    assert_eq!(
        sent.load(std::sync::atomic::Ordering::Relaxed),
        fed.len() as u64
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

fn job(speech: Speech, cancel: &Arc<Cancel>) -> TtsJob {
    TtsJob {
        turn: 1,
        seq: 0,
        speech,
        cancel: cancel.clone(),
    }
}

#[test]
fn the_tts_worker_sleeps_with_a_spare_stream_and_ends_when_its_jobs_close() {
    let sim = TtsSim::start(TtsSimOptions::default()).unwrap();
    let settings = tts_settings(&sim);
    let (jobs_tx, jobs) = bounded::<TtsJob>(8);
    let (events_tx, _events) = bounded::<Event>(64);
    let shutdown = TtsShutdown::new();
    let worker = std::thread::Builder::new()
        .name("w-tts-spare".into())
        .spawn(move || workers::tts(&settings, VOICE, &jobs, &events_tx, &shutdown))
        .unwrap();
    let cancel = Arc::new(Cancel::new());
    jobs_tx.send(job(Speech::Prewarm, &cancel)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.sessions().len(), 1, "the spare stream was opened");
    std::thread::sleep(Duration::from_millis(50));
    let before = wakeups("w-tts-spare");
    std::thread::sleep(Duration::from_millis(300));
    let idle = wakeups("w-tts-spare") - before;
    assert!(idle <= 1, "the worker woke {idle} times in 300 ms");

    // Its spare expires in 15 s; the closed channel ends it now, and the spare is closed.
    drop(jobs_tx);
    assert!(ended_within(&worker, Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(2);
    while sim.closed_by_client() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sim.closed_by_client(), 1);
}

/// A TTS worker blocked reading a piece of turn 1 whose first audio would take 10 s.
struct Stalled {
    _sim: TtsSim,
    jobs_tx: crossbeam_channel::Sender<TtsJob>,
    events: crossbeam_channel::Receiver<Event>,
    shutdown: TtsShutdown,
    worker: std::thread::JoinHandle<()>,
    cancel: Arc<Cancel>,
}

fn stalled_piece(thread: &str, text: &str) -> Stalled {
    let sim = TtsSim::start(TtsSimOptions {
        first_byte: Duration::from_secs(10),
        ..TtsSimOptions::default()
    })
    .unwrap();
    let settings = tts_settings(&sim);
    let (jobs_tx, jobs) = bounded::<TtsJob>(8);
    let (events_tx, events) = bounded::<Event>(64);
    let shutdown = TtsShutdown::new();
    let handle = shutdown.clone();
    let worker = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || workers::tts(&settings, VOICE, &jobs, &events_tx, &handle))
        .unwrap();
    let cancel = Arc::new(Cancel::new());
    jobs_tx
        .send(job(Speech::Text(text.into()), &cancel))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions().first().is_none_or(|(_, m)| m.len() < 3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    Stalled {
        _sim: sim,
        jobs_tx,
        events,
        shutdown,
        worker,
        cancel,
    }
}

#[test]
fn the_shutdown_handle_cuts_a_piece_being_read() {
    let Stalled {
        _sim,
        jobs_tx,
        events,
        shutdown,
        worker,
        cancel,
    } = stalled_piece("w-tts-cut", "Hello, how can I help?");

    // What the call does at its end: cancel the turn, drop the jobs, shut the worker down.
    let cut = Instant::now();
    cancel.cancel();
    drop(jobs_tx);
    shutdown.shutdown();
    assert!(ended_within(&worker, Duration::from_millis(500)));
    assert!(cut.elapsed() < Duration::from_millis(500));
    // Reported as cut short (what was billed, no audio), not as a failure.
    let outs: Vec<TtsOut> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::Tts { out, .. } => Some(out),
            _ => None,
        })
        .collect();
    assert!(
        matches!(outs.as_slice(), [TtsOut::Done { chars }] if *chars > 0),
        "{} events, the last {:?}",
        outs.len(),
        outs.last().map(|o| match o {
            TtsOut::Audio(a) => format!("{} bytes of audio", a.len()),
            other => format!("{other:?}"),
        })
    );
}

#[test]
fn a_new_turn_cuts_a_stalled_piece_of_the_old_one_and_its_speech_goes_next() {
    let Stalled {
        _sim,
        jobs_tx,
        events,
        shutdown,
        worker,
        cancel: old_turn,
    } = stalled_piece("w-tts-turn", "Let me explain the whole process.");

    // Barge-in, as the call does it: the old turn's flag, the cut, then the new turn's piece.
    let cut = Instant::now();
    old_turn.cancel();
    shutdown.cut_turns_before(2);
    jobs_tx
        .send(TtsJob {
            turn: 2,
            seq: 0,
            speech: Speech::Clip(Arc::new(vec![0x7F; 320])),
            cancel: Arc::new(Cancel::new()),
        })
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(event) = events.recv_timeout(Duration::from_secs(2)) {
        if let Event::Tts { turn, out, .. } = event {
            let done = turn == 2 && matches!(out, TtsOut::Done { .. });
            seen.push((turn, matches!(out, TtsOut::Done { .. })));
            if done {
                break;
            }
        }
    }
    // Well before the stalled piece's first audio (10 s): the old piece ended as cut short,
    // and the new turn's speech was delivered whole.
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "took {:?}",
        cut.elapsed()
    );
    assert_eq!(seen.first(), Some(&(1, true)), "{seen:?}");
    assert_eq!(seen.last(), Some(&(2, true)), "{seen:?}");
    drop(jobs_tx);
    shutdown.shutdown();
    assert!(ended_within(&worker, Duration::from_millis(500)));
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
        chunk: Duration::from_millis(20),
    }
}

/// 20 ms frames of `text` spoken, then `silence_ms` of quiet.
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
    let settings = stt_settings(&sim, Duration::from_secs(20));
    let (feed, inbox) = audio_feed(1024).unwrap();
    let (events_tx, events) = bounded::<Event>(256);
    let counter = Arc::new(AtomicU64::new(0));
    let worker = std::thread::Builder::new()
        .name("w-stt-twins".into())
        .spawn(move || workers::stt(&settings, 3, inbox, &events_tx, &counter))
        .unwrap();
    for text in ["hello there", "second thing"] {
        for frame in speech_frames(text, 700) {
            assert!(feed_frame(&feed, &frame));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let commits: Vec<String> = stt_events_until_quiet(&events, Duration::from_millis(1500))
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
    drop(feed);
    assert!(ended_within(&worker, Duration::from_secs(1)));
}

#[test]
fn an_stt_service_gone_silent_is_replaced_after_the_watchdogs_limit() {
    use cotrackpro_voice::sim::elevenlabs_stt::Fault;
    let sim = SttSim::start(SttSimOptions::default()).unwrap();
    sim.push_fault(Fault::Silent);
    sim.push_utterances(["Are you there".to_string()]);
    let limit = Duration::from_millis(800);
    let settings = stt_settings(&sim, limit);
    let (feed, inbox) = audio_feed(1024).unwrap();
    let (events_tx, events) = bounded::<Event>(256);
    let counter = Arc::new(AtomicU64::new(0));
    let worker = std::thread::Builder::new()
        .name("w-stt-silent".into())
        .spawn(move || workers::stt(&settings, 1, inbox, &events_tx, &counter))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.sessions() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A quiet caller gets no word from the service either: no reconnect for that.
    let quiet = speech_frames("", 1200);
    for frame in &quiet {
        assert!(feed_frame(&feed, frame));
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
    for frame in speech_frames("are you there", 0) {
        assert!(feed_frame(&feed, &frame));
    }
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
    for frame in speech_frames("are you there", 700) {
        assert!(feed_frame(&feed, &frame));
    }
    assert_eq!(
        transcript(&events, Duration::from_secs(5)).as_deref(),
        Some("Are you there")
    );
    drop(feed);
    assert!(ended_within(&worker, Duration::from_secs(1)));
}

#[test]
fn a_piece_that_ends_without_audio_is_retried_once_then_a_failure() {
    let sim = TtsSim::start(TtsSimOptions::default()).unwrap();
    sim.mute_next(2);
    let settings = tts_settings(&sim);
    let (jobs_tx, jobs) = bounded::<TtsJob>(8);
    let (events_tx, events) = bounded::<Event>(64);
    let shutdown = TtsShutdown::new();
    let worker = std::thread::Builder::new()
        .name("w-tts-mute".into())
        .spawn(move || workers::tts(&settings, VOICE, &jobs, &events_tx, &shutdown))
        .unwrap();
    let cancel = Arc::new(Cancel::new());
    for text in ["Nothing comes of this.", "This one is heard."] {
        jobs_tx
            .send(job(Speech::Text(text.into()), &cancel))
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
        match events.recv_deadline(deadline) {
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
    assert!(matches!(outs[1], TtsOut::Audio(_)), "{outs:?}");
    assert!(matches!(outs.last(), Some(TtsOut::Done { .. })), "{outs:?}");
    // One try and one retry for the mute piece, then the next piece's own stream.
    assert_eq!(sim.sessions().len(), 3);
    drop(jobs_tx);
    assert!(ended_within(&worker, Duration::from_secs(1)));
}

/// Feeds one frame as the Twilio reader does: with its loudness.
fn feed_frame(feed: &cotrackpro_voice::call::audio_feed::AudioFeed, frame: &[u8]) -> bool {
    feed.send(frame, cotrackpro_voice::speech::ulaw::is_voice(frame))
}
