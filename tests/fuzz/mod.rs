//! Property tests ("fuzzing", issue 15) of every parser that reads what comes from outside the
//! process: Twilio's media messages, request heads, form bodies and query strings, server-sent
//! events, the records file, env files, and the TwiML escaper. Each property feeds generated input to a
//! public function and checks that it never panics, and where text is written and read back,
//! that the reading gives back what was written.
//!
//! **Budget.** Each property runs [`cases`] generated inputs: `FUZZ_CASES` of them (default
//! [`DEFAULT_CASES`]: the whole set takes 8–18 s on two cores, 14 s of CPU), and a quarter or an
//! eighth of that for the properties that open sockets or write files. For a longer hunt:
//! `FUZZ_CASES=100000 scripts/test fuzz`. Inputs are random on every run
//! (`PROPTEST_RNG_SEED=N` fixes them); a failure prints the smallest input it shrank to, which
//! belongs in a regression test beside the parser.

mod env_file;
mod forms;
mod http;
mod records;
mod sse;
mod twilio_media;
mod twiml;

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property when `FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 1024;

/// Cases per property: `FUZZ_CASES` (a positive whole number), else [`DEFAULT_CASES`], divided
/// by `cost` for properties whose cases are dear (at least one case each).
pub fn cases(cost: u32) -> u32 {
    let total = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_CASES);
    (total / cost.max(1)).max(1)
}

/// The runner's configuration for a property of the given cost: no regression files written
/// into the source tree (a failure's input goes into a named test instead).
pub fn config(cost: u32) -> Config {
    Config {
        cases: cases(cost),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Characters that mean something to at least one of the parsers under test, and a few that
/// trip careless code (NUL, a BOM, the XML non-characters, Unicode line and space separators,
/// a character outside the Basic Multilingual Plane).
const TRICKY: &[char] = &[
    '&',
    '=',
    '%',
    '+',
    '#',
    ';',
    '"',
    '\'',
    '\\',
    '\n',
    '\r',
    '\t',
    '\0',
    ' ',
    '<',
    '>',
    '$',
    '`',
    ':',
    '/',
    '{',
    '}',
    '[',
    ']',
    ',',
    '?',
    'é',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{2028}',
    '\u{3000}',
    '\u{feff}',
    '\u{fffe}',
    '\u{ffff}',
    '\u{1f600}',
];

/// A character: mostly printable ASCII, often one of [`TRICKY`], sometimes any at all.
pub fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        5 => proptest::char::range(' ', '~'),
        3 => proptest::sample::select(TRICKY),
        1 => any::<char>(),
    ]
}

/// A string of up to `max_chars` [`tricky_char`]s.
pub fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(tricky_char(), 0..=max_chars).prop_map(|c| c.into_iter().collect())
}

/// A string of up to `max_chars` [`tricky_char`]s without any of `excluded`.
pub fn text_without(max_chars: usize, excluded: &'static [char]) -> impl Strategy<Value = String> {
    text(max_chars).prop_map(move |s| s.chars().filter(|c| !excluded.contains(c)).collect())
}

/// `text` with one random edit per entry of `edits` (position and replacement drawn by the
/// caller): a character replaced, removed, or inserted. Turns valid documents into nearly
/// valid ones, which is where parsers break.
pub fn mutate(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, kind, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        };
        match kind % 3 {
            0 if at < chars.len() => chars[at] = c,
            1 if at < chars.len() => {
                chars.remove(at);
            }
            _ => chars.insert(at, c),
        }
    }
    chars.into_iter().collect()
}

/// Edits for [`mutate`].
pub fn edits(max: usize) -> impl Strategy<Value = Vec<(usize, u8, char)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), tricky_char()), 0..=max)
}

/// Cuts `bytes` into consecutive pieces of the given sizes (cycled; a size of 0 counts as 1).
pub fn pieces<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}
