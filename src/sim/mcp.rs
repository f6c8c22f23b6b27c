//! A simulated CoTrackPro MCP server on Streamable HTTP (`POST /mcp`): sessions, the four
//! CoTrackPro tools, answers as SSE (what the official server does by default) or as JSON. It
//! checks what a real server checks — the `Accept` header (406), a session id on every request
//! after `initialize` (400 missing, 404 unknown), the protocol-version header — and can be made
//! slow or forgetful to exercise the client's timeouts and re-initialization.
//!
//! Like the protocol allows, it can also page `tools/list` (`nextCursor`), offer tools of its
//! own with any name and result, end a request's SSE stream after a priming event and answer
//! the client's `GET` with `Last-Event-ID` (the 2025-11-25 polling), and end a session on
//! `DELETE`. It counts `initialize`s, `DELETE`s and resumptions.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{Responder, SimRequest, SimServer};
use super::listener::Tls;
use crate::providers::mcp::default_tools;

/// How the simulator frames its answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Sse,
    Json,
}

#[derive(Default)]
struct State {
    sessions: HashSet<String>,
    next_session: u64,
    calls: Vec<(String, Value)>,
    delay: Duration,
    /// `tools/list` pages of this many tools (`None`: one page).
    page_size: Option<usize>,
    /// Tools offered after the CoTrackPro ones: (definition, what `tools/call` answers).
    extra_tools: Vec<(Value, Value)>,
    /// End SSE responses after a priming event with this `retry` (ms); answer on `GET`.
    cut_after_priming: Option<u64>,
    next_stream: u64,
    /// Responses waiting for a `GET`, by the priming event's id: (response, when cut).
    parked: HashMap<String, (Value, Instant)>,
    /// How long after the cut each resuming `GET` came.
    resumed_after: Vec<Duration>,
    deletes: Vec<String>,
}

pub struct McpSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl McpSim {
    pub fn start(framing: Framing) -> io::Result<McpSim> {
        McpSim::start_with_tls(framing, None)
    }

