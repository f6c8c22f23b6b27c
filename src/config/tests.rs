//! One test per validation rule of [`Config::from_env`], and the all-problems-at-once report.

use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use super::*;
use crate::personas::Role;

fn base() -> Vec<(&'static str, &'static str)> {
    vec![("SERVER_DOMAIN", "voice.example.com")]
}

fn load(extra: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
    let mut env = Env::from_pairs(base());
    for (k, v) in extra {
        env.set(k, v);
    }
    Config::from_env(&env)
}

#[track_caller]
fn ok(extra: &[(&str, &str)]) -> Config {
    match load(extra) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got {errors:?}"),
    }
}

/// Asserts that loading fails with an error on `key` whose message contains `needle`.
#[track_caller]
fn fails(extra: &[(&str, &str)], key: &str, needle: &str) {
    let errors = load(extra).expect_err("expected the config to be refused");
    assert!(
        errors
            .iter()
            .any(|e| e.key == key && e.message.contains(needle)),
        "no error on {key} containing {needle:?} in {errors:#?}"
    );
}

#[test]
fn defaults_of_a_minimal_development_config() {
    let config = ok(&[]);
    assert_eq!(config.app_env, AppEnv::Development);
    assert_eq!(config.bind_addr.to_string(), "127.0.0.1");
    assert_eq!((config.http_port, config.media_port), (8080, 8081));
    assert_eq!(config.domains.api.as_str(), "voice.example.com");
    assert_eq!(config.domains.ws.as_str(), "voice.example.com");
    assert!(!config.twilio.validate_signature);
    assert_eq!(config.twilio.api_base.to_string(), "https://api.twilio.com");
    assert_eq!(
        config.elevenlabs.ws_base.to_string(),
        "wss://api.elevenlabs.io"
    );
    assert_eq!(config.elevenlabs.model_id, "eleven_flash_v2_5");
    assert_eq!(config.anthropic.max_tokens, 512);
    assert_eq!(config.anthropic.max_history_messages, 40);
    assert_eq!(
        config.outbound.rate_limits,
        RateLimits {
            per_minute: 30,
            per_hour: 500
        }
    );
    assert_eq!(
        config.records.rate_limits,
        RateLimits {
            per_minute: 120,
            per_hour: 2000
        }
    );
    assert_eq!(
        config.outbound.allowed_countries,
        CountryAllowList::Only(vec!["US".into(), "CA".into()])
    );
    assert_eq!(config.records.ttl_days, 365.0);
    assert_eq!(config.records.dir, PathBuf::from("./data"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        config.calls.max_concurrent,
        super::calls::default_max_concurrent(cores)
    );
    assert_eq!(config.calls.default_role, Role::Parent);
    assert_eq!(config.prices.claude_output_per_mtok, 15.0);
    assert!(config.warnings.is_empty());
}

#[test]
fn api_and_ws_domains_override_the_server_domain() {
    let config = ok(&[
        ("API_DOMAIN", "api.example.com"),
        ("WS_DOMAIN", "ws.example.com"),
    ]);
    assert_eq!(config.domains.api.as_str(), "api.example.com");
    assert_eq!(config.domains.ws.as_str(), "ws.example.com");
    assert!(config.domains.is_ours("WS.example.com"));
    assert!(!config.domains.is_ours("voice.example.com"));
}

#[test]
fn a_domain_is_required() {
    let errors = Config::from_env(&Env::default()).unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["API_DOMAIN", "WS_DOMAIN"]);
    assert!(errors[0].message.contains("SERVER_DOMAIN"));
}

#[test]
fn a_domain_with_a_scheme_is_refused() {
    fails(
        &[("SERVER_DOMAIN", "https://voice.example.com")],
        "SERVER_DOMAIN",
        "scheme",
    );
}

