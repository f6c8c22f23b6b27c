//! The body of a streaming `POST /v1/messages`, built fresh for every request from clean
//! history. Pure.
//!
//! - The history is windowed to the last `max_history_messages` turns, then cut so it starts
//!   with a user turn that is not a tool result (trimming must never leave an orphan
//!   `tool_result` whose `tool_use` was cut away), empty turns are dropped, and consecutive
//!   turns of one speaker are merged (the API wants them alternating).
//! - If nothing is left to start with a user turn, a synthetic `(call connected)` user turn
//!   opens the conversation (whether the API accepts an assistant-first request is not
//!   documented; the original's greeting-first history is not repeated).
//! - Prompt caching as the original: a `cache_control` breakpoint on the system prompt, on the
//!   last tool definition (caching all tools), and on the last block of the conversation —
//!   three, under the API's limit of four, whatever the history holds.

use serde_json::{json, Value};

use super::{Block, Speaker, ToolDefinition, Turn};

/// What opens a conversation that would otherwise not start with the caller.
pub const CALL_CONNECTED: &str = "(call connected)";

/// What a request is made of.
pub struct RequestParts<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    pub system: &'a str,
    pub tools: &'a [ToolDefinition],
    pub history: &'a [Turn],
    pub max_history_messages: usize,
}

/// The JSON body for a streaming Messages request.
pub fn build(parts: &RequestParts<'_>) -> Value {
    let messages = window(parts.history, parts.max_history_messages);
    let mut messages: Vec<Value> = messages.iter().map(turn_json).collect();
    if let Some(last) = messages.last_mut() {
        mark_last_block(last);
    }
    let mut tools: Vec<Value> = parts
        .tools
        .iter()
        .map(|tool| {
            json!({
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
            })
        })
        .collect();
    if let Some(last) = tools.last_mut() {
        last["cache_control"] = ephemeral();
    }
    let mut body = json!({
        "model": parts.model,
        "max_tokens": parts.max_tokens,
        "system": [{ "type": "text", "text": parts.system, "cache_control": ephemeral() }],
        "messages": messages,
        "stream": true,
    });
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    body
}

fn ephemeral() -> Value {
    json!({ "type": "ephemeral" })
}

/// The turns a request carries (see the module docs for the rules).
pub fn window(history: &[Turn], max_messages: usize) -> Vec<Turn> {
    let start = history.len().saturating_sub(max_messages.max(1));
    let mut turns: Vec<&Turn> = history[start..].iter().filter(|t| !t.is_empty()).collect();
    while let Some(first) = turns.first() {
        if first.speaker == Speaker::User && !first.starts_with_tool_result() {
            break;
        }
        turns.remove(0);
    }
    let mut merged: Vec<Turn> = Vec::with_capacity(turns.len() + 1);
    for turn in turns {
        match merged.last_mut() {
            Some(last) if last.speaker == turn.speaker => {
                last.blocks.extend(turn.blocks.iter().cloned())
            }
            _ => merged.push(turn.clone()),
        }
    }
    if merged.is_empty() {
        merged.push(Turn::user(CALL_CONNECTED));
    }
    merged
}

fn turn_json(turn: &Turn) -> Value {
    let blocks: Vec<Value> = turn
        .blocks
        .iter()
        .filter(|block| !matches!(block, Block::Text(text) if text.trim().is_empty()))
        .map(|block| match block {
            Block::Text(text) => json!({ "type": "text", "text": text }),
            Block::ToolUse { id, name, input } => {
                json!({ "type": "tool_use", "id": id, "name": name, "input": input })
            }
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut result = json!({
                    "type": "tool_result",
                    "tool_use_id": tool_use_id,
                    "content": content,
                });
                if *is_error {
                    result["is_error"] = json!(true);
                }
                result
            }
        })
        .collect();
    json!({ "role": turn.speaker.as_str(), "content": blocks })
}

fn mark_last_block(message: &mut Value) {
    if let Some(block) = message["content"]
        .as_array_mut()
        .and_then(|blocks| blocks.last_mut())
    {
        block["cache_control"] = ephemeral();
    }
}

