//! A simulated Anthropic Messages API: `POST /v1/messages` with `stream: true`, answered as
//! server-sent events in the real API's shapes, with a realistic time to first token and token
//! rate, tool calls, and injectable failures. It also checks requests the way the API does —
//! headers, alternating roles starting with the user, no empty turns, every `tool_use`
//! answered, at most four cache breakpoints — and refuses a bad one with a 400, so a client
//! cannot drift into agreeing with a wrong simulator.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::hops::{key_of, Hop, HopClock};

use super::http::{Responder, SimRequest, SimServer};
use super::listener::Tls;
use crate::personas::Role;
use crate::providers::anthropic::client::ANTHROPIC_VERSION;
use crate::providers::anthropic::request::count_breakpoints;

/// What the simulator answers the next request with.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Speak this text.
    Text(String),
    /// Say `preface`, then call the tool.
    ToolUse {
        preface: String,
        name: String,
        input: Value,
    },
    /// Answer with an HTTP error before any stream (429, 529, 500 …).
    Status {
        status: u16,
        kind: String,
        retry_after_secs: Option<u64>,
    },
    /// An HTTP error with these extra headers (`x-should-retry`, `retry-after-ms`, an HTTP-date
    /// `retry-after`, …).
    StatusWith {
        status: u16,
        kind: String,
        headers: Vec<(String, String)>,
    },
    /// Speak `text`, then go quiet for this long (a stream that stalls after its first words).
    StallAfter { text: String, quiet: Duration },
    /// Speak `text`, then an `overloaded_error` event inside the stream.
    OverloadedMidStream { text: String },
    /// Send `message_start`, then go quiet for this long.
    Stall(Duration),
    /// Send data that is not JSON.
    Malformed,
}

/// How fast the simulated model speaks.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub first_token: Duration,
    pub per_token: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        // Roughly Sonnet's: a few hundred ms to the first token, ~60 tokens a second.
        Timing {
            first_token: Duration::from_millis(350),
            per_token: Duration::from_millis(16),
        }
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    /// Replies for one persona, taken before the general script.
    by_role: std::collections::HashMap<Role, VecDeque<Reply>>,
    requests: Vec<Value>,
    /// The one key accepted; any non-empty key when `None`.
    api_key: Option<String>,
    /// Where request arrivals and first sentences are timed (`transcript_to_llm`,
    /// `sentence_to_tts`).
    hops: Option<Arc<HopClock>>,
    /// Number the default replies ("Reply 7. …") so each is unique.
    number_replies: bool,
    replies: u64,
}

/// A running simulator.
pub struct AnthropicSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl AnthropicSim {
    pub fn start(timing: Timing) -> io::Result<AnthropicSim> {
        AnthropicSim::start_with_tls(timing, None)
    }