#[test]
fn numbers_are_validated_with_their_range() {
    // The original's trap: parseInt("3O") was NaN and silently switched the limit off.
    fails(
        &[("OUTBOUND_RATE_LIMIT_PER_MIN", "3O")],
        "OUTBOUND_RATE_LIMIT_PER_MIN",
        "whole number",
    );
    fails(
        &[("OUTBOUND_RATE_LIMIT_PER_HOUR", "-1")],
        "OUTBOUND_RATE_LIMIT_PER_HOUR",
        "0 to",
    );
    fails(
        &[("RECORDS_RATE_LIMIT_PER_MIN", "1e3")],
        "RECORDS_RATE_LIMIT_PER_MIN",
        "whole number",
    );
    fails(&[("HTTP_PORT", "70000")], "HTTP_PORT", "0 to 65535");
    fails(&[("MEDIA_PORT", "http")], "MEDIA_PORT", "whole number");
    fails(&[("HTTP_WORKERS", "0")], "HTTP_WORKERS", "1 to 256");
    fails(
        &[("HTTP_MAX_BODY_BYTES", "10")],
        "HTTP_MAX_BODY_BYTES",
        "1024",
    );
    fails(
        &[("MAX_CONCURRENT_CALLS", "0")],
        "MAX_CONCURRENT_CALLS",
        "1 to",
    );
    fails(
        &[("ANTHROPIC_MAX_TOKENS", "5")],
        "ANTHROPIC_MAX_TOKENS",
        "16 to",
    );
    fails(
        &[("ANTHROPIC_STREAM_TIMEOUT_MS", "45s")],
        "ANTHROPIC_STREAM_TIMEOUT_MS",
        "whole number",
    );
    fails(
        &[("ELEVENLABS_CONNECT_TIMEOUT_MS", "99")],
        "ELEVENLABS_CONNECT_TIMEOUT_MS",
        "100 to",
    );
}

#[test]
fn an_explicit_zero_turns_a_rate_window_off() {
    let config = ok(&[("OUTBOUND_RATE_LIMIT_PER_MIN", "0")]);
    assert_eq!(config.outbound.rate_limits.per_minute, 0);
}

#[test]
fn an_empty_value_counts_as_unset() {
    let config = ok(&[("HTTP_PORT", ""), ("OUTBOUND_API_KEY", "  ")]);
    assert_eq!(config.http_port, 8080);
    assert!(config.outbound.api_key.is_none());
}

#[test]
fn fractional_ttl_days_are_allowed_but_not_nonsense() {
    assert_eq!(ok(&[("RECORDS_TTL_DAYS", "0.5")]).records.ttl_days, 0.5);
    fails(&[("RECORDS_TTL_DAYS", "NaN")], "RECORDS_TTL_DAYS", "number");
    fails(&[("RECORDS_TTL_DAYS", "0")], "RECORDS_TTL_DAYS", "number");
    fails(&[("RECORDS_TTL_DAYS", "inf")], "RECORDS_TTL_DAYS", "number");
}

#[test]
fn prices_must_be_non_negative_numbers() {
    assert_eq!(
        ok(&[("CLAUDE_INPUT_PRICE_PER_MTOK", "2.5")])
            .prices
            .claude_input_per_mtok,
        2.5
    );
    fails(
        &[("CLAUDE_INPUT_PRICE_PER_MTOK", "-3")],
        "CLAUDE_INPUT_PRICE_PER_MTOK",
        "number",
    );
    fails(
        &[("ELEVENLABS_STT_PRICE_PER_MIN", "$0.008")],
        "ELEVENLABS_STT_PRICE_PER_MIN",
        "number",
    );
}

#[test]
fn enums_and_flags() {
    fails(
        &[("APP_ENV", "prod")],
        "APP_ENV",
        "development or production",
    );
    fails(&[("LOG_FORMAT", "yaml")], "LOG_FORMAT", "text or json");
    fails(&[("LOG_LEVEL", "loud")], "LOG_LEVEL", "one of");
    fails(
        &[("VALIDATE_TWILIO_SIGNATURE", "maybe")],
        "VALIDATE_TWILIO_SIGNATURE",
        "true or false",
    );
    fails(&[("BIND_ADDR", "localhost")], "BIND_ADDR", "IP address");
    fails(
        &[("DEFAULT_ROLE", "wizard")],
        "DEFAULT_ROLE",
        "parent, attorney",
    );
    assert_eq!(ok(&[("LOG_LEVEL", "silent")]).log.level, LevelFilter::Off);
    assert_eq!(ok(&[("LOG_FORMAT", "json")]).log.format, LogFormat::Json);
    assert_eq!(ok(&[("DEFAULT_ROLE", "gal")]).calls.default_role, Role::Gal);
}

#[test]
fn stt_chunks_are_whole_frames_from_20_to_200_ms() {
    let chunk = |v: &str| ok(&[("STT_CHUNK_MS", v)]).calls.tuning.stt_chunk;
    assert_eq!(
        ok(&[]).calls.tuning.stt_chunk,
        Duration::from_millis(100),
        "the default"
    );
    assert_eq!(chunk("20"), Duration::from_millis(20));
    assert_eq!(chunk("200"), Duration::from_millis(200));
    fails(&[("STT_CHUNK_MS", "50")], "STT_CHUNK_MS", "multiple of 20");
    fails(&[("STT_CHUNK_MS", "0")], "STT_CHUNK_MS", "from 20 to 200");
    fails(&[("STT_CHUNK_MS", "220")], "STT_CHUNK_MS", "from 20 to 200");
}

