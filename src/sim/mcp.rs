//! A simulated CoTrackPro MCP server on Streamable HTTP (`POST /mcp`): sessions, the four
//! CoTrackPro tools, answers as SSE (what the official server does by default) or as JSON. It
//! checks what a real server checks — the `Accept` header (406), a session id on every request
//! after `initialize` (400 missing, 404 unknown), the protocol-version header — and can be made
//! slow or forgetful to exercise the client's timeouts and re-initialization.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{Responder, SimRequest, SimServer};
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
}

pub struct McpSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl McpSim {
    pub fn start(framing: Framing) -> io::Result<McpSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let server = SimServer::start("sim-mcp", move |req, res| {
            handle(req, res, &shared, framing)
        })?;
        Ok(McpSim { server, state })
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

    /// Sessions opened so far.
    pub fn sessions_opened(&self) -> u64 {
        lock(&self.state).next_session
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
    if req.method != "POST" {
        return res.send(405, &plain, b"POST only");
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
    let delay = lock(state).delay;
    let result = match method {
        "tools/list" => {
            std::thread::sleep(delay);
            let tools: Vec<Value> = default_tools()
                .into_iter()
                .map(|t| json!({"name": t.name, "description": t.description, "inputSchema": t.input_schema}))
                .collect();
            json!({"tools": tools})
        }
        "tools/call" => {
            let name = message["params"]["name"].as_str().unwrap_or("").to_string();
            let arguments = message["params"]["arguments"].clone();
            lock(state).calls.push((name.clone(), arguments.clone()));
            std::thread::sleep(delay);
            call_tool(&name, &arguments)
        }
        "ping" => json!({}),
        other => {
            return rpc(
                res,
                framing,
                None,
                &json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("Method not found: {other}")}}),
            )
        }
    };
    rpc(
        res,
        framing,
        None,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    )
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
            res.chunk(format!("event: message\ndata: {message}\n\n").as_bytes())?;
            res.finish()
        }
    }
}
