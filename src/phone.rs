//! Phone numbers as this service handles them: normalizing what people type into E.164, and
//! masking numbers before they reach a log line or a record.

/// Normalizes a phone number to E.164 (`+` and 2–15 digits, no leading zero), forgiving the
/// spaces, dashes, dots and parentheses people type. Returns `None` for anything else.
///
/// ```
/// use cotrackpro_voice::phone::normalize;
/// assert_eq!(normalize("+1 (555) 123-4567").as_deref(), Some("+15551234567"));
/// assert_eq!(normalize("5551234567"), None); // no country code: ambiguous
/// ```
pub fn normalize(text: &str) -> Option<String> {
    let compact: String = text
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = compact.strip_prefix('+')?;
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    valid.then(|| format!("+{digits}"))
}

/// Masks a phone number for logs and records the way the original did, keeping only what
/// helps an operator tell calls apart: the first two characters and the last four
/// (`+15551234567` → `+1***4567`; the fixed `***` also hides the length). Values too short to
/// keep anything back are masked entirely.
pub fn mask(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 6 {
        return "***".to_string();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_what_people_type() {
        assert_eq!(normalize("+15551234567").as_deref(), Some("+15551234567"));
        assert_eq!(
            normalize(" +44 20 7946.0958 ").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(normalize("+0123"), None);
        assert_eq!(normalize("+1"), None);
        assert_eq!(normalize("+1234567890123456"), None);
        assert_eq!(normalize("+1555abc4567"), None);
        assert_eq!(normalize(""), None);
    }

    #[test]
    fn masks_keep_only_the_edges() {
        assert_eq!(mask("+15551234567"), "+1***4567");
        assert_eq!(mask("unknown"), "un***nown");
        assert_eq!(mask("+12345"), "***");
        assert_eq!(mask(""), "***");
        assert!(!mask("+15551234567").contains("555123"));
    }
}
