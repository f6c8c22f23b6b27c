//! `--env-file`, the `KEY=value` format systemd's `EnvironmentFile=` reads: any text loads or is
//! refused line by line without a panic; and variables written in any of the format's
//! spellings (double quotes with escapes, single quotes, bare values with backslashes,
//! continued lines, comments, blank lines, CRLF endings) load back as the values written.

use std::collections::BTreeMap;

use cotrackpro_voice::config::Env;
use proptest::prelude::*;

use super::{config, text};
use crate::support::TempDir;

/// How a value is written.
#[derive(Clone, Copy, Debug)]
enum Quoting {
    Double,
    Single,
    Bare,
}

/// `value` in double quotes: `\`, `"`, `$` and `` ` `` escaped, a newline as `\n`, a tab as
/// `\t` or as itself.
fn double_quoted(value: &str, tab_escaped: bool) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' | '"' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\t' if tab_escaped => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `value` bare: every backslash, quote and ASCII white space behind a backslash. `None` when
/// a bare value cannot hold it (a line break).
fn bare(value: &str) -> Option<String> {
    if value.contains(['\n', '\r']) {
        return None;
    }
    let mut out = String::new();
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '\'' | ' ' | '\t') {
            out.push('\\');
        }
        out.push(c);
    }
    Some(out)
}

/// How `value` is written with `quoting`, falling back to double quotes where the other
/// spellings cannot hold it.
fn spelled(value: &str, quoting: Quoting, tab_escaped: bool) -> String {
    match quoting {
        Quoting::Single if !value.contains(['\'', '\n']) => format!("'{value}'"),
        Quoting::Bare => bare(value).unwrap_or_else(|| double_quoted(value, tab_escaped)),
        _ => double_quoted(value, tab_escaped),
    }
}

/// One variable to write, and how.
#[derive(Clone, Debug)]
struct Assignment {
    /// Made unique and safe from the process environment by a prefix.
    key: String,
    value: String,
    quoting: Quoting,
    tab_escaped: bool,
    /// White space before the key, around `=`, and after the value.
    padding: (String, String, String),
    /// A `\`-newline continuation after this many characters of the line, if any.
    continue_at: Option<usize>,
    comment_before: Option<String>,
}

fn assignment() -> impl Strategy<Value = Assignment> {
    let pad = || proptest::sample::select(&["", " ", "\t", "  "][..]).prop_map(str::to_string);
    (
        "[A-Z_][A-Z0-9_]{0,6}",
        text(30),
        prop_oneof![
            Just(Quoting::Double),
            Just(Quoting::Single),
            Just(Quoting::Bare)
        ],
        any::<bool>(),
        (pad(), pad(), pad()),
        proptest::option::of(0usize..60),
        proptest::option::of(prop_oneof![
            Just(String::new()),
            text(20).prop_map(|t| format!("# {}", t.replace(['\n', '\r', '\\'], ""))),
            text(20).prop_map(|t| format!(";{}", t.replace(['\n', '\r', '\\'], ""))),
        ]),
    )
        .prop_map(
            |(key, value, quoting, tab_escaped, padding, continue_at, comment_before)| Assignment {
                key: format!("FUZZ_ENV_{key}"),
                value,
                quoting,
                tab_escaped,
                padding,
                continue_at,
                comment_before,
            },
        )
}

/// `line` with a `\`-newline continuation inserted after `at` characters, where one may stand:
/// not inside an escape (after an odd run of backslashes, where it would be the escaped
/// character) and not inside the padding before the key.
fn continued(line: &str, at: usize) -> String {
    let chars: Vec<char> = line.chars().collect();
    let first = chars
        .iter()
        .position(|c| !c.is_whitespace())
        .unwrap_or(chars.len())
        + 1;
    if first >= chars.len() {
        return line.to_string();
    }
    let at = first + at % (chars.len() - first);
    let backslashes = chars[..at].iter().rev().take_while(|&&c| c == '\\').count();
    if backslashes % 2 == 1 {
        return line.to_string();
    }
    let mut out: String = chars[..at].iter().collect();
    out.push_str("\\\n");
    out.extend(&chars[at..]);
    out
}

fn render(assignments: &[Assignment], crlf: bool) -> String {
    let mut lines = Vec::new();
    for a in assignments {
        if let Some(comment) = &a.comment_before {
            lines.push(comment.clone());
        }
        let (before, around, after) = &a.padding;
        let value = spelled(&a.value, a.quoting, a.tab_escaped);
        let line = format!("{before}{}{around}={around}{value}{after}", a.key);
        lines.push(match a.continue_at {
            Some(at) => continued(&line, at),
            None => line,
        });
    }
    let ending = if crlf { "\r\n" } else { "\n" };
    lines.iter().map(|l| format!("{l}{ending}")).collect()
}

fn load(text: &str) -> Result<Result<Env, Vec<String>>, TestCaseError> {
    let dir = TempDir::new("fuzz-env");
    let path = dir.path().join("fuzz.env");
    std::fs::write(&path, text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    Ok(Env::load(Some(&path)).map_err(|errors| errors.iter().map(ToString::to_string).collect()))
}

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn any_text_loads_or_is_refused_line_by_line(
        lines in proptest::collection::vec(
            prop_oneof![
                text(40),
                (text(8), text(30)).prop_map(|(k, v)| format!("FUZZ_ENV_{k}={v}")),
            ],
            0..8,
        ),
    ) {
        let file = lines.join("\n");
        let line_count = file.lines().count();
        if let Err(errors) = load(&file)? {
            prop_assert!(!errors.is_empty());
            for error in errors {
                // `--env-file: PATH: line N: why`
                let n: Option<usize> = error
                    .split("line ")
                    .nth(1)
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|n| n.parse().ok());
                prop_assert!(n.is_some_and(|n| n >= 1 && n <= line_count), "{} of {} lines", error, line_count);
            }
        }
    }

    #[test]
    fn written_variables_load_back(
        assignments in proptest::collection::vec(assignment(), 0..6),
        crlf in any::<bool>(),
    ) {
        let file = render(&assignments, crlf);
        let env = load(&file)?.map_err(|errors| TestCaseError::fail(format!("{errors:?} in {file:?}")))?;
        // The last assignment of a name wins.
        let expected: BTreeMap<&str, &str> =
            assignments.iter().map(|a| (a.key.as_str(), a.value.as_str())).collect();
        for (key, value) in expected {
            // An empty or blank value counts as unset.
            let want = Some(value).filter(|v| !v.trim().is_empty());
            prop_assert_eq!(env.get(key), want, "{} in {:?}", key, file);
        }
    }
}
