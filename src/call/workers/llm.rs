//! The model worker: one reply per job, streamed, with its rounds of tool calls.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;

use super::{call_tools, LlmJob, LlmOut};
use crate::call::Event;
use crate::providers::anthropic::client::AnthropicClient;
use crate::providers::anthropic::request::{self, RequestParts};
use crate::providers::anthropic::stream::{StreamItem, Usage};
use crate::providers::anthropic::{Block, Speaker, Turn};
use crate::providers::mcp::{McpClient, ToolCatalog};

/// What the model worker needs, shared by every call.
pub struct LlmSetup {
    pub anthropic: crate::config::AnthropicConfig,
    /// The server's client: one agent and connection pool for every call's requests.
    pub client: AnthropicClient,
    pub max_tool_rounds: u32,
    pub tools: Arc<ToolCatalog>,
    /// The server's MCP client (`COTRACKPRO_MCP_URL`): one session for every call.
    pub mcp: Option<Arc<McpClient>>,
}

/// One call's handles of the server's clients: the agents and the MCP session are shared, the
/// requests are the call's ([`CallLlm::shutdown`] interrupts the call's read in flight, and
/// only it, so the worker never outlives the call by a timeout).
#[derive(Clone)]
pub struct CallLlm {
    pub client: AnthropicClient,
    pub mcp: Option<Arc<McpClient>>,
}

impl CallLlm {
    pub fn new(setup: &LlmSetup) -> CallLlm {
        CallLlm {
            client: setup.client.handle(),
            mcp: setup.mcp.as_ref().map(|mcp| Arc::new(mcp.handle())),
        }
    }

    pub fn shutdown(&self) {
        self.client.shutdown();
        if let Some(mcp) = &self.mcp {
            mcp.shutdown();
        }
    }
}

