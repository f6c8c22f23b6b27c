//! The Anthropic client against the simulator over real sockets: streamed text, tool calls,
//! retries before the first token (and only then), in-stream errors, a stalled stream, malformed
//! data, cancellation, and the API's own request checks.

use cotrackpro_voice::providers::cancel::Cancel;
use std::time::{Duration, Instant};

use serde_json::json;

use cotrackpro_voice::config::{Config, Env, Secret};
use cotrackpro_voice::providers::anthropic::client::{AnthropicClient, LlmError};
use cotrackpro_voice::providers::anthropic::request::{build, RequestParts};
use cotrackpro_voice::providers::anthropic::stream::StreamItem;
use cotrackpro_voice::providers::anthropic::{Block, Speaker, ToolDefinition, Turn};
use cotrackpro_voice::sim::anthropic::{AnthropicSim, Reply, Timing};

fn fast() -> Timing {
    Timing {
        first_token: Duration::from_millis(20),
        per_token: Duration::from_millis(5),
    }
}

fn client(sim: &AnthropicSim, first_token_ms: u64) -> AnthropicClient {
    client_with(sim, first_token_ms, first_token_ms)
}

fn client_with(sim: &AnthropicSim, first_token_ms: u64, stall_ms: u64) -> AnthropicClient {
    let env = Env::from_pairs([
        ("ANTHROPIC_STALL_TIMEOUT_MS", stall_ms.to_string().as_str()),
        ("SERVER_DOMAIN", "voice.example.com"),
        ("ANTHROPIC_BASE_URL", sim.base_url().as_str()),
        (
            "ANTHROPIC_FIRST_TOKEN_TIMEOUT_MS",
            &first_token_ms.to_string(),
        ),
        ("ANTHROPIC_STREAM_TIMEOUT_MS", "10000"),
    ]);
    let config = Config::from_env(&env).unwrap();
    AnthropicClient::new(&config.anthropic, Secret::new("sk-ant-test"))
        .with_retries(2, Duration::from_millis(10))
}

fn tools() -> Vec<ToolDefinition> {
    vec![ToolDefinition {
        name: "check_safety".into(),
        description: "Safety triage".into(),
        input_schema: json!({"type": "object", "properties": {"context": {"type": "string"}}}),
    }]
}

fn body(history: &[Turn]) -> serde_json::Value {
    let tools = tools();
    build(&RequestParts {
        model: "claude-sonnet-4-5",
        max_tokens: 512,
        system: "You are a calm CoTrackPro assistant on a phone call.",
        tools: &tools,
        history,
        max_history_messages: 40,
    })
}

fn hello() -> serde_json::Value {
    body(&[Turn::user("Hi, I need help writing down what happened.")])
}

/// Streams `body`, collecting items with the time each arrived.
fn collect(
    client: &AnthropicClient,
    body: &serde_json::Value,
) -> (
    Result<cotrackpro_voice::providers::anthropic::client::Outcome, LlmError>,
    Vec<(Duration, StreamItem)>,
) {
    let started = Instant::now();
    let cancel = Cancel::new();
    let mut items = Vec::new();
    let result = client.stream(body, &cancel, |item| {
        items.push((started.elapsed(), item.clone()))
    });
    (result, items)
}

#[test]
fn text_streams_as_it_is_spoken() {
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::from_millis(20),
        per_token: Duration::from_millis(30),
    })
    .unwrap();
    sim.push([Reply::Text(
        "I'm here with you. Let's take it one step at a time.".into(),
    )]);
    let (result, items) = collect(&client(&sim, 2000), &hello());
    let outcome = result.unwrap();
    let text: String = items
        .iter()
        .filter_map(|(_, item)| match item {
            StreamItem::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "I'm here with you. Let's take it one step at a time.");
    let (first_at, _) = items.first().unwrap();
    let (last_at, last) = items.last().unwrap();
    assert_eq!(
        last,
        &StreamItem::Stop {
            reason: "end_turn".into()
        }
    );
    // Eleven words at 30 ms each: the first must arrive well before the end.
    assert!(
        *last_at - *first_at >= Duration::from_millis(200),
        "{first_at:?} .. {last_at:?}"
    );
    assert_eq!(outcome.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(outcome.attempts, 1);
    assert!(outcome.usage.input_tokens > 0 && outcome.usage.output_tokens > 1);
    assert_eq!(outcome.content, vec![Block::Text(text)]);
    // What reached the simulator is the request we built, breakpoints and all.
    let seen = sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["system"][0]["cache_control"]["type"], "ephemeral");
}

