//! Shared test support: a server on an ephemeral loopback port, a tiny HTTP/1.1 client with
//! timeouts, the real binary run as a child process, and the Python interop runner.
//! Everything here stops by itself: every read has a timeout and every child is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cotrackpro_voice::config::{Config, Env};
use cotrackpro_voice::serve::Server;

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const DOMAIN: &str = "voice.example.com";
pub const AUTH_TOKEN: &str = "test-auth-token-9f8e7d";

/// A server started in-process on 127.0.0.1 with an ephemeral port; shut down on drop.
pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub media_addr: SocketAddr,
    pub records_dir: TempDir,
}

impl TestServer {
    /// Starts with `SERVER_DOMAIN` set and `extra` variables on top.
    pub fn start(extra: &[(&str, &str)]) -> TestServer {
        let mut env = Env::from_pairs([
            ("SERVER_DOMAIN", DOMAIN),
            ("HTTP_PORT", "0"),
            ("MEDIA_PORT", "0"),
            ("HTTP_WORKERS", "4"),
            ("LOG_LEVEL", "off"),
        ]);
        let records_dir = TempDir::new("server");
        env.set("RECORDS_DIR", &records_dir.path().display().to_string());
        for (k, v) in extra {
            env.set(k, v);
        }
        let config = Config::from_env(&env).expect("test config is valid");
        let server = Server::start(config).expect("server starts");
        let addr = server.http_addr();
        let media_addr = server.media_addr();
        TestServer {
            server: Some(server),
            addr,
            media_addr,
            records_dir,
        }
    }

    /// Starts with Twilio signature validation on, keyed by [`AUTH_TOKEN`].
    pub fn with_signatures() -> TestServer {
        TestServer::start(&[
            ("VALIDATE_TWILIO_SIGNATURE", "true"),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ])
    }

    /// The running server's shared state.
    pub fn app(&self) -> &cotrackpro_voice::app::App {
        &self.server.as_ref().expect("server is running").app
    }

    /// The running server's records store (to seed records the call pipeline would write).
    pub fn records(&self) -> &cotrackpro_voice::records::RecordStore {
        &self.server.as_ref().expect("server is running").app.records
    }

    /// Answers an inbound call as Twilio would (`POST /call/incoming`, unsigned), which makes
    /// its record; asserts the TwiML came back.
    pub fn answer_call(&self, call_sid: &str, role: &str) {
        let res = self
            .request("POST", &format!("/call/incoming?role={role}"))
            .form(&[
                ("CallSid", call_sid),
                ("From", "+15551234567"),
                ("To", "+15557654321"),
                ("CallStatus", "ringing"),
                ("Direction", "inbound"),
            ])
            .send();
        assert_eq!(res.status, 200, "{}", res.body);
    }

    pub fn request(&self, method: &str, path: &str) -> RequestBuilder {
        RequestBuilder {
            addr: self.addr,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cotrackpro-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

pub struct RequestBuilder {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RequestBuilder {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A form body with Twilio's content type.
    pub fn form(self, params: &[(&str, &str)]) -> Self {
        let body = encode_form(params);
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.as_bytes())
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    pub fn send(self) -> HttpResponse {
        send_raw(
            self.addr,
            &self.method,
            &self.path,
            &self.headers,
            &self.body,
        )
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub fn send_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("Host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body and close; that is not our error.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP response in {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

pub fn encode_form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn owned(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `cotrackpro-voice` binary under test.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cotrackpro-voice"))
}

/// `cotrackpro-voice serve` as a child process on ephemeral ports with JSON logs, records in
/// `records`, and `extra` variables. Returns it once it logged its listening line, with that
/// line and the HTTP address.
pub fn serve_binary(
    records: &TempDir,
    extra: &[(&str, &str)],
) -> (Spawned, SocketAddr, serde_json::Value) {
    let mut command = binary();
    command.arg("serve");
    let server = Spawned::spawn(serve_env(command, records, extra));
    let line = server.wait_for_line("the listening line", |l| l.contains("listening"));
    let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let addr = line["http"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the listening line names the HTTP address");
    (server, addr, line)
}

/// `command` (which runs `serve`) with only the environment a test server needs: ephemeral
/// ports, JSON logs, records in `records`, and `extra` variables.
pub fn serve_env(mut command: Command, records: &TempDir, extra: &[(&str, &str)]) -> Command {
    command
        .env_clear()
        .env("RECORDS_DIR", records.path())
        .envs([
            ("SERVER_DOMAIN", DOMAIN),
            ("HTTP_PORT", "0"),
            ("MEDIA_PORT", "0"),
            ("LOG_FORMAT", "json"),
            ("HTTP_WORKERS", "4"),
        ])
        .envs(extra.iter().copied());
    command
}

/// A child process whose stderr lines arrive on a channel; killed on drop.
pub struct Spawned {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Spawned {
    pub fn spawn(mut command: Command) -> Spawned {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("test-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .unwrap();
        Spawned { child, lines }
    }

    /// The next stderr line satisfying `pred`, within [`IO_TIMEOUT`].
    pub fn wait_for_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no stderr line with {what} within {IO_TIMEOUT:?}; saw {seen:#?}"),
            }
        }
    }

    /// Every stderr line that arrives within `wait`.
    pub fn drain(&self, wait: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(wait) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with the official `twilio` package: `COTRACKPRO_INTEROP_PYTHON`, else the
/// virtualenv `scripts/test` prepares at `.venv-interop`.
pub fn interop_python() -> PathBuf {
    if let Some(path) = std::env::var_os("COTRACKPRO_INTEROP_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-interop/bin/python");
    assert!(
        venv.exists(),
        "interop tests need the official twilio Python package: run scripts/test \
         (it prepares .venv-interop), or set COTRACKPRO_INTEROP_PYTHON"
    );
    venv
}

/// Runs `scripts/twilio_interop.py <mode>` with `input` as JSON on stdin; returns its JSON.
pub fn run_interop(mode: &str, input: &serde_json::Value) -> serde_json::Value {
    run_python("twilio_interop.py", &[mode], input)
}

/// Runs `scripts/<script> <args>` with the interop Python, `input` as JSON on stdin; returns
/// the JSON it prints (within 60 s).
pub fn run_python(script: &str, args: &[&str], input: &serde_json::Value) -> serde_json::Value {
    run_python_within(script, args, input, Duration::from_secs(60))
}

/// [`run_python`] with a longer bound for a script that runs for a while.
pub fn run_python_within(
    script: &str,
    args: &[&str],
    input: &serde_json::Value,
    within: Duration,
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let mut child = Command::new(interop_python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("test-interop".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .unwrap();
    let output = rx
        .recv_timeout(within)
        .expect("python finished in time")
        .expect("python ran");
    assert!(
        output.status.success(),
        "python interop failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}
