//! TwiML we answer Twilio with: connect the call to a bidirectional Media Stream. Pure text
//! building; every value placed in an attribute is escaped.

/// `<Response><Connect><Stream url="…">` with one `<Parameter>` per entry of `params`.
/// Twilio hands the parameters to the media server in the `start` message's
/// `customParameters`; the stream URL itself may not carry a query string.
///
/// ```
/// let xml = cotrackpro_voice::twilio::twiml::connect_stream(
///     "wss://voice.example.com/call/stream",
///     &[("role", "attorney")],
/// );
/// assert!(xml.contains(r#"<Parameter name="role" value="attorney" />"#));
/// ```
pub fn connect_stream(stream_url: &str, params: &[(&str, &str)]) -> String {
    let mut xml =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Connect>\n");
    xml.push_str(&format!(
        "    <Stream url=\"{}\">\n",
        escape_attr(stream_url)
    ));
    for (name, value) in params {
        xml.push_str(&format!(
            "      <Parameter name=\"{}\" value=\"{}\" />\n",
            escape_attr(name),
            escape_attr(value)
        ));
    }
    xml.push_str("    </Stream>\n  </Connect>\n</Response>\n");
    xml
}

/// `<Response><Dial>NUMBER</Dial></Response>`: hands the call to a person at `number` (E.164).
/// A transfer's TwiML, sent with the call update; the number is escaped like any text.
///
/// ```
/// let xml = cotrackpro_voice::twilio::twiml::dial("+15551234567");
/// assert!(xml.contains("<Dial>+15551234567</Dial>"));
/// ```
pub fn dial(number: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial>{}</Dial></Response>",
        escape_attr(number)
    )
}

/// Escapes text for a double- or single-quoted XML attribute. `&` goes first so the entities
/// produced for the other characters are not escaped again. Control characters that XML 1.0
/// forbids are dropped (a parser would reject the whole document over one).
pub fn escape_attr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_ampersand_first_and_every_special_character() {
        assert_eq!(escape_attr("a&b"), "a&amp;b");
        assert_eq!(escape_attr("&lt;"), "&amp;lt;");
        assert_eq!(
            escape_attr(r#""><Hangup/>'"#),
            "&quot;&gt;&lt;Hangup/&gt;&apos;"
        );
        assert_eq!(escape_attr("a\u{0}b\nc"), "ab&#10;c");
    }

    #[test]
    fn a_transfer_dials_the_number_escaped() {
        assert_eq!(
            dial("+15551234567"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial>+15551234567</Dial></Response>"
        );
        assert!(dial("<Hangup/>").contains("<Dial>&lt;Hangup/&gt;</Dial>"));
    }

    #[test]
    fn shape_of_the_stream_document() {
        let xml = connect_stream(
            "wss://voice.example.com/call/stream",
            &[("role", "parent"), ("direction", "inbound")],
        );
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Connect>\n    <Stream url=\"wss://voice.example.com/call/stream\">\n      <Parameter name=\"role\" value=\"parent\" />\n      <Parameter name=\"direction\" value=\"inbound\" />\n    </Stream>\n  </Connect>\n</Response>\n"
        );
    }
}
