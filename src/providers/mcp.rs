//! The CoTrackPro tools over MCP's Streamable HTTP transport (protocol revision 2025-11-25):
//! `initialize`, then `notifications/initialized`, the `Mcp-Session-Id` and
//! `MCP-Protocol-Version` headers on every later request, answers taken as JSON or as an SSE
//! stream, `tools/list` turned into Anthropic tool definitions, and `tools/call` with a timeout.
//!
//! A tool that fails — an error result, a JSON-RPC error, a timeout, a server that is down — is
//! a [`ToolOutcome`] with `is_error` and words the model can pass on calmly, never a panic and
//! never an error that ends the caller's turn. A 404 for a request carrying a session id means
//! the server forgot the session: the client initializes again, once, and retries.

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Secret;
use crate::providers::anthropic::ToolDefinition;
use crate::providers::sse::SseReader;

/// The protocol revision this client speaks (official servers accept it; see PROTOCOLS.md).
pub const PROTOCOL_VERSION: &str = "2025-11-25";

const MAX_BODY: u64 = 1 << 20;

/// Why an MCP request failed (tool calls turn these into [`ToolOutcome`]s).
#[derive(Debug, Clone, PartialEq)]
pub enum McpError {
    /// The server answered with an HTTP error.
    Http { status: u16, body: String },
    /// The server could not be reached, or took longer than the tool timeout.
    Transport(String),
    /// A JSON-RPC error response.
    Rpc { code: i64, message: String },
    /// An answer that is not MCP.
    Protocol(String),
}

impl std::fmt::Display for McpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            McpError::Http { status, body } => write!(f, "mcp server answered {status}: {body}"),
            McpError::Transport(what) => write!(f, "cannot reach the mcp server: {what}"),
            McpError::Rpc { code, message } => write!(f, "mcp error {code}: {message}"),
            McpError::Protocol(what) => write!(f, "mcp answer not understood: {what}"),
        }
    }
}

impl std::error::Error for McpError {}

/// What a tool call gave back, for the model's `tool_result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    pub text: String,
    pub is_error: bool,
}

#[derive(Clone, Debug)]
struct Session {
    id: Option<String>,
    protocol: String,
}

/// A client for one MCP server. Safe to share between threads.
pub struct McpClient {
    agent: ureq::Agent,
    url: String,
    token: Option<Secret>,
    session: Mutex<Option<Session>>,
    next_id: AtomicU64,
}

