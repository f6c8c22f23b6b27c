//! Form bodies and query strings (`application/x-www-form-urlencoded`): any text decodes or is
//! refused without a panic, and pairs encoded in any of the ways a client may encode them
//! decode back to the same pairs, in order, repeated names kept.

use cotrackpro_voice::http::request::{decode_form, Incoming};
use proptest::prelude::*;

use super::{config, text};

/// How one character of a name or value is written.
#[derive(Clone, Copy, Debug)]
enum Spelling {
    /// As itself, where the format lets it stand for itself.
    Literal,
    /// Its UTF-8 bytes as `%XX`, upper-case hex.
    Upper,
    /// The same in lower-case hex.
    Lower,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        Just(Spelling::Literal),
        Just(Spelling::Upper),
        Just(Spelling::Lower)
    ]
}

/// `text` form-encoded, character `i` spelled `spellings[i % len]`. `&`, `%` and `+` are always
/// escaped (they mean something), and so is `=` in a name; a space is `+` when written literally;
/// `=` may stand literally in a value (the first `=` of a segment splits it).
fn encode(text: &str, in_name: bool, spellings: &[Spelling]) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        let must_escape = matches!(c, '&' | '%' | '+') || (in_name && c == '=');
        match spellings
            .get(i % spellings.len().max(1))
            .copied()
            .unwrap_or(Spelling::Upper)
        {
            Spelling::Literal if !must_escape => out.push(if c == ' ' { '+' } else { c }),
            Spelling::Lower => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02x}"));
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    out
}

fn form_request(content_type: &str, body: Vec<u8>) -> Incoming {
    Incoming {
        method: "POST".into(),
        path: "/call/status".into(),
        headers: vec![("Content-Type".into(), content_type.into())],
        body,
        ..Incoming::default()
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn any_text_decodes_or_is_refused(query in text(80)) {
        if let Ok(pairs) = decode_form(&query) {
            // Every segment that is not empty is a pair.
            prop_assert_eq!(pairs.len(), query.split('&').filter(|s| !s.is_empty()).count());
        }
        let request = Incoming { query: query.clone(), ..Incoming::default() };
        let first = request.query_pairs().ok().and_then(|p| p.into_iter().next());
        if let Some((name, value)) = first {
            prop_assert_eq!(request.query_param(&name), Some(value));
        }
    }

    #[test]
    fn any_body_is_read_or_refused_with_a_client_error(
        body in proptest::collection::vec(any::<u8>(), 0..120),
        content_type in prop_oneof![
            Just("application/x-www-form-urlencoded".to_string()),
            Just("Application/X-WWW-Form-Urlencoded ; charset=utf-8".to_string()),
            text(30),
        ],
    ) {
        match form_request(&content_type, body).form() {
            Ok(_) => {}
            Err(reply) => prop_assert!(matches!(reply.status, 400 | 415), "status {}", reply.status),
        }
    }

    #[test]
    fn encoded_pairs_decode_to_the_same_pairs(
        pairs in proptest::collection::vec((text(16), text(24)), 0..6),
        spellings in proptest::collection::vec(spelling(), 1..8),
        as_body in any::<bool>(),
    ) {
        let encoded = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, true, &spellings), encode(v, false, &spellings)))
            .collect::<Vec<_>>()
            .join("&");
        let decoded = if as_body {
            form_request("application/x-www-form-urlencoded", encoded.clone().into_bytes())
                .form()
                .map_err(|reply| TestCaseError::fail(format!("{} for {encoded:?}", reply.status)))?
        } else {
            Incoming { query: encoded.clone(), ..Incoming::default() }
                .query_pairs()
                .map_err(|err| TestCaseError::fail(format!("{err} for {encoded:?}")))?
        };
        prop_assert_eq!(decoded, pairs, "encoded as {:?}", encoded);
    }
}
