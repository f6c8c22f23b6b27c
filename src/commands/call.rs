//! `cotrackpro-voice call`: tests a running server without a phone. It dials the server the way
//! Twilio would — the signed `POST /call/incoming` webhook, then the media stream named by the
//! TwiML's `<Stream url>` (ws:// or wss://, through a TLS proxy too) with its `<Parameter>`s —
//! speaks a short script in the simulated voice (or a WAV file's audio), and reports each reply's
//! timing and length. It cannot transcribe what it hears: the replies are audio, so it prints
//! when each started and how long it was, and writes both sides to a WAV file, as `demo` does.

use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::personas::Role;
use crate::sim::caller::{self, CallerOptions, Heard, SimCaller};

/// A whole call, webhook to hang-up, ends within this.
pub const CALL_DEADLINE: Duration = Duration::from_secs(120);
/// Connecting (webhook request, stream handshake) gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply has finished when nothing more arrived for this long and its audio has played.
const QUIET: Duration = Duration::from_millis(1200);
/// μ-law samples a second.
const SAMPLE_RATE: u32 = 8000;
/// The longest `--say` audio: a call has [`CALL_DEADLINE`] for the greeting, this and a reply.
const MAX_SAY_SECS: usize = 60;
/// A larger file is refused before it is read (60 s of 48 kHz 16-bit stereo is 11 MB).
const MAX_WAV_BYTES: u64 = 32 * 1024 * 1024;

/// What the caller says when no `--say` file is given.
const SCRIPT: [&str; 2] = [
    "Hi. I need help writing down what happened at the exchange last Friday.",
    "Thank you, that is all for today. Goodbye.",
];

pub struct CallOptions {
    /// The server's webhook base, `http(s)://host[:port]` (a path prefix is kept).
    pub server: String,
    /// The media stream's URL, instead of the TwiML's `<Stream url>`.
    pub media: Option<String>,
    pub role: Role,
    /// A WAV file to say instead of the script.
    pub say: Option<PathBuf>,
    pub wav: PathBuf,
    /// How many times faster than real time the phone plays the assistant (1 = a real call).
    pub speed: usize,
}

/// What `call` needs from the configuration (the environment or `--env-file`).
pub struct Credentials {
    /// `TWILIO_AUTH_TOKEN`: the webhook and the stream upgrade are signed with it.
    pub auth_token: crate::config::Secret,
    /// `TWILIO_ACCOUNT_SID` (the webhook's `AccountSid`), else a made-up one.
    pub account_sid: Option<String>,
    /// `API_DOMAIN`, else `SERVER_DOMAIN`: the host of the URL Twilio calls and signs. Unset:
    /// the `--server` URL is signed as given.
    pub public_domain: Option<String>,
}

/// Why a call did not complete: one line for the person at the terminal.
#[derive(Debug)]
pub struct CallFailed(pub String);

impl fmt::Display for CallFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for CallFailed {}

fn failed(message: impl Into<String>) -> Box<dyn Error> {
    Box::new(CallFailed(message.into()))
}

/// The webhook URL on `server` for `role`.
pub fn webhook_url(server: &str, role: Role) -> String {
    format!(
        "{}/call/incoming?role={}",
        server.trim_end_matches('/'),
        role.as_str()
    )
}

/// The URL Twilio would have called, and so signed: the public domain's https URL when one is
/// configured (the server rebuilds the signed URL on `API_DOMAIN`), else `request_url` itself.
pub fn signed_url(request_url: &str, public_domain: Option<&str>) -> String {
    let Some(domain) = public_domain else {
        return request_url.to_string();
    };
    let after_scheme = request_url
        .split_once("://")
        .map_or(request_url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |at| &after_scheme[at..]);
    format!("https://{domain}{path}")
}

