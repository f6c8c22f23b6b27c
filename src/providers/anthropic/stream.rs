//! A streamed Messages response, assembled from its server-sent events: text as it arrives,
//! tool calls once their input JSON is complete, token usage (cache writes and reads
//! included), the stop reason, and errors reported inside the stream. Pure: it is fed
//! [`SseEvent`]s and returns what they mean.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use serde_json::Value;

use super::Block;
use crate::providers::sse::SseEvent;

/// Tokens a response used, as `message_start` and `message_delta` report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// The usage of several responses (a turn's tool rounds, a whole call) is their sum.
impl AddAssign for Usage {
    fn add_assign(&mut self, more: Usage) {
        self.input_tokens += more.input_tokens;
        self.output_tokens += more.output_tokens;
        self.cache_creation_input_tokens += more.cache_creation_input_tokens;
        self.cache_read_input_tokens += more.cache_read_input_tokens;
    }
}

/// Something the stream said, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    /// A piece of the spoken answer.
    Text(String),
    /// A complete tool call.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// The response ended normally (`end_turn`, `tool_use`, `max_tokens`, `stop_sequence`).
    Stop { reason: String },
    /// An `error` event inside the stream (e.g. `overloaded_error`), or a stream we could not
    /// understand.
    Error { kind: String, message: String },
}

enum OpenBlock {
    Text,
    ToolUse {
        id: String,
        name: String,
        partial_json: String,
    },
    Other,
}

/// Turns events into [`StreamItem`]s and keeps the usage and the assistant's content blocks.
#[derive(Default)]
pub struct Assembler {
    open: BTreeMap<u64, OpenBlock>,
    usage: Usage,
    /// The assistant turn as it was said: text joined per block, tool uses whole.
    content: Vec<Block>,
    stop_reason: Option<String>,
}

impl Assembler {
    pub fn new() -> Assembler {
        Assembler::default()
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.as_deref()
    }

    /// The assistant's content so far (for the history).
    pub fn content(&self) -> &[Block] {
        &self.content
    }

    /// Takes one event; returns what it means (often nothing: pings, block bookkeeping).
    pub fn push(&mut self, event: &SseEvent) -> Vec<StreamItem> {
        let data: Value = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(err) => {
                return vec![malformed(&format!(
                    "{} event is not JSON: {err}",
                    event.event
                ))]
            }
        };
        // The `type` inside the data is authoritative; the SSE event name repeats it.
        let kind = data["type"].as_str().unwrap_or(event.event.as_str());
        match kind {
            "message_start" => {
                self.add_usage(&data["message"]["usage"]);
                Vec::new()
            }
            "content_block_start" => self.start_block(&data),
            "content_block_delta" => self.delta(&data),
            "content_block_stop" => self.stop_block(&data),
            "message_delta" => {
                self.add_usage(&data["usage"]);
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_string());
                }
                Vec::new()
            }
            "message_stop" => vec![StreamItem::Stop {
                reason: self
                    .stop_reason
                    .clone()
                    .unwrap_or_else(|| "end_turn".to_string()),
            }],
            "error" => vec![StreamItem::Error {
                kind: data["error"]["type"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string(),
                message: data["error"]["message"].as_str().unwrap_or("").to_string(),
            }],
            // `ping`, and event types added to the API later.
            _ => Vec::new(),
        }
    }

    fn add_usage(&mut self, usage: &Value) {
        let field = |name: &str| usage[name].as_u64();
        if let Some(n) = field("input_tokens") {
            self.usage.input_tokens = n;
        }
        // output_tokens is cumulative in message_delta: the latest value is the total.
        if let Some(n) = field("output_tokens") {
            self.usage.output_tokens = n;
        }
        if let Some(n) = field("cache_creation_input_tokens") {
            self.usage.cache_creation_input_tokens = n;
        }
        if let Some(n) = field("cache_read_input_tokens") {
            self.usage.cache_read_input_tokens = n;
        }
    }

    fn start_block(&mut self, data: &Value) -> Vec<StreamItem> {
        let Some(index) = data["index"].as_u64() else {
            return vec![malformed("content_block_start without an index")];
        };
        let block = &data["content_block"];
        let open = match block["type"].as_str() {
            Some("text") => {
                self.content.push(Block::Text(String::new()));
                // A start may already carry text.
                let text = block["text"].as_str().unwrap_or("");
                if !text.is_empty() {
                    self.open.insert(index, OpenBlock::Text);
                    return self.text(text);
                }
                OpenBlock::Text
            }
            Some("tool_use") => OpenBlock::ToolUse {
                id: block["id"].as_str().unwrap_or("").to_string(),
                name: block["name"].as_str().unwrap_or("").to_string(),
                partial_json: String::new(),
            },
            _ => OpenBlock::Other,
        };
        self.open.insert(index, open);
        Vec::new()
    }

    fn text(&mut self, text: &str) -> Vec<StreamItem> {
        if let Some(Block::Text(so_far)) = self.content.last_mut() {
            so_far.push_str(text);
        }
        vec![StreamItem::Text(text.to_string())]
    }

    fn delta(&mut self, data: &Value) -> Vec<StreamItem> {
        let index = data["index"].as_u64().unwrap_or(u64::MAX);
        let delta = &data["delta"];
        match (delta["type"].as_str(), self.open.get_mut(&index)) {
            (Some("text_delta"), Some(OpenBlock::Text)) => {
                let text = delta["text"].as_str().unwrap_or("").to_string();
                self.text(&text)
            }
            (Some("input_json_delta"), Some(OpenBlock::ToolUse { partial_json, .. })) => {
                partial_json.push_str(delta["partial_json"].as_str().unwrap_or(""));
                Vec::new()
            }
            (Some("text_delta" | "input_json_delta"), _) => {
                vec![malformed(&format!(
                    "delta for block {index}, which is not open"
                ))]
            }
            // thinking, signature and citation deltas are not spoken.
            _ => Vec::new(),
        }
    }

    fn stop_block(&mut self, data: &Value) -> Vec<StreamItem> {
        let index = data["index"].as_u64().unwrap_or(u64::MAX);
        match self.open.remove(&index) {
            Some(OpenBlock::ToolUse {
                id,
                name,
                partial_json,
            }) => {
                // A tool without parameters streams no JSON at all.
                let text = if partial_json.trim().is_empty() {
                    "{}"
                } else {
                    partial_json.as_str()
                };
                match serde_json::from_str::<Value>(text) {
                    Ok(input) => {
                        self.content.push(Block::ToolUse {
                            id: id.clone(),
                            name: name.clone(),
                            input: input.clone(),
                        });
                        vec![StreamItem::ToolUse { id, name, input }]
                    }
                    Err(err) => vec![malformed(&format!(
                        "input of tool {name} is not JSON: {err}"
                    ))],
                }
            }
            _ => Vec::new(),
        }
    }
}

