//! Anthropic's Messages API: the conversation as the call keeps it ([`Turn`], [`Block`]), the
//! request built from it ([`request`]), and the streamed answer assembled from its server-sent
//! events ([`stream`]).

pub mod client;
pub mod request;
pub mod retry;
pub mod stream;

use serde_json::Value;

/// Who said a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    User,
    Assistant,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
        }
    }
}

/// One content block of a turn.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Text(String),
    /// The model asked for a tool.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// A tool's answer, sent back in a user turn.
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
}

/// One turn of the conversation, stored as clean data: cache breakpoints are added per request,
/// never written into the history (the original's mutation led to more than four breakpoints
/// and a 400 for the rest of the call).
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub speaker: Speaker,
    pub blocks: Vec<Block>,
}

impl Turn {
    pub fn user(text: &str) -> Turn {
        Turn {
            speaker: Speaker::User,
            blocks: vec![Block::Text(text.to_string())],
        }
    }

    pub fn assistant(text: &str) -> Turn {
        Turn {
            speaker: Speaker::Assistant,
            blocks: vec![Block::Text(text.to_string())],
        }
    }

    /// Whether the turn says nothing (no text, no tool use or result): the API refuses those.
    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(|block| match block {
            Block::Text(text) => text.trim().is_empty(),
            Block::ToolUse { .. } | Block::ToolResult { .. } => false,
        })
    }

    fn starts_with_tool_result(&self) -> bool {
        matches!(self.blocks.first(), Some(Block::ToolResult { .. }))
    }
}

/// A tool the model may call, in the Messages API's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}