    /// [`AnthropicSim::start`], serving `https://localhost` when `tls` is given.
    pub fn start_with_tls(timing: Timing, tls: Tls) -> io::Result<AnthropicSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let server = SimServer::start("sim-anthropic", tls, move |req, res| {
            handle(req, res, &shared, timing)
        })?;
        Ok(AnthropicSim { server, state })
    }

    /// Delays each new connection by the network round trip `rtt` (its handshake and its
    /// first response; see `listener::Listener::set_rtt`).
    pub fn set_rtt(&self, rtt: std::time::Duration) {
        self.server.set_rtt(rtt);
    }

    /// The base URL to set as `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Queues replies for the next requests (afterwards: the persona's default reply).
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state).script.extend(replies);
    }

    /// Queues replies for requests whose system prompt is `role`'s (its `CALLER ROLE:` line).
    pub fn push_for_role(&self, role: Role, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state)
            .by_role
            .entry(role)
            .or_default()
            .extend(replies);
    }

    /// Accepts only `key` from now on (as `x-api-key` or `Authorization: Bearer`); a wrong one
    /// is a 401, as the API answers.
    pub fn require_key(&self, key: &str) {
        lock(&self.state).api_key = Some(key.to_string());
    }

    /// Times requests and first sentences on `clock` (see [`super::hops`]).
    pub fn record_hops(&self, clock: Arc<HopClock>) {
        lock(&self.state).hops = Some(clock);
    }

    /// Starts every default reply with its number ("Reply 7. "), so no two are alike.
    pub fn number_replies(&self, on: bool) {
        lock(&self.state).number_replies = on;
    }

    /// Every valid request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.state).requests.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn handle(
    req: &SimRequest,
    res: &mut Responder,
    state: &Mutex<State>,
    timing: Timing,
) -> io::Result<()> {
    // The request was on its way when its connection was accepted (one per request), before
    // any simulated round trip.
    let arrived = super::listener::accepted_at().unwrap_or_else(Instant::now);
    let json = [("Content-Type", "application/json")];
    if req.method != "POST" || req.path() != "/v1/messages" {
        return res.send(
            404,
            &json,
            error_body("not_found_error", "Not found").as_bytes(),
        );
    }
    let expected = lock(state).api_key.clone();
    if let Err(problem) = check_key(req, expected.as_deref()) {
        let body = error_body("authentication_error", problem);
        return res.send(401, &json, body.as_bytes());
    }
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(body) => body,
        Err(err) => {
            let body = error_body("invalid_request_error", &format!("body is not JSON: {err}"));
            return res.send(400, &json, body.as_bytes());
        }
    };
    if let Err(problem) = check_request(req, &body) {
        let body = error_body("invalid_request_error", &problem);
        return res.send(400, &json, body.as_bytes());
    }
    let role = persona(&body);
    let (reply, hops, number) = {
        let mut state = lock(state);
        state.requests.push(body.clone());
        let for_role = role.and_then(|r| state.by_role.get_mut(&r).and_then(VecDeque::pop_front));
        let reply = for_role.or_else(|| state.script.pop_front());
        let number = (reply.is_none() && state.number_replies).then(|| {
            state.replies += 1;
            state.replies
        });
        (reply, state.hops.clone(), number)
    };
    let reply = reply.unwrap_or_else(|| {
        let text = default_reply(&body, role);
        Reply::Text(match number {
            Some(n) => format!("Reply {n}. {text}"),
            None => text,
        })
    });
    if let (Some(hops), Some(text)) = (&hops, last_user_text(&body)) {
        hops.end(Hop::TranscriptToLlm, key_of(text.trim()), arrived);
    }
    let hops = hops.as_deref();

    let (text, tool) = match reply {
        Reply::Status {
            status,
            kind,
            retry_after_secs,
        } => {
            let retry = retry_after_secs.map(|s| s.to_string());
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(retry) = &retry {
                headers.push(("retry-after", retry.as_str()));
            }
            let body = error_body(&kind, "simulated failure");
            return res.send(status, &headers, body.as_bytes());
        }
        Reply::StatusWith {
            status,
            kind,
            headers,
        } => {
            let mut all = vec![("Content-Type", "application/json")];
            all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let body = error_body(&kind, "simulated failure");
            return res.send(status, &all, body.as_bytes());
        }
        Reply::StallAfter { text, quiet } => {
            stream_start(res, &body)?;
            speak(res, 0, &text, timing, hops)?;
            thread::sleep(quiet);
            return Ok(());
        }
        Reply::Text(text) => (text, None),
        Reply::ToolUse {
            preface,
            name,
            input,
        } => (preface, Some((name, input))),
        Reply::OverloadedMidStream { text } => {
            stream_start(res, &body)?;
            speak(res, 0, &text, timing, hops)?;
            return event(
                res,
                "error",
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            );
        }
        Reply::Stall(quiet) => {
            stream_start(res, &body)?;
            thread::sleep(quiet);
            return Ok(());
        }
        Reply::Malformed => {
            stream_start(res, &body)?;
            return res.chunk(b"event: content_block_delta\ndata: {\"type\": nope\n\n");
        }
    };

    stream_start(res, &body)?;
    thread::sleep(timing.first_token);
    let mut index = 0;
    let mut output_tokens = 1;
    if !text.is_empty() {
        output_tokens += speak(res, index, &text, timing, hops)?;
        index += 1;
    }
    let stop_reason = match tool {
        Some((name, input)) => {
            event(
                res,
                "content_block_start",
                &json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": format!("toolu_sim_{index}"), "name": name, "input": {}}}),
            )?;
            // Input JSON arrives in pieces, as the API sends it.
            let input = input.to_string();
            let (first, second) = input.split_at(input.len() / 2);
            for part in ["", first, second] {
                event(
                    res,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": part}}),
                )?;
            }
            event(
                res,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            )?;
            output_tokens += 20;
            "tool_use"
        }
        None => "end_turn",
    };
    event(
        res,
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": output_tokens}}),
    )?;
    event(res, "message_stop", &json!({"type": "message_stop"}))
}