#[test]
fn a_tool_call_arrives_whole_and_its_result_goes_back() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([Reply::ToolUse {
        preface: "Let me check that for you.".into(),
        name: "check_safety".into(),
        input: json!({"context": "he said he has a gun"}),
    }]);
    let client = client(&sim, 2000);
    let (result, items) = collect(&client, &hello());
    let outcome = result.unwrap();
    assert_eq!(outcome.stop_reason.as_deref(), Some("tool_use"));
    let Some(StreamItem::ToolUse { id, name, input }) = items
        .iter()
        .map(|(_, i)| i)
        .find(|i| matches!(i, StreamItem::ToolUse { .. }))
        .cloned()
    else {
        panic!("no tool call in {items:?}");
    };
    assert_eq!(name, "check_safety");
    assert_eq!(input, json!({"context": "he said he has a gun"}));

    // The follow-up with the tool result passes the API's checks.
    let history = vec![
        Turn::user("Hi, I need help writing down what happened."),
        Turn {
            speaker: Speaker::Assistant,
            blocks: outcome.content.clone(),
        },
        Turn {
            speaker: Speaker::User,
            blocks: vec![Block::ToolResult {
                tool_use_id: id,
                content: "tier 1".into(),
                is_error: false,
            }],
        },
    ];
    let (result, _) = collect(&client, &body(&history));
    assert_eq!(result.unwrap().stop_reason.as_deref(), Some("end_turn"));
}

#[test]
fn overload_before_the_stream_is_retried_honouring_retry_after() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([
        Reply::Status {
            status: 529,
            kind: "overloaded_error".into(),
            retry_after_secs: Some(1),
        },
        Reply::Text("Still here.".into()),
    ]);
    let started = Instant::now();
    let (result, _) = collect(&client(&sim, 2000), &hello());
    let outcome = result.unwrap();
    assert_eq!(outcome.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retry-after was honoured"
    );
    assert_eq!(sim.requests().len(), 2);
}

#[test]
fn retries_give_up_after_the_limit() {
    let sim = AnthropicSim::start(fast()).unwrap();
    let limited = Reply::Status {
        status: 429,
        kind: "rate_limit_error".into(),
        retry_after_secs: None,
    };
    sim.push([limited.clone(), limited.clone(), limited]);
    let (result, _) = collect(&client(&sim, 2000), &hello());
    match result {
        Err(LlmError::Http {
            status: 429, kind, ..
        }) => assert_eq!(kind, "rate_limit_error"),
        other => panic!("expected a 429 after the retries, got {other:?}"),
    }
    assert_eq!(sim.requests().len(), 3);
}

#[test]
fn a_bad_request_is_not_retried_and_says_why() {
    let sim = AnthropicSim::start(fast()).unwrap();
    let mut bad = hello();
    bad["messages"] = json!([{"role": "assistant", "content": "Welcome."}]);
    let (result, _) = collect(&client(&sim, 2000), &bad);
    match result {
        Err(LlmError::Http {
            status: 400,
            kind,
            message,
        }) => {
            assert_eq!(kind, "invalid_request_error");
            assert!(message.contains("starting with user"), "{message}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // The simulator enforces the breakpoint limit the original broke.
    let mut five = hello();
    let block = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
    five["messages"][0]["content"] = json!([block.clone(), block.clone(), block]);
    let (result, _) = collect(&client(&sim, 2000), &five);
    assert!(
        matches!(result, Err(LlmError::Http { status: 400, ref message, .. }) if message.contains("maximum of 4"))
    );
}

#[test]
fn an_error_after_words_were_spoken_is_returned_not_replayed() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([Reply::OverloadedMidStream {
        text: "I understand, and".into(),
    }]);
    let (result, items) = collect(&client(&sim, 2000), &hello());
    assert!(items.iter().any(|(_, i)| matches!(i, StreamItem::Text(_))));
    assert_eq!(
        result.unwrap_err(),
        LlmError::Stream {
            kind: "overloaded_error".into(),
            message: "Overloaded".into()
        }
    );
    assert_eq!(
        sim.requests().len(),
        1,
        "not retried once words were spoken"
    );
}

#[test]
fn a_stalled_stream_fails_at_the_first_token_timeout() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([Reply::Stall(Duration::from_secs(4))]);
    let started = Instant::now();
    let (result, _) = collect(&client(&sim, 300).with_retries(0, Duration::ZERO), &hello());
    let took = started.elapsed();
    assert_eq!(
        result.unwrap_err(),
        LlmError::FirstTokenTimeout(Duration::from_millis(300))
    );
    // Pins ureq's per-read timeout: the stall is noticed at ~300 ms, not at the 4 s stall end.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
        "{took:?}"
    );
}

