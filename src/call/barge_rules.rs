//! What the caller's words mean while the assistant speaks: a backchannel ("mm-hmm"), our own
//! voice coming back through the line (echo), or an interruption. Pure: words in, a verdict
//! out; the call machine decides what to do with it.
//!
//! The rules, for a partial transcript heard while assistant audio plays:
//! - Words are compared in lower case, without punctuation ("Uh-huh." is `uh-huh`).
//! - A *backchannel word* is a sound of listening or a filler: the built-in list of the call's
//!   language (`STT_LANGUAGE_CODE`: English and Spanish; any other language uses the English
//!   list) plus the words of `BACKCHANNEL_WORDS`. Every other word is a *content word*.
//! - Echo: the partial is our own speech when its words appear, in order, inside the text
//!   being played or queued (and the sentences of the reply already heard). A partial of `n`
//!   words is echo when some stretch of that text, at most `n + n/4` words long, holds at
//!   least `n - n/4` of its words in order: one word in four may be missing or misheard (the
//!   speech-to-text drops and alters words), none under four words. Echo never interrupts.
//! - Two or more content words interrupt, when together they are longer than
//!   `BARGE_IN_MIN_CHARS` characters (a syllable of noise turned into two tiny words does not).
//! - One content word interrupts only when it is a *stop word* ("stop", "wait", "no",
//!   "sorry", "espera", "para"…): the caller asking to speak. Any other single word waits for
//!   a second word or for the commit (a committed utterance that is not a backchannel always
//!   takes the turn).
//! - A backchannel word wins over a stop word: a word put in `BACKCHANNEL_WORDS` never
//!   interrupts.

/// Sounds of listening and fillers in English.
const ENGLISH: &[&str] = &[
    "um", "umm", "uh", "uhh", "hmm", "hm", "mm", "mmm", "mhm", "mm-hmm", "mm-hm", "uh-huh", "ah",
    "er", "oh", "okay", "ok", "yeah", "yep", "yes", "right", "sure", "alright", "gotcha",
];
/// Sounds of listening and fillers in Spanish (with and without accents: the speech-to-text
/// writes both).
const SPANISH: &[&str] = &[
    "sí", "si", "ajá", "aja", "vale", "claro", "mmm", "mm", "mhm", "hmm", "bueno", "eh", "ah",
    "oh", "uh", "um", "ok", "okey", "okay", "ya", "pues", "este", "entiendo", "exacto", "cierto",
];
/// Words that interrupt on their own: the caller asking the assistant to stop or wait.
const STOP_WORDS: &[&str] = &[
    "stop", "wait", "no", "sorry", "hold", "hang", "excuse", "pardon", "help", "para", "pare",
    "espera", "espere", "alto", "perdón", "perdon", "perdona", "disculpa", "disculpe", "oye",
    "oiga", "ayuda",
];

/// The backchannel words of one call: its language's built-in list and the configured extras.
#[derive(Clone, Debug)]
pub struct Listening {
    /// The language's built-in words: shared, nothing allocated per call.
    built_in: &'static [&'static str],
    /// `BACKCHANNEL_WORDS` (usually none).
    extra: Vec<String>,
}

impl Listening {
    /// The list for `language` (a code such as `en`, `es`, `es-MX`) with `extra` words added.
    pub fn for_language(language: &str, extra: &[String]) -> Listening {
        let base = language
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let built_in = match base.as_str() {
            "es" => SPANISH,
            _ => ENGLISH,
        };
        Listening {
            built_in,
            extra: extra.iter().flat_map(|w| words(w)).collect(),
        }
    }

    fn is_backchannel_word(&self, word: &str) -> bool {
        self.built_in.contains(&word) || self.extra.iter().any(|w| w == word)
    }

    /// Whether `text` is only backchannel words ("mm-hmm", "okay", "sí, claro"): said while
    /// the assistant speaks, it is the caller following along, not taking the turn.
    pub fn is_backchannel(&self, text: &str) -> bool {
        let words = words(text);
        !words.is_empty() && words.iter().all(|w| self.is_backchannel_word(w))
    }