/// The form fields of an incoming call's webhook, as Twilio sends them.
fn webhook_form(call_sid: &str, account_sid: &str) -> Vec<(String, String)> {
    let from = "+15555550100";
    let to = "+15555550199";
    [
        ("AccountSid", account_sid),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Called", to),
        ("Caller", from),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Why a WAV file cannot be said.
#[derive(Debug, PartialEq, Eq)]
pub struct WavError(pub String);

impl fmt::Display for WavError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The audio of a WAV file as 8 kHz μ-law: μ-law (format 7) at 8 kHz mono as it is; 16-bit
/// PCM (format 1) mixed down to mono and resampled to 8 kHz (linear interpolation: enough for
/// speech on a phone line). Anything else is refused with what it is.
pub fn ulaw_of_wav(bytes: &[u8]) -> Result<Vec<u8>, WavError> {
    let err = |m: &str| WavError(m.to_string());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(err("not a WAV file (no RIFF/WAVE header)"));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut at = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32_at(at + 4) as usize;
        let body = at + 8;
        let end = body.saturating_add(len).min(bytes.len());
        if id == b"fmt " {
            if end - body < 16 {
                return Err(err("the WAV file's fmt chunk is too short"));
            }
            format = Some((
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            ));
        } else if id == b"data" {
            let (tag, channels, rate, bits) =
                format.ok_or_else(|| err("the WAV file has data before its fmt chunk"))?;
            let data = &bytes[body..end];
            return match (tag, channels, rate, bits) {
                (7, 1, 8000, 8) => Ok(data.to_vec()),
                (7, ..) => Err(WavError(format!(
                    "μ-law WAV must be 8000 Hz mono (this one: {rate} Hz, {channels} channels)"
                ))),
                (1, 1.., 1.., 16) => Ok(pcm16_to_ulaw(data, channels, rate)),
                _ => Err(WavError(format!(
                    "unsupported WAV format (format {tag}, {bits} bits, {rate} Hz, {channels} channels): give 8 kHz mono μ-law or 16-bit PCM"
                ))),
            };
        }
        // Chunks are padded to an even length.
        at = body.saturating_add(len).saturating_add(len & 1);
    }
    Err(err("the WAV file has no data chunk"))
}

fn pcm16_to_ulaw(data: &[u8], channels: u16, rate: u32) -> Vec<u8> {
    let channels = usize::from(channels);
    let mono: Vec<f32> = data
        .chunks_exact(2 * channels)
        .map(|frame| {
            let sum: i32 = frame
                .chunks_exact(2)
                .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            sum as f32 / channels as f32
        })
        .collect();
    if mono.is_empty() {
        return Vec::new();
    }
    let out_len = (mono.len() as u64 * u64::from(SAMPLE_RATE) / u64::from(rate)) as usize;
    let step = f64::from(rate) / f64::from(SAMPLE_RATE);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let at = (pos as usize).min(mono.len() - 1);
            let next = (at + 1).min(mono.len() - 1);
            let frac = (pos - at as f64) as f32;
            let sample = mono[at] + (mono[next] - mono[at]) * frac;
            crate::speech::ulaw::encode_ulaw(sample.round().clamp(-32768.0, 32767.0) as i16)
        })
        .collect()
}

/// One thing the caller says: its words (for the transcript line) and its audio.
struct Utterance {
    label: String,
    ulaw: Vec<u8>,
}