fn malformed(message: &str) -> StreamItem {
    StreamItem::Error {
        kind: "malformed_stream".to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn usages_add_field_by_field() {
        let mut total = Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cache_creation_input_tokens: 1875,
            cache_read_input_tokens: 0,
        };
        total += Usage {
            input_tokens: 250,
            output_tokens: 650,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 18_500,
        };
        assert_eq!(
            total,
            Usage {
                input_tokens: 1250,
                output_tokens: 850,
                cache_creation_input_tokens: 1875,
                cache_read_input_tokens: 18_500,
            }
        );
    }

    use super::*;
    use crate::providers::sse::SseReader;

    /// Feeds a whole SSE text through the reader and the assembler.
    fn run(text: &str) -> (Vec<StreamItem>, Assembler) {
        let mut reader = SseReader::new(text.as_bytes(), 64 * 1024);
        let mut assembler = Assembler::new();
        let mut items = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            items.extend(assembler.push(&event));
        }
        (items, assembler)
    }

    fn sse(events: &[(&str, &str)]) -> String {
        events
            .iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect()
    }

    // The shapes of Anthropic's documented streaming example, with a tool call.
    fn tool_stream() -> String {
        sse(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":472,"output_tokens":2,"cache_creation_input_tokens":1200,"cache_read_input_tokens":0}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" that."}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"check_safety","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"sessionId\": \"s1\", "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"context\": \"he has a weapon\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ])
    }

    #[test]
    fn text_then_a_tool_call() {
        let (items, assembler) = run(&tool_stream());
        assert_eq!(
            items,
            vec![
                StreamItem::Text("Let me check".into()),
                StreamItem::Text(" that.".into()),
                StreamItem::ToolUse {
                    id: "toolu_01".into(),
                    name: "check_safety".into(),
                    input: serde_json::json!({"sessionId": "s1", "context": "he has a weapon"}),
                },
                StreamItem::Stop {
                    reason: "tool_use".into()
                },
            ]
        );
        assert_eq!(
            assembler.usage(),
            Usage {
                input_tokens: 472,
                output_tokens: 89,
                cache_creation_input_tokens: 1200,
                cache_read_input_tokens: 0,
            }
        );
        assert_eq!(assembler.content().len(), 2);
        assert_eq!(
            assembler.content()[0],
            Block::Text("Let me check that.".into())
        );
    }

    #[test]
    fn parallel_tool_calls_and_a_tool_without_input() {
        let text = sse(&[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"a","name":"start_session","input":{}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"b","name":"generate_artifact","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"artifact_type\":\"timeline\"}"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
        ]);
        let (items, _) = run(&text);
        let names: Vec<(String, Value)> = items
            .into_iter()
            .filter_map(|item| match item {
                StreamItem::ToolUse { name, input, .. } => Some((name, input)),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "generate_artifact".into(),
                    serde_json::json!({"artifact_type": "timeline"})
                ),
                ("start_session".into(), serde_json::json!({})),
            ]
        );
    }

    #[test]
    fn errors_inside_the_stream_are_items() {
        let text = sse(&[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"I can"}}"#,
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
        ]);
        let (items, _) = run(&text);
        assert_eq!(
            items.last(),
            Some(&StreamItem::Error {
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            })
        );
    }

    #[test]
    fn malformed_data_is_an_error_item_not_a_panic() {
        let (items, _) = run(&sse(&[("content_block_delta", "{not json")]));
        assert!(matches!(&items[0], StreamItem::Error { kind, .. } if kind == "malformed_stream"));
        let (items, _) = run(&sse(&[(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":5,"delta":{"type":"text_delta","text":"x"}}"#,
        )]));
        assert!(
            matches!(&items[0], StreamItem::Error { message, .. } if message.contains("not open"))
        );
        let broken_tool = sse(&[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"a","name":"t","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
        ]);
        let (items, _) = run(&broken_tool);
        assert!(
            matches!(&items[0], StreamItem::Error { message, .. } if message.contains("input of tool t"))
        );
    }

    #[test]
    fn unknown_events_and_deltas_are_ignored() {
        let text = sse(&[
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            ),
            ("future_event", r#"{"type":"future_event"}"#),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        let (items, _) = run(&text);
        assert_eq!(
            items,
            vec![StreamItem::Stop {
                reason: "end_turn".into()
            }]
        );
    }
}