    /// Whether a partial heard while the assistant speaks is the caller interrupting (the rules
    /// in the module docs); `spoken` is the text being played or queued, `min_chars` is
    /// `BARGE_IN_MIN_CHARS`.
    pub fn is_interruption<'a>(
        &self,
        partial: &str,
        min_chars: usize,
        spoken: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        let said = words(partial);
        let content: Vec<&String> = said
            .iter()
            .filter(|w| !self.is_backchannel_word(w))
            .collect();
        let wants_to_speak = match content.as_slice() {
            [] => false,
            [one] => STOP_WORDS.contains(&one.as_str()),
            many => {
                let chars: usize = many.iter().map(|w| w.chars().count()).sum();
                chars + many.len() - 1 > min_chars
                    || many.iter().any(|w| STOP_WORDS.contains(&w.as_str()))
            }
        };
        if !wants_to_speak {
            return false;
        }
        let spoken: Vec<String> = spoken.into_iter().flat_map(words).collect();
        !is_echo(&said, &spoken)
    }
}

/// Words a committed utterance must have before the echo rule may set it aside: a short answer
/// ("yes", "on Monday") can honestly repeat the assistant's words.
pub const MIN_COMMITTED_ECHO_WORDS: usize = 3;

/// Whether a committed utterance heard while the assistant speaks is its own voice coming back
/// (the echo rule, for utterances of at least [`MIN_COMMITTED_ECHO_WORDS`] words).
pub fn is_committed_echo<'a>(text: &str, spoken: impl IntoIterator<Item = &'a str>) -> bool {
    let said = words(text);
    if said.len() < MIN_COMMITTED_ECHO_WORDS {
        return false;
    }
    let spoken: Vec<String> = spoken.into_iter().flat_map(words).collect();
    is_echo(&said, &spoken)
}

/// Words of leave-taking: an utterance made only of them, said over the assistant's goodbye,
/// is the caller saying goodbye too.
const FAREWELLS: &[&str] = &[
    "bye", "goodbye", "good", "thanks", "thank", "you", "so", "much", "ok", "okay", "take", "care",
    "too", "you're", "welcome", "have", "a", "nice", "day", "night", "adiós", "adios", "gracias",
    "hasta", "luego", "chao",
];

/// Whether `text` is only leave-taking ("thank you, bye"), or only backchannel words.
pub fn is_farewell(listening: &Listening, text: &str) -> bool {
    let said = words(text);
    !said.is_empty()
        && said
            .iter()
            .all(|w| FAREWELLS.contains(&w.as_str()) || listening.is_backchannel_word(w))
}

/// Whether `partial` (words) is found in `spoken` (words) by the echo rule of the module docs.
pub fn is_echo(partial: &[String], spoken: &[String]) -> bool {
    let n = partial.len();
    if n == 0 {
        return false;
    }
    let slack = n / 4;
    let need = n - slack;
    let window = n + slack;
    (0..spoken.len()).any(|start| {
        let stretch = &spoken[start..(start + window).min(spoken.len())];
        // Only a stretch that begins with one of the partial's words can be its best match.
        partial.contains(&stretch[0]) && common_in_order(partial, stretch) >= need
    })
}