/// How many `cache_control` breakpoints a request body carries (tests, and a guard).
pub fn count_breakpoints(value: &Value) -> usize {
    match value {
        Value::Object(map) => {
            usize::from(map.contains_key("cache_control"))
                + map.values().map(count_breakpoints).sum::<usize>()
        }
        Value::Array(items) => items.iter().map(count_breakpoints).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition {
            name: name.into(),
            description: format!("{name} tool"),
            input_schema: json!({"type": "object", "properties": {}}),
        }
    }

    fn tool_round(n: usize) -> [Turn; 2] {
        [
            Turn {
                speaker: Speaker::Assistant,
                blocks: vec![
                    Block::Text("Let me check.".into()),
                    Block::ToolUse {
                        id: format!("toolu_{n}"),
                        name: "check_safety".into(),
                        input: json!({"context": "x"}),
                    },
                ],
            },
            Turn {
                speaker: Speaker::User,
                blocks: vec![Block::ToolResult {
                    tool_use_id: format!("toolu_{n}"),
                    content: "ok".into(),
                    is_error: n % 2 == 1,
                }],
            },
        ]
    }

    fn parts<'a>(history: &'a [Turn], tools: &'a [ToolDefinition], max: usize) -> RequestParts<'a> {
        RequestParts {
            model: "claude-sonnet-4-5",
            max_tokens: 512,
            system: "You are a CoTrackPro assistant.",
            tools,
            history,
            max_history_messages: max,
        }
    }

    #[test]
    fn the_body_has_the_documented_shape() {
        let history = vec![
            Turn::user(CALL_CONNECTED),
            Turn::assistant("Hello."),
            Turn::user("Hi"),
        ];
        let tools = [tool("start_session"), tool("check_safety")];
        let body = build(&parts(&history, &tools, 40));
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(body["max_tokens"], 512);
        assert_eq!(body["stream"], true);
        assert_eq!(body["system"][0]["type"], "text");
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert!(body["tools"][0].get("cache_control").is_none());
        assert_eq!(body["tools"][1]["cache_control"]["type"], "ephemeral");
        assert_eq!(body["tools"][1]["input_schema"]["type"], "object");
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[2]["content"][0]["text"], "Hi");
        assert_eq!(
            messages[2]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(count_breakpoints(&body), 3);
    }

    #[test]
    fn many_tool_rounds_never_exceed_four_breakpoints() {
        // The original's trap: breakpoints written into stored history piled up.
        let mut history = vec![Turn::user("I need a safety plan.")];
        for n in 0..6 {
            history.extend(tool_round(n));
        }
        let tools = [tool("check_safety")];
        for _ in 0..3 {
            let body = build(&parts(&history, &tools, 40));
            assert_eq!(count_breakpoints(&body), 3);
        }
        let body = build(&parts(&history, &tools, 40));
        let last = body["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["content"][0]["type"], "tool_result");
        assert_eq!(last["content"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(last["content"][0]["is_error"], true);
    }

    #[test]
    fn trimming_never_starts_with_an_orphan_tool_result_or_the_assistant() {
        let mut history = vec![Turn::user("first")];
        history.extend(tool_round(1));
        history.push(Turn::assistant("Done."));
        history.push(Turn::user("next"));
        // A window of 3 would start at the tool result, whose tool_use was cut off.
        let turns = window(&history, 3);
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0], Turn::user("next"));
        // A window starting at the assistant is moved to the next user turn.
        let turns = window(&history, 4);
        assert_eq!(turns[0].speaker, Speaker::User);
        assert!(!turns[0].starts_with_tool_result());
    }

    #[test]
    fn empty_turns_are_dropped_and_same_speaker_turns_merged() {
        let history = vec![
            Turn::user("one"),
            Turn::assistant("   "),
            Turn::user("two"),
            Turn::assistant("answer"),
            Turn::assistant(""),
            Turn::user("three"),
        ];
        let turns = window(&history, 40);
        assert_eq!(turns.len(), 3);
        assert_eq!(
            turns[0].blocks,
            vec![Block::Text("one".into()), Block::Text("two".into())]
        );
        let body = build(&parts(&history, &[], 40));
        assert!(body.get("tools").is_none());
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, vec!["user", "assistant", "user"]);
    }

    #[test]
    fn a_history_without_a_user_start_opens_with_call_connected() {
        let turns = window(&[Turn::assistant("Welcome to CoTrack Pro.")], 40);
        assert_eq!(turns, vec![Turn::user(CALL_CONNECTED)]);
        let turns = window(&[], 40);
        assert_eq!(turns, vec![Turn::user(CALL_CONNECTED)]);
    }
}
