//! `cotrackpro-voice call` against the real binary's `serve`, pointed at the simulated providers with
//! webhook signatures checked: a call dialed with the server's token completes (greeting, an
//! answer to each utterance, a clean hang-up, the WAV written) and exits 0; dialed with another
//! token it exits 1 with one line naming the 403 — and never prints the token. Through TLS
//! proxies (https:// and wss://, as behind Caddy) it completes too, trusting the proxies' CA from
//! `PROVIDER_CA_FILE`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use cotrackpro_voice::sim::listener::SimStream;
use cotrackpro_voice::sim::tls::{self, CaFile, SimCa};
use cotrackpro_voice::sim::Simulators;

use crate::support::{binary, serve_binary, TempDir, DOMAIN};

/// How long the proxy serves and each of its connections lives: longer than a call.
const PROXY_LIFE: Duration = Duration::from_secs(150);

/// A TLS-terminating proxy on 127.0.0.1 in front of `backend`, as Caddy is in production: each
/// connection's TLS (a certificate of `ca` for localhost) ends here and its bytes are carried
/// to and from `backend` as they are.
fn tls_proxy(ca: &SimCa, backend: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
    let addr = listener.local_addr().expect("the proxy's address");
    listener.set_nonblocking(true).expect("non-blocking accept");
    let config = ca.server_config();
    std::thread::Builder::new()
        .name("test-tls-proxy".into())
        .spawn(move || {
            let until = Instant::now() + PROXY_LIFE;
            while Instant::now() < until {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let config = config.clone();
                let _ = std::thread::Builder::new()
                    .name("test-tls-pipe".into())
                    .spawn(move || {
                        let _ = tcp.set_nonblocking(false);
                        let Ok(front) = tls::accept(tcp, config) else {
                            return;
                        };
                        if let Ok(back) =
                            TcpStream::connect_timeout(&backend, Duration::from_secs(5))
                        {
                            pipe(front, back, until);
                        }
                    });
            }
        })
        .expect("the proxy's thread starts");
    addr
}

/// Carries bytes both ways until either side closes or `until`.
fn pipe(mut front: SimStream, mut back: TcpStream, until: Instant) {
    let poll = Some(Duration::from_millis(5));
    if front.set_read_timeout(poll).is_err() || back.set_read_timeout(poll).is_err() {
        return;
    }
    let waiting =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    let mut buf = vec![0u8; 16 * 1024];
    while Instant::now() < until {
        match front.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if back.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if waiting(&e) => {}
            Err(_) => return,
        }
        match back.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if front
                    .write_all(&buf[..n])
                    .and_then(|()| front.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if waiting(&e) => {}
            Err(_) => return,
        }
    }
}

fn call(
    server: &str,
    media: &str,
    token: &str,
    wav: &std::path::Path,
    extra: &[(&str, &str)],
) -> Output {
    binary()
        .args([
            "call", "--fast", "--role", "judge", "--server", server, "--media", media,
        ])
        .arg("--wav")
        .arg(wav)
        .env_clear()
        .env("TWILIO_AUTH_TOKEN", token)
        .env("SERVER_DOMAIN", DOMAIN)
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("call runs")
}

/// The call completed: exit 0, the greeting and both replies heard, the WAV written.
fn assert_completed(output: &Output, wav: &std::path::Path, token: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("🔊 greeting: first audio"), "{stdout}");
    assert_eq!(stdout.matches("🗣  caller: ").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("🔊 reply: first audio").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("☎  the caller hung up"), "{stdout}");
    let written = std::fs::metadata(wav).expect("the WAV was written").len();
    // 44 bytes of header, then seconds of 8 kHz 16-bit stereo.
    assert!(written > 44 + 8000 * 4, "{written} bytes");
    assert!(!stdout.contains(token) && !stderr.contains(token));
}

#[test]
fn call_completes_against_serve_and_a_wrong_token_is_refused() {
    // The variables `cotrackpro-voice sim` prints, from the same simulators in this process.
    let sims = Simulators::start().expect("the simulators start");
    let vars = sims.env();
    let records = TempDir::new("call-command");
    let mut extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.extend([
        ("BIND_ADDR", "127.0.0.1"),
        ("VALIDATE_TWILIO_SIGNATURE", "true"),
    ]);
    let (_server, http, listening) = serve_binary(&records, &extra);
    assert_eq!(listening["signatureValidation"], true);
    let media = listening["media"].as_str().expect("the media address");
    let token = cotrackpro_voice::sim::SIM_TWILIO_AUTH_TOKEN;
    let wav = records.path().join("call.wav");

    let server = format!("http://{http}");
    let stream = format!("ws://{media}/call/stream");
    let output = call(&server, &stream, token, &wav, &[]);
    assert_completed(&output, &wav, token);

    let wrong = "not-the-servers-token";
    let output = call(
        &server,
        &stream,
        wrong,
        &records.path().join("refused.wav"),
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: the server refused the webhook's signature (403"),
        "{stderr}"
    );
    assert!(!stdout.contains(wrong) && !stderr.contains(wrong));
    assert!(!records.path().join("refused.wav").exists());

    // Through TLS proxies in front of each port, as behind Caddy: https:// and wss://.
    let ca = SimCa::generate().expect("a CA");
    let ca_file = CaFile::write(ca.ca_pem()).expect("the CA's file");
    let https = tls_proxy(&ca, http);
    let wss = tls_proxy(&ca, media.parse().expect("a socket address"));
    let wav = records.path().join("tls.wav");
    let ca_path = ca_file.path().display().to_string();
    let output = call(
        &format!("https://localhost:{}", https.port()),
        &format!("wss://localhost:{}/call/stream", wss.port()),
        token,
        &wav,
        &[("PROVIDER_CA_FILE", ca_path.as_str())],
    );
    assert_completed(&output, &wav, token);
    assert!(String::from_utf8_lossy(&output.stdout).contains("the stream is wss://localhost:"));
}