fn secs(ulaw_bytes: usize) -> f64 {
    ulaw_bytes as f64 / f64::from(SAMPLE_RATE)
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub fn run(options: &CallOptions, credentials: &Credentials) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + CALL_DEADLINE;
    let utterances = match &options.say {
        Some(path) => vec![Utterance {
            label: format!("(the audio of {})", path.display()),
            ulaw: read_wav(path)?,
        }],
        None => SCRIPT
            .iter()
            .map(|text| Utterance {
                label: (*text).to_string(),
                ulaw: crate::sim::voice::speak(text, 210.0),
            })
            .collect(),
    };
    if utterances.iter().any(|u| u.ulaw.is_empty()) {
        return Err(failed("the WAV file has no audio"));
    }
    let token = credentials.auth_token.expose();
    let call_sid = caller::new_sid("CA");
    let account_sid = credentials
        .account_sid
        .clone()
        .unwrap_or_else(|| caller::new_sid("AC"));

    // The webhook, signed over the URL Twilio would have called.
    let url = webhook_url(&options.server, options.role);
    let signed = signed_url(&url, credentials.public_domain.as_deref());
    let form = webhook_form(&call_sid, &account_sid);
    let signature = crate::twilio::signature::compute(token, &signed, &form);
    let agent = crate::resolve::provider_agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false),
    );
    let pairs: Vec<(&str, String)> = form.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let started = Instant::now();
    let mut response = agent
        .post(&url)
        .header("X-Twilio-Signature", &signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(crate::twilio::rest::encode_form(&pairs))
        .map_err(|e| failed(format!("the webhook POST {url} failed: {e}")))?;
    let status = response.status().as_u16();
    let twiml = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| failed(format!("reading the webhook's answer failed: {e}")))?;
    let webhook_ms = started.elapsed().as_millis();
    if status == 403 {
        return Err(failed(format!(
            "the server refused the webhook's signature (403 from POST {url}, signed over {signed}): TWILIO_AUTH_TOKEN is not the server's, or set SERVER_DOMAIN (or API_DOMAIN) to the server's public domain"
        )));
    }
    if status != 200 {
        let body: String = twiml.chars().take(200).collect();
        return Err(failed(format!(
            "POST {url} answered {status}: {}",
            body.trim()
        )));
    }
    let (stream_url, parameters) = crate::sim::twilio::stream_of(&twiml)
        .ok_or_else(|| failed("the webhook's TwiML has no <Connect><Stream url=…>"))?;
    let media_url = options.media.clone().unwrap_or_else(|| stream_url.clone());
    println!(
        "☎  call {call_sid}: POST {url} answered 200 in {webhook_ms} ms; the stream is {media_url}"
    );

    // The stream, its upgrade signed over the TwiML's URL as Twilio signs it.
    let upgrade_signature = crate::twilio::signature::compute(token, &stream_url, &[]);
    let started = Instant::now();
    let socket = crate::providers::ws::connect(
        &media_url,
        &[("X-Twilio-Signature", upgrade_signature.as_str())],
        CONNECT_TIMEOUT.min(left(deadline)),
    )
    .map_err(|e| match e {
        crate::providers::ws::ConnectError::Refused { status: 403, .. } => failed(format!(
            "the media server refused the stream's signature (403 from {media_url})"
        )),
        other => failed(format!("the media stream {media_url}: {other}")),
    })?;
    crate::providers::ws::tcp_of(&socket)
        .ok_or_else(|| failed("the media stream's socket is not TCP"))?
        .set_read_timeout(Some(Duration::from_millis(2)))?;
    let mut socket = socket;
    let caller_options = CallerOptions {
        call_sid: call_sid.clone(),
        parameters,
        playback_speed: options.speed,
        ..CallerOptions::default()
    };
    caller::send_start(&mut socket, &caller_options)
        .map_err(|e| failed(format!("sending the stream's start failed: {e}")))?;
    let caller = SimCaller::over(socket, caller_options)?;
    println!(
        "☎  the stream connected in {} ms; waiting for the greeting…",
        started.elapsed().as_millis()
    );

    let greeting = await_reply(&caller, 0, started, deadline)
        .ok_or_else(|| failed(unanswered(&caller, "the greeting was not heard")))?;
    println!(
        "🔊 greeting: first audio {} ms after the stream opened, {:.1} s of audio",
        greeting.first_audio_ms, greeting.audio_secs
    );
    let mut latencies = Vec::new();
    for utterance in &utterances {
        let from = caller.log().len();
        println!(
            "🗣  caller: {} ({:.1} s)",
            utterance.label,
            secs(utterance.ulaw.len())
        );
        caller.say_audio(&utterance.ulaw);
        while caller.is_speaking() && Instant::now() < deadline && !caller.is_closed() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopped = caller.speech_done_at().unwrap_or_else(Instant::now);
        let reply = await_reply(&caller, from, stopped, deadline).ok_or_else(|| {
            failed(unanswered(
                &caller,
                &format!("no answer to \"{}\"", utterance.label),
            ))
        })?;
        println!(
            "🔊 reply: first audio {} ms after the caller stopped, {:.1} s of audio",
            reply.first_audio_ms, reply.audio_secs
        );
        latencies.push(reply.first_audio_ms);
    }
    if caller.is_closed() {
        return Err(failed(
            "the server closed the stream before the caller hung up",
        ));
    }
    let (caller_track, assistant_track) = caller.tracks();
    let log = caller.hang_up();
    if let Some(code) = log.iter().find_map(|(_, h)| match h {
        Heard::Closed(Some(code)) if *code != 1000 => Some(*code),
        _ => None,
    }) {
        return Err(failed(format!("the stream closed with code {code}")));
    }
    println!("☎  the caller hung up");
    latencies.sort_unstable();
    if let (Some(first), Some(last)) = (latencies.first(), latencies.last()) {
        println!(
            "Replies: {} answered; first audio after the caller stopped: fastest {first} ms, slowest {last} ms",
            latencies.len()
        );
    }
    crate::sim::wav::write_stereo(&options.wav, &caller_track, &assistant_track)
        .map_err(|e| failed(format!("writing {}: {e}", options.wav.display())))?;
    println!(
        "Both sides of the call ({:.0} s; caller left, assistant right): {}",
        secs(caller_track.len()),
        options.wav.display()
    );
    Ok(())
}

