//! The command line: `cotrackpro-voice [--env-file PATH] <command>`. Parsing is by hand (a few
//! flags do not need a crate); each command is one function reached from [`run`].

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError, Env};

const USAGE_HEAD: &str = "\
cotrackpro-voice: phone a CoTrackPro persona (Twilio, ElevenLabs, Anthropic Claude)

Usage: cotrackpro-voice [--env-file PATH] <command>

Commands:
";

const USAGE_OPTIONS: &str = "
Options:
  --env-file PATH   read KEY=value lines (systemd EnvironmentFile= format) before the
                    environment; variables already in the environment win
  -h, --help        this help; after a command, that command's help

Configuration is read from the environment; see README.md for every variable.
";

/// The whole help: every command.
fn usage() -> String {
    let mut text = USAGE_HEAD.to_string();
    for (_, help) in COMMANDS {
        text.push_str(help);
    }
    text.push_str(USAGE_OPTIONS);
    text
}

/// One command's help, or `None` for a name that is not a command.
fn command_usage(name: &str) -> Option<String> {
    let (_, help) = COMMANDS.iter().find(|(n, _)| *n == name)?;
    Some(format!(
        "Usage: cotrackpro-voice [--env-file PATH] {}{USAGE_OPTIONS}",
        help.trim_start()
    ))
}

/// Each command: its name and its help (synopsis, then what it does), as `--help` lists them.
const COMMANDS: &[(&str, &str)] = &[
    (
        "demo",
        "  demo [--role ROLE] [--wav PATH] [--fast]
                 the whole product on loopback, no keys needed: the server and simulated
                 providers, and a simulated caller who talks with a persona (default parent),
                 interrupts it once and says goodbye; prints the conversation with each
                 turn's latencies and writes both sides to PATH (default cotrackpro-demo.wav);
                 --fast plays the assistant 4x faster than real time
",
    ),
    (
        "call",
        "  call --server URL [--media URL] [--role ROLE] [--say FILE.wav] [--wav PATH] [--fast]
                 test a running server without a phone: the signed /call/incoming webhook
                 (TWILIO_AUTH_TOKEN; the URL signed is https://API_DOMAIN or SERVER_DOMAIN
                 when set, else URL as given), then the media stream of the TwiML's
                 <Stream url> (or --media; ws:// or wss://, trusting PROVIDER_CA_FILE too);
                 says a short script in the simulated voice (or FILE.wav: 8 kHz mono μ-law,
                 or 16-bit PCM, converted); prints when each reply started and how long it
                 was (it cannot transcribe them), and writes both sides to PATH (default
                 cotrackpro-call.wav); exits 0 when the greeting and every reply were heard
                 and the hang-up was clean, else 1 with the reason; at most 120 s;
                 --fast plays the assistant 4x faster than real time
",
    ),
    (
        "serve",
        "  serve          run the webhook server (HTTP_PORT) and the media-stream server (MEDIA_PORT)
",
    ),
    (
        "bench",
        "  bench [--calls N] [--turns K] [--provider-rtt-ms MS] [--plain] [--server-cpus LIST]
        [--harness-cpus LIST] [--stt-chunk-ms MS] [--turn-end smart|vad|both] [--json]
        [--capacity [--max-calls M]]
                 N simultaneous simulated calls (default 20) of K turns (default 3) against
                 the server run as its own process (`serve`), with the simulated providers
                 (over TLS, --plain: without; each MS away: a network round trip, default 20)
                 and callers in this one;
                 every second turn is said over the answer (a barge-in); prints caller waits,
                 frame gaps, per-hop latencies, server stage latencies, the server process's
                 CPU, memory, threads, descriptors and wake-ups per call, and the harness's CPU.
                 LIST pins a side to CPUs like 1 or 0,2-3 (default with 2+ cores: the server
                 on the last, the harness on the others); --json prints one JSON object;
                 --capacity raises the calls step by step (from N, default 10, ×1.5, up to M,
                 default 1000; K default 4, long enough for every call to be live at once),
                 each step a fresh server, until a call fails, a frame gap, a hop's p99 over
                 10 ms, fewer calls live at once than the step has, or the harness saturating
                 (or its frames going out late), and reports the largest passing count and
                 what broke; --turn-end sets the server's TURN_END (both: a run with each,
                 then the caller waits of both side by side)
",
    ),
    (
        "check-config",
        "  check-config   validate the configuration and print it, secrets redacted
",
    ),
    (
        "generate-audio",
        "  generate-audio render the fixed phrases and greetings for every configured voice through
                 ElevenLabs into AUDIO_DIR (raw μ-law files and manifest.json); unchanged
                 ones are kept
",
    ),
    (
        "sim",
        "  sim [--first-token-ms N] [--token-ms N] [--tts-first-byte-ms N] [--stt-commit-ms N]
                 run the simulated providers (Anthropic, ElevenLabs, MCP, Twilio) on loopback
                 ports and print the variables that point a server at them
",
    ),
    (
        "compact",
        "  compact        compact the call records now (drop expired and deleted calls, one line
                 per call); safe while the server runs
",
    ),
    (
        "bench-records",
        "  bench-records [--count N] [--dir PATH]
                 the records benchmark: N synthetic calls (default 1000000) in PATH
                 (default: a fresh directory under the system temp dir)
",
    ),
    (
        "rollup",
        "  rollup [--date YYYY-MM-DD]
                 the daily cost rollup of one UTC day (default: yesterday); prints the
                 JSON and writes RECORDS_DIR/rollups/DATE.json
",
    ),
    (
        "help",
        "  help           print this help
",
    ),
    (
        "version",
        "  version        print the version
",
    ),
];

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Bench,
    Call,
    Demo,
    GenerateAudio,
    Serve,
    CheckConfig,
    Compact,
    Rollup,
    BenchRecords,
    Sim,
    /// The whole help, or one command's (`help bench`, `bench --help`).
    Help(Option<String>),
    Version,
}

