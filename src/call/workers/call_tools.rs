//! The server's own tools, offered to the model beside the MCP catalog's: `end_call` on every
//! call, `transfer_call` only on calls whose role has a transfer number. The model worker
//! answers their `tool_use` itself (no MCP request) and tells the call machine, which decides
//! what happens (`call/machine/control.rs`).

use serde_json::{json, Value};

use super::LlmOut;
use crate::providers::anthropic::ToolDefinition;

pub const END_CALL: &str = "end_call";
pub const TRANSFER_CALL: &str = "transfer_call";

/// Whether `name` is one of the server's own tools (answered by the worker, not MCP).
pub fn is_call_tool(name: &str) -> bool {
    name == END_CALL || name == TRANSFER_CALL
}

/// The definitions to offer on a call: `end_call` always, `transfer_call` when `transfer`.
pub fn definitions(transfer: bool) -> Vec<ToolDefinition> {
    let mut tools = vec![ToolDefinition {
        name: END_CALL.to_string(),
        description: "Hang up the call. Use only after the caller has said goodbye or asked \
                      to end the call, and after you have said your own goodbye: what you say \
                      before calling this plays to the end first. Never use it to cut off a \
                      caller who is upset or still talking."
            .to_string(),
        input_schema: json!({"type": "object", "properties": {
            "reason": {"type": "string", "description": "Why the call is ending, in a few words"}},
            "required": ["reason"]}),
    }];
    if transfer {
        tools.push(ToolDefinition {
            name: TRANSFER_CALL.to_string(),
            description: "Transfer the caller to a person. Use when the caller asks for a real \
                          person, or when their safety needs a person now. The caller hears \
                          that they are being connected; say at most one short sentence first."
                .to_string(),
            input_schema: json!({"type": "object", "properties": {
                "reason": {"type": "string", "description": "Why the caller needs a person, in a few words"}}}),
        });
    }
    tools
}

/// What the machine is told and the `tool_result` text the model gets, for one of the own
/// tools.
pub fn answer(name: &str, input: &Value) -> Option<(LlmOut, &'static str)> {
    let reason = input["reason"].as_str().unwrap_or("").to_string();
    match name {
        END_CALL => Some((
            LlmOut::EndCall { reason },
            "The call ends once what you said has played. Say nothing more.",
        )),
        TRANSFER_CALL => Some((
            LlmOut::Transfer,
            "The caller hears that they are being connected with a person, then the call is \
             handed over.",
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_is_offered_only_when_asked_and_names_are_ones_anthropic_accepts() {
        let names = |tools: Vec<ToolDefinition>| -> Vec<String> {
            tools.into_iter().map(|t| t.name).collect()
        };
        assert_eq!(names(definitions(false)), [END_CALL]);
        assert_eq!(names(definitions(true)), [END_CALL, TRANSFER_CALL]);
        for name in [END_CALL, TRANSFER_CALL] {
            assert!(
                (1..=64).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{name}"
            );
            assert!(is_call_tool(name));
        }
        assert!(!is_call_tool("check_safety"));
    }

    #[test]
    fn end_call_carries_its_reason_to_the_machine() {
        let (out, text) = answer(END_CALL, &json!({"reason": "caller said bye"})).expect("own");
        assert_eq!(
            out,
            LlmOut::EndCall {
                reason: "caller said bye".into()
            }
        );
        assert!(!text.is_empty());
        assert_eq!(
            answer(TRANSFER_CALL, &json!({})).map(|a| a.0),
            Some(LlmOut::Transfer)
        );
        assert!(answer("check_safety", &json!({})).is_none());
    }
}