#[test]
fn backchannel_words_are_single_words_and_resume_after_may_be_off() {
    let tuning = ok(&[]).calls.tuning;
    assert_eq!(
        tuning.resume_after,
        Duration::from_millis(1500),
        "the default"
    );
    assert!(tuning.backchannel_words.is_empty());
    let tuning = ok(&[
        ("RESUME_AFTER_MS", "0"),
        ("BACKCHANNEL_WORDS", " Gotcha, ,d'accord,Órale "),
    ])
    .calls
    .tuning;
    assert_eq!(tuning.resume_after, Duration::ZERO);
    assert_eq!(
        tuning.backchannel_words,
        vec!["gotcha", "d'accord", "órale"]
    );
    fails(
        &[("BACKCHANNEL_WORDS", "okay,got it")],
        "BACKCHANNEL_WORDS",
        "single words",
    );
    fails(
        &[("BACKCHANNEL_WORDS", "ok;yes")],
        "BACKCHANNEL_WORDS",
        "single words",
    );
    fails(
        &[("RESUME_AFTER_MS", "20000")],
        "RESUME_AFTER_MS",
        "from 0 to 10000",
    );
    // Longer than the speech-to-text's end-of-utterance silence, so words commit first.
    fails(
        &[("RESUME_AFTER_MS", "800")],
        "RESUME_AFTER_MS",
        "longer than STT_VAD_SILENCE_SECS",
    );
    let tuning = ok(&[("RESUME_AFTER_MS", "900")]).calls.tuning;
    assert_eq!(tuning.resume_after, Duration::from_millis(900));
    let tuning = ok(&[("STT_VAD_SILENCE_SECS", "2.0")]).calls.tuning;
    assert_eq!(
        tuning.resume_after,
        Duration::from_millis(2700),
        "unset: after the silence"
    );
}

#[test]
fn signature_checking_needs_the_auth_token() {
    fails(
        &[("VALIDATE_TWILIO_SIGNATURE", "true")],
        "TWILIO_AUTH_TOKEN",
        "required",
    );
    let config = ok(&[
        ("VALIDATE_TWILIO_SIGNATURE", "yes"),
        ("TWILIO_AUTH_TOKEN", "t0k3n"),
    ]);
    assert!(config.twilio.validate_signature);
}