/// The length of the longest run of words `a` and `b` share in the same order (not
/// necessarily next to each other).
fn common_in_order(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The words of `text`: lower case, letters, digits, apostrophes and hyphens.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(['\'', '-']))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn english() -> Listening {
        Listening::for_language("en", &[])
    }

    fn w(text: &str) -> Vec<String> {
        words(text)
    }

    #[test]
    fn a_backchannel_is_only_sounds_of_listening() {
        let en = english();
        for yes in [
            "mm-hmm",
            "Uh-huh.",
            "okay",
            "Yeah, right.",
            "hmm",
            "Mm-hmm, yes.",
        ] {
            assert!(en.is_backchannel(yes), "{yes}");
        }
        for no in [
            "",
            "...",
            "okay wait",
            "yes please",
            "stop",
            "right now",
            "sí",
        ] {
            assert!(!en.is_backchannel(no), "{no}");
        }
    }

    #[test]
    fn the_list_follows_the_call_language_and_takes_extra_words() {
        let es = Listening::for_language("es-MX", &[]);
        for yes in ["Sí, claro.", "ajá", "vale", "mmm", "bueno", "eh", "Aja, sí"] {
            assert!(es.is_backchannel(yes), "{yes}");
        }
        assert!(!es.is_backchannel("espera"));
        assert!(
            !es.is_backchannel("mm-hmm"),
            "English sounds are not in the Spanish list"
        );
        // An unknown language uses the English list; extra words add to any list.
        let fr = Listening::for_language("fr", &["D'accord".into(), "ouais".into()]);
        assert!(fr.is_backchannel("ouais, okay"));
        assert!(fr.is_backchannel("d'accord"));
        assert!(!english().is_backchannel("ouais"));
    }

    #[test]
    fn two_content_words_interrupt_and_one_only_when_it_asks_to_stop() {
        let en = english();
        let none: [&str; 0] = [];
        assert!(en.is_interruption("I think", 3, none));
        assert!(en.is_interruption("okay but the judge", 3, none));
        assert!(!en.is_interruption("uh-huh", 3, none));
        assert!(!en.is_interruption("um, uh, hmm", 3, none));
        assert!(!en.is_interruption("yeah okay", 3, none));
        // One content word waits for a second, unless it is a stop word.
        assert!(!en.is_interruption("judge", 3, none));
        assert!(!en.is_interruption("uh judge", 3, none));
        for stop in ["wait", "Stop!", "no", "sorry", "uh, wait"] {
            assert!(en.is_interruption(stop, 3, none), "{stop}");
        }
        let es = Listening::for_language("es", &[]);
        assert!(es.is_interruption("espera", 3, none));
        assert!(es.is_interruption("Para, para", 3, none));
        assert!(!es.is_interruption("sí, claro", 3, none));
        // A word made a backchannel by the setting never interrupts.
        let calm = Listening::for_language("en", &["no".into()]);
        assert!(!calm.is_interruption("no", 3, none));
    }

    #[test]
    fn barge_in_min_chars_holds_back_tiny_words_but_not_stop_words() {
        let en = english();
        let none: [&str; 0] = [];
        // "I go" is four characters: over 3, not over 4.
        assert!(en.is_interruption("I go", 3, none));
        assert!(!en.is_interruption("I go", 4, none));
        assert!(en.is_interruption("no wait", 20, none));
        assert!(en.is_interruption("wait", 200, none));
    }

    #[test]
    fn our_own_words_heard_back_are_echo() {
        let en = english();
        let playing = [
            "Let me explain the process to you.",
            "First, you file the form.",
        ];
        assert!(!en.is_interruption("explain the process", 3, playing));
        // Across two pieces, in order.
        assert!(!en.is_interruption("to you first you file", 3, playing));
        // The caller's own words.
        assert!(en.is_interruption("wait I have a question", 3, playing));
        // Out of order is not echo.
        assert!(en.is_interruption("process the explain", 3, playing));
        // A stop word that we are saying ourselves is echo too.
        assert!(!en.is_interruption("wait", 3, ["Please wait a moment."]));
    }

    #[test]
    fn echo_allows_one_word_in_four_missing_or_misheard() {
        let spoken = w("the court will look at who has been caring for the children day to day");
        // Four words, one misheard: echo.
        assert!(is_echo(&w("the court will book"), &spoken));
        // Four words, one dropped by the speech-to-text: echo.
        assert!(is_echo(&w("court look at who"), &spoken));
        // Three words get no slack.
        assert!(!is_echo(&w("the court wall"), &spoken));
        assert!(is_echo(&w("the court will"), &spoken));
        // Four words, two wrong: not echo.
        assert!(!is_echo(&w("the judge will book"), &spoken));
        // Words found, but spread far apart: not echo.
        assert!(!is_echo(&w("court the children"), &spoken));
        assert!(!is_echo(&[], &spoken));
        assert!(!is_echo(&w("court"), &[]));
    }
}