impl Command {
    /// The command `name` names on the command line.
    fn named(name: &str) -> Option<Command> {
        Some(match name {
            "demo" => Command::Demo,
            "call" => Command::Call,
            "bench" => Command::Bench,
            "generate-audio" => Command::GenerateAudio,
            "serve" => Command::Serve,
            "check-config" => Command::CheckConfig,
            "compact" => Command::Compact,
            "rollup" => Command::Rollup,
            "bench-records" => Command::BenchRecords,
            "sim" => Command::Sim,
            "help" => Command::Help(None),
            "version" => Command::Version,
            _ => return None,
        })
    }

    /// Its name on the command line.
    fn name(&self) -> &'static str {
        match self {
            Command::Demo => "demo",
            Command::Call => "call",
            Command::Bench => "bench",
            Command::GenerateAudio => "generate-audio",
            Command::Serve => "serve",
            Command::CheckConfig => "check-config",
            Command::Compact => "compact",
            Command::Rollup => "rollup",
            Command::BenchRecords => "bench-records",
            Command::Sim => "sim",
            Command::Help(_) => "help",
            Command::Version => "version",
        }
    }
}

impl Args {
    /// The arguments of `help` (`topic`: one command's).
    fn help(topic: Option<String>) -> Args {
        Args {
            command: Command::Help(topic),
            env_file: None,
            date: None,
            count: None,
            dir: None,
            sim_timing: crate::sim::SimTiming::default(),
            role: None,
            wav: None,
            fast: false,
            server: None,
            media: None,
            say: None,
            calls: None,
            turns: None,
            provider_rtt_ms: None,
            stt_chunk_ms: None,
            json: false,
            plain: false,
            server_cpus: None,
            harness_cpus: None,
            capacity: false,
            max_calls: None,
            turn_end: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    pub env_file: Option<PathBuf>,
    /// `rollup --date`, as days since the epoch.
    pub date: Option<i64>,
    /// `bench-records --count`.
    pub count: Option<u64>,
    /// `bench-records --dir`.
    pub dir: Option<PathBuf>,
    /// `sim` timing flags.
    pub sim_timing: crate::sim::SimTiming,
    /// `demo --role`, `--wav`, `--fast`.
    pub role: Option<crate::personas::Role>,
    pub wav: Option<PathBuf>,
    pub fast: bool,
    /// `call --server`, `--media`, `--say`.
    pub server: Option<String>,
    pub media: Option<String>,
    pub say: Option<PathBuf>,
    /// `bench --calls`, `--turns`.
    pub calls: Option<usize>,
    pub turns: Option<usize>,
    /// `bench --provider-rtt-ms`.
    pub provider_rtt_ms: Option<u64>,
    /// `bench --stt-chunk-ms`: the server's `STT_CHUNK_MS` (its configuration checks it).
    pub stt_chunk_ms: Option<u64>,
    /// `bench --json`, `--plain`, `--server-cpus`, `--harness-cpus`.
    pub json: bool,
    pub plain: bool,
    pub server_cpus: Option<Vec<usize>>,
    pub harness_cpus: Option<Vec<usize>>,
    /// `bench --capacity`, `--max-calls`.
    pub capacity: bool,
    pub max_calls: Option<usize>,
    /// `bench --turn-end smart|vad|both`.
    pub turn_end: Option<crate::commands::bench::TurnEndRuns>,
}

/// A flag's value: written inline (`--flag=value`) or as the next argument.
fn value_of(
    inline: Option<String>,
    args: &mut impl Iterator<Item = OsString>,
    missing: impl FnOnce() -> String,
) -> Result<String, String> {
    match inline {
        Some(value) => Ok(value),
        None => args
            .next()
            .and_then(|v| v.into_string().ok())
            .ok_or_else(missing),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut command = None;
    let mut env_file = None;
    let mut date = None;
    let mut count = None;
    let mut dir = None;
    let mut sim_timing = crate::sim::SimTiming::default();
    let mut role = None;
    let mut wav = None;
    let mut fast = false;
    let mut server = None;
    let mut media = None;
    let mut say = None;
    let mut help = false;
    let mut calls = None;
    let mut turns = None;
    let mut provider_rtt_ms = None;
    let mut stt_chunk_ms = None;
    let mut json = false;
    let mut plain = false;
    let mut server_cpus = None;
    let mut harness_cpus = None;
    let mut capacity = false;
    let mut max_calls = None;
    let mut turn_end = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("argument {arg:?} is not UTF-8"))?;
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "--env-file" => {
                let value = value_of(inline_value, &mut args, || {
                    "--env-file needs a path".to_string()
                })?;
                env_file = Some(PathBuf::from(value));
            }
            "--date" => {
                let value = value_of(inline_value, &mut args, || {
                    "--date needs a date (YYYY-MM-DD)".to_string()
                })?;
                date =
                    Some(crate::timestamp::parse_date(&value).ok_or_else(|| {
                        format!("--date {value:?} is not a date like 2026-11-23")
                    })?);
            }
            "--count" | "--dir" => {
                let value = value_of(inline_value, &mut args, || format!("{flag} needs a value"))?;
                if flag == "--dir" {
                    dir = Some(PathBuf::from(value));
                } else {
                    count = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("--count {value:?} is not a positive number"))?,
                    );
                }
            }
            "--first-token-ms" | "--token-ms" | "--tts-first-byte-ms" | "--stt-commit-ms" => {
                let value = value_of(inline_value, &mut args, || {
                    format!("{flag} needs milliseconds")
                })?;
                let ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= 60_000)
                    .ok_or_else(|| format!("{flag} {value:?} is not milliseconds (0 to 60000)"))?;
                let slot = match flag.as_str() {
                    "--first-token-ms" => &mut sim_timing.first_token_ms,
                    "--token-ms" => &mut sim_timing.token_ms,
                    "--tts-first-byte-ms" => &mut sim_timing.tts_first_byte_ms,
                    _ => &mut sim_timing.stt_commit_ms,
                };
                *slot = Some(ms);
            }
            "--role" | "--wav" => {
                let value = value_of(inline_value, &mut args, || format!("{flag} needs a value"))?;
                if flag == "--wav" {
                    wav = Some(PathBuf::from(value));
                } else {
                    role = Some(crate::personas::Role::parse(&value).ok_or_else(|| {
                        format!(
                            "--role {value:?} is not one of {}",
                            crate::personas::Role::allowed_list()
                        )
                    })?);
                }
            }
            "--fast" => fast = true,
            "--server" | "--media" => {
                let value = value_of(inline_value, &mut args, || format!("{flag} needs a URL"))?;
                let schemes: &[&str] = if flag == "--server" {
                    &["http://", "https://"]
                } else {
                    &["ws://", "wss://"]
                };
                if !schemes.iter().any(|s| value.starts_with(s)) {
                    return Err(format!(
                        "{flag} {value:?} is not a URL starting with {}",
                        schemes.join(" or ")
                    ));
                }
                if flag == "--server" {
                    server = Some(value);
                } else {
                    media = Some(value);
                }
            }
            "--say" => {
                let value = value_of(inline_value, &mut args, || {
                    "--say needs a WAV file".to_string()
                })?;
                say = Some(PathBuf::from(value));
            }
            "--calls" | "--turns" | "--max-calls" => {
                let value = value_of(inline_value, &mut args, || format!("{flag} needs a number"))?;
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=2000).contains(n))
                    .ok_or_else(|| format!("{flag} {value:?} is not a number from 1 to 2000"))?;
                if flag == "--calls" {
                    calls = Some(n);
                } else if flag == "--max-calls" {
                    max_calls = Some(n);
                } else {
                    turns = Some(n);
                }
            }
            "--provider-rtt-ms" => {
                let value = value_of(inline_value, &mut args, || format!("{flag} needs a number"))?;
                provider_rtt_ms = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n <= 10_000)
                        .ok_or_else(|| {
                            format!("{flag} {value:?} is not a number from 0 to 10000")
                        })?,
                );
            }
            "--turn-end" => {
                let value = value_of(inline_value, &mut args, || {
                    format!("{flag} needs smart, vad or both")
                })?;
                turn_end = Some(
                    crate::commands::bench::TurnEndRuns::parse(&value)
                        .ok_or_else(|| format!("{flag} {value:?} is not smart, vad or both"))?,
                );
            }
            "--stt-chunk-ms" => {
                let value = value_of(inline_value, &mut args, || format!("{flag} needs a number"))?;
                stt_chunk_ms =
                    Some(value.parse::<u64>().map_err(|_| {
                        format!("{flag} {value:?} is not a number of milliseconds")
                    })?);
            }
            "--json" => json = true,
            "--capacity" => capacity = true,
            "--plain" => plain = true,
            "--server-cpus" | "--harness-cpus" => {
                let value = value_of(inline_value, &mut args, || {
                    format!("{flag} needs a CPU list like 1 or 0,2-3")
                })?;
                let cpus = crate::commands::bench::parse_cpu_list(&value)
                    .map_err(|err| format!("{flag} {err}"))?;
                if flag == "--server-cpus" {
                    server_cpus = Some(cpus);
                } else {
                    harness_cpus = Some(cpus);
                }
            }
            "-h" | "--help" => help = true,
            "-V" | "--version" => command = Some(Command::Version),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            name => match (&command, Command::named(name)) {
                // `help bench`: bench's help.
                (Some(Command::Help(None)), Some(_)) => {
                    command = Some(Command::Help(Some(name.to_string())))
                }
                (Some(_), _) => return Err(format!("unexpected argument {name:?}")),
                (None, Some(named)) => command = Some(named),
                (None, None) => return Err(format!("unknown command {name:?}")),
            },
        }
    }
    if help {
        // `bench --help`: bench's help; `--help` alone: all of it.
        let topic = match &command {
            None | Some(Command::Help(None)) => None,
            Some(Command::Help(Some(topic))) => Some(topic.clone()),
            Some(other) => Some(other.name().to_string()),
        };
        return Ok(Args::help(topic));
    }
    let command = command.ok_or("no command given")?;
    if date.is_some() && command != Command::Rollup {
        return Err("--date goes with the rollup command".to_string());
    }
    if (count.is_some() || dir.is_some()) && command != Command::BenchRecords {
        return Err("--count and --dir go with the bench-records command".to_string());
    }
    if sim_timing != crate::sim::SimTiming::default() && command != Command::Sim {
        return Err("the timing flags go with the sim command".to_string());
    }
    if (role.is_some() || wav.is_some()) && !matches!(command, Command::Demo | Command::Call) {
        return Err("--role and --wav go with the demo and call commands".to_string());
    }
    if fast && !matches!(command, Command::Demo | Command::Call) {
        return Err("--fast goes with the demo and call commands".to_string());
    }
    if (server.is_some() || media.is_some() || say.is_some()) && command != Command::Call {
        return Err("--server, --media and --say go with the call command".to_string());
    }
    if command == Command::Call && server.is_none() {
        return Err(
            "call needs --server URL (the server's webhook base, like https://voice.example.com)"
                .to_string(),
        );
    }
    if (calls.is_some() || turns.is_some()) && command != Command::Bench {
        return Err("--calls and --turns go with the bench command".to_string());
    }
    if (capacity || max_calls.is_some()) && command != Command::Bench {
        return Err("--capacity and --max-calls go with the bench command".to_string());
    }
    if max_calls.is_some() && !capacity {
        return Err("--max-calls goes with --capacity".to_string());
    }
    if provider_rtt_ms.is_some() && command != Command::Bench {
        return Err("--provider-rtt-ms goes with the bench command".to_string());
    }
    if stt_chunk_ms.is_some() && command != Command::Bench {
        return Err("--stt-chunk-ms goes with the bench command".to_string());
    }
    if turn_end.is_some() && command != Command::Bench {
        return Err("--turn-end goes with the bench command".to_string());
    }
    if (json || plain || server_cpus.is_some() || harness_cpus.is_some())
        && command != Command::Bench
    {
        return Err(
            "--json, --plain, --server-cpus and --harness-cpus go with the bench command"
                .to_string(),
        );
    }
    Ok(Args {
        command,
        env_file,
        date,
        count,
        dir,
        sim_timing,
        role,
        wav,
        fast,
        server,
        media,
        say,
        calls,
        turns,
        provider_rtt_ms,
        stt_chunk_ms,
        json,
        plain,
        server_cpus,
        harness_cpus,
        capacity,
        max_calls,
        turn_end,
    })
}