#[test]
fn malformed_data_is_an_error() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([Reply::Malformed]);
    let (result, _) = collect(&client(&sim, 2000), &hello());
    assert!(matches!(result, Err(LlmError::Malformed(_))), "{result:?}");
}

#[test]
fn cancelling_stops_the_stream_at_the_next_event() {
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::from_millis(10),
        per_token: Duration::from_millis(100),
    })
    .unwrap();
    let words = "one two three four five six seven eight nine ten eleven twelve";
    sim.push([Reply::Text(words.into())]);
    let client = client(&sim, 2000);
    let cancel = Cancel::new();
    let mut texts = 0;
    let started = Instant::now();
    let outcome = client
        .stream(&hello(), &cancel, |item| {
            if matches!(item, StreamItem::Text(_)) {
                texts += 1;
                if texts == 2 {
                    cancel.cancel();
                }
            }
        })
        .unwrap();
    assert!(outcome.cancelled);
    assert_eq!(outcome.stop_reason, None);
    assert_eq!(texts, 2, "nothing is delivered after the cancel");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

/// Streams `body` on a named thread, sending each text delta and then the result.
fn stream_on_thread(
    name: &str,
    client: AnthropicClient,
    body: serde_json::Value,
) -> crossbeam_channel::Receiver<
    Result<String, Result<cotrackpro_voice::providers::anthropic::client::Outcome, LlmError>>,
> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let cancel = Cancel::new();
            let result = client.stream(&body, &cancel, |item| {
                if let StreamItem::Text(text) = item {
                    let _ = tx.send(Ok(text.clone()));
                }
            });
            let _ = tx.send(Err(result));
        })
        .expect("thread");
    rx
}

