//! The real binary: `check-config` reporting every problem at once and never printing a
//! secret, `--env-file`, and `serve` starting, logging JSON and refusing a bad signature with a
//! log line that says why.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use crate::support::{binary, send_raw, serve_binary, TempDir, AUTH_TOKEN, DOMAIN};

fn run(mut command: Command) -> (i32, String, String) {
    let output = command.output().expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn check_config(vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = binary();
    command
        .arg("check-config")
        .env_clear()
        .envs(vars.iter().copied());
    run(command)
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let (code, stdout, stderr) = check_config(&[
        ("HTTP_PORT", "eighty"),
        ("OUTBOUND_RATE_LIMIT_PER_MIN", "3O"),
        ("APP_ENV", "prod"),
    ]);
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("the configuration has 5 problems"),
        "{stderr}"
    );
    for key in [
        "HTTP_PORT",
        "OUTBOUND_RATE_LIMIT_PER_MIN",
        "APP_ENV",
        "API_DOMAIN",
        "WS_DOMAIN",
    ] {
        assert!(
            stderr.contains(&format!("  - {key}: ")),
            "{key} missing from:\n{stderr}"
        );
    }
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let (code, stdout, stderr) = check_config(&[
        ("SERVER_DOMAIN", DOMAIN),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("ANTHROPIC_API_KEY", "sk-ant-very-secret"),
        ("OUTBOUND_API_KEY", "outbound-secret-0123456789"),
        ("DYNAMO_ENABLED", "true"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("API_DOMAIN=voice.example.com"));
    assert!(stdout.contains("HTTP_PORT=8080"));
    assert!(stdout.contains("TWILIO_AUTH_TOKEN=[set, redacted]"));
    assert!(stdout.contains("ELEVENLABS_API_KEY=[not set]"));
    assert!(stdout.contains("# warning: DYNAMO_ENABLED is ignored"));
    assert!(stdout.ends_with("# configuration OK\n"));
    for secret in [
        AUTH_TOKEN,
        "sk-ant-very-secret",
        "outbound-secret-0123456789",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} was printed"
        );
    }
}

#[test]
fn env_file_is_read_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("cotrackpro-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("voice.env");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "# written by the test\nSERVER_DOMAIN=file.example.com\nHTTP_PORT=9000\nLOG_FORMAT=\"json\"").unwrap();
    drop(file);

    let mut command = binary();
    command
        .args(["check-config", "--env-file"])
        .arg(&path)
        .env_clear()
        .env("HTTP_PORT", "9100");
    let (code, stdout, stderr) = run(command);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("API_DOMAIN=file.example.com"));
    assert!(stdout.contains("LOG_FORMAT=json"));
    assert!(
        stdout.contains("HTTP_PORT=9100"),
        "the process environment wins:\n{stdout}"
    );

    std::fs::write(&path, "SERVER_DOMAIN=ok.example.com\nthis line is wrong\n").unwrap();
    let mut command = binary();
    command
        .arg("check-config")
        .arg(format!("--env-file={}", path.display()))
        .env_clear();
    let (code, _, stderr) = run(command);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 2: expected KEY=value"), "{stderr}");

    let mut command = binary();
    command
        .args(["check-config", "--env-file", "/nonexistent/voice.env"])
        .env_clear();
    let (code, _, stderr) = run(command);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read /nonexistent/voice.env"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2_with_a_one_line_hint() {
    let mut command = binary();
    command.arg("launch");
    let (code, stdout, stderr) = run(command);
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: unknown command \"launch\"; see 'cotrackpro-voice --help'\n"
    );

    let mut command = binary();
    command.args(["bench", "--x"]);
    let (code, _, stderr) = run(command);
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: unknown option --x; see 'cotrackpro-voice bench --help'\n"
    );
}

#[test]
fn help_after_a_command_prints_only_that_commands_help() {
    let mut command = binary();
    command.args(["bench", "--help"]);
    let (code, bench, stderr) = run(command);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        bench.starts_with("Usage: cotrackpro-voice [--env-file PATH] bench "),
        "{bench}"
    );
    assert!(bench.contains("--capacity"));
    for other in ["generate-audio", "bench-records", "rollup", "call --server"] {
        assert!(!bench.contains(other), "{other} in bench's help:\n{bench}");
    }

    let mut command = binary();
    command.args(["help", "call"]);
    let (code, call, _) = run(command);
    assert_eq!(code, 0);
    assert!(call.contains("call --server URL"), "{call}");
    assert!(!call.contains("--capacity"));

    let mut command = binary();
    command.arg("--help");
    let (code, whole, _) = run(command);
    assert_eq!(code, 0);
    for name in [
        "demo",
        "call",
        "serve",
        "bench",
        "sim",
        "rollup",
        "check-config",
    ] {
        assert!(
            whole.contains(&format!("\n  {name} ")),
            "{name} missing:\n{whole}"
        );
    }
}

