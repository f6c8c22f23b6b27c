//! The CoTrackPro tools over MCP's Streamable HTTP transport (protocol revision 2025-11-25):
//! `initialize`, then `notifications/initialized`, the `Mcp-Session-Id` and
//! `MCP-Protocol-Version` headers on every later request, answers taken as JSON or as an SSE
//! stream, `tools/list` turned into Anthropic tool definitions, and `tools/call` with a timeout.
//!
//! A tool that fails — an error result, a JSON-RPC error, a timeout, a server that is down — is
//! a [`ToolOutcome`] with `is_error` and words the model can pass on calmly, never a panic and
//! never an error that ends the caller's turn. A 404 for a request carrying a session id means
//! the server forgot the session: the client initializes again, once, and retries.
//!
//! One session and one agent (one pool of connections) serve the whole server: calls use
//! [`McpClient::handle`]s of one client, each with its own [`RequestScope`] so that a call's
//! end cuts its own tool call in flight and no other; the server ends the session with
//! `DELETE` at shutdown.
//! `tools/list` is followed through `nextCursor`; tool names the model API would refuse are
//! mapped (and mapped back for `tools/call`); non-text results become words the model can read;
//! an SSE answer the server ends early is resumed with `GET` and `Last-Event-ID`. The facts
//! behind these are in PROTOCOLS.md (MCP).

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::Secret;
use crate::http_client::RequestScope;
use crate::providers::anthropic::ToolDefinition;
use crate::providers::sse::SseReader;

/// The protocol revision this client speaks (official servers accept it; see PROTOCOLS.md).
pub const PROTOCOL_VERSION: &str = "2025-11-25";

const MAX_BODY: u64 = 1 << 20;

/// `tools/list` pages followed at most (a server whose cursors never end cannot hold us).
pub const MAX_TOOL_PAGES: usize = 50;

/// Reconnections of one SSE response at most (the 2025-11-25 polling), whatever `retry` says.
const MAX_RESUMES: usize = 20;

/// The wait before reconnecting when the server sent no `retry`, and the longest we honour.
const DEFAULT_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);

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

impl McpError {
    /// The `kind` label of this failure in `/metrics`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            McpError::Http { .. } => "http",
            McpError::Transport(_) => "transport",
            McpError::Rpc { .. } => "rpc",
            McpError::Protocol(_) => "protocol",
        }
    }
}

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
    /// Which opening this is, so a 404 seen by several users at once clears it once.
    generation: u64,
}

/// What every handle of one client shares: the server, the session, the tool names.
struct Shared {
    url: String,
    token: Option<Secret>,
    timeout: Duration,
    /// Every handle's requests go through it (their scopes tell them apart).
    agent: ureq::Agent,
    session: Mutex<Option<Session>>,
    /// Held while a session is being opened, so that users arriving meanwhile wait for that
    /// one instead of opening their own (bounded by the opener's request timeout).
    opening: Mutex<()>,
    generations: AtomicU64,
    next_id: AtomicU64,
    /// The name the model knows a tool by → the server's name, from the last `tools/list`.
    names: RwLock<HashMap<String, String>>,
}

/// A client for one MCP server, safe to share between threads.
///
/// The session is the server's (one `initialize` for every user of the client and its
/// [`handle`](McpClient::handle)s), and so is the agent; each handle's requests are its own:
/// [`shutdown`](McpClient::shutdown) interrupts this handle's requests only, so a call that
/// ends cuts its own tool call in flight without touching the session other calls use.
pub struct McpClient {
    shared: Arc<Shared>,
    /// This handle's requests (what `shutdown` ends).
    scope: RequestScope,
    /// Set by `shutdown`; wakes a wait before an SSE reconnection.
    stopped: Arc<(Mutex<bool>, Condvar)>,
}

/// Idle connections kept to the MCP server between tool calls (of any call): tool calls are
/// rarer than turns, and an idle connection costs its buffers.
const IDLE_CONNECTIONS: usize = 16;

