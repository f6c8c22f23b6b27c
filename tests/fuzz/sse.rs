//! Server-sent events (the Anthropic stream, MCP answers): any bytes, cut into reads of any
//! sizes, give the same events (or the same error) as the whole stream read at once; a stream
//! written by the standard's rules, with any line endings, comments and field spellings, reads
//! back as the events it was written from; and an Anthropic Messages stream, its text and
//! tool input cut anywhere, assembles into the answer that was streamed.

use std::io::{BufReader, Read};

use cotrackpro_voice::providers::anthropic::stream::{Assembler, StreamItem};
use cotrackpro_voice::providers::anthropic::Block;
use cotrackpro_voice::providers::sse::{SseError, SseEvent, SseReader};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::{config, pieces, text, text_without};

/// A reader that hands out its bytes in reads of the given sizes, as a socket may.
struct Trickle {
    reads: std::vec::IntoIter<Vec<u8>>,
}

impl Trickle {
    fn new(bytes: &[u8], sizes: &[usize]) -> Trickle {
        let reads: Vec<Vec<u8>> = pieces(bytes, sizes)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        Trickle {
            reads: reads.into_iter(),
        }
    }
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(mut next) = self.reads.next() else {
            return Ok(0);
        };
        // A read larger than the caller's buffer is handed out in two.
        if next.len() > buf.len() {
            let rest = next.split_off(buf.len());
            let mut remaining: Vec<Vec<u8>> = vec![rest];
            remaining.extend(self.reads.by_ref());
            self.reads = remaining.into_iter();
        }
        buf[..next.len()].copy_from_slice(&next);
        Ok(next.len())
    }
}

/// Everything a reader gives: the events up to the first error, that error's kind, and the
/// last event ID.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<SseEvent>,
    error: Option<String>,
    last_event_id: Option<String>,
}

fn read_all(reader: impl std::io::BufRead, max_line_bytes: usize) -> Outcome {
    let mut sse = SseReader::new(reader, max_line_bytes);
    let mut events = Vec::new();
    let error = loop {
        match sse.next_event() {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break None,
            Err(SseError::Io(err)) => break Some(format!("io: {err}")),
            Err(err) => break Some(err.to_string()),
        }
    };
    Outcome {
        events,
        error,
        last_event_id: sse.last_event_id().map(str::to_string),
    }
}

fn read_whole(bytes: &[u8], max_line_bytes: usize) -> Outcome {
    read_all(bytes, max_line_bytes)
}

fn read_cut(bytes: &[u8], sizes: &[usize], buffer: usize, max_line_bytes: usize) -> Outcome {
    read_all(
        BufReader::with_capacity(buffer, Trickle::new(bytes, sizes)),
        max_line_bytes,
    )
}

/// Bytes that look like an event stream: field names, colons, spaces, line endings, and now
/// and then a byte that is not UTF-8.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        3 => proptest::sample::select(
            &["data", "event", "id", "retry", ":", " ", "\n", "\r", "\r\n", "x", "0", "é"][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(token, 0..80).prop_map(|t| t.concat())
}

/// One event to write: its type (absent, or any line of text), its data (any text without a
/// carriage return; a newline makes it several `data:` lines), an ID, and whether a comment
/// goes before it.
#[derive(Clone, Debug)]
struct Written {
    event: Option<String>,
    data: String,
    id: Option<String>,
    comment: bool,
}

fn written() -> impl Strategy<Value = Written> {
    (
        proptest::option::of(text_without(12, &['\n', '\r'])),
        text_without(40, &['\r']),
        proptest::option::of("[a-z0-9]{0,4}"),
        any::<bool>(),
    )
        .prop_map(|(event, data, id, comment)| Written {
            event,
            data,
            id,
            comment,
        })
}

/// `events` as an event stream: line `i` ends with `endings[i % len]` (0: LF, 1: CR, 2: CRLF)
/// and spells its field `data: x` or `data:x` as `spaced[i % len]` says (only where the value
/// does not itself start with a space).
fn render(events: &[Written], endings: &[u8], spaced: &[bool]) -> String {
    let mut out = String::new();
    let mut line = 0usize;
    let mut previous_cr = false;
    let mut push_line = |out: &mut String, text: &str| {
        let mut ending = ["\n", "\r", "\r\n"][usize::from(endings[line % endings.len()] % 3)];
        // A CR then an empty line ended by LF would read as one CRLF: end that line with CRLF.
        if previous_cr && text.is_empty() && ending == "\n" {
            ending = "\r\n";
        }
        out.push_str(text);
        out.push_str(ending);
        previous_cr = ending == "\r";
        line += 1;
    };
    let field = |name: &str, value: &str, i: usize| {
        if spaced[i % spaced.len()] || value.starts_with(' ') {
            format!("{name}: {value}")
        } else {
            format!("{name}:{value}")
        }
    };
    for (i, event) in events.iter().enumerate() {
        if event.comment {
            push_line(&mut out, ": keep-alive");
        }
        if let Some(id) = &event.id {
            push_line(&mut out, &field("id", id, i));
        }
        if let Some(name) = &event.event {
            push_line(&mut out, &field("event", name, i));
        }
        for part in event.data.split('\n') {
            push_line(&mut out, &field("data", part, i));
        }
        push_line(&mut out, "");
    }
    out
}