    /// [`McpSim::start`], serving `https://localhost` when `tls` is given.
    pub fn start_with_tls(framing: Framing, tls: Tls) -> io::Result<McpSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let server = SimServer::start("sim-mcp", tls, move |req, res| {
            handle(req, res, &shared, framing)
        })?;
        Ok(McpSim { server, state })
    }

    /// Delays each new connection by the network round trip `rtt` (its handshake and its
    /// first response; see `listener::Listener::set_rtt`).
    pub fn set_rtt(&self, rtt: std::time::Duration) {
        self.server.set_rtt(rtt);
    }

    /// The URL to set as `COTRACKPRO_MCP_URL`.
    pub fn url(&self) -> String {
        format!("{}/mcp", self.server.base_url())
    }

    /// Tool calls received: (name, arguments).
    pub fn calls(&self) -> Vec<(String, Value)> {
        lock(&self.state).calls.clone()
    }

    /// Makes every `tools/list` and `tools/call` take this long.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Forgets every session, as a restarted server would.
    pub fn forget_sessions(&self) {
        lock(&self.state).sessions.clear();
    }

    /// Sessions opened so far (one per `initialize`).
    pub fn sessions_opened(&self) -> u64 {
        lock(&self.state).next_session
    }

    /// Pages `tools/list`: `size` tools a page, with `nextCursor` while more remain.
    pub fn set_page_size(&self, size: usize) {
        lock(&self.state).page_size = Some(size.max(1));
    }

    /// Offers one more tool, listed after the others, whose every call answers `result` (a
    /// `tools/call` result: `content`, `structuredContent`, `isError`). Any name goes, as in
    /// MCP (dots, 128 characters).
    pub fn add_tool(&self, name: &str, description: &str, result: Value) {
        let definition = json!({"name": name, "description": description,
            "inputSchema": {"type": "object", "properties": {}}});
        lock(&self.state).extra_tools.push((definition, result));
    }

    /// Ends every later request's SSE response after a priming event (an id, `retry: retry_ms`
    /// and empty data), without the response; the response then comes on the client's `GET`
    /// with that `Last-Event-ID`. SSE framing only.
    pub fn cut_after_priming(&self, retry_ms: u64) {
        lock(&self.state).cut_after_priming = Some(retry_ms);
    }

    /// How long after each cut the client came back with `GET` (one entry per resumption).
    pub fn resumed_after(&self) -> Vec<Duration> {
        lock(&self.state).resumed_after.clone()
    }

    /// The sessions ended with `DELETE`, in order.
    pub fn deleted_sessions(&self) -> Vec<String> {
        lock(&self.state).deletes.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn handle(
    req: &SimRequest,
    res: &mut Responder,
    state: &Mutex<State>,
    framing: Framing,
) -> io::Result<()> {
    let plain = [("Content-Type", "text/plain")];
    if req.path() != "/mcp" {
        return res.send(404, &plain, b"not found");
    }
    match req.method.as_str() {
        "POST" => {}
        "GET" => return resume(req, res, state),
        "DELETE" => {
            let mut state = lock(state);
            return match req.header("Mcp-Session-Id") {
                Some(session) if state.sessions.remove(session) => {
                    state.deletes.push(session.to_string());
                    res.send(200, &plain, b"")
                }
                Some(_) => res.send(404, &plain, b"Session not found"),
                None => res.send(400, &plain, b"Bad Request: Missing session ID"),
            };
        }
        _ => return res.send(405, &plain, b"Method not allowed"),
    }
    let accept = req.header("Accept").unwrap_or("");
    if !(accept.contains("application/json") && accept.contains("text/event-stream")) {
        return res.send(
            406,
            &plain,
            b"Accept must list application/json and text/event-stream",
        );
    }
    let Ok(message) = serde_json::from_slice::<Value>(&req.body) else {
        return rpc(
            res,
            framing,
            None,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}),
            None,
        );
    };
    let method = message["method"].as_str().unwrap_or("");
    let id = message.get("id").cloned();

    if method == "initialize" {
        let session = {
            let mut state = lock(state);
            state.next_session += 1;
            let session = format!("sim-session-{}", state.next_session);
            state.sessions.insert(session.clone());
            session
        };
        let result = json!({
            "protocolVersion": message["params"]["protocolVersion"].as_str().unwrap_or("2025-11-25"),
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "cotrackpro-sim", "version": env!("CARGO_PKG_VERSION")},
        });
        return rpc(
            res,
            framing,
            Some(&session),
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
            None,
        );
    }
    match req.header("Mcp-Session-Id") {
        None => return res.send(400, &plain, b"Bad Request: Missing session ID"),
        Some(session) if !lock(state).sessions.contains(session) => {
            return res.send(404, &plain, b"Session not found")
        }
        Some(_) => {}
    }
    if !matches!(
        req.header("MCP-Protocol-Version"),
        Some("2025-11-25" | "2025-06-18")
    ) {
        return res.send(400, &plain, b"Bad Request: Unsupported protocol version");
    }
    if id.is_none() {
        // A notification (notifications/initialized, cancellations): accepted, no body.
        return res.send(202, &plain, b"");
    }
    let (delay, page_size, extra, cut) = {
        let state = lock(state);
        (
            state.delay,
            state.page_size,
            state.extra_tools.clone(),
            state.cut_after_priming.filter(|_| framing == Framing::Sse),
        )
    };
    let cut = cut.map(|retry| (retry, state));
    let result = match method {
        "tools/list" => {
            std::thread::sleep(delay);
            let mut tools: Vec<Value> = default_tools()
                .into_iter()
                .map(|t| json!({"name": t.name, "description": t.description, "inputSchema": t.input_schema}))
                .collect();
            tools.extend(extra.iter().map(|(definition, _)| definition.clone()));
            let start = match message["params"]["cursor"].as_str() {
                None => 0,
                Some(cursor) => match cursor
                    .strip_prefix("from-")
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    Some(start) if start < tools.len() => start,
                    _ => {
                        return rpc(
                            res,
                            framing,
                            None,
                            &json!({"jsonrpc": "2.0", "id": id,
                                "error": {"code": -32602, "message": "Invalid cursor"}}),
                            cut,
                        )
                    }
                },
            };
            let end = page_size.map_or(tools.len(), |size| (start + size).min(tools.len()));
            let mut page = json!({"tools": tools[start..end].to_vec()});
            if end < tools.len() {
                page["nextCursor"] = json!(format!("from-{end}"));
            }
            page
        }
        "tools/call" => {
            let name = message["params"]["name"].as_str().unwrap_or("").to_string();
            let arguments = message["params"]["arguments"].clone();
            lock(state).calls.push((name.clone(), arguments.clone()));
            std::thread::sleep(delay);
            match extra
                .iter()
                .find(|(definition, _)| definition["name"] == json!(name))
            {
                Some((_, result)) => result.clone(),
                None => call_tool(&name, &arguments),
            }
        }
        "ping" => json!({}),
        other => {
            return rpc(
                res,
                framing,
                None,
                &json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("Method not found: {other}")}}),
                cut,
            )
        }
    };
    rpc(
        res,
        framing,
        None,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        cut,
    )
}