/// The API's authentication: a key as `x-api-key` or as `Authorization: Bearer` (the official
/// SDK 2.x sends the latter), which must be `expected` when one is set.
fn check_key(req: &SimRequest, expected: Option<&str>) -> Result<(), &'static str> {
    let bearer = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let keys: Vec<&str> = [req.header("x-api-key").map(str::trim), bearer]
        .into_iter()
        .flatten()
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return Err("x-api-key header is required");
    }
    match expected {
        Some(expected) if !keys.contains(&expected) => Err("invalid x-api-key"),
        _ => Ok(()),
    }
}

/// The request checks the real API makes (those a client of ours could get wrong).
fn check_request(req: &SimRequest, body: &Value) -> Result<(), String> {
    // Any well-formed date is accepted: SDKs send newer dates than the one we speak
    // (ANTHROPIC_VERSION), as the API takes them.
    match req.header("anthropic-version") {
        None => return Err("anthropic-version: header is required".into()),
        Some(version) if !is_version_date(version) => {
            return Err(format!(
                "anthropic-version: {version:?} is not a valid version (e.g. {ANTHROPIC_VERSION})"
            ))
        }
        Some(_) => {}
    }
    if body["stream"] != json!(true) {
        return Err("this simulator only streams: stream must be true".into());
    }
    if !body["model"].is_string() || !body["max_tokens"].is_u64() {
        return Err("model and max_tokens are required".into());
    }
    if let Some(tools) = body.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err("tools: Input should be a valid list".into());
        };
        for (idx, tool) in tools.iter().enumerate() {
            let name = tool["name"].as_str().unwrap_or("");
            if !crate::providers::mcp::is_model_tool_name(name) {
                // The real API's words for a name MCP allows and it does not (dots, > 64).
                return Err(format!(
                    "tools.{idx}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                ));
            }
        }
    }
    let breakpoints = count_breakpoints(body);
    if breakpoints > 4 {
        return Err(format!(
            "A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}."
        ));
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err("messages: at least one message is required".into());
    };
    let mut pending_tool_uses: Vec<String> = Vec::new();
    for (idx, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        let expected = if idx % 2 == 0 { "user" } else { "assistant" };
        if role != expected {
            return Err(format!(
                "messages.{idx}: roles must alternate starting with user, found {role:?}"
            ));
        }
        let blocks: Vec<Value> = match &message["content"] {
            Value::String(text) => vec![json!({"type": "text", "text": text})],
            Value::Array(blocks) => blocks.clone(),
            _ => {
                return Err(format!(
                    "messages.{idx}: content must be a string or blocks"
                ))
            }
        };
        let says_something = blocks.iter().any(|b| match b["type"].as_str() {
            Some("text") => !b["text"].as_str().unwrap_or("").trim().is_empty(),
            _ => true,
        });
        if !says_something {
            return Err(format!(
                "messages.{idx}: all messages must have non-empty content"
            ));
        }
        if role == "user" {
            for id in pending_tool_uses.drain(..) {
                let answered = blocks
                    .iter()
                    .any(|b| b["type"] == "tool_result" && b["tool_use_id"] == json!(id));
                if !answered {
                    return Err(format!(
                        "messages.{idx}: tool_use ids were found without tool_result blocks: {id}"
                    ));
                }
            }
        }
        for block in &blocks {
            if block["type"] == "tool_use" {
                pending_tool_uses.push(block["id"].as_str().unwrap_or("").to_string());
            }
        }
    }
    Ok(())
}

/// `YYYY-MM-DD`, a real calendar date.
fn is_version_date(text: &str) -> bool {
    text.len() == 10 && crate::timestamp::parse_date(text).is_some()
}

fn stream_start(res: &mut Responder, body: &Value) -> io::Result<()> {
    res.start_stream(
        200,
        &[
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
        ],
    )?;
    // Cached prefix tokens are reported like the API does: a write the first time a prefix is
    // seen, reads after; the simulator approximates with the request size.
    let input_tokens = (body.to_string().len() / 4) as u64;
    event(
        res,
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": "msg_sim", "type": "message", "role": "assistant", "content": [],
            "model": body["model"], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens.min(200), "output_tokens": 1,
                      "cache_creation_input_tokens": input_tokens.saturating_sub(200),
                      "cache_read_input_tokens": 0}}}),
    )?;
    event(res, "ping", &json!({"type": "ping"}))
}