#[test]
fn a_handles_shutdown_cuts_its_own_stream_in_flight_and_no_other() {
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::from_millis(10),
        per_token: Duration::from_millis(20),
    })
    .unwrap();
    // The first request speaks, then keeps its connection silent for 5 s and ends without a
    // `message_stop` (a Malformed error, had nothing cut it); the second speaks for a while.
    sim.push([
        Reply::StallAfter {
            text: "Let me think about that.".into(),
            quiet: Duration::from_secs(5),
        },
        Reply::Text("One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty.".into()),
    ]);
    // One client (one agent, one pool), two calls' handles.
    let server = client_with(&sim, 10_000, 10_000);
    let (ended_call, other_call) = (server.handle(), server.handle());

    let ended = stream_on_thread("test-llm-ended", ended_call.clone(), hello());
    let first = ended.recv_timeout(Duration::from_secs(10)).expect("words");
    assert!(first.is_ok(), "{first:?}");
    let other = stream_on_thread("test-llm-other", other_call, hello());
    let first = other.recv_timeout(Duration::from_secs(10)).expect("words");
    assert!(first.is_ok(), "{first:?}");

    ended_call.shutdown();
    let result = loop {
        match ended.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(_)) => continue,
            Ok(Err(result)) => break result,
            Err(_) => panic!("the stream was not cut by the shutdown"),
        }
    };
    // Cut by the shutdown: not the stall's end (Malformed) nor a timeout.
    assert!(matches!(result, Err(LlmError::Transport(_))), "{result:?}");

    let mut heard = String::new();
    let result = loop {
        match other.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(text)) => heard.push_str(&text),
            Ok(Err(result)) => break result,
            Err(_) => panic!("the other stream never ended"),
        }
    };
    let outcome = result.expect("the other call's stream is untouched");
    assert!(!outcome.cancelled);
    assert!(heard.contains("twenty"), "{heard}");

    // Later requests of the ended call fail before reaching the API, without retries.
    let requests = sim.requests().len();
    let later = ended_call.stream(&hello(), &Cancel::new(), |_| {});
    assert!(matches!(later, Err(LlmError::Transport(_))), "{later:?}");
    assert_eq!(sim.requests().len(), requests);
    // The server's client and the other handles still work.
    sim.push([Reply::Text("Still here.".into())]);
    let (result, _) = collect(&server, &hello());
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn replies_follow_the_persona_of_the_system_prompt() {
    use cotrackpro_voice::personas::Role;
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push_for_role(
        Role::KidTeen,
        [Reply::Text("You can stop any time you want.".into())],
    );
    let with_system = |system: &str| {
        let mut body = hello();
        body["system"][0]["text"] = json!(system);
        body
    };
    let spoken = |body: &serde_json::Value| -> String {
        let (result, items) = collect(&client(&sim, 2000), body);
        result.unwrap();
        items
            .iter()
            .filter_map(|(_, i)| match i {
                StreamItem::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    let kid = with_system("You are a CoTrackPro assistant.\nCALLER ROLE: kid_teen (a minor)");
    assert_eq!(spoken(&kid), "You can stop any time you want.");
    assert!(
        spoken(&kid).contains("not in trouble"),
        "then the persona's default"
    );
    let attorney = with_system("Core rules.\nCALLER ROLE: Attorney — concise legal language");
    assert!(spoken(&attorney).contains("facts in order"));
    assert!(spoken(&hello()).contains("I'm here with you"));
}

fn status(status: u16, kind: &str, headers: &[(&str, &str)]) -> Reply {
    Reply::StatusWith {
        status,
        kind: kind.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn x_should_retry_false_is_never_retried_and_true_retries_even_a_400() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([status(
        529,
        "overloaded_error",
        &[("x-should-retry", "false")],
    )]);
    let (result, _) = collect(&client(&sim, 2000), &hello());
    assert!(
        matches!(result, Err(LlmError::Http { status: 529, .. })),
        "{result:?}"
    );
    assert_eq!(sim.requests().len(), 1, "x-should-retry: false obeyed");

    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([
        status(400, "invalid_request_error", &[("x-should-retry", "true")]),
        Reply::Text("Here.".into()),
    ]);
    let (result, _) = collect(&client(&sim, 2000), &hello());
    assert_eq!(result.unwrap().attempts, 2, "x-should-retry: true obeyed");
}

#[test]
fn request_timeouts_and_conflicts_are_retried_as_the_sdk_does() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([
        status(408, "timeout_error", &[]),
        status(409, "conflict_error", &[]),
        Reply::Text("Still here.".into()),
    ]);
    let (result, _) = collect(&client(&sim, 2000), &hello());
    assert_eq!(result.unwrap().attempts, 3);
    // Other 4xx are final.
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([status(403, "permission_error", &[])]);
    let (result, _) = collect(&client(&sim, 2000), &hello());
    assert!(matches!(result, Err(LlmError::Http { status: 403, .. })));
    assert_eq!(sim.requests().len(), 1);
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    use cotrackpro_voice::providers::anthropic::retry::format_http_date;
    let sim = AnthropicSim::start(fast()).unwrap();
    // Two seconds ahead, at whole-second precision: a wait in (1, 2] s.
    let at = format_http_date(cotrackpro_voice::timestamp::now_ms() + 2000);
    sim.push([
        status(429, "rate_limit_error", &[("retry-after", at.as_str())]),
        Reply::Text("Still here.".into()),
    ]);
    let started = Instant::now();
    let (result, _) = collect(&client(&sim, 2000), &hello());
    let took = started.elapsed();
    assert_eq!(result.unwrap().attempts, 2);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[test]
fn retry_after_ms_wins_and_waits_over_a_minute_fall_back_to_backoff() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([
        status(
            529,
            "overloaded_error",
            &[("retry-after-ms", "400"), ("retry-after", "30")],
        ),
        status(529, "overloaded_error", &[("retry-after", "120")]),
        Reply::Text("Still here.".into()),
    ]);
    let started = Instant::now();
    let (result, _) = collect(&client(&sim, 2000), &hello());
    let took = started.elapsed();
    assert_eq!(result.unwrap().attempts, 3);
    // 400 ms asked, then our 10 ms test backoff instead of 120 s.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn a_backoff_ends_at_once_when_the_turn_is_cancelled() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([status(429, "rate_limit_error", &[("retry-after", "30")])]);
    let client = client(&sim, 2000);
    let cancel = std::sync::Arc::new(Cancel::new());
    let setter = cancel.clone();
    let canceller = std::thread::Builder::new()
        .name("test-barge-in".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            setter.cancel();
        })
        .unwrap();
    let started = Instant::now();
    let outcome = client.stream(&hello(), &cancel, |_| {}).unwrap();
    canceller.join().unwrap();
    assert!(outcome.cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.requests().len(), 1, "no retry after the cancel");
}

#[test]
fn a_stall_after_the_first_words_uses_the_stall_timeout_and_is_not_retried() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.push([Reply::StallAfter {
        text: "I hear you, and".into(),
        quiet: Duration::from_secs(4),
    }]);
    let started = Instant::now();
    let (result, items) = collect(&client_with(&sim, 3000, 300), &hello());
    let took = started.elapsed();
    assert!(items.iter().any(|(_, i)| matches!(i, StreamItem::Text(_))));
    match result {
        Err(LlmError::Timeout(what)) => assert!(what.contains("stalled"), "{what}"),
        other => panic!("expected a stall, got {other:?}"),
    }
    // 300 ms of silence ends it, not the 3 s first-token timeout nor the 4 s stall.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(sim.requests().len(), 1, "words were delivered: no retry");
}

#[test]
fn a_slow_first_token_is_judged_by_the_first_token_timeout_not_the_stall_timeout() {
    // 700 ms before the first words, with a 250 ms stall timeout: not a stall.
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::from_millis(700),
        per_token: Duration::from_millis(5),
    })
    .unwrap();
    sim.push([Reply::Text("Take your time.".into())]);
    let (result, _) = collect(&client_with(&sim, 2000, 250), &hello());
    let outcome = result.unwrap();
    assert_eq!(outcome.attempts, 1);
    assert_eq!(outcome.stop_reason.as_deref(), Some("end_turn"));
}