/// An Anthropic content block to stream.
#[derive(Clone, Debug)]
enum Streamed {
    /// Text, in the pieces its deltas carry.
    Text(Vec<String>),
    /// A tool call; its input JSON is cut after each of the given character counts.
    Tool {
        id: String,
        name: String,
        input: Value,
        cuts: Vec<usize>,
    },
}

fn tool_input() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        text(10).prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(text(6), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    proptest::collection::btree_map(text(6), value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn streamed() -> impl Strategy<Value = Streamed> {
    prop_oneof![
        proptest::collection::vec(text(12), 0..5).prop_map(Streamed::Text),
        (
            text(8),
            text(8),
            tool_input(),
            proptest::collection::vec(0usize..40, 0..4)
        )
            .prop_map(|(id, name, input, cuts)| Streamed::Tool {
                id,
                name,
                input,
                cuts
            }),
    ]
}

/// The SSE text of a Messages response made of `blocks`, with pings between some events.
fn anthropic_stream(
    blocks: &[Streamed],
    stop_reason: &str,
    usage: (u64, u64),
    pings: &[bool],
) -> String {
    let mut events: Vec<(String, Value)> = vec![(
        "message_start".into(),
        json!({"type": "message_start", "message": {"id": "msg_1", "role": "assistant", "content": [],
            "usage": {"input_tokens": usage.0, "output_tokens": 1}}}),
    )];
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Streamed::Text(parts) => {
                events.push((
                    "content_block_start".into(),
                    json!({"type": "content_block_start",
                    "index": index, "content_block": {"type": "text", "text": ""}}),
                ));
                for part in parts {
                    events.push((
                        "content_block_delta".into(),
                        json!({"type": "content_block_delta",
                        "index": index, "delta": {"type": "text_delta", "text": part}}),
                    ));
                }
            }
            Streamed::Tool {
                id,
                name,
                input,
                cuts,
            } => {
                events.push(("content_block_start".into(), json!({"type": "content_block_start",
                    "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})));
                let json_text: Vec<char> = input.to_string().chars().collect();
                let mut from = 0;
                let mut ends: Vec<usize> = cuts.iter().map(|c| c % (json_text.len() + 1)).collect();
                ends.sort_unstable();
                ends.push(json_text.len());
                for end in ends {
                    let part: String = json_text[from..end.max(from)].iter().collect();
                    from = end.max(from);
                    events.push(("content_block_delta".into(), json!({"type": "content_block_delta",
                        "index": index, "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
            }
        }
        events.push((
            "content_block_stop".into(),
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push(("message_delta".into(), json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": usage.1}})));
    events.push(("message_stop".into(), json!({"type": "message_stop"})));
    let mut out = String::new();
    for (i, (name, data)) in events.iter().enumerate() {
        if pings[i % pings.len()] {
            out.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
        }
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    out
}

/// Adjacent text items joined, empty ones dropped: the pieces are the stream's business.
fn joined(items: Vec<StreamItem>) -> Vec<StreamItem> {
    let mut out: Vec<StreamItem> = Vec::new();
    for item in items {
        match (out.last_mut(), item) {
            (_, StreamItem::Text(t)) if t.is_empty() => {}
            (Some(StreamItem::Text(so_far)), StreamItem::Text(t)) => so_far.push_str(&t),
            (_, item) => out.push(item),
        }
    }
    out
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn any_stream_reads_the_same_however_it_is_cut(
        bytes in stream_bytes(),
        sizes in proptest::collection::vec(1usize..12, 1..8),
        buffer in 1usize..16,
        max_line_bytes in 1usize..64,
    ) {
        prop_assert_eq!(
            read_cut(&bytes, &sizes, buffer, max_line_bytes),
            read_whole(&bytes, max_line_bytes)
        );
    }

    #[test]
    fn written_events_read_back(
        events in proptest::collection::vec(written(), 0..6),
        endings in proptest::collection::vec(any::<u8>(), 1..6),
        spaced in proptest::collection::vec(any::<bool>(), 1..4),
        sizes in proptest::collection::vec(1usize..20, 1..8),
        buffer in 1usize..32,
    ) {
        let stream = render(&events, &endings, &spaced);
        let expected = Outcome {
            events: events
                .iter()
                .map(|e| SseEvent {
                    event: e.event.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "message".into()),
                    data: e.data.clone(),
                })
                .collect(),
            error: None,
            last_event_id: events.iter().rev().find_map(|e| e.id.clone()).filter(|id| !id.is_empty()),
        };
        prop_assert_eq!(&read_whole(stream.as_bytes(), 4096), &expected, "stream {:?}", stream);
        prop_assert_eq!(&read_cut(stream.as_bytes(), &sizes, buffer, 4096), &expected, "stream {:?}", stream);
    }

    #[test]
    fn any_events_are_assembled_without_a_panic(
        events in proptest::collection::vec(
            (
                proptest::sample::select(&["message_start", "content_block_start", "content_block_delta",
                    "content_block_stop", "message_delta", "message_stop", "error", "ping", "x"][..]),
                proptest::sample::select(&["text", "tool_use", "text_delta", "input_json_delta", "thinking", ""][..]),
                prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>()],
                text(12),
                any::<bool>(),
            ),
            0..16,
        ),
    ) {
        let mut assembler = Assembler::new();
        for (kind, block_type, n, words, raw) in events {
            let data = if raw {
                words.clone()
            } else {
                json!({"type": kind, "index": n, "content_block": {"type": block_type, "text": words, "id": words, "name": words},
                    "delta": {"type": block_type, "text": words, "partial_json": words, "stop_reason": words},
                    "usage": {"input_tokens": n, "output_tokens": n}, "error": {"type": words, "message": words}})
                .to_string()
            };
            let blocks_before = assembler.content().len();
            let is_json = serde_json::from_str::<Value>(&data).is_ok();
            let items = assembler.push(&SseEvent { event: kind.to_string(), data });
            let stops = items.iter().filter(|i| matches!(i, StreamItem::Stop { .. })).count();
            if !is_json {
                prop_assert!(
                    matches!(&items[..], [StreamItem::Error { kind, .. }] if kind == "malformed_stream"),
                    "{:?}", items
                );
            } else if !raw {
                // The data's `type` says what the event is: a stop is always reported, once.
                prop_assert_eq!(stops, usize::from(kind == "message_stop"));
            }
            // An event opens or closes at most one block.
            prop_assert!(assembler.content().len() <= blocks_before + 1);
        }
    }

    #[test]
    fn a_streamed_answer_assembles_back(
        blocks in proptest::collection::vec(streamed(), 0..4),
        stop_reason in proptest::sample::select(&["end_turn", "tool_use", "max_tokens", "stop_sequence"][..]),
        usage in (any::<u64>(), any::<u64>()),
        pings in proptest::collection::vec(any::<bool>(), 1..4),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let stream = anthropic_stream(&blocks, stop_reason, usage, &pings);
        let mut reader = SseReader::new(BufReader::with_capacity(16, Trickle::new(stream.as_bytes(), &sizes)), 1 << 16);
        let mut assembler = Assembler::new();
        let mut items = Vec::new();
        while let Some(event) = reader.next_event().map_err(|e| TestCaseError::fail(e.to_string()))? {
            items.extend(assembler.push(&event));
        }
        let mut expected_items = Vec::new();
        let mut expected_content = Vec::new();
        for block in &blocks {
            match block {
                Streamed::Text(parts) => {
                    expected_items.push(StreamItem::Text(parts.concat()));
                    expected_content.push(Block::Text(parts.concat()));
                }
                Streamed::Tool { id, name, input, .. } => {
                    expected_items.push(StreamItem::ToolUse { id: id.clone(), name: name.clone(), input: input.clone() });
                    expected_content.push(Block::ToolUse { id: id.clone(), name: name.clone(), input: input.clone() });
                }
            }
        }
        expected_items.push(StreamItem::Stop { reason: stop_reason.to_string() });
        prop_assert_eq!(joined(items), joined(expected_items));
        prop_assert_eq!(assembler.content(), &expected_content[..]);
        prop_assert_eq!(assembler.stop_reason(), Some(stop_reason));
        prop_assert_eq!((assembler.usage().input_tokens, assembler.usage().output_tokens), usage);
    }
}
