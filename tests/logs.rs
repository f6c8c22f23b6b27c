//! The log lines as a shipper and journald read them, from the real binary: every JSON line
//! parses, its fields keep their types (numbers are numbers, lists are arrays, nothing is a
//! Debug string), a call's lines carry its `callSid`, and under journald each line starts with
//! its `<N>` priority.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{binary, encode_form, send_raw, serve_binary, serve_env, TempDir};

const CALL_SID: &str = "CA0123456789abcdef0123456789abcdef";

/// What is wrong with one log line: not a JSON object, or a field that hides its type in a
/// string (`"Some(12)"`, `"None"`, `"[\"a\"]"`, `"{\"judge\":…}"`, `"12"`). The message is
/// exempt: third-party crates write Debug text there, and it is text by nature.
fn untyped_fields(line: &str) -> Vec<String> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
        return vec![format!("not a JSON object: {line}")];
    };
    let mut problems = Vec::new();
    for (key, value) in &object {
        let Value::String(text) = value else { continue };
        if matches!(key.as_str(), "message" | "ts" | "requestId" | "sessionId") {
            continue;
        }
        let debug = text.starts_with("Some(") || text == "None";
        let json_inside = (text.starts_with('[') || text.starts_with('{'))
            && serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_array() || v.is_object());
        let number_inside = text.parse::<f64>().is_ok();
        if debug || json_inside || number_inside || text.starts_with("[\"") {
            problems.push(format!("{key}={text:?} in {line}"));
        }
    }
    problems
}