/// The request agent, with bounded name lookups (see `crate::resolve`).
fn agent(timeout: Duration) -> ureq::Agent {
    crate::resolve::provider_agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3).min(timeout)))
            .timeout_global(Some(timeout))
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl McpClient {
    /// `timeout` caps every request, a tool call included (with its SSE reconnections).
    pub fn new(url: &str, token: Option<Secret>, timeout: Duration) -> McpClient {
        McpClient {
            shared: Arc::new(Shared {
                url: url.to_string(),
                token,
                timeout,
                agent: agent(timeout),
                session: Mutex::new(None),
                opening: Mutex::new(()),
                generations: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                names: RwLock::new(HashMap::new()),
            }),
            scope: RequestScope::new(),
            stopped: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }

    /// Another user of the same session, tool names and agent with requests of its own: its
    /// [`shutdown`](McpClient::shutdown) ends its requests only. One per call.
    pub fn handle(&self) -> McpClient {
        McpClient {
            shared: self.shared.clone(),
            scope: RequestScope::new(),
            stopped: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }

    /// Interrupts every request of this handle now; later ones fail at once (the end of a
    /// call: a tool call in flight must not outlive it). The shared session stays open.
    pub fn shutdown(&self) {
        self.scope.shutdown();
        let (stopped, wake) = &*self.stopped;
        *lock(stopped) = true;
        wake.notify_all();
    }

    /// Ends the shared session with `DELETE` (the server's shutdown): the official server keeps
    /// a session until then. A later request would open a new one. Errors are logged only.
    pub fn end_session(&self) {
        let Some(session) = lock(&self.shared.session).take() else {
            return;
        };
        let Some(id) = &session.id else {
            return;
        };
        // Outside any handle's scope (this one may have been shut down), and short.
        let mut request = self
            .shared
            .agent
            .delete(&self.shared.url)
            .config()
            .timeout_global(Some(self.shared.timeout.min(Duration::from_secs(3))))
            .build()
            .header("Mcp-Session-Id", id)
            .header("MCP-Protocol-Version", &session.protocol);
        if let Some(token) = &self.shared.token {
            request = request.header("Authorization", &format!("Bearer {}", token.expose()));
        }
        match request.call() {
            Ok(response) => {
                let status = response.status().as_u16();
                // 405: the server does not let clients end sessions; nothing more to do.
                log::info!(url = self.shared.url.as_str(), status = status; "mcp.session.ended");
            }
            Err(err) => log::warn!(error:% = err; "mcp.session.end_failed"),
        }
    }

    /// Opens a new session (done for you by the other calls when needed).
    pub fn initialize(&self) -> Result<(), McpError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
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
            generation: self.shared.generations.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(&notification, Some(&session))?;
        log::info!(
            url = self.shared.url.as_str(),
            protocol = session.protocol.as_str(),
            server = result["serverInfo"]["name"].as_str().unwrap_or("?");
            "mcp.session.started"
        );
        *lock(&self.shared.session) = Some(session);
        Ok(())
    }

    /// The server's tools, as the model is offered them: every page of `tools/list` (at most
    /// [`MAX_TOOL_PAGES`]), each name made one Anthropic accepts ([`model_tool_names`]). Later
    /// [`call_tool`](McpClient::call_tool)s take the model's names.
    pub fn list_tools(&self) -> Result<Vec<ToolDefinition>, McpError> {
        let mut listed: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let params = match &cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            let result = self.request("tools/list", params)?;
            pages += 1;
            let tools = result["tools"]
                .as_array()
                .ok_or_else(|| McpError::Protocol("tools/list without tools".into()))?;
            listed.extend(tools.iter().cloned());
            cursor = result["nextCursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
            if pages >= MAX_TOOL_PAGES {
                log::warn!(pages = pages, tools = listed.len(); "mcp.tools.too_many_pages: keeping the tools listed so far");
                break;
            }
        }
        let listed: Vec<(String, &Value)> = listed
            .iter()
            .filter_map(|tool| Some((tool["name"].as_str()?.to_string(), tool)))
            .collect();
        let names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
        let model_names = model_tool_names(&names);
        let mut map = HashMap::new();
        let mut tools = Vec::new();
        for ((name, tool), model_name) in listed.iter().zip(model_names) {
            let Some(model_name) = model_name else {
                continue;
            };
            map.insert(model_name.clone(), name.clone());
            tools.push(ToolDefinition {
                name: model_name,
                description: tool["description"].as_str().unwrap_or("").to_string(),
                input_schema: tool
                    .get("inputSchema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            });
        }
        *self.shared.names.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(tools)
    }

    /// Calls a tool by the name the model knows it by. Never fails: a failure is an outcome
    /// with `is_error` the model can use.
    pub fn call_tool(&self, name: &str, arguments: &Value) -> ToolOutcome {
        let server_name = self
            .shared
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string());
        match self.request(
            "tools/call",
            json!({"name": server_name, "arguments": arguments}),
        ) {
            Ok(result) => {
                let text = result_text(&result);
                let is_error = result["isError"].as_bool().unwrap_or(false);
                let text = match (text.trim().is_empty(), is_error) {
                    (false, _) => text,
                    (true, false) => "Tool completed successfully.".to_string(),
                    (true, true) => "The tool reported an error without details.".to_string(),
                };
                ToolOutcome { text, is_error }
            }
            Err(err) => {
                crate::metrics::EVENTS.provider_error("mcp", err.metric_kind());
                log::warn!(tool = server_name.as_str(), error:% = err; "mcp.tool.failed");
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

    /// Sends a request in the shared session (opening one if there is none), re-initializing
    /// once if the server has forgotten the session.
    fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        for attempt in 0..2 {
            let session = self.session()?;
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            match self.post(&message, Some(&session)) {
                Err(McpError::Http { status: 404, .. }) if session.id.is_some() && attempt == 0 => {
                    crate::metrics::EVENTS.provider_retry("mcp", "session_expired");
                    log::info!(url = self.shared.url.as_str(); "mcp session expired; initializing again");
                    let mut current = lock(&self.shared.session);
                    // Only the session that failed: another user may have opened a new one.
                    if current
                        .as_ref()
                        .is_some_and(|s| s.generation == session.generation)
                    {
                        *current = None;
                    }
                }
                Err(err) => return Err(err),
                Ok(answer) => return rpc_result(answer.message, id),
            }
        }
        Err(McpError::Protocol(
            "the server keeps forgetting the session".into(),
        ))
    }

    /// The shared session, opened by this user if there is none (one opening at a time).
    fn session(&self) -> Result<Session, McpError> {
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        let _opening = lock(&self.shared.opening);
        if let Some(session) = self.current_session() {
            return Ok(session);
        }
        self.initialize()?;
        self.current_session()
            .ok_or_else(|| McpError::Protocol("no session after initialize".into()))
    }

    fn current_session(&self) -> Option<Session> {
        lock(&self.shared.session).clone()
    }

    fn with_auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.shared.token {
            Some(token) => request.header("Authorization", &format!("Bearer {}", token.expose())),
            None => request,
        }
    }

    /// POSTs one JSON-RPC message; returns the response message for a request (JSON or SSE,
    /// an SSE stream the server ends early resumed with `GET`), nothing for a notification,
    /// and the session id the server set.
    fn post(&self, message: &Value, session: Option<&Session>) -> Result<Answer, McpError> {
        let deadline = Instant::now() + self.shared.timeout;
        // This thread's requests are this handle's until the answer is read (resumptions too).
        let _scope = self.scope.enter();
        let mut request = self
            .shared
            .agent
            .post(&self.shared.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        request = self.with_auth(request);
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
        let session_id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (content_type, reader) = checked(response)?;
        let Some(wanted) = message.get("id").cloned() else {
            return Ok(Answer {
                message: Value::Null,
                session_id,
            });
        };
        let message = if content_type.starts_with("text/event-stream") {
            let mut cursor = StreamCursor::default();
            let found = read_sse(reader, &wanted, &mut cursor)?;
            match found {
                Some(found) => found,
                None => {
                    // `initialize` has no session yet: its own, if the server set one.
                    let resume_session = match session {
                        Some(session) => session.clone(),
                        None => Session {
                            id: session_id.clone(),
                            protocol: PROTOCOL_VERSION.to_string(),
                            generation: 0,
                        },
                    };
                    self.resume(&wanted, &resume_session, cursor, deadline)?
                }
            }
        } else {
            let mut text = String::new();
            BufReader::new(reader)
                .read_to_string(&mut text)
                .map_err(|e| McpError::Transport(e.to_string()))?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| McpError::Protocol(e.to_string()))?;
            let found = match value {
                Value::Array(batch) => batch.into_iter().find(|m| is_response_to(m, &wanted)),
                single => Some(single),
            };
            found.ok_or_else(|| McpError::Protocol("no response to our request".into()))?
        };
        Ok(Answer {
            message,
            session_id,
        })
    }

    /// The server ended a request's SSE stream before its response (2025-11-25: after an event
    /// with an id it may close the connection and expect the client to poll): reconnect with
    /// `GET` and `Last-Event-ID`, waiting `retry` first (bounded), until the response arrives,
    /// the deadline passes or [`MAX_RESUMES`] reconnections were made.
    fn resume(
        &self,
        wanted: &Value,
        session: &Session,
        mut cursor: StreamCursor,
        deadline: Instant,
    ) -> Result<Value, McpError> {
        for _ in 0..MAX_RESUMES {
            let Some(last_id) = cursor.last_event_id.clone() else {
                let why = cursor.broken.take().unwrap_or_else(|| {
                    "the event stream ended without a response and cannot be resumed (no event id)"
                        .into()
                });
                return Err(McpError::Transport(why));
            };
            let wait = cursor.retry.unwrap_or(DEFAULT_RETRY).min(MAX_RETRY);
            if Instant::now() + wait >= deadline {
                return Err(McpError::Transport(
                    "timed out waiting for the response on a resumed event stream".into(),
                ));
            }
            if self.stopped_during(wait) {
                return Err(McpError::Transport("the client was shut down".into()));
            }
            log::debug!(lastEventId = last_id.as_str(), waitedMs = wait.as_millis() as u64; "mcp.sse.resume");
            let mut request = self
                .shared
                .agent
                .get(&self.shared.url)
                .header("Accept", "text/event-stream")
                .header("Last-Event-ID", &last_id)
                .header("MCP-Protocol-Version", &session.protocol);
            if let Some(id) = &session.id {
                request = request.header("Mcp-Session-Id", id);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let response = self
                .with_auth(request)
                .config()
                .timeout_global(Some(remaining))
                .build()
                .call()
                .map_err(|e| McpError::Transport(e.to_string()))?;
            let (content_type, reader) = checked(response)?;
            if !content_type.starts_with("text/event-stream") {
                return Err(McpError::Protocol(format!(
                    "a resumed stream answered {content_type}"
                )));
            }
            cursor.broken = None;
            if let Some(found) = read_sse(reader, wanted, &mut cursor)? {
                return Ok(found);
            }
        }
        Err(McpError::Transport(format!(
            "no response after {MAX_RESUMES} reconnections of the event stream"
        )))
    }

    /// Waits `wait`, or less if this handle is shut down meanwhile (then true).
    fn stopped_during(&self, wait: Duration) -> bool {
        let (stopped, wake) = &*self.stopped;
        let guard = lock(stopped);
        let (guard, _) = wake
            .wait_timeout_while(guard, wait, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// Where a request's event stream stands, for a reconnection.
#[derive(Default)]
struct StreamCursor {
    last_event_id: Option<String>,
    retry: Option<Duration>,
    /// The stream broke (rather than ended): why.
    broken: Option<String>,
}

/// The body of a 2xx answer and its content type; an HTTP error otherwise.
fn checked(response: ureq::http::Response<ureq::Body>) -> Result<(String, impl Read), McpError> {
    let status = response.status().as_u16();
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
    Ok((content_type, reader))
}

/// Reads an event stream until the response to `wanted` (returned) or the stream's end or
/// break (`None`; the cursor says where it stood). Server requests and notifications on the
/// stream are skipped; a priming event (an id, empty data) only moves the cursor.
fn read_sse(
    reader: impl Read,
    wanted: &Value,
    cursor: &mut StreamCursor,
) -> Result<Option<Value>, McpError> {
    let mut events = SseReader::new(BufReader::new(reader), MAX_BODY as usize);
    let mut found = None;
    loop {
        match events.next_event() {
            Ok(Some(event)) => {
                if let Ok(value) = serde_json::from_str::<Value>(&event.data) {
                    if is_response_to(&value, wanted) {
                        found = Some(value);
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(err) => {
                // A disconnection is not a cancellation: resumable if we have an id.
                cursor.broken = Some(err.to_string());
                break;
            }
        }
    }
    if let Some(id) = events.last_event_id() {
        cursor.last_event_id = Some(id.to_string());
    }
    if let Some(ms) = events.retry_ms() {
        cursor.retry = Some(Duration::from_millis(ms));
    }
    Ok(found)
}

/// A JSON-RPC response (not a server request that happens to use the same id).
fn is_response_to(message: &Value, id: &Value) -> bool {
    message.get("id") == Some(id) && message.get("method").is_none()
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

/// Whether Anthropic accepts `name` as a tool name: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn is_model_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The names the model is offered for the server's tool names, in order: a valid name is kept;
/// another has each disallowed character replaced by `_`, is cut to 64 characters and, if that
/// name is taken, gets a `_2`, `_3`… suffix. A tool whose valid name was already listed is
/// skipped (`None`). Every change is logged with the tool's name.
pub fn model_tool_names(names: &[&str]) -> Vec<Option<String>> {
    let mut taken: HashSet<String> = HashSet::new();
    let mut out: Vec<Option<String>> = names
        .iter()
        .map(|name| {
            if !is_model_tool_name(name) {
                return None;
            }
            if taken.insert(name.to_string()) {
                Some(name.to_string())
            } else {
                log::warn!(tool = *name; "mcp.tool.skipped: listed twice");
                None
            }
        })
        .collect();
    for (name, slot) in names.iter().zip(out.iter_mut()) {
        if is_model_tool_name(name) {
            continue;
        }
        let mut base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        base.truncate(64);
        if base.is_empty() {
            base = "tool".to_string();
        }
        let mut candidate = base.clone();
        let mut n = 2;
        while taken.contains(&candidate) {
            let suffix = format!("_{n}");
            let mut cut = base.clone();
            cut.truncate(64 - suffix.len());
            candidate = cut + &suffix;
            n += 1;
        }
        log::warn!(tool = *name, modelName = candidate.as_str(); "mcp.tool.renamed: Anthropic accepts only ^[a-zA-Z0-9_-]{{1,64}}$");
        taken.insert(candidate.clone());
        *slot = Some(candidate);
    }
    out
}

/// A tool result as text the model can read: text blocks as they are, an embedded resource's
/// text, images, audio and binary resources named with their type and size, resource links
/// with their URI, and `structuredContent` as JSON unless a text block already carries it
/// (itself, or the value the official SDK wraps as `{"result": value}`).
pub fn result_text(result: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut carried: Vec<Value> = Vec::new();
    for block in result["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let kind = block["type"].as_str().unwrap_or("unknown");
        let mime = |b: &Value| b["mimeType"].as_str().unwrap_or("unknown type").to_string();
        match kind {
            "text" => {
                let text = block["text"].as_str().unwrap_or("");
                if let Ok(value) = serde_json::from_str::<Value>(text) {
                    carried.push(value);
                }
                carried.push(Value::String(text.to_string()));
                parts.push(text.to_string());
            }
            "image" | "audio" => parts.push(format!(
                "[{kind}: {}, {}]",
                mime(block),
                size_of_base64(block["data"].as_str().unwrap_or(""))
            )),
            "resource" => {
                let resource = &block["resource"];
                let uri = resource["uri"].as_str().unwrap_or("?");
                match (resource["text"].as_str(), resource["blob"].as_str()) {
                    (Some(text), _) => parts.push(format!("[resource {uri}]\n{text}")),
                    (None, Some(blob)) => parts.push(format!(
                        "[resource {uri}: {}, {}]",
                        mime(resource),
                        size_of_base64(blob)
                    )),
                    (None, None) => parts.push(format!("[resource {uri}]")),
                }
            }
            "resource_link" => parts.push(format!(
                "[resource link: {} {}]",
                block["name"].as_str().unwrap_or(""),
                block["uri"].as_str().unwrap_or("?")
            )),
            other => {
                log::warn!(kind = other; "mcp.tool.unknown_content");
                parts.push(format!("[{other} content]"));
            }
        }
    }
    if let Some(structured) = result.get("structuredContent").filter(|v| !v.is_null()) {
        // The official Python SDK wraps a plain return value as `{"result": value}` next to
        // the same value as text: said once is enough.
        let wrapped = structured
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("result"));
        let said = carried.contains(structured) || wrapped.is_some_and(|v| carried.contains(v));
        if !said {
            parts.push(structured.to_string());
        }
    }
    parts.retain(|p| !p.is_empty());
    parts.join("\n")
}

/// "12 KB" or "300 bytes": the decoded size of base64 text.
fn size_of_base64(data: &str) -> String {
    let trimmed = data.trim_end_matches('=');
    let bytes = trimmed.len() * 3 / 4;
    if bytes >= 1024 {
        format!("{} KB", (bytes + 512) / 1024)
    } else {
        format!("{bytes} bytes")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_made_ones_anthropic_accepts() {
        let long_dotted = format!("{}.z", "a".repeat(70));
        let names = [
            "check_safety",
            "docs.search",
            "docs_search",
            "docs.search",
            "check_safety",
            long_dotted.as_str(),
            &"a".repeat(64),
            "",
            "née",
        ];
        let mapped = model_tool_names(&names);
        let sixty_three = "a".repeat(62);
        assert_eq!(
            mapped,
            [
                Some("check_safety".to_string()),
                Some("docs_search_2".to_string()),
                Some("docs_search".to_string()),
                Some("docs_search_3".to_string()),
                None, // a valid name listed twice
                Some(format!("{sixty_three}_2")),
                Some("a".repeat(64)),
                Some("tool".to_string()),
                Some("n_e".to_string()),
            ]
        );
        for name in mapped.iter().flatten() {
            assert!(is_model_tool_name(name), "{name}");
        }
        assert!(!is_model_tool_name(&"a".repeat(65)));
        assert!(!is_model_tool_name("a b"));
        assert!(is_model_tool_name("A-z_09"));
    }

    #[test]
    fn sizes_are_named_from_base64() {
        assert_eq!(size_of_base64(""), "0 bytes");
        assert_eq!(size_of_base64("AAA="), "2 bytes");
        assert_eq!(size_of_base64(&"A".repeat(1368)), "1 KB");
        assert_eq!(size_of_base64(&"A".repeat(1364)), "1023 bytes");
        assert_eq!(size_of_base64(&"A".repeat(2048)), "2 KB");
    }

    #[test]
    fn an_empty_or_unknown_result_is_still_words() {
        assert_eq!(result_text(&json!({})), "");
        assert_eq!(
            result_text(&json!({"content": [{"type": "hologram"}]})),
            "[hologram content]"
        );
    }
}