fn read_wav(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let cannot = |e: std::io::Error| failed(format!("cannot read {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > MAX_WAV_BYTES {
        return Err(failed(format!(
            "{} is {len} bytes; --say takes up to {MAX_SAY_SECS} s of audio",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(cannot)?;
    let ulaw = ulaw_of_wav(&bytes).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    if ulaw.len() > MAX_SAY_SECS * SAMPLE_RATE as usize {
        return Err(failed(format!(
            "{} is {:.0} s long; --say takes up to {MAX_SAY_SECS} s",
            path.display(),
            secs(ulaw.len())
        )));
    }
    Ok(ulaw)
}

/// `what`, and why when the server hung up.
fn unanswered(caller: &SimCaller, what: &str) -> String {
    if caller.is_closed() {
        format!("{what}: the server closed the stream")
    } else {
        format!("{what} (within the call's {} s)", CALL_DEADLINE.as_secs())
    }
}

struct Reply {
    first_audio_ms: u128,
    audio_secs: f64,
}

/// Waits for a reply after log entry `from`: its first audio, then its end (every mark echoed
/// and quiet for [`QUIET`]). `None` when none came before `deadline` or the stream closed.
fn await_reply(
    caller: &SimCaller,
    from: usize,
    since: Instant,
    deadline: Instant,
) -> Option<Reply> {
    let heard_audio = caller.wait_for(left(deadline), |log| {
        log.get(from..).is_some_and(|new| {
            new.iter()
                .any(|(_, h)| matches!(h, Heard::Media(_) | Heard::Closed(_)))
        })
    });
    if !heard_audio || caller.is_closed() {
        return None;
    }
    let marked = caller.wait_for(left(deadline), |log| {
        log.get(from..).is_some_and(|new| {
            new.iter()
                .any(|(_, h)| matches!(h, Heard::Echoed(_) | Heard::Closed(_)))
        })
    });
    if !marked || !caller.wait_until_quiet(QUIET, left(deadline)) || caller.is_closed() {
        return None;
    }
    let log = caller.log();
    let new = log.get(from..)?;
    let first = new.iter().find_map(|(at, h)| match h {
        Heard::Media(_) => Some(*at),
        _ => None,
    })?;
    let bytes: usize = new
        .iter()
        .map(|(_, h)| match h {
            Heard::Media(n) => *n,
            _ => 0,
        })
        .sum();
    Some(Reply {
        first_audio_ms: first.saturating_duration_since(since).as_millis(),
        audio_secs: secs(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&format.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        let block = channels * bits / 8;
        out.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn ulaw_at_8khz_mono_is_taken_as_it_is() {
        let audio = [0x12u8, 0x34, 0xff, 0x7f];
        assert_eq!(ulaw_of_wav(&wav(7, 1, 8000, 8, &audio)), Ok(audio.to_vec()));
    }

    #[test]
    fn pcm_is_mixed_down_resampled_and_encoded() {
        // 16 kHz stereo: 4 frames become 2 samples at 8 kHz.
        let frame = |l: i16, r: i16| [l.to_le_bytes(), r.to_le_bytes()].concat();
        let data = [
            frame(1000, 3000),
            frame(0, 0),
            frame(-2000, -2000),
            frame(0, 0),
        ]
        .concat();
        let out = ulaw_of_wav(&wav(1, 2, 16000, 16, &data)).unwrap();
        use crate::speech::ulaw::encode_ulaw;
        assert_eq!(out, vec![encode_ulaw(2000), encode_ulaw(-2000)]);
        // 8 kHz mono PCM: one μ-law byte per sample.
        let mono = [500i16.to_le_bytes(), (-500i16).to_le_bytes()].concat();
        assert_eq!(
            ulaw_of_wav(&wav(1, 1, 8000, 16, &mono)).unwrap(),
            vec![encode_ulaw(500), encode_ulaw(-500)]
        );
    }

    #[test]
    fn other_formats_are_refused_with_what_they_are() {
        let err = ulaw_of_wav(&wav(3, 1, 8000, 32, &[0; 8])).unwrap_err();
        assert!(
            err.0.contains("unsupported WAV format (format 3, 32 bits"),
            "{err}"
        );
        let err = ulaw_of_wav(&wav(7, 2, 8000, 8, &[0; 8])).unwrap_err();
        assert!(err.0.contains("8000 Hz mono"), "{err}");
        assert!(ulaw_of_wav(b"ID3 not a wav at all").is_err());
        // A header cut short is an error, not a panic.
        let whole = wav(1, 1, 8000, 16, &[0; 8]);
        for len in 0..whole.len() {
            let _ = ulaw_of_wav(&whole[..len]);
        }
    }

    #[test]
    fn the_signed_url_is_the_public_one_when_a_domain_is_configured() {
        let url = webhook_url("http://127.0.0.1:8080/", Role::Judge);
        assert_eq!(url, "http://127.0.0.1:8080/call/incoming?role=judge");
        assert_eq!(signed_url(&url, None), url);
        assert_eq!(
            signed_url(&url, Some("voice.example.com")),
            "https://voice.example.com/call/incoming?role=judge"
        );
    }

    #[test]
    fn the_webhook_has_twilios_fields() {
        let form = webhook_form("CA1", "AC1");
        for key in [
            "CallSid",
            "AccountSid",
            "From",
            "To",
            "CallStatus",
            "Direction",
        ] {
            assert!(form.iter().any(|(k, _)| k == key), "{key}");
        }
    }
}