/// The text of the last user message (its text blocks joined), if it has any.
/// The newest text the caller said: the last text block of the last user message (a caller
/// who talked over an answer they had not heard yet has two utterances in one message).
fn last_user_text(body: &Value) -> Option<String> {
    let message = body["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?;
    match &message["content"] {
        Value::String(text) => Some(text.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .rev()
            .find_map(|b| b["text"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// Streams `text` as a text block, a word at a time; returns the tokens spoken. With `hops`,
/// the delta completing the first sentence (cut as the server cuts) is timed when sent.
fn speak(
    res: &mut Responder,
    index: u64,
    text: &str,
    timing: Timing,
    hops: Option<&HopClock>,
) -> io::Result<u64> {
    let mut sentences = hops.map(|_| crate::speech::sentences::Sentences::new());
    event(
        res,
        "content_block_start",
        &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
    )?;
    let mut tokens = 0;
    for word in text.split_inclusive(' ') {
        event(
            res,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}}),
        )?;
        if let (Some(hops), Some(cut)) = (hops, sentences.as_mut()) {
            if let Some(first) = cut.push(word).into_iter().next() {
                hops.start(Hop::SentenceToTts, key_of(first.trim()), Instant::now());
                sentences = None;
            }
        }
        tokens += 1;
        thread::sleep(timing.per_token);
    }
    // A reply of one sentence is cut when it ends (the server flushes what is left).
    if let (Some(hops), Some(first)) = (hops, sentences.as_mut().and_then(|c| c.finish())) {
        hops.start(Hop::SentenceToTts, key_of(first.trim()), Instant::now());
    }
    event(
        res,
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    )?;
    Ok(tokens)
}

fn event(res: &mut Responder, name: &str, data: &Value) -> io::Result<()> {
    res.chunk(format!("event: {name}\ndata: {data}\n\n").as_bytes())
}

fn error_body(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

/// The persona a request is for: the role named on its system prompt's `CALLER ROLE:` line.
pub fn persona(body: &Value) -> Option<Role> {
    let system = match &body["system"] {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    system.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("CALLER ROLE:")?;
        let word = rest
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|w| !w.is_empty())?;
        Role::parse(word)
    })
}

/// What the simulator says when nothing was scripted: a calm reply in the persona's register,
/// so a demo conversation reads naturally.
fn default_reply(body: &Value, role: Option<Role>) -> String {
    let first_turn = body["messages"].as_array().is_none_or(|m| m.len() <= 1);
    let reply = match role {
        Some(Role::KidTeen) => "Thanks for telling me. You're not in trouble. Do you want to tell me what happened?",
        Some(Role::Attorney | Role::Judge | Role::Gal | Role::Evaluator) => {
            "Understood. Let's put the facts in order: the date, what was observed, and who was present."
        }
        Some(Role::Therapist | Role::SocialWorker | Role::SchoolCounselor | Role::Cps) => {
            "Thank you. Let's record what you observed, in the child's own words where you can."
        }
        Some(Role::LawEnforcement) => "Understood. Start with the time and the location, and we'll build the report from there.",
        Some(Role::Mediator) => "Thank you. Let's note what each side agreed to, in neutral words.",
        _ if first_turn => "I'm here with you. Take your time, and tell me what's on your mind.",
        _ => "Thank you for telling me. We can write that down together, one step at a time. What happened first?",
    };
    reply.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personas::prompts::system_prompt;

    #[test]
    fn version_dates_must_be_well_formed() {
        for good in [ANTHROPIC_VERSION, "2026-10-21", "2024-02-29"] {
            assert!(is_version_date(good), "{good}");
        }
        for bad in [
            "",
            "2023-6-01",
            "2023-06-01x",
            "2023-13-01",
            "2023-02-30",
            "latest",
        ] {
            assert!(!is_version_date(bad), "{bad}");
        }
    }

    #[test]
    fn the_persona_is_read_from_our_own_system_prompts() {
        for role in Role::ALL {
            let body = json!({"system": [{"type": "text", "text": &*system_prompt(role)}]});
            assert_eq!(persona(&body), Some(role));
        }
        assert_eq!(persona(&json!({"system": "no role here"})), None);
    }
}