/// The model for one call: one response per job, with up to `max_tool_rounds` rounds of tool
/// calls; text is streamed to the call as it arrives.
///
/// Besides the MCP catalog's tools the model is offered the call's own ([`call_tools`]):
/// `end_call`, and `transfer_call` when `transfer_offered`. Their `tool_use` is answered here
/// with a `tool_result` (so the history stays valid: every `tool_use` has its result), the
/// machine is told ([`LlmOut::EndCall`], [`LlmOut::Transfer`]), and no further model round
/// follows: the model says its goodbye or its one sentence before calling them, and what
/// comes next is the machine's (the call ends, or the transfer phrase plays). Without another
/// round the history ends on the user's `tool_result`; the request builder merges it with the
/// caller's next words should the call go on (a failed transfer).
pub fn llm(
    setup: &LlmSetup,
    clients: &CallLlm,
    system: &str,
    transfer_offered: bool,
    jobs: &Receiver<LlmJob>,
    out: &Sender<Event>,
) {
    let own_tools = call_tools::definitions(transfer_offered);
    for job in jobs.iter() {
        let send = |o: LlmOut| {
            out.send(Event::Llm {
                turn: job.turn,
                out: o,
            })
        };
        let mut conversation = job.history;
        let mut new_turns = Vec::new();
        let mut usage = Usage::default();
        let mut error = None;
        let mut round = 0;
        loop {
            if job.cancel.is_cancelled() {
                break;
            }
            // Only the bytes are kept while the answer streams: the JSON tree goes at once.
            let body = {
                let catalog = setup.tools.current();
                // The catalog's tools, less any that would shadow ours, then ours.
                let tools: Vec<_> = catalog
                    .iter()
                    .filter(|t| !call_tools::is_call_tool(&t.name))
                    .chain(own_tools.iter())
                    .cloned()
                    .collect();
                let mut body = request::build(&RequestParts {
                    model: &setup.anthropic.model,
                    max_tokens: setup.anthropic.max_tokens,
                    system,
                    tools: &tools,
                    history: &conversation,
                    max_history_messages: setup.anthropic.max_history_messages,
                });
                if round >= setup.max_tool_rounds && !tools.is_empty() {
                    // Tools stay defined (the history may hold tool blocks), but no more calls.
                    body["tool_choice"] = json!({"type": "none"});
                }
                serde_json::to_vec(&body)
            };
            let body = match body {
                Ok(bytes) => bytes,
                Err(err) => {
                    error = Some(crate::providers::anthropic::client::LlmError::Malformed(
                        err.to_string(),
                    ));
                    break;
                }
            };
            let mut gone = false;
            let result = clients.client.stream_json(&body, &job.cancel, |item| {
                if let StreamItem::Text(text) = item {
                    if send(LlmOut::Delta(text.clone())).is_err() {
                        gone = true;
                        job.cancel.cancel();
                    }
                }
            });
            if gone {
                return;
            }
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(err) => {
                    error = Some(err);
                    break;
                }
            };
            usage += outcome.usage;
            if outcome.cancelled {
                break;
            }
            let reply = Turn {
                speaker: Speaker::Assistant,
                blocks: outcome.content,
            };
            let uses: Vec<(String, String, serde_json::Value)> = reply
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => {
                        Some((id.clone(), name.clone(), input.clone()))
                    }
                    _ => None,
                })
                .collect();
            let wants_tools =
                outcome.stop_reason.as_deref() == Some("tool_use") && !uses.is_empty();
            let mut reply = reply;
            if !wants_tools {
                // A tool_use cut off by max_tokens would stay unanswered in the history and
                // make every later request a 400: keep only the words.
                reply.blocks.retain(|b| !matches!(b, Block::ToolUse { .. }));
            }
            if !reply.is_empty() {
                conversation.push(reply.clone());
                new_turns.push(reply);
            }
            if !wants_tools {
                break;
            }
            round += 1;
            let mcp_names: Vec<String> = uses
                .iter()
                .filter(|(_, name, _)| !own_tools.iter().any(|t| t.name == *name))
                .map(|(_, name, _)| name.clone())
                .collect();
            if !mcp_names.is_empty() {
                let _ = send(LlmOut::ToolsStarted(mcp_names));
            }
            let mut results = Vec::with_capacity(uses.len());
            // What the call's own tools tell the machine, after every result is in.
            let mut controls = Vec::new();
            for (id, name, input) in uses {
                // Only a tool this call offered is ours (`transfer_call` is not everywhere).
                let own = own_tools.iter().any(|t| t.name == name);
                if let Some((control, text)) = call_tools::answer(&name, &input).filter(|_| own) {
                    let _ = send(LlmOut::ToolFinished {
                        name: name.clone(),
                        ok: true,
                        duration_ms: 0,
                    });
                    if !controls.contains(&control) {
                        controls.push(control);
                    }
                    results.push(Block::ToolResult {
                        tool_use_id: id,
                        content: text.to_string(),
                        is_error: false,
                    });
                    continue;
                }
                let started = Instant::now();
                let outcome = match &clients.mcp {
                    Some(mcp) if !job.cancel.is_cancelled() => mcp.call_tool(&name, &input),
                    Some(_) => crate::providers::mcp::ToolOutcome {
                        text: "cancelled: the caller spoke".into(),
                        is_error: true,
                    },
                    None => crate::providers::mcp::ToolOutcome {
                        text: "the CoTrackPro tools are not configured on this server".into(),
                        is_error: true,
                    },
                };
                if outcome.is_error {
                    crate::metrics::EVENTS
                        .tool_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = send(LlmOut::ToolFinished {
                    name: name.clone(),
                    ok: !outcome.is_error,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
                results.push(Block::ToolResult {
                    tool_use_id: id,
                    content: outcome.text,
                    is_error: outcome.is_error,
                });
            }
            let answer = Turn {
                speaker: Speaker::User,
                blocks: results,
            };
            conversation.push(answer.clone());
            new_turns.push(answer);
            if !controls.is_empty() {
                for control in controls {
                    let _ = send(control);
                }
                break;
            }
        }
        if send(LlmOut::Done {
            new_turns,
            usage,
            error,
        })
        .is_err()
        {
            return;
        }
        // A request through the HTTP client (and a TLS handshake, now and then) went deep;
        // between turns the worker waits in a few KiB.
        crate::stack::release_unused();
    }
}