impl McpClient {
    /// `timeout` caps every request, a tool call included.
    pub fn new(url: &str, token: Option<Secret>, timeout: Duration) -> McpClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3).min(timeout)))
            .timeout_global(Some(timeout))
            .build()
            .into();
        let agent = crate::resolve::bounded(&agent);
        McpClient {
            agent,
            url: url.to_string(),
            token,
            session: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// Interrupts every request of this client now; later ones fail at once (the end of a
    /// call: a tool call in flight must not outlive it).
    pub fn shutdown(&self) {
        self.agent.clone().shutdown();
    }

    /// Opens a session (done for you by the other calls when needed).
    pub fn initialize(&self) -> Result<(), McpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "cotrackpro-voice", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let answer = self.post(&message, None)?;
        let result = rpc_result(answer.message, id)?;
        let protocol = result["protocolVersion"]
            .as_str()
            .unwrap_or(PROTOCOL_VERSION)
            .to_string();
        let session = Session {
            id: answer.session_id,
            protocol,
        };
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(&notification, Some(&session))?;
        log::info!(
            url = self.url.as_str(),
            protocol = session.protocol.as_str(),
            server = result["serverInfo"]["name"].as_str().unwrap_or("?");
            "mcp.session.started"
        );
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(session);
        Ok(())
    }

    /// The server's tools, as the model is offered them.
    pub fn list_tools(&self) -> Result<Vec<ToolDefinition>, McpError> {
        let result = self.request("tools/list", json!({}))?;
        let tools = result["tools"]
            .as_array()
            .ok_or_else(|| McpError::Protocol("tools/list without tools".into()))?;
        Ok(tools
            .iter()
            .filter_map(|tool| {
                Some(ToolDefinition {
                    name: tool["name"].as_str()?.to_string(),
                    description: tool["description"].as_str().unwrap_or("").to_string(),
                    input_schema: tool
                        .get("inputSchema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect())
    }

    /// Calls a tool. Never fails: a failure is an outcome with `is_error` the model can use.
    pub fn call_tool(&self, name: &str, arguments: &Value) -> ToolOutcome {
        match self.request("tools/call", json!({"name": name, "arguments": arguments})) {
            Ok(result) => {
                let text = result["content"]
                    .as_array()
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter(|b| b["type"] == "text")
                            .filter_map(|b| b["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                let is_error = result["isError"].as_bool().unwrap_or(false);
                let text = match (text.trim().is_empty(), is_error) {
                    (false, _) => text,
                    (true, false) => "Tool completed successfully.".to_string(),
                    (true, true) => "The tool reported an error without details.".to_string(),
                };
                ToolOutcome { text, is_error }
            }
            Err(err) => {
                log::warn!(tool = name, error:% = err; "mcp.tool.failed");
                ToolOutcome {
                    text: match err {
                        McpError::Transport(_) => "The documentation system is not answering right now. Nothing the caller said was lost. Reassure them and offer to continue, or to try again in a moment.".to_string(),
                        other => format!("The tool could not complete ({other}). Nothing the caller said was lost. Reassure them and offer to continue."),
                    },
                    is_error: true,
                }
            }
        }
    }

    /// Sends a request in the current session (opening one if needed), re-initializing once
    /// if the server has forgotten the session.
    fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        for attempt in 0..2 {
            let session = match self.current_session() {
                Some(session) => session,
                None => {
                    self.initialize()?;
                    self.current_session()
                        .ok_or_else(|| McpError::Protocol("no session after initialize".into()))?
                }
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            match self.post(&message, Some(&session)) {
                Err(McpError::Http { status: 404, .. }) if session.id.is_some() && attempt == 0 => {
                    log::info!(url = self.url.as_str(); "mcp session expired; initializing again");
                    *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(err) => return Err(err),
                Ok(answer) => return rpc_result(answer.message, id),
            }
        }
        Err(McpError::Protocol(
            "the server keeps forgetting the session".into(),
        ))
    }

    fn current_session(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// POSTs one JSON-RPC message; returns the response message for a request (JSON or SSE),
    /// nothing for a notification, and the session id the server set.
    fn post(&self, message: &Value, session: Option<&Session>) -> Result<Answer, McpError> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {}", token.expose()));
        }
        if let Some(session) = session {
            if let Some(id) = &session.id {
                request = request.header("Mcp-Session-Id", id);
            }
            request = request.header("MCP-Protocol-Version", &session.protocol);
        }
        let body = serde_json::to_vec(message).map_err(|e| McpError::Protocol(e.to_string()))?;
        let response = request
            .send(&body[..])
            .map_err(|e| McpError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let session_id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let reader = response.into_body().into_reader().take(MAX_BODY);
        if !(200..300).contains(&status) {
            let mut text = String::new();
            let _ = BufReader::new(reader).read_to_string(&mut text);
            return Err(McpError::Http {
                status,
                body: text.chars().take(300).collect(),
            });
        }
        let wanted = message.get("id").cloned();
        let Some(wanted) = wanted else {
            return Ok(Answer {
                message: Value::Null,
                session_id,
            });
        };
        let found = if content_type.starts_with("text/event-stream") {
            let mut events = SseReader::new(BufReader::new(reader), MAX_BODY as usize);
            let mut found = None;
            while let Some(event) = events
                .next_event()
                .map_err(|e| McpError::Transport(e.to_string()))?
            {
                if let Ok(value) = serde_json::from_str::<Value>(&event.data) {
                    if value.get("id") == Some(&wanted) {
                        found = Some(value);
                        break;
                    }
                }
            }
            found
        } else {
            let mut text = String::new();
            BufReader::new(reader)
                .read_to_string(&mut text)
                .map_err(|e| McpError::Transport(e.to_string()))?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| McpError::Protocol(e.to_string()))?;
            match value {
                Value::Array(batch) => batch.into_iter().find(|m| m.get("id") == Some(&wanted)),
                single => Some(single),
            }
        };
        let message =
            found.ok_or_else(|| McpError::Protocol("no response to our request".into()))?;
        Ok(Answer {
            message,
            session_id,
        })
    }
}

struct Answer {
    message: Value,
    session_id: Option<String>,
}

fn rpc_result(message: Value, id: u64) -> Result<Value, McpError> {
    if message["id"] != json!(id) {
        return Err(McpError::Protocol(format!(
            "answer to another request: {message}"
        )));
    }
    if let Some(error) = message.get("error") {
        return Err(McpError::Rpc {
            code: error["code"].as_i64().unwrap_or(0),
            message: error["message"].as_str().unwrap_or("").to_string(),
        });
    }
    message
        .get("result")
        .cloned()
        .ok_or_else(|| McpError::Protocol("response without result".into()))
}

/// The four CoTrackPro tools (the original's `COTRACKPRO_TOOLS`), offered to the model from the
/// first turn; refreshed from the server's `tools/list` when it answers, so a slow or absent
/// MCP server never delays a call.
pub fn default_tools() -> Vec<ToolDefinition> {
    let tool = |name: &str, description: &str, schema: Value| ToolDefinition {
        name: name.to_string(),
        description: description.to_string(),
        input_schema: schema,
    };
    vec![
        tool(
            "start_session",
            "Start a CoTrackPro session for the caller's role and what brought them here; returns a session id and routing.",
            json!({"type": "object", "properties": {
                "role": {"type": "string", "description": "The caller's CoTrackPro role, e.g. parent, attorney, gal, judge, therapist, kid_teen"},
                "trigger": {"type": "string", "description": "What the caller needs, in a few words"}},
                "required": ["role", "trigger"]}),
        ),
        tool(
            "check_safety",
            "Safety triage. Use whenever harm, danger, abuse, weapons or an emergency is mentioned.",
            json!({"type": "object", "properties": {
                "sessionId": {"type": "string"},
                "context": {"type": "string", "description": "What was said that raises the concern"}},
                "required": ["sessionId", "context"]}),
        ),
        tool(
            "rewrite_message",
            "Rewrite a co-parenting message to be calm and neutral; returns the rewrite and a neutrality score.",
            json!({"type": "object", "properties": {
                "sessionId": {"type": "string"},
                "original_message": {"type": "string"}},
                "required": ["sessionId", "original_message"]}),
        ),
        tool(
            "generate_artifact",
            "Create a role-appropriate document: an incident log, a safety plan, a timeline.",
            json!({"type": "object", "properties": {
                "sessionId": {"type": "string"},
                "artifact_type": {"type": "string", "description": "incident_log, safety_plan, timeline, …"},
                "data": {"type": "object"}},
                "required": ["sessionId", "artifact_type"]}),
        ),
    ]
}

/// The tools offered to the model: the built-in definitions at once, replaced by the server's
/// `tools/list` when a background refresh succeeds. Reading it never waits on the network.
pub struct ToolCatalog {
    tools: RwLock<Arc<Vec<ToolDefinition>>>,
    refreshed: AtomicBool,
}

impl ToolCatalog {
    pub fn new(initial: Vec<ToolDefinition>) -> Arc<ToolCatalog> {
        Arc::new(ToolCatalog {
            tools: std::sync::RwLock::new(Arc::new(initial)),
            refreshed: AtomicBool::new(false),
        })
    }

    /// The current tools (a cheap shared copy).
    pub fn current(&self) -> Arc<Vec<ToolDefinition>> {
        self.tools.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a refresh from the server has succeeded.
    pub fn is_refreshed(&self) -> bool {
        self.refreshed.load(Ordering::SeqCst)
    }

    /// Asks `client` for its tools on a named background thread; on success (and a non-empty
    /// list) they replace the current ones. A failure is logged and the built-ins stay.
    pub fn refresh_in_background(
        catalog: &Arc<ToolCatalog>,
        client: Arc<McpClient>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let catalog = catalog.clone();
        std::thread::Builder::new()
            .name("mcp-tools-refresh".into())
            // TLS (rustls) runs on this thread: a generous stack, as for the call workers.
            .stack_size(1024 * 1024)
            .spawn(move || match client.list_tools() {
                Ok(tools) if !tools.is_empty() => {
                    log::info!(count = tools.len(); "mcp.tools.refreshed");
                    *catalog.tools.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tools);
                    catalog.refreshed.store(true, Ordering::SeqCst);
                }
                Ok(_) => log::warn!("mcp server lists no tools; keeping the built-in ones"),
                Err(err) => {
                    log::warn!(error:% = err; "mcp.tools.refresh_failed; keeping the built-in ones")
                }
            })
    }
}
