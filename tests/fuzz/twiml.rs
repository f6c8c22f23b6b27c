//! The TwiML escaper: whatever the stream URL and the `<Parameter>`s hold, the document is
//! well-formed XML, and an independent XML parser reads back every value as it was given, less
//! only the characters XML 1.0 cannot carry at all.

use cotrackpro_voice::twilio::twiml::{connect_stream, escape_attr};
use proptest::prelude::*;

use super::{config, text};

/// What an XML 1.0 document can carry of `text`: its `Char` production (tab, newline, carriage
/// return, and everything from U+0020 up except the surrogates and U+FFFE, U+FFFF).
fn xml_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{fffe}' && c != '\u{ffff}')
        })
        .collect()
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn the_stream_document_reads_back_every_value(
        url in text(40),
        params in proptest::collection::vec((text(12), text(40)), 0..4),
    ) {
        let borrowed: Vec<(&str, &str)> =
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let xml = connect_stream(&url, &borrowed);
        let doc = roxmltree::Document::parse(&xml)
            .map_err(|err| TestCaseError::fail(format!("not XML ({err}):\n{xml}")))?;
        let stream = doc
            .descendants()
            .find(|n| n.has_tag_name("Stream"))
            .ok_or_else(|| TestCaseError::fail("no <Stream>"))?;
        let url_read = xml_chars(&url);
        prop_assert_eq!(stream.attribute("url"), Some(url_read.as_str()));
        let read: Vec<(String, String)> = stream
            .children()
            .filter(|n| n.has_tag_name("Parameter"))
            .map(|n| {
                (
                    n.attribute("name").unwrap_or("<none>").to_string(),
                    n.attribute("value").unwrap_or("<none>").to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> =
            params.iter().map(|(k, v)| (xml_chars(k), xml_chars(v))).collect();
        prop_assert_eq!(read, expected);
    }

    /// The escaper's promise covers single-quoted attributes too.
    #[test]
    fn an_escaped_value_reads_back_in_single_quotes(value in text(60)) {
        let xml = format!("<a v='{}'/>", escape_attr(&value));
        let doc = roxmltree::Document::parse(&xml)
            .map_err(|err| TestCaseError::fail(format!("not XML ({err}):\n{xml}")))?;
        let value_read = xml_chars(&value);
        prop_assert_eq!(doc.root_element().attribute("v"), Some(value_read.as_str()));
    }
}