/// Runs the command line and returns the process exit code: 0 on success, 1 when the command
/// failed, 2 for a usage or configuration error.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let raw: Vec<OsString> = args.into_iter().collect();
    let args = match parse(raw.iter().cloned()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}; see '{}'", help_hint(&raw));
            return ExitCode::from(2);
        }
    };
    match &args.command {
        Command::Help(None) => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Command::Help(Some(topic)) => match command_usage(topic) {
            Some(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: unknown command {topic:?}; see 'cotrackpro-voice --help'");
                ExitCode::from(2)
            }
        },
        Command::Call => {
            let (Some(server), Some(config)) = (args.server.clone(), call_credentials(&args))
            else {
                return ExitCode::from(2);
            };
            let options = crate::commands::call::CallOptions {
                server,
                media: args.media.clone(),
                role: args.role.unwrap_or(crate::personas::Role::Parent),
                say: args.say.clone(),
                wav: args
                    .wav
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("cotrackpro-call.wav")),
                speed: if args.fast { 4 } else { 1 },
            };
            done(crate::commands::call::run(&options, &config))
        }
        Command::Version => {
            println!("cotrackpro-voice {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match load_config(&args) {
            Ok(config) => {
                print_config(&config);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Compact => {
            let config = match load_config(&args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::logging::init(&config.log);
            done(compact(&config).map_err(Into::into))
        }
        Command::Bench => {
            let options = crate::commands::bench::BenchOptions {
                provider_rtt_ms: args.provider_rtt_ms.unwrap_or(20),
                stt_chunk_ms: args.stt_chunk_ms,
                turn_end: args.turn_end,
                json: args.json,
                tls: !args.plain,
                server_cpus: args.server_cpus.clone(),
                harness_cpus: args.harness_cpus.clone(),
                capacity: args.capacity,
                max_calls: args
                    .max_calls
                    .unwrap_or(crate::commands::bench::DEFAULT_MAX_CALLS),
                // A capacity search starts at 10 calls; its calls are long enough (four turns)
                // for every one to be live at once at 1,000 (dialed 23 ms apart).
                ..crate::commands::bench::BenchOptions::new(
                    args.calls.unwrap_or(if args.capacity {
                        crate::commands::bench::DEFAULT_START_CALLS
                    } else {
                        20
                    }),
                    args.turns.unwrap_or(if args.capacity { 4 } else { 3 }),
                )
            };
            done(crate::commands::bench::run(&options))
        }
        Command::Demo => {
            let options = crate::commands::demo::DemoOptions {
                role: args.role.unwrap_or(crate::personas::Role::Parent),
                wav: args
                    .wav
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("cotrackpro-demo.wav")),
                speed: if args.fast { 4 } else { 1 },
            };
            done(crate::commands::demo::run(&options))
        }
        Command::GenerateAudio => {
            let config = match load_config(&args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::logging::init(&config.log);
            match crate::commands::generate_audio::run(&config) {
                Ok(report) => {
                    println!(
                        "{}",
                        serde_json::json!({
                            "audioDir": config.calls.tuning.audio_dir.display().to_string(),
                            "voices": report.voices,
                            "rendered": report.rendered,
                            "kept": report.kept,
                        })
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Sim => done(crate::sim::run(args.sim_timing).map_err(Into::into)),
        Command::BenchRecords => {
            let dir = args.dir.clone().unwrap_or_else(|| {
                std::env::temp_dir()
                    .join(format!("cotrackpro-bench-records-{}", std::process::id()))
            });
            let result = crate::commands::bench_records::run(&dir, args.count.unwrap_or(1_000_000));
            if args.dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            done(result.map_err(Into::into))
        }
        Command::Rollup => {
            let config = match load_config(&args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::logging::init(&config.log);
            let day = args.date.unwrap_or_else(crate::rollup::yesterday);
            done(rollup(&config, day))
        }
        Command::Serve => {
            let config = match load_config(&args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::logging::init(&config.log);
            // The process's descriptor and task limits too, as `check-config` prints them: an
            // operator reading the journal at start-up learns the cap cannot be held.
            for warning in config.warnings.iter().chain(&limit_warnings(&config)) {
                log::warn!("{warning}");
            }
            match crate::serve::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    log::error!("{err}");
                    print_error(&err);
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Where a usage error points: the help of the command the arguments name, else the whole help.
fn help_hint(raw: &[OsString]) -> String {
    let named = raw
        .iter()
        .filter_map(|a| a.to_str())
        .find(|a| Command::named(a).is_some_and(|c| !matches!(c, Command::Help(_))));
    match named {
        Some(name) => format!("cotrackpro-voice {name} --help"),
        None => "cotrackpro-voice --help".to_string(),
    }
}

/// What `call` reads from the configuration: the auth token (required), the account and the
/// public domain, and the extra CAs (`PROVIDER_CA_FILE`: a proxy whose certificate a private CA
/// signed). `None` after printing why.
fn call_credentials(args: &Args) -> Option<crate::commands::call::Credentials> {
    let env = match Env::load(args.env_file.as_deref()) {
        Ok(env) => env,
        Err(errors) => {
            print_config_errors(&errors);
            return None;
        }
    };
    let value = |key: &str| env.get(key).map(str::trim).filter(|v| !v.is_empty());
    let Some(token) = value("TWILIO_AUTH_TOKEN") else {
        eprintln!("error: TWILIO_AUTH_TOKEN is not set: call signs the webhook with the server's token (set it, or use --env-file)");
        return None;
    };
    if let Some(path) = value("PROVIDER_CA_FILE") {
        match crate::tls::ExtraCas::from_pem_file(std::path::Path::new(path)) {
            Ok(cas) => crate::tls::trust(&cas),
            Err(err) => {
                eprintln!("error: PROVIDER_CA_FILE: {err}");
                return None;
            }
        }
    }
    Some(crate::commands::call::Credentials {
        auth_token: crate::config::Secret::new(token),
        account_sid: value("TWILIO_ACCOUNT_SID").map(str::to_string),
        public_domain: value("API_DOMAIN")
            .or_else(|| value("SERVER_DOMAIN"))
            .map(str::to_string),
    })
}

/// `compact`: one compaction of `RECORDS_DIR`, reported on stdout as JSON.
fn compact(config: &Config) -> Result<(), crate::records::RecordsError> {
    let (store, bad) = crate::records::RecordStore::open(&config.records.dir)?;
    let report = store.compact()?;
    println!(
        "{}",
        serde_json::json!({
            "path": store.path().display().to_string(),
            "linesBefore": report.lines_before,
            "callsKept": report.calls_kept,
            "callsDropped": report.calls_dropped,
            "unreadableLinesDropped": bad.len(),
        })
    );
    Ok(())
}

/// `rollup`: one day's cost rollup, printed as JSON and written under `RECORDS_DIR/rollups`.
fn rollup(config: &Config, day: i64) -> Result<(), Box<dyn std::error::Error>> {
    let (store, _) = crate::records::RecordStore::open(&config.records.dir)?;
    let (rollup, _path) = crate::rollup::run(&store, &config.prices, day)?;
    println!("{}", serde_json::to_string_pretty(&rollup)?);
    Ok(())
}

/// Loads and validates the configuration, printing every problem on failure.
fn load_config(args: &Args) -> Result<Config, ExitCode> {
    let errors = match Env::load(args.env_file.as_deref()) {
        Ok(env) => match Config::from_env(&env) {
            Ok(config) => return Ok(config),
            Err(errors) => errors,
        },
        Err(errors) => errors,
    };
    print_config_errors(&errors);
    Err(ExitCode::from(2))
}

fn print_config_errors(errors: &[ConfigError]) {
    let mut stderr = std::io::stderr().lock();
    let plural = if errors.len() == 1 { "" } else { "s" };
    let _ = writeln!(
        stderr,
        "error: the configuration has {} problem{plural}:",
        errors.len()
    );
    for error in errors {
        let _ = writeln!(stderr, "  - {error}");
    }
}

/// What this process's descriptor and task limits cannot hold of the configured calls and
/// webhook connections (`check-config` prints it; `serve` logs it at start-up).
fn limit_warnings(config: &Config) -> Vec<String> {
    crate::config::limits::warnings_with(
        config.calls.max_concurrent,
        config.http.max_connections,
        &crate::config::limits::ProcessLimits::read(),
    )
}

fn print_config(config: &Config) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "# effective configuration (secrets redacted)");
    for (key, value) in config.effective() {
        let _ = writeln!(stdout, "{key}={value}");
    }
    for warning in config.warnings.iter().chain(&limit_warnings(config)) {
        let _ = writeln!(stdout, "# warning: {warning}");
    }
    let _ = writeln!(stdout, "# configuration OK");
}

/// Prints an error with its chain of causes, for the person at the terminal.
/// 0 for success; else the error (and its causes) printed, and 1.
fn done(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            print_error(err.as_ref());
            ExitCode::from(1)
        }
    }
}

fn print_error(err: &dyn std::error::Error) {
    let mut message = format!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!("\n  caused by: {text}"));
        }
        source = cause.source();
    }
    eprintln!("{message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(OsString::from))
    }

    #[test]
    fn commands_and_env_file_in_any_order() {
        let expected = Args {
            command: Command::Serve,
            env_file: Some(PathBuf::from("/etc/x.env")),
            ..Args::help(None)
        };
        assert_eq!(args(&["serve", "--env-file", "/etc/x.env"]), Ok(expected));
        let parsed = args(&["--env-file=/etc/x.env", "check-config"]).unwrap();
        assert_eq!(parsed.command, Command::CheckConfig);
        assert_eq!(parsed.env_file, Some(PathBuf::from("/etc/x.env")));
        assert_eq!(args(&["--help"]).unwrap().command, Command::Help(None));
    }

    #[test]
    fn usage_errors_are_explained() {
        assert_eq!(args(&[]), Err("no command given".to_string()));
        assert!(args(&["launch"]).unwrap_err().contains("unknown command"));
        assert!(args(&["serve", "--env-file"])
            .unwrap_err()
            .contains("needs a path"));
        assert!(args(&["serve", "--verbose"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(args(&["serve", "serve"])
            .unwrap_err()
            .contains("unexpected"));
        assert!(args(&["demo", "--role", "pirate"])
            .unwrap_err()
            .contains("is not one of"));
        assert!(args(&["serve", "--fast"])
            .unwrap_err()
            .contains("goes with the demo and call commands"));
    }

    #[test]
    fn help_after_a_command_is_that_commands_help() {
        let topic = |list: &[&str]| args(list).unwrap().command;
        assert_eq!(
            topic(&["bench", "--help"]),
            Command::Help(Some("bench".into()))
        );
        assert_eq!(topic(&["-h", "call"]), Command::Help(Some("call".into())));
        assert_eq!(topic(&["help", "sim"]), Command::Help(Some("sim".into())));
        // A command's help is shown even when its other flags are incomplete.
        assert_eq!(
            topic(&["call", "--help", "--fast"]),
            Command::Help(Some("call".into()))
        );
        assert_eq!(topic(&["help"]), Command::Help(None));
        let bench = command_usage("bench").unwrap();
        assert!(bench.starts_with("Usage: cotrackpro-voice [--env-file PATH] bench [--calls N]"));
        assert!(!bench.contains("generate-audio"), "{bench}");
        assert!(command_usage("launch").is_none());
        // Every command has its help, and the whole help lists each one.
        let whole = usage();
        for (name, _) in COMMANDS {
            assert!(Command::named(name).is_some(), "{name}");
            assert!(
                whole.contains(&format!("\n  {name} ")) || whole.contains(&format!("\n  {name}\n")),
                "{name}"
            );
        }
    }

    #[test]
    fn usage_errors_point_at_the_commands_help() {
        let hint = |list: &[&str]| help_hint(&list.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(hint(&["bench", "--x"]), "cotrackpro-voice bench --help");
        assert_eq!(hint(&["--x"]), "cotrackpro-voice --help");
        assert_eq!(hint(&["--x", "help"]), "cotrackpro-voice --help");
    }

    #[test]
    fn call_flags() {
        let parsed = args(&[
            "call",
            "--server",
            "https://voice.example.com",
            "--media=wss://voice.example.com/call/stream",
            "--say",
            "hello.wav",
            "--role",
            "judge",
            "--wav",
            "out.wav",
        ])
        .unwrap();
        assert_eq!(parsed.command, Command::Call);
        assert_eq!(parsed.server.as_deref(), Some("https://voice.example.com"));
        assert_eq!(
            parsed.media.as_deref(),
            Some("wss://voice.example.com/call/stream")
        );
        assert_eq!(parsed.say, Some(PathBuf::from("hello.wav")));
        assert_eq!(parsed.role, Some(crate::personas::Role::Judge));
        for (bad, says) in [
            (&["call"][..], "call needs --server URL"),
            (
                &["call", "--server", "voice.example.com"][..],
                "is not a URL starting with http:// or https://",
            ),
            (
                &["call", "--server", "http://a", "--media", "http://a"][..],
                "is not a URL starting with ws:// or wss://",
            ),
            (&["serve", "--say", "x.wav"][..], "go with the call command"),
            (
                &["bench", "--role", "judge"][..],
                "go with the demo and call commands",
            ),
        ] {
            let err = args(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn demo_flags() {
        let parsed = args(&["demo", "--role=judge", "--wav", "out.wav", "--fast"]).unwrap();
        assert_eq!(parsed.command, Command::Demo);
        assert_eq!(parsed.role, Some(crate::personas::Role::Judge));
        assert_eq!(parsed.wav, Some(PathBuf::from("out.wav")));
        assert!(parsed.fast);
    }

    #[test]
    fn bench_takes_a_provider_round_trip() {
        let parsed = args(&["bench", "--calls", "4", "--provider-rtt-ms=35"]).unwrap();
        assert_eq!(parsed.provider_rtt_ms, Some(35));
        let parsed = args(&["bench", "--stt-chunk-ms", "100"]).unwrap();
        assert_eq!(parsed.stt_chunk_ms, Some(100));
        assert!(args(&["bench", "--stt-chunk-ms", "soon"]).is_err());
        assert!(args(&["serve", "--stt-chunk-ms", "100"]).is_err());
        let parsed = args(&["bench", "--turn-end", "both"]).unwrap();
        assert_eq!(
            parsed.turn_end,
            Some(crate::commands::bench::TurnEndRuns::Both)
        );
        assert!(args(&["bench", "--turn-end", "sometimes"]).is_err());
        assert!(args(&["serve", "--turn-end", "vad"]).is_err());
        assert_eq!(args(&["bench"]).unwrap().provider_rtt_ms, None);
        assert!(args(&["bench", "--provider-rtt-ms", "soon"])
            .unwrap_err()
            .contains("is not a number"));
        assert!(args(&["serve", "--provider-rtt-ms", "5"])
            .unwrap_err()
            .contains("goes with the bench command"));
    }

    #[test]
    fn bench_is_tls_unless_plain() {
        assert!(!args(&["bench"]).unwrap().plain);
        assert!(args(&["bench", "--plain"]).unwrap().plain);
        assert!(args(&["serve", "--plain"])
            .unwrap_err()
            .contains("go with the bench command"));
    }

    #[test]
    fn bench_flags() {
        let parsed = args(&[
            "bench",
            "--calls=4",
            "--server-cpus",
            "1",
            "--harness-cpus=0,2-3",
            "--json",
        ])
        .unwrap();
        assert_eq!(parsed.command, Command::Bench);
        assert_eq!(parsed.calls, Some(4));
        assert_eq!(parsed.server_cpus, Some(vec![1]));
        assert_eq!(parsed.harness_cpus, Some(vec![0, 2, 3]));
        assert!(parsed.json);
        let capacity = args(&["bench", "--capacity", "--max-calls=50"]).unwrap();
        assert!(capacity.capacity);
        assert_eq!(capacity.max_calls, Some(50));
        let plain = args(&["bench"]).unwrap();
        assert!(!plain.json);
        assert!(!plain.capacity);
        assert_eq!(plain.server_cpus, None);
        for (bad, says) in [
            (
                &["bench", "--server-cpus", "2-1"][..],
                "--server-cpus \"2-1\" is not a CPU list",
            ),
            (
                &["bench", "--harness-cpus=x"][..],
                "--harness-cpus \"x\" is not a CPU list",
            ),
            (
                &["bench", "--server-cpus"][..],
                "--server-cpus needs a CPU list",
            ),
            (&["serve", "--json"][..], "go with the bench command"),
            (&["serve", "--capacity"][..], "go with the bench command"),
            (&["bench", "--max-calls", "5"][..], "goes with --capacity"),
            (
                &["bench", "--capacity", "--max-calls", "0"][..],
                "is not a number from 1 to 2000",
            ),
            (
                &["demo", "--server-cpus", "1"][..],
                "go with the bench command",
            ),
        ] {
            let err = args(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
