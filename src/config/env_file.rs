//! Reads `KEY=value` files in the format systemd's `EnvironmentFile=` accepts, so the operator
//! keeps one file for both `systemctl start` and `cotrackpro-voice check-config --env-file`.
//!
//! Accepted: blank lines; comments starting with `#` or `;`; `KEY=value` with whitespace around
//! the key and before the value ignored; values in `"double"` quotes (backslash escapes `\"`,
//! `\\`, `\n`, `\t`, `\$`, `` \` ``) or `'single'` quotes (literal); an unquoted value with
//! trailing whitespace trimmed unless a backslash escapes it; a backslash at the end of a line
//! continuing it. White space is systemd's: space, tab, CR and LF only, so a value keeps a
//! trailing no-break space or other Unicode space.

use std::fmt;

/// A line of an env file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    /// 1-based line number where the bad entry starts.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses the text of an env file into `(key, value)` pairs in file order. Every bad line is
/// reported, not only the first.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, Vec<EnvFileError>> {
    let mut pairs = Vec::new();
    let mut errors = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut idx = 0;
    while idx < lines.len() {
        let start_line = idx + 1;
        // Join continuation lines (an unquoted trailing backslash) into one logical line.
        let mut logical = lines[idx].to_string();
        while is_continued(&logical) && idx + 1 < lines.len() {
            logical.pop();
            idx += 1;
            logical.push_str(lines[idx]);
        }
        idx += 1;

        let trimmed = logical.trim_start_matches(is_space);
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        match parse_assignment(trimmed) {
            Ok(pair) => pairs.push(pair),
            Err(message) => errors.push(EnvFileError {
                line: start_line,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(pairs)
    } else {
        Err(errors)
    }
}

fn parse_assignment(line: &str) -> Result<(String, String), String> {
    let Some((raw_key, raw_value)) = line.split_once('=') else {
        return Err("expected KEY=value".to_string());
    };
    let key = raw_key.trim_matches(is_space);
    if !is_valid_key(key) {
        return Err(format!(
            "{key:?} is not a valid variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    let value = parse_value(raw_value.trim_start_matches(is_space))?;
    Ok((key.to_string(), value))
}

/// Whether `line` ends in a backslash that is not itself escaped (an odd run of them): `x\`
/// and `x\\\` continue on the next line, `x\\` is a value ending in a backslash.
fn is_continued(line: &str) -> bool {
    line.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// systemd's white space in env files (`WHITESPACE`): what `str::trim` would also strip of
/// Unicode spaces is part of the value.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(raw: &str) -> Result<String, String> {
    let mut chars = raw.chars();
    match chars.next() {
        Some('"') => {
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated double quote".to_string()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(c @ ('"' | '\\' | '$' | '`')) => value.push(c),
                        Some(c) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err("unterminated double quote".to_string()),
                    },
                    Some(c) => value.push(c),
                }
            }
            expect_only_trailing_space(chars.as_str())?;
            Ok(value)
        }
        Some('\'') => {
            let rest = chars.as_str();
            let Some(end) = rest.find('\'') else {
                return Err("unterminated single quote".to_string());
            };
            expect_only_trailing_space(&rest[end + 1..])?;
            Ok(rest[..end].to_string())
        }
        _ => {
            // Trailing white space is dropped, but not an escaped space (`A=x\ `).
            let mut value = String::new();
            let mut kept_len = 0;
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                        kept_len = value.len();
                    }
                } else {
                    value.push(c);
                    if !is_space(c) {
                        kept_len = value.len();
                    }
                }
            }
            value.truncate(kept_len);
            Ok(value)
        }
    }
}

fn expect_only_trailing_space(rest: &str) -> Result<(), String> {
    let rest = rest.trim_matches(is_space);
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected text after the closing quote: {rest:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: &[(&str, &str)]) {
        let got = parse(text).expect("should parse");
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn plain_assignments_comments_and_blank_lines() {
        check(
            "# a comment\n; another\n\nA=1\n  B = two words  \nC=\n",
            &[("A", "1"), ("B", "two words"), ("C", "")],
        );
    }

    #[test]
    fn quoted_values() {
        check(
            r#"A="with \"quotes\" and \\ and $HOME"
B='single $literal \n'
C="  spaces kept  "
D='x' # trailing comment"#,
            &[
                ("A", r#"with "quotes" and \ and $HOME"#),
                ("B", r"single $literal \n"),
                ("C", "  spaces kept  "),
                ("D", "x"),
            ],
        );
    }

    #[test]
    fn equals_signs_inside_values_are_kept() {
        check(
            r#"VOICE_MAP={"parent":"abc"}
URL=https://x.example/?a=b"#,
            &[
                ("VOICE_MAP", r#"{"parent":"abc"}"#),
                ("URL", "https://x.example/?a=b"),
            ],
        );
    }

    #[test]
    fn backslash_continues_a_line() {
        check("A=one\\\ntwo\nB=3\n", &[("A", "onetwo"), ("B", "3")]);
        // An escaped backslash, then the one that continues (found by tests/fuzz/env_file.rs).
        check(
            "A=one\\\\\\\ntwo\nB=\"x\\\\\\\ny\"\nC=z\\\\\n",
            &[("A", "one\\two"), ("B", "x\\y"), ("C", "z\\")],
        );
    }

    // Found by tests/fuzz/env_file.rs: a bare value lost a trailing Unicode space, and an
    // escaped trailing space, both of which systemd keeps.
    #[test]
    fn only_unescaped_ascii_space_is_trimmed() {
        check(
            "A=a\u{85}\nB=b\\ \nC=c\\\t  \nD=\u{a0}d\u{3000}\nE=e \t\r\n",
            &[
                ("A", "a\u{85}"),
                ("B", "b "),
                ("C", "c\t"),
                ("D", "\u{a0}d\u{3000}"),
                ("E", "e"),
            ],
        );
        let errors = parse("\u{a0}KEY=x\n").unwrap_err();
        assert!(errors[0].message.contains("not a valid variable name"));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let errors = parse("GOOD=1\nnot an assignment\n1BAD=x\nQ=\"open\n").unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(errors[0].to_string().contains("expected KEY=value"));
        assert!(errors[2].message.contains("unterminated"));
    }

    #[test]
    fn text_after_a_closing_quote_is_an_error() {
        let errors = parse("A=\"x\" y\n").unwrap_err();
        assert!(errors[0].message.contains("after the closing quote"));
    }
}