#[test]
fn the_webhook_shared_key_is_an_optional_redacted_secret() {
    let config = ok(&[
        ("VALIDATE_TWILIO_SIGNATURE", "true"),
        ("TWILIO_AUTH_TOKEN", "t0k3n"),
        ("TWILIO_WEBHOOK_SHARED_KEY", " sh4red-s3cret "),
    ]);
    let key = config
        .twilio
        .webhook_shared_key
        .as_ref()
        .map(|k| k.expose());
    assert_eq!(key, Some("sh4red-s3cret"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let listing = format!("{:?} {:?}", config.effective(), config);
    assert!(!listing.contains("sh4red-s3cret"));
    assert!(config
        .effective()
        .iter()
        .any(|(k, v)| *k == "TWILIO_WEBHOOK_SHARED_KEY" && v == "[set, redacted]"));
    assert!(ok(&[]).twilio.webhook_shared_key.is_none());
    // Set while nothing is checked: said, not silently ignored.
    let unchecked = ok(&[("TWILIO_WEBHOOK_SHARED_KEY", "sh4red-s3cret")]);
    assert!(unchecked
        .warnings
        .iter()
        .any(|w| w.contains("TWILIO_WEBHOOK_SHARED_KEY") && w.contains("off")));
}

#[test]
fn twilio_identifiers_are_checked() {
    fails(
        &[("TWILIO_ACCOUNT_SID", "AC123")],
        "TWILIO_ACCOUNT_SID",
        "32 hex",
    );
    fails(
        &[("TWILIO_PHONE_NUMBER", "555-1234")],
        "TWILIO_PHONE_NUMBER",
        "E.164",
    );
    let config = ok(&[
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_PHONE_NUMBER", "+1 (555) 123-4567"),
    ]);
    assert_eq!(config.twilio.phone_number.as_deref(), Some("+15551234567"));
}

#[test]
fn provider_base_urls() {
    let config = ok(&[
        ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9000/"),
        ("ELEVENLABS_WS_BASE", "ws://127.0.0.1:9001"),
        ("COTRACKPRO_MCP_URL", "http://127.0.0.1:9002/mcp"),
    ]);
    assert_eq!(
        config.anthropic.base_url.to_string(),
        "http://127.0.0.1:9000"
    );
    assert_eq!(
        config.mcp.url.unwrap().to_string(),
        "http://127.0.0.1:9002/mcp"
    );
    fails(
        &[("ELEVENLABS_WS_BASE", "https://api.elevenlabs.io")],
        "ELEVENLABS_WS_BASE",
        "wss or ws",
    );
    fails(
        &[("TWILIO_API_BASE", "api.twilio.com")],
        "TWILIO_API_BASE",
        "not a URL",
    );
}

#[test]
fn the_outbound_key_must_not_be_guessable() {
    fails(
        &[("OUTBOUND_API_KEY", "secret")],
        "OUTBOUND_API_KEY",
        "at least 16",
    );
}

#[test]
fn the_read_key_is_a_redacted_secret_unlike_the_calls_key_and_not_guessable() {
    let config = ok(&[("READ_API_KEY", " read-key-0123456789abcdef ")]);
    let key = config.outbound.read_api_key.as_ref().map(|k| k.expose());
    assert_eq!(key, Some("read-key-0123456789abcdef"));
    let listing = format!("{:?} {:?}", config.effective(), config);
    assert!(!listing.contains("read-key-0123456789abcdef"));
    assert!(config
        .effective()
        .iter()
        .any(|(k, v)| *k == "READ_API_KEY" && v == "[set, redacted]"));
    assert!(ok(&[]).outbound.read_api_key.is_none());
    fails(&[("READ_API_KEY", "short")], "READ_API_KEY", "at least 16");
    fails(
        &[
            ("READ_API_KEY", "same-key-0123456789abcdef"),
            ("OUTBOUND_API_KEY", "same-key-0123456789abcdef"),
        ],
        "READ_API_KEY",
        "must differ from OUTBOUND_API_KEY",
    );
}

#[test]
fn country_allow_list() {
    assert_eq!(
        ok(&[("OUTBOUND_ALLOWED_COUNTRY_CODES", "*")])
            .outbound
            .allowed_countries,
        CountryAllowList::Any
    );
    assert_eq!(
        ok(&[("OUTBOUND_ALLOWED_COUNTRY_CODES", " us, gb ,US")])
            .outbound
            .allowed_countries,
        CountryAllowList::Only(vec!["US".into(), "GB".into()])
    );
    fails(
        &[("OUTBOUND_ALLOWED_COUNTRY_CODES", "USA")],
        "OUTBOUND_ALLOWED_COUNTRY_CODES",
        "two-letter",
    );
    fails(
        &[("OUTBOUND_ALLOWED_COUNTRY_CODES", ",")],
        "OUTBOUND_ALLOWED_COUNTRY_CODES",
        "no country",
    );
}

#[test]
fn voice_map_is_merged_and_validated() {
    let config = ok(&[("VOICE_MAP", r#"{"attorney":"2ydcbtd5sJZRYFMNgMVZ"}"#)]);
    assert_eq!(
        config.calls.voice_for(Role::Attorney),
        "2ydcbtd5sJZRYFMNgMVZ"
    );
    assert_eq!(
        config.calls.voice_for(Role::Parent),
        Role::Parent.default_voice_id()
    );
    fails(&[("VOICE_MAP", "{not json")], "VOICE_MAP", "JSON object");
    fails(
        &[("VOICE_MAP", r#"{"wizard":"2ydcbtd5sJZRYFMNgMVZ"}"#)],
        "VOICE_MAP",
        "unknown role",
    );
    fails(
        &[("VOICE_MAP", r#"{"parent":"../etc/passwd"}"#)],
        "VOICE_MAP",
        "16-32",
    );
}

#[test]
fn number_overrides_are_normalized_and_validated() {
    let config = ok(&[(
        "INBOUND_PHONE_VOICE_MAP",
        r#"{"+1 (555) 000-1111":{"role":"judge"},"+15550002222":{"voiceId":"2ydcbtd5sJZRYFMNgMVZ"}}"#,
    )]);
    let overrides = &config.calls.number_overrides;
    assert_eq!(overrides["+15550001111"].role, Some(Role::Judge));
    assert_eq!(
        overrides["+15550002222"].voice_id.as_deref(),
        Some("2ydcbtd5sJZRYFMNgMVZ")
    );
    fails(
        &[("INBOUND_PHONE_VOICE_MAP", r#"{"555":{"role":"judge"}}"#)],
        "INBOUND_PHONE_VOICE_MAP",
        "E.164",
    );
    fails(
        &[("INBOUND_PHONE_VOICE_MAP", r#"{"+15550001111":{}}"#)],
        "INBOUND_PHONE_VOICE_MAP",
        "role, a voiceId",
    );
    fails(
        &[(
            "INBOUND_PHONE_VOICE_MAP",
            r#"{"+15550001111":{"role":"x"},"+1555000-1111":{"role":"judge"}}"#,
        )],
        "INBOUND_PHONE_VOICE_MAP",
        "unknown role",
    );
    fails(
        &[(
            "INBOUND_PHONE_VOICE_MAP",
            r#"{"+15550001111":{"role":"gal"},"+1555000-1111":{"role":"judge"}}"#,
        )],
        "INBOUND_PHONE_VOICE_MAP",
        "listed twice",
    );
}

#[test]
fn the_original_session_cap_name_is_accepted() {
    assert_eq!(
        ok(&[("MAX_CONCURRENT_SESSIONS", "50")])
            .calls
            .max_concurrent,
        50
    );
    assert_eq!(
        ok(&[("MAX_CONCURRENT_CALLS", "60")]).calls.max_concurrent,
        60
    );
    fails(
        &[
            ("MAX_CONCURRENT_CALLS", "60"),
            ("MAX_CONCURRENT_SESSIONS", "50"),
        ],
        "MAX_CONCURRENT_CALLS",
        "disagree",
    );
}

#[test]
fn records_dir_defaults_to_the_systemd_state_directory() {
    let config = ok(&[(
        "STATE_DIRECTORY",
        "/var/lib/cotrackpro-voice:/var/lib/other",
    )]);
    assert_eq!(
        config.records.dir,
        PathBuf::from("/var/lib/cotrackpro-voice")
    );
    let config = ok(&[("STATE_DIRECTORY", "/x"), ("RECORDS_DIR", "/srv/records")]);
    assert_eq!(config.records.dir, PathBuf::from("/srv/records"));
}

#[test]
fn timestamps_are_left_to_journald_under_systemd() {
    assert!(ok(&[]).log.timestamps);
    assert!(!ok(&[("JOURNAL_STREAM", "8:12345")]).log.timestamps);
}

fn production_ready() -> Vec<(&'static str, &'static str)> {
    vec![
        ("APP_ENV", "production"),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", "twilio-token"),
        ("TWILIO_PHONE_NUMBER", "+15551230000"),
        ("ELEVENLABS_API_KEY", "el-key"),
        ("ANTHROPIC_API_KEY", "an-key"),
        ("OUTBOUND_API_KEY", "outbound-key-4f9a2c7e1b"),
        ("CRON_SECRET", "cron-secret"),
    ]
}

#[test]
fn production_forces_signature_checking() {
    let mut vars = production_ready();
    vars.push(("VALIDATE_TWILIO_SIGNATURE", "false"));
    let config = ok(&vars);
    assert!(config.twilio.validate_signature);
    assert!(config
        .warnings
        .iter()
        .any(|w| w.contains("VALIDATE_TWILIO_SIGNATURE=false is ignored")));
}

#[test]
fn production_requires_the_provider_credentials() {
    let errors = load(&[("APP_ENV", "production")]).unwrap_err();
    for key in [
        "TWILIO_AUTH_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_PHONE_NUMBER",
        "ELEVENLABS_API_KEY",
        "ANTHROPIC_API_KEY",
    ] {
        assert!(
            errors.iter().any(|e| e.key == key),
            "{key} missing from {errors:#?}"
        );
    }
}

#[test]
fn production_warns_when_the_apis_will_refuse_to_run() {
    let vars: Vec<_> = production_ready()
        .into_iter()
        .filter(|(k, _)| *k != "OUTBOUND_API_KEY" && *k != "CRON_SECRET")
        .collect();
    let config = ok(&vars);
    assert!(config
        .warnings
        .iter()
        .any(|w| w.contains("OUTBOUND_API_KEY is not set")));
    assert!(config
        .warnings
        .iter()
        .any(|w| w.contains("CRON_SECRET is not set")));
}

#[test]
fn production_refuses_plain_text_provider_urls_except_to_loopback() {
    let mut vars = production_ready();
    vars.push(("ANTHROPIC_BASE_URL", "http://llm-proxy.internal:8080"));
    vars.push(("ELEVENLABS_WS_BASE", "ws://127.0.0.1:9001"));
    let errors = load(&vars).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "ANTHROPIC_BASE_URL");
    assert!(errors[0].message.contains("not encrypted"));
}

#[test]
fn variables_of_the_original_that_do_not_apply_are_named() {
    let config = ok(&[("DYNAMO_ENABLED", "true"), ("PORT", "3000")]);
    assert!(config
        .warnings
        .iter()
        .any(|w| w.starts_with("DYNAMO_ENABLED is ignored")));
    assert!(config
        .warnings
        .iter()
        .any(|w| w.starts_with("PORT is ignored") && w.contains("HTTP_PORT")));
}

#[test]
fn every_problem_is_reported_at_once() {
    let errors = Config::from_env(&Env::from_pairs([
        ("HTTP_PORT", "eighty"),
        ("APP_ENV", "staging"),
        ("RECORDS_TTL_DAYS", "-2"),
        ("VOICE_MAP", "[]"),
        ("OUTBOUND_RATE_LIMIT_PER_MIN", "lots"),
    ]))
    .unwrap_err();
    let mut keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "API_DOMAIN",
            "APP_ENV",
            "HTTP_PORT",
            "OUTBOUND_RATE_LIMIT_PER_MIN",
            "RECORDS_TTL_DAYS",
            "VOICE_MAP",
            "WS_DOMAIN",
        ]
    );
}

#[test]
fn secrets_are_redacted_in_debug_and_in_the_effective_listing() {
    let vars = production_ready();
    let config = ok(&vars);
    let debug = format!("{config:?}");
    let listing = format!("{:?}", config.effective());
    for (key, value) in &vars {
        if key.contains("KEY") || key.contains("TOKEN") || key.contains("SECRET") {
            assert!(!debug.contains(value), "{key} leaked into Debug");
            assert!(!listing.contains(value), "{key} leaked into the listing");
        }
    }
    assert!(listing.contains("[set, redacted]"));
}

#[test]
fn the_effective_listing_names_every_setting_once() {
    let rows = ok(&[]).effective();
    let mut keys: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
    let count = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), count);
    assert!(keys.contains(&"OUTBOUND_RATE_LIMIT_PER_MIN"));
}

/// The variables a section looks at but does not list itself: inputs to other values
/// (`SERVER_DOMAIN` becomes the listed domains, systemd's two decide defaults), systemd's
/// notification and watchdog variables (not an operator's to set), the original's
/// name for the call cap, and the original's variables that are only warned about.
fn looked_at_but_not_listed() -> Vec<&'static str> {
    let mut keys = vec![
        "SERVER_DOMAIN",
        "JOURNAL_STREAM",
        "STATE_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "MAX_CONCURRENT_SESSIONS",
    ];
    keys.extend(NOT_CARRIED_OVER.iter().map(|(key, _)| *key));
    keys
}

#[test]
fn every_variable_that_is_read_is_listed_by_check_config() {
    let env = Env::from_pairs(base());
    let mut r = Reader::new(&env);
    let config = Config::read(&mut r).expect("a domain is set");
    let listed: Vec<&str> = config.effective().iter().map(|(k, _)| *k).collect();
    let exceptions = looked_at_but_not_listed();
    let unlisted: Vec<&String> = r
        .looked_at()
        .iter()
        .filter(|key| !listed.contains(&key.as_str()) && !exceptions.contains(&key.as_str()))
        .collect();
    assert!(unlisted.is_empty(), "read but not listed: {unlisted:?}");
    let unread: Vec<&&str> = listed
        .iter()
        .filter(|key| !r.looked_at().iter().any(|k| k == *key))
        .collect();
    assert!(unread.is_empty(), "listed but never read: {unread:?}");
}

#[test]
fn the_listing_follows_the_sections_and_shows_values_as_they_are_written() {
    let config = ok(&[
        ("API_DOMAIN", "api.example.com"),
        ("ANTHROPIC_STREAM_TIMEOUT_MS", "2000"),
        ("MAX_CALL_SECS", "60"),
        ("STT_VAD_SILENCE_SECS", "0.5"),
        ("OUTBOUND_ALLOWED_COUNTRY_CODES", "gb"),
        ("LOG_LEVEL", "WARNING"),
        ("COTRACKPRO_MCP_TOKEN", "mcp-token"),
    ]);
    let rows = config.effective();
    let value = |key: &str| {
        rows.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} is not listed"))
    };
    assert_eq!(value("API_DOMAIN"), "api.example.com");
    assert_eq!(value("WS_DOMAIN"), "voice.example.com");
    assert_eq!(value("LOG_LEVEL"), "warn");
    assert_eq!(value("ANTHROPIC_STREAM_TIMEOUT_MS"), "2000");
    assert_eq!(value("MAX_CALL_SECS"), "60");
    assert_eq!(value("STT_VAD_SILENCE_SECS"), "0.5");
    assert_eq!(value("OUTBOUND_ALLOWED_COUNTRY_CODES"), "GB");
    assert_eq!(value("COTRACKPRO_MCP_URL"), "[not set: no tools]");
    assert_eq!(value("COTRACKPRO_MCP_TOKEN"), "[set, redacted]");
    assert_eq!(value("TWILIO_ACCOUNT_SID"), "[not set]");
    assert_eq!(value("AUDIO_DIR"), "audio");

    // Section by section, in the order the sections are read.
    let position = |key: &str| rows.iter().position(|(k, _)| *k == key);
    let firsts = [
        "APP_ENV",
        "TWILIO_ACCOUNT_SID",
        "ELEVENLABS_API_KEY",
        "ANTHROPIC_API_KEY",
        "COTRACKPRO_MCP_URL",
        "OUTBOUND_API_KEY",
        "RECORDS_DIR",
        "CRON_SECRET",
        "MAX_CONCURRENT_CALLS",
        "CLAUDE_INPUT_PRICE_PER_MTOK",
    ]
    .map(position);
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    assert_eq!(firsts[0], Some(0));
    assert_eq!(
        rows.last().map(|(k, _)| *k),
        Some("ELEVENLABS_STT_PRICE_PER_MIN")
    );
}

#[test]
fn production_problems_come_after_the_reading_problems_in_a_fixed_order() {
    let errors = load(&[
        ("APP_ENV", "production"),
        ("HTTP_WORKERS", "0"),
        ("ANTHROPIC_BASE_URL", "http://llm.example"),
        ("COTRACKPRO_MCP_URL", "http://tools.example/mcp"),
    ])
    .unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "HTTP_WORKERS",
            "TWILIO_AUTH_TOKEN",
            "TWILIO_ACCOUNT_SID",
            "TWILIO_PHONE_NUMBER",
            "ELEVENLABS_API_KEY",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "COTRACKPRO_MCP_URL",
        ]
    );
}

#[test]
fn provider_ca_file_must_be_a_readable_pem_file_of_certificates() {
    assert!(
        ok(&[]).provider_tls.extra_cas.is_empty(),
        "unset: built-in roots only"
    );
    fails(
        &[("PROVIDER_CA_FILE", "/no/such/dir/ca.pem")],
        "PROVIDER_CA_FILE",
        "cannot read /no/such/dir/ca.pem",
    );
    let dir = std::env::temp_dir().join(format!("cotrackpro-ca-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").expect("write");
    fails(
        &[("PROVIDER_CA_FILE", not_pem.to_str().expect("utf-8"))],
        "PROVIDER_CA_FILE",
        "no PEM certificate",
    );
    let ca = crate::sim::tls::SimCa::generate().expect("a CA");
    let good = dir.join("ca.pem");
    std::fs::write(&good, ca.ca_pem()).expect("write");
    let config = ok(&[("PROVIDER_CA_FILE", good.to_str().expect("utf-8"))]);
    assert_eq!(config.provider_tls.extra_cas.len(), 1);
    let row = config
        .effective()
        .into_iter()
        .find(|(k, _)| *k == "PROVIDER_CA_FILE")
        .map(|(_, v)| v)
        .expect("listed");
    assert!(
        row.contains("ca.pem") && row.contains("in addition"),
        "{row}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_http_tier_settings_have_defaults_ranges_and_a_listing() {
    let config = ok(&[]);
    assert_eq!(config.http.max_connections, 1024);
    let loopback: [std::net::IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    // The documented deployment's proxy is on this machine: trusted unless told otherwise.
    assert_eq!(config.http.trusted_proxies, loopback);
    let rows = config.effective();
    let value = |rows: &[(&str, String)], key: &str| {
        rows.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key} is not listed"))
    };
    assert_eq!(value(&rows, "HTTP_MAX_CONNECTIONS"), "1024");
    assert_eq!(value(&rows, "TRUSTED_PROXY"), "127.0.0.1,::1");
    let none = ok(&[("TRUSTED_PROXY", "none")]);
    assert!(none.http.trusted_proxies.is_empty());
    assert_eq!(
        value(&none.effective(), "TRUSTED_PROXY"),
        "none (the peer address is the client)"
    );

    let config = ok(&[
        ("HTTP_MAX_CONNECTIONS", "64"),
        ("TRUSTED_PROXY", " 10.0.0.5, fd00::5 ,"),
    ]);
    assert_eq!(config.http.max_connections, 64);
    assert_eq!(
        config.http.trusted_proxies,
        [
            "10.0.0.5".parse::<std::net::IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(
        value(&config.effective(), "TRUSTED_PROXY"),
        "10.0.0.5,fd00::5"
    );

    fails(&[("HTTP_MAX_CONNECTIONS", "8")], "HTTP_MAX_CONNECTIONS", "");
    fails(
        &[("TRUSTED_PROXY", "proxy.internal")],
        "TRUSTED_PROXY",
        "is not an IP address",
    );
    fails(
        &[("TRUSTED_PROXY", "10.0.0.0/8")],
        "TRUSTED_PROXY",
        "is not an IP address",
    );
}

#[test]
fn systemds_notify_socket_and_watchdog_are_taken_as_given() {
    assert_eq!(ok(&[]).systemd, SystemdEnv::default());
    let ours = std::process::id().to_string();
    let config = ok(&[
        ("NOTIFY_SOCKET", "@/org/freedesktop/systemd1/notify/123"),
        ("WATCHDOG_USEC", "20000000"),
        ("WATCHDOG_PID", &ours),
    ]);
    assert_eq!(
        config.systemd,
        SystemdEnv {
            notify_socket: Some("@/org/freedesktop/systemd1/notify/123".into()),
            watchdog: Some(std::time::Duration::from_secs(20)),
        }
    );
    // Another process's watchdog, or a value that is not one, is no watchdog (and no error).
    for (usec, pid) in [
        ("20000000", "1"),
        ("0", ours.as_str()),
        ("soon", ours.as_str()),
    ] {
        let config = ok(&[("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)]);
        assert_eq!(config.systemd.watchdog, None, "{usec} {pid}");
    }
    assert_eq!(
        ok(&[("WATCHDOG_USEC", "500000")]).systemd.watchdog,
        Some(std::time::Duration::from_millis(500))
    );
}

#[test]
fn answering_machine_detection_is_off_unless_asked_and_the_voicemail_is_one_short_line() {
    let config = ok(&[]);
    assert!(!config.outbound.machine_detection);
    assert_eq!(
        config.calls.tuning.voicemail_message,
        calls::DEFAULT_VOICEMAIL_MESSAGE
    );
    assert!(
        ok(&[("OUTBOUND_MACHINE_DETECTION", "on")])
            .outbound
            .machine_detection
    );
    assert!(
        !ok(&[("OUTBOUND_MACHINE_DETECTION", "OFF")])
            .outbound
            .machine_detection
    );
    fails(
        &[("OUTBOUND_MACHINE_DETECTION", "maybe")],
        "OUTBOUND_MACHINE_DETECTION",
        "on or off",
    );
    let config = ok(&[("VOICEMAIL_MESSAGE", "  Please call us back.  ")]);
    assert_eq!(
        config.calls.tuning.voicemail_message,
        "Please call us back."
    );
    let long = "a".repeat(501);
    fails(
        &[("VOICEMAIL_MESSAGE", long.as_str())],
        "VOICEMAIL_MESSAGE",
        "at most 500",
    );
    fails(
        &[("VOICEMAIL_MESSAGE", "Hello\u{7}there")],
        "VOICEMAIL_MESSAGE",
        "one line",
    );
    let rows = ok(&[("OUTBOUND_MACHINE_DETECTION", "on")]).effective();
    assert!(rows.contains(&("OUTBOUND_MACHINE_DETECTION", "on".to_string())));
    assert!(rows
        .iter()
        .any(|(k, v)| *k == "VOICEMAIL_MESSAGE" && v.contains("call us back")));
}

#[test]
fn the_turn_end_is_smart_by_default_and_its_silences_are_ordered() {
    let tuning = ok(&[]).calls.tuning;
    assert_eq!(tuning.turn_end, TurnEndMode::Smart);
    assert_eq!(tuning.turn_end_short, Duration::from_millis(300));
    assert_eq!(tuning.turn_end_long, Duration::from_millis(1_500));
    let config = ok(&[
        ("TURN_END", "vad"),
        ("TURN_END_SHORT_MS", "400"),
        ("TURN_END_LONG_MS", "400"),
    ]);
    assert_eq!(config.calls.tuning.turn_end, TurnEndMode::Vad);
    let rows = config.effective();
    let value = |key: &str| rows.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    assert_eq!(value("TURN_END").as_deref(), Some("vad"));
    assert_eq!(value("TURN_END_SHORT_MS").as_deref(), Some("400"));
    fails(&[("TURN_END", "sometimes")], "TURN_END", "smart or vad");
    fails(
        &[("TURN_END_SHORT_MS", "800"), ("TURN_END_LONG_MS", "500")],
        "TURN_END_LONG_MS",
        "not be shorter than TURN_END_SHORT_MS",
    );
    fails(&[("TURN_END_SHORT_MS", "50")], "TURN_END_SHORT_MS", "100");
}
