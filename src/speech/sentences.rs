//! Cutting the model's streamed text into sentences for text-to-speech, so the first sentence is
//! spoken while the rest is still being written. Pure.
//!
//! A sentence ends at `.`, `!`, `?` or `…` (closing quotes and brackets included) followed by
//! whitespace — the original's rule — except after an abbreviation (`Dr.`, `Mr.`, `e.g.`, …)
//! or an initial (`J. Smith`), which it split on. A piece shorter than [`MIN_CHARS`] is held
//! and joined to the next ("Yes." + "I can help with that."), so the voice is not fed fragments.
//! [`Sentences::finish`] flushes what is left at the end of the response; the call also flushes
//! after the text has been idle for 500 ms.

/// Shorter pieces wait for the next sentence.
pub const MIN_CHARS: usize = 12;

/// Words whose trailing period does not end a sentence (lower-case, without the final dot).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "a.m", "p.m",
    "no", "approx", "dept", "u.s", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "mt", "ft", "ave", "blvd", "gov", "atty", "hon",
];

/// The sentence splitter of one response.
#[derive(Debug, Default)]
pub struct Sentences {
    buffer: String,
}

impl Sentences {
    pub fn new() -> Sentences {
        Sentences::default()
    }

    /// Adds streamed text; returns the sentences it completed, in order.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buffer.push_str(delta);
        let mut out = Vec::new();
        let mut start_search = 0;
        while let Some(end) = self.next_boundary(start_search) {
            let candidate = self.buffer[..end].trim();
            if candidate.chars().count() < MIN_CHARS {
                start_search = end;
                continue;
            }
            out.push(candidate.to_string());
            self.buffer.drain(..end);
            start_search = 0;
        }
        out
    }

    /// What is left, as a last sentence (at the end of the response, or after an idle pause).
    pub fn finish(&mut self) -> Option<String> {
        let rest = self.buffer.trim().to_string();
        self.buffer.clear();
        (!rest.is_empty()).then_some(rest)
    }

    /// Whether text is waiting for the end of its sentence.
    pub fn has_pending(&self) -> bool {
        !self.buffer.trim().is_empty()
    }

    /// The byte offset just after the first sentence end at or after `from` (closing quotes
    /// included), if the whitespace after it has arrived.
    fn next_boundary(&self, from: usize) -> Option<usize> {
        let text = &self.buffer;
        let mut chars = text[from..]
            .char_indices()
            .map(|(i, c)| (i + from, c))
            .peekable();
        while let Some((idx, c)) = chars.next() {
            if !matches!(c, '.' | '!' | '?' | '…') {
                continue;
            }
            // Take the rest of a run like "?!" or "..." and closing quotes and brackets.
            let mut end = idx + c.len_utf8();
            while let Some(&(next_idx, next)) = chars.peek() {
                if matches!(
                    next,
                    '.' | '!' | '?' | '…' | '"' | '\'' | '”' | '’' | ')' | ']'
                ) {
                    end = next_idx + next.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(_, next)) if next.is_whitespace() => {}
                _ => continue, // "3.5", "v1.2", or the whitespace has not arrived yet
            }
            if c == '.' && end == idx + 1 && self.is_abbreviation(idx) {
                continue;
            }
            return Some(end);
        }
        None
    }

    /// Whether the word ending at the period at byte `dot` is an abbreviation or an initial.
    fn is_abbreviation(&self, dot: usize) -> bool {
        let before = &self.buffer[..dot];
        // The separator may be several bytes (a non-breaking space): step over the whole char.
        let word_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace() || *c == '(' || *c == '"')
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[word_start..];
        if word.chars().count() == 1 && word.chars().all(|c| c.is_uppercase()) {
            return true; // an initial: "J. Smith"
        }
        let lower = word.to_lowercase();
        ABBREVIATIONS.contains(&lower.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_spaces_before_a_period_are_stepped_over() {
        let mut s = Sentences::new();
        let out = s.push("Merci\u{a0}beaucoup pour tout. Oui, on continue ensemble. ");
        assert_eq!(
            out,
            [
                "Merci\u{a0}beaucoup pour tout.",
                "Oui, on continue ensemble."
            ]
        );
        let out = s.push("Talk to Dr.\u{3000}Smith\u{2009}Jr. about it today please. ");
        assert_eq!(
            out,
            ["Talk to Dr.\u{3000}Smith\u{2009}Jr. about it today please."]
        );
    }

    #[track_caller]
    fn check(deltas: &[&str], expected: &[&str]) {
        let mut sentences = Sentences::new();
        let mut got: Vec<String> = deltas.iter().flat_map(|d| sentences.push(d)).collect();
        got.extend(sentences.finish());
        assert_eq!(got, expected);
    }

    #[test]
    fn splits_on_sentence_punctuation_followed_by_space() {
        check(
            &[
                "I'm here with you. ",
                "Take your time! ",
                "What happened first?",
            ],
            &[
                "I'm here with you.",
                "Take your time!",
                "What happened first?",
            ],
        );
    }

    #[test]
    fn waits_for_the_space_after_the_punctuation() {
        let mut sentences = Sentences::new();
        assert!(sentences.push("That sounds really hard.").is_empty());
        assert!(sentences.has_pending());
        assert_eq!(sentences.push(" I"), vec!["That sounds really hard."]);
        assert_eq!(sentences.finish().as_deref(), Some("I"));
        assert!(!sentences.has_pending());
    }

    #[test]
    fn abbreviations_initials_and_numbers_do_not_end_sentences() {
        check(
            &[
                "Dr. Smith saw J. Doe at 3.5 p.m. on Friday. ",
                "Then we talked about v1.2 and e.g. the schedule.",
            ],
            &[
                "Dr. Smith saw J. Doe at 3.5 p.m. on Friday.",
                "Then we talked about v1.2 and e.g. the schedule.",
            ],
        );
    }

    #[test]
    fn short_pieces_join_the_next_sentence() {
        check(
            &["Yes. I can help with that. ", "Okay."],
            &["Yes. I can help with that.", "Okay."],
        );
    }

    #[test]
    fn quotes_and_runs_of_punctuation_stay_with_their_sentence() {
        check(
            &[
                "She said \"I'm leaving now.\" Then what happened?! ",
                "Wait... let me think.",
            ],
            &[
                "She said \"I'm leaving now.\"",
                "Then what happened?!",
                "Wait... let me think.",
            ],
        );
    }

    #[test]
    fn deltas_split_anywhere_give_the_same_sentences() {
        let text = "Thank you for telling me. We can write that down together, one step at a time. What happened first?";
        let whole: Vec<String> = {
            let mut s = Sentences::new();
            let mut v = s.push(text);
            v.extend(s.finish());
            v
        };
        for size in [1, 2, 3, 7, 13] {
            let mut s = Sentences::new();
            let chars: Vec<char> = text.chars().collect();
            let mut got: Vec<String> = chars
                .chunks(size)
                .flat_map(|c| s.push(&c.iter().collect::<String>()))
                .collect();
            got.extend(s.finish());
            assert_eq!(got, whole, "deltas of {size} characters");
        }
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn finish_of_nothing_is_nothing() {
        let mut sentences = Sentences::new();
        assert_eq!(sentences.finish(), None);
        sentences.push("   ");
        assert_eq!(sentences.finish(), None);
    }
}