/// The keys that hold values of different JSON types on different lines (`null` goes with any):
/// a log store that maps each field to one type (Elasticsearch, OpenSearch) refuses or mangles
/// one of them.
fn conflicting_types(lines: &[Value]) -> Vec<String> {
    let kind = |v: &Value| match v {
        Value::Null => None,
        Value::Bool(_) => Some("bool"),
        Value::Number(_) => Some("number"),
        Value::String(_) => Some("string"),
        Value::Array(_) => Some("array"),
        Value::Object(_) => Some("object"),
    };
    let mut seen: std::collections::BTreeMap<&str, (&'static str, &Value)> = Default::default();
    let mut conflicts = Vec::new();
    for line in lines {
        let Some(object) = line.as_object() else {
            continue;
        };
        for (key, value) in object {
            let Some(this) = kind(value) else { continue };
            match seen.get(key.as_str()) {
                Some((first, at)) if *first != this => {
                    conflicts.push(format!("{key}: {first} in {at} but {this} in {line}"));
                }
                Some(_) => {}
                None => {
                    seen.insert(key, (this, line));
                }
            }
        }
    }
    conflicts
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn find<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

#[test]
fn the_checker_catches_debug_strings_and_json_inside_strings() {
    for bad in [
        r#"{"level":"INFO","callDuration":"Some(12)"}"#,
        r#"{"level":"INFO","callDuration":"None"}"#,
        r#"{"level":"INFO","tools":"[\"lookup\"]"}"#,
        r#"{"level":"INFO","byRole":"{\"judge\":{\"callCount\":2}}"}"#,
        r#"{"level":"INFO","count":"12"}"#,
        r#"INFO access: GET / 200"#,
    ] {
        assert_eq!(untyped_fields(bad).len(), 1, "{bad}");
    }
    let good = r#"{"level":"INFO","message":"Request { a: Some(1) }","count":12,"tools":["a"],"who":"judge","callDuration":null}"#;
    assert_eq!(untyped_fields(good), Vec::<String>::new());
    let lines = [
        serde_json::json!({"status": 200, "callDuration": null}),
        serde_json::json!({"status": 204, "callDuration": 12}),
    ];
    assert!(conflicting_types(&lines).is_empty());
    let clash = serde_json::json!({"status": "completed"});
    assert_eq!(conflicting_types(&[lines[0].clone(), clash]).len(), 1);
}

/// The demo's whole call (five turns, a tool call, a barge-in) in the binary, with every line
/// down to debug in JSON.
#[test]
fn every_json_line_of_a_whole_call_is_typed_and_the_calls_lines_name_it() {
    let dir = TempDir::new("logs-demo");
    let output = binary()
        .args(["demo", "--fast", "--role", "attorney", "--wav"])
        .arg(dir.path().join("call.wav"))
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .env_remove("JOURNAL_STREAM")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "debug")
        .output()
        .expect("the demo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let raw: Vec<&str> = stderr.lines().collect();
    assert!(raw.len() > 20, "a whole call logs more than this: {stderr}");
    let problems: Vec<String> = raw.iter().flat_map(|l| untyped_fields(l)).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let lines: Vec<Value> = raw.iter().map(|l| parse(l)).collect();
    assert_eq!(conflicting_types(&lines), Vec::<String>::new());

    let started = find(&lines, "call.started");
    let sid = started["callSid"]
        .as_str()
        .expect("call.started names the call");
    assert!(sid.starts_with("CA"), "{sid}");
    // Logged by the call's speech-to-text thread with no callSid of its own.
    assert_eq!(find(&lines, "stt.session_started")["callSid"], sid);
    // Every line of the call's own modules names it, from its first to its last.
    let of_the_call: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("cotrackpro_voice::call") && !t.ends_with("clips"))
        })
        .collect();
    assert!(of_the_call.len() > 10, "{of_the_call:#?}");
    for line in &of_the_call {
        assert_eq!(line["callSid"], sid, "{line}");
    }

    assert_eq!(
        find(&lines, "call.tools")["tools"],
        serde_json::json!(["generate_artifact"])
    );
    let latency = find(&lines, "turn.latency");
    for field in [
        "turn",
        "speechEndToCommitMs",
        "firstTokenMs",
        "firstFrameMs",
    ] {
        assert!(latency[field].is_u64(), "{field} in {latency}");
    }
    assert!(find(&lines, "call.ended")["durationSecs"].is_u64());
    assert!(find(&lines, "cost.call.summary")["estimatedCostUsd"].is_f64());
    let access = find(&lines, "http.request");
    assert_eq!(access["target"], "access");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["path"], "/call/incoming");
    assert_eq!(access["status"], 200);
    assert!(access["durationMs"].is_number(), "{access}");
    assert!(access["requestId"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
}

/// A Twilio webhook, form-encoded; the status it got.
fn post_form(addr: SocketAddr, path: &str, form: &[(&str, &str)], request_id: &str) -> u16 {
    let headers = [
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("X-Request-Id".to_string(), request_id.to_string()),
    ];
    send_raw(addr, "POST", path, &headers, encode_form(form).as_bytes()).status
}

#[test]
fn a_status_callbacks_duration_is_a_number_and_its_access_line_has_fields() {
    let records = TempDir::new("logs-status");
    let (server, addr, _) = serve_binary(&records, &[("LOG_LEVEL", "debug")]);
    let answer = [("CallSid", CALL_SID), ("CallStatus", "ringing")];
    assert_eq!(
        post_form(addr, "/call/incoming", &answer, "req-answer"),
        200
    );
    let done = [
        ("CallSid", CALL_SID),
        ("CallStatus", "completed"),
        ("CallDuration", "12"),
    ];
    assert_eq!(post_form(addr, "/call/status", &done, "req-status"), 204);
    let update =
        parse(&server.wait_for_line("the status line", |l| l.contains("Call status update")));
    assert_eq!(update["callDuration"], 12);
    assert_eq!(update["callSid"], CALL_SID);
    let access = parse(&server.wait_for_line("its access line", |l| l.contains("req-status")));
    assert_eq!(access["method"], "POST");
    assert_eq!(access["path"], "/call/status");
    assert_eq!(access["status"], 204);
    assert_eq!(access["requestId"], "req-status");
    let mut rest = server.drain(Duration::from_millis(200));
    rest.push(update.to_string());
    let problems: Vec<String> = rest.iter().flat_map(|l| untyped_fields(l)).collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `serve` with stderr into a file and `extra` variables, killed on drop.
struct ServeToFile {
    child: Child,
    log: std::path::PathBuf,
}

impl ServeToFile {
    /// `journal_stream`: what `JOURNAL_STREAM` says, given the log file's (device, inode).
    fn start(
        dir: &TempDir,
        format: &str,
        journal_stream: impl Fn(u64, u64) -> String,
    ) -> (ServeToFile, SocketAddr) {
        let log = dir.path().join(format!("stderr-{format}.log"));
        let file = std::fs::File::create(&log).expect("the log file");
        let meta = file.metadata().expect("its metadata");
        let stream = journal_stream(meta.dev(), meta.ino());
        let mut command = binary();
        command.arg("serve");
        let mut command = serve_env(
            command,
            dir,
            &[
                ("LOG_FORMAT", format),
                ("LOG_LEVEL", "debug"),
                ("JOURNAL_STREAM", &stream),
            ],
        );
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn the binary");
        let server = ServeToFile { child, log };
        let listening = server.wait_for(|l| l.contains("listening"));
        let addr = listening
            .split(['"', ' ', '='])
            .find_map(|word| word.parse::<SocketAddr>().ok())
            .expect("the listening line names the HTTP address");
        (server, addr)
    }

    fn lines(&self) -> Vec<String> {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text.lines().map(str::to_string).collect()
    }

    fn wait_for(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no such line in {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeToFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs an info line (the access line) and a warning (an unknown `CallStatus`) and returns
/// the warning's line.
fn info_and_warning(server: &ServeToFile, addr: SocketAddr) -> String {
    let odd = [("CallSid", CALL_SID), ("CallStatus", "bogus")];
    post_form(addr, "/call/status", &odd, "req-odd");
    server.wait_for(|l| l.contains("req-odd"));
    server.wait_for(|l| l.contains("Unknown CallStatus ignored"))
}

#[test]
fn under_journald_each_line_starts_with_its_priority_in_both_formats() {
    let dir = TempDir::new("logs-journal");
    let (server, addr) = ServeToFile::start(&dir, "json", |dev, ino| format!("{dev}:{ino}"));
    let warning = info_and_warning(&server, addr);
    assert!(warning.starts_with("<4>{"), "{warning}");
    let lines = server.lines();
    for line in &lines {
        let (prefix, json) = line.split_at(3);
        let level = parse(json)["level"].as_str().unwrap_or("").to_string();
        let expected = match level.as_str() {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            _ => "<7>",
        };
        assert_eq!(prefix, expected, "{line}");
    }
    assert!(lines.iter().any(|l| l.starts_with("<6>{")), "{lines:#?}");
    drop(server);

    let (server, addr) = ServeToFile::start(&dir, "text", |dev, ino| format!("{dev}:{ino}"));
    let warning = info_and_warning(&server, addr);
    assert!(warning.starts_with("<4>WARN "), "{warning}");
    let access = server.wait_for(|l| l.contains("req-odd"));
    assert!(
        access.starts_with("<6>INFO  access: http.request "),
        "{access}"
    );
}

#[test]
fn a_journal_stream_that_is_not_stderr_gets_no_prefix() {
    let dir = TempDir::new("logs-not-journal");
    // Stderr was redirected after systemd set the variable: the inode is another file's.
    let (server, addr) = ServeToFile::start(&dir, "json", |dev, ino| format!("{dev}:{}", ino + 1));
    let warning = info_and_warning(&server, addr);
    assert!(warning.starts_with('{'), "{warning}");
    for line in server.lines() {
        assert!(line.starts_with('{'), "{line}");
        parse(&line);
    }
}