/// A `GET` resuming a cut stream: the parked response after `Last-Event-ID`, then the end.
fn resume(req: &SimRequest, res: &mut Responder, state: &Mutex<State>) -> io::Result<()> {
    let plain = [("Content-Type", "text/plain")];
    if !req
        .header("Accept")
        .unwrap_or("")
        .contains("text/event-stream")
    {
        return res.send(406, &plain, b"Accept must list text/event-stream");
    }
    let parked = {
        let mut state = lock(state);
        match req.header("Mcp-Session-Id") {
            None => return res.send(400, &plain, b"Bad Request: Missing session ID"),
            Some(session) if !state.sessions.contains(session) => {
                return res.send(404, &plain, b"Session not found")
            }
            Some(_) => {}
        }
        let Some(last) = req.header("Last-Event-ID") else {
            // No standalone stream for server-initiated messages here.
            return res.send(405, &plain, b"Method not allowed");
        };
        let Some((message, cut_at)) = state.parked.remove(last) else {
            return res.send(400, &plain, b"Bad Request: unknown Last-Event-ID");
        };
        state.resumed_after.push(cut_at.elapsed());
        (last.to_string(), message)
    };
    let (last, message) = parked;
    let next = last.replace("-0", "-1");
    res.start_stream(
        200,
        &[
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
        ],
    )?;
    res.chunk(format!("id: {next}\nevent: message\ndata: {message}\n\n").as_bytes())?;
    res.finish()
}

/// What the simulated CoTrackPro tools answer.
fn call_tool(name: &str, arguments: &Value) -> Value {
    let text = |t: String| json!({"content": [{"type": "text", "text": t}], "isError": false});
    let arg = |key: &str| arguments[key].as_str().unwrap_or("").to_string();
    match name {
        "start_session" => text(format!(
            "sessionId: sim-1. Role {} — routed to documentation support.",
            arg("role")
        )),
        "check_safety" => {
            let context = arg("context").to_lowercase();
            let tier = if ["gun", "weapon", "knife", "kill", "hurt me"]
                .iter()
                .any(|w| context.contains(w))
            {
                "Tier 1: possible immediate danger. Ask if anyone is in danger right now; if so, urge calling 911."
            } else if ["suicid", "self-harm", "hit", "abuse"]
                .iter()
                .any(|w| context.contains(w))
            {
                "Tier 2: active crisis. Offer 988 and the Crisis Text Line (text HOME to 741741)."
            } else {
                "Tier 3: distress. Validate, ground, and offer control."
            };
            text(tier.to_string())
        }
        "rewrite_message" => text(format!(
            "Rewrite: \"{}\" — neutrality score 0.9.",
            arg("original_message").replace("you always", "sometimes")
        )),
        "generate_artifact" => text(format!(
            "Created a {} draft in session {}.",
            arg("artifact_type"),
            arg("sessionId")
        )),
        other => {
            json!({"content": [{"type": "text", "text": format!("Unknown tool: {other}")}], "isError": true})
        }
    }
}

fn rpc(
    res: &mut Responder,
    framing: Framing,
    session: Option<&str>,
    message: &Value,
    cut: Option<(u64, &Mutex<State>)>,
) -> io::Result<()> {
    let mut headers = vec![];
    if let Some(session) = session {
        headers.push(("Mcp-Session-Id", session));
    }
    match framing {
        Framing::Json => {
            headers.push(("Content-Type", "application/json"));
            res.send(200, &headers, message.to_string().as_bytes())
        }
        Framing::Sse => {
            headers.push(("Content-Type", "text/event-stream"));
            headers.push(("Cache-Control", "no-cache"));
            res.start_stream(200, &headers)?;
            if let Some((retry, state)) = cut {
                // Prime, then end the connection; the response waits for the client's GET.
                let event_id = {
                    let mut state = lock(state);
                    state.next_stream += 1;
                    let event_id = format!("stream{}-0", state.next_stream);
                    state
                        .parked
                        .insert(event_id.clone(), (message.clone(), Instant::now()));
                    event_id
                };
                res.chunk(format!("id: {event_id}\nretry: {retry}\ndata: \n\n").as_bytes())?;
                return res.finish();
            }
            res.chunk(format!("event: message\ndata: {message}\n\n").as_bytes())?;
            res.finish()
        }
    }
}