/// A raw request to the simulator with these headers; its status.
fn raw_status(sim: &AnthropicSim, headers: &[(&str, &str)]) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.post(&format!("{}/v1/messages", sim.base_url()));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = json!({"model": "m", "max_tokens": 10, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let response = request.send(body.to_string().as_bytes()).unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().read_to_string();
    status
}

#[test]
fn the_simulator_takes_a_key_either_way_and_any_version_date_as_the_api_does() {
    let sim = AnthropicSim::start(Timing {
        first_token: Duration::ZERO,
        per_token: Duration::ZERO,
    })
    .unwrap();
    sim.require_key("sk-ant-right");
    let version = ("anthropic-version", "2023-06-01");
    assert_eq!(
        raw_status(&sim, &[("x-api-key", "sk-ant-right"), version]),
        200
    );
    assert_eq!(
        raw_status(&sim, &[("authorization", "Bearer sk-ant-right"), version]),
        200
    );
    assert_eq!(
        raw_status(
            &sim,
            &[
                ("authorization", "Bearer sk-ant-right"),
                ("anthropic-version", "2026-10-21")
            ]
        ),
        200
    );
    // Refused as the API refuses them.
    assert_eq!(
        raw_status(&sim, &[("x-api-key", "sk-ant-wrong"), version]),
        401
    );
    assert_eq!(
        raw_status(&sim, &[("authorization", "Bearer sk-ant-wrong"), version]),
        401
    );
    assert_eq!(
        raw_status(&sim, &[("authorization", "Basic c2s="), version]),
        401
    );
    assert_eq!(raw_status(&sim, &[version]), 401);
    assert_eq!(raw_status(&sim, &[("x-api-key", "sk-ant-right")]), 400);
    for bad in ["2023-6-01", "latest", "2023-02-30"] {
        assert_eq!(
            raw_status(
                &sim,
                &[("x-api-key", "sk-ant-right"), ("anthropic-version", bad)]
            ),
            400,
            "{bad}"
        );
    }
}

#[test]
fn the_official_anthropic_sdk_streams_a_reply_from_the_simulator() {
    let sim = AnthropicSim::start(fast()).unwrap();
    sim.require_key("sk-ant-interop");
    let said = "I'm here with you. Take your time.";
    sim.push([Reply::Text(said.into()), Reply::Text(said.into())]);
    let out = crate::support::run_python(
        "anthropic_interop.py",
        &[],
        &json!({"base_url": sim.base_url(), "key": "sk-ant-interop", "wrong_key": "sk-ant-nope"}),
    );
    for how in ["api_key", "auth_token"] {
        assert_eq!(out[how]["text"], said, "{how}: {out}");
        assert_eq!(out[how]["final_text"], said, "{how}");
        assert_eq!(out[how]["stop_reason"], "end_turn", "{how}");
        assert!(out[how]["output_tokens"].as_u64().unwrap_or(0) > 1, "{how}");
    }
    assert_eq!(out["wrong_key"]["status"], 401, "{out}");
    assert_eq!(out["wrong_key"]["type"], "authentication_error");
    // The SDK sent its own (newer) version date, and the simulator took it.
    assert_ne!(out["api_version"], "2023-06-01", "{out}");
    // The two streams; the wrong key was refused before its body was looked at.
    assert_eq!(sim.requests().len(), 2);
}