#[test]
fn serve_logs_json_and_says_why_a_signature_was_refused_without_the_token() {
    let records = TempDir::new("cli-serve");
    let (server, addr, started) = serve_binary(
        &records,
        &[
            ("VALIDATE_TWILIO_SIGNATURE", "true"),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ],
    );
    assert_eq!(started["level"], "INFO");

    let forged = send_raw(
        addr,
        "POST",
        "/call/incoming",
        &[
            ("Host".into(), DOMAIN.into()),
            (
                "X-Twilio-Signature".into(),
                cotrackpro_voice::twilio::signature::compute(
                    "not-the-token",
                    "https://voice.example.com/call/incoming",
                    &[],
                ),
            ),
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        b"CallSid=CA0123456789abcdef0123456789abcdef",
    );
    assert_eq!(forged.status, 403);

    let warning = server.wait_for_line("the signature warning", |l| {
        l.contains("Invalid Twilio signature")
    });
    let warning: serde_json::Value = serde_json::from_str(&warning).unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["path"], "/call/incoming");
    let reason = warning["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not match")
            && reason.contains("https://voice.example.com/call/incoming"),
        "{reason}"
    );

    let access = server.wait_for_line("the access line", |l| l.contains("\"target\":\"access\""));
    let access: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["message"], "http.request");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["path"], "/call/incoming");
    assert_eq!(access["status"], 403);
    assert!(access["durationMs"].is_number(), "{access}");
    assert_eq!(access["requestId"], forged.header("X-Request-Id").unwrap());

    let rest = server.drain(Duration::from_millis(200));
    assert!(
        rest.iter().all(|l| !l.contains(AUTH_TOKEN)),
        "the token reached a log line"
    );
}

#[test]
fn serve_refuses_to_start_on_a_busy_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut command = binary();
    command
        .arg("serve")
        .env_clear()
        .envs([("SERVER_DOMAIN", DOMAIN), ("HTTP_PORT", port.as_str())]);
    let (code, _, stderr) = run(command);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "cannot listen for webhooks (HTTP_PORT) on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

/// Under a descriptor limit too low for the configured calls and webhook connections,
/// `check-config` says so (and how many calls the limit holds); under one that holds them it
/// says nothing.
#[test]
fn check_config_warns_when_the_open_files_limit_cannot_hold_the_calls() {
    let with_limit = |open_files: u32, calls: &str, webhooks: &str| {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -n {open_files} && exec \"$0\" check-config"
            ))
            .arg(env!("CARGO_BIN_EXE_cotrackpro-voice"))
            .env_clear()
            .envs([
                ("SERVER_DOMAIN", DOMAIN),
                ("MAX_CONCURRENT_CALLS", calls),
                ("HTTP_MAX_CONNECTIONS", webhooks),
            ]);
        run(command)
    };
    // 100 x 12 + 256 + 17 (16 webhook connections and the spare) = 1,473 against 512.
    let (code, stdout, stderr) = with_limit(512, "100", "16");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "# warning: MAX_CONCURRENT_CALLS=100 with HTTP_MAX_CONNECTIONS=16 needs about 1473 \
             open files"
        ) && stdout.contains("RLIMIT_NOFILE is 512: calls past about 19 will fail"),
        "{stdout}"
    );
    // 18 calls fit beside 16 webhook connections (489), not beside the default 1,024 (1,497).
    let (code, stdout, stderr) = with_limit(512, "18", "16");
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("RLIMIT_NOFILE"), "{stdout}");
    let (code, stdout, stderr) = with_limit(512, "18", "1024");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("needs about 1497 open files")
            && stdout.contains("RLIMIT_NOFILE is 512: calls past about 0 will fail"),
        "{stdout}"
    );
}

/// `serve` says at start-up what `check-config` says of the limits: the journal of a server
/// that cannot hold its cap tells the operator so before the first call fails.
#[test]
fn serve_warns_at_start_up_when_the_open_files_limit_cannot_hold_the_calls() {
    let records = TempDir::new("serve-limits");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 512 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_cotrackpro-voice"));
    let command = crate::support::serve_env(
        command,
        &records,
        &[
            ("MAX_CONCURRENT_CALLS", "100"),
            ("HTTP_MAX_CONNECTIONS", "16"),
        ],
    );
    let server = crate::support::Spawned::spawn(command);
    let warning = server.wait_for_line("the limits warning", |l| l.contains("RLIMIT_NOFILE"));
    let line: serde_json::Value = serde_json::from_str(&warning).expect("a JSON log line");
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(
        warning.contains("calls past about 19 will fail"),
        "{warning}"
    );
    // It still serves: the warning is advice, not a refusal.
    server.wait_for_line("the listening line", |l| l.contains("listening"));
}
