//! The HTTP tier over real sockets: health, errors, request ids, body limits, TwiML and the
//! status callback, against a server started on an ephemeral loopback port.

use crate::support::{TestServer, DOMAIN};

#[test]
fn health_reports_status_uptime_calls_and_version() {
    let server = TestServer::start(&[("MAX_CONCURRENT_CALLS", "7")]);
    let res = server.request("GET", "/health").send();
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("Content-Type"),
        Some("application/json; charset=utf-8")
    );
    let body = res.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["tier"], "single-host");
    assert_eq!(body["activeCalls"], 0);
    assert_eq!(body["maxConcurrentCalls"], 7);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime"].as_f64().unwrap() >= 0.0);
}

#[test]
fn unknown_paths_are_404_json() {
    let server = TestServer::start(&[]);
    let res = server.request("GET", "/nope").send();
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["error"], "Not found");
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let server = TestServer::start(&[]);
    let res = server.request("GET", "/call/incoming").send();
    assert_eq!(res.status, 405);
    assert_eq!(res.header("Allow"), Some("POST"));
    assert_eq!(res.json()["error"], "Method not allowed");
    let res = server.request("DELETE", "/health").send();
    assert_eq!((res.status, res.header("Allow")), (405, Some("GET")));
}

#[test]
fn every_response_carries_a_request_id() {
    let server = TestServer::start(&[]);
    let echoed = server
        .request("GET", "/health")
        .header("X-Request-Id", "trace-abc-123")
        .send();
    assert_eq!(echoed.header("X-Request-Id"), Some("trace-abc-123"));

    let generated = server.request("GET", "/nope").send();
    let id = generated.header("X-Request-Id").expect("a generated id");
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    let too_long = "x".repeat(129);
    let replaced = server
        .request("GET", "/health")
        .header("X-Request-Id", &too_long)
        .send();
    assert_eq!(replaced.header("X-Request-Id").unwrap().len(), 16);
}

#[test]
fn bodies_over_the_limit_are_413() {
    let server = TestServer::start(&[("HTTP_MAX_BODY_BYTES", "2048")]);
    let big = "a=".to_string() + &"x".repeat(4096);
    let res = server
        .request("POST", "/call/status")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(big.as_bytes())
        .send();
    assert_eq!(res.status, 413);
    assert!(res.json()["error"].as_str().unwrap().contains("2048"));
    // The server is still healthy afterwards.
    assert_eq!(server.request("GET", "/health").send().status, 200);
}

fn incoming_twiml(server: &TestServer, query: &str, form: &[(&str, &str)]) -> String {
    let res = server
        .request("POST", &format!("/call/incoming{query}"))
        .form(form)
        .send();
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("Content-Type"), Some("text/xml; charset=utf-8"));
    res.body
}

fn parameter(xml: &str, name: &str) -> Option<String> {
    let needle = format!("<Parameter name=\"{name}\" value=\"");
    let start = xml.find(&needle)? + needle.len();
    Some(xml[start..].split('"').next()?.to_string())
}

const CALL: &[(&str, &str)] = &[
    ("CallSid", "CA0123456789abcdef0123456789abcdef"),
    ("From", "+15551234567"),
    ("To", "+15557654321"),
];

#[test]
fn incoming_call_connects_the_stream_with_the_requested_persona() {
    let server = TestServer::start(&[]);
    let xml = incoming_twiml(&server, "?role=attorney", CALL);
    assert!(xml.contains(&format!("<Stream url=\"wss://{DOMAIN}/call/stream\">")));
    assert_eq!(parameter(&xml, "role").as_deref(), Some("attorney"));
    assert_eq!(parameter(&xml, "direction").as_deref(), Some("inbound"));
    // The caller's number is not handed around in the TwiML.
    assert!(!xml.contains("5551234567"));
}

#[test]
fn a_draining_server_answers_new_calls_503_so_twilio_uses_the_fallback() {
    let server = TestServer::start(&[]);
    server
        .app()
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let res = server
        .request("POST", "/call/incoming?role=attorney")
        .form(CALL)
        .send();
    assert_eq!(res.status, 503, "{}", res.body);
    assert_eq!(res.header("Retry-After"), Some("30"));
    assert!(!res.body.contains("<Stream"));
    // Nothing of the call was recorded: no record to reopen later.
    let record = server
        .request("GET", "/records/CA0123456789abcdef0123456789abcdef")
        .send();
    assert_eq!(record.status, 404, "{}", record.body);
}

#[test]
fn incoming_call_falls_back_to_the_configured_default_role() {
    let server = TestServer::start(&[("DEFAULT_ROLE", "advocate")]);
    for query in [
        "",
        "?role=",
        "?role=wizard",
        "?role=%22%3E%3CHangup%2F%3E",
        "?role=%zz",
    ] {
        let xml = incoming_twiml(&server, query, CALL);
        assert_eq!(
            parameter(&xml, "role").as_deref(),
            Some("advocate"),
            "{query}"
        );
        assert!(!xml.contains("Hangup"), "{query}");
    }
}

#[test]
fn the_ws_domain_is_used_for_the_stream() {
    let server = TestServer::start(&[("WS_DOMAIN", "media.example.com")]);
    let xml = incoming_twiml(&server, "", CALL);
    assert!(xml.contains("wss://media.example.com/call/stream"));
}

#[test]
fn a_number_override_beats_the_query_role_and_adds_a_voice() {
    let server = TestServer::start(&[(
        "INBOUND_PHONE_VOICE_MAP",
        r#"{"+1 555 765 4321":{"role":"judge","voiceId":"2ydcbtd5sJZRYFMNgMVZ"}}"#,
    )]);
    let xml = incoming_twiml(&server, "?role=attorney", CALL);
    assert_eq!(parameter(&xml, "role").as_deref(), Some("judge"));
    assert_eq!(
        parameter(&xml, "voiceId").as_deref(),
        Some("2ydcbtd5sJZRYFMNgMVZ")
    );
    let other = incoming_twiml(&server, "?role=attorney", &[("To", "+15550000000")]);
    assert_eq!(parameter(&other, "role").as_deref(), Some("attorney"));
    assert_eq!(parameter(&other, "voiceId"), None);
}

#[test]
fn incoming_call_refuses_a_body_that_is_not_a_form() {
    let server = TestServer::start(&[]);
    let res = server
        .request("POST", "/call/incoming")
        .header("Content-Type", "application/json")
        .body(b"{}")
        .send();
    assert_eq!(res.status, 415);
}

#[test]
fn status_callbacks_are_validated() {
    let server = TestServer::start(&[]);
    let ok = server
        .request("POST", "/call/status")
        .form(&[
            ("CallSid", "CA0123456789abcdef0123456789abcdef"),
            ("CallStatus", "completed"),
            ("CallDuration", "42"),
            ("SequenceNumber", "3"),
        ])
        .send();
    assert_eq!(ok.status, 204);
    assert_eq!(ok.body, "");

    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("CallStatus", "completed")], "CallSid"),
        (
            &[
                ("CallSid", "CA../../etc/passwd"),
                ("CallStatus", "completed"),
            ],
            "CallSid",
        ),
        (
            &[
                ("CallSid", "CA0123456789abcdef0123456789abcdef"),
                ("CallStatus", "exploded"),
            ],
            "CallStatus",
        ),
        (
            &[
                ("CallSid", "CA0123456789abcdef0123456789abcdef"),
                ("CallStatus", "completed"),
                ("CallDuration", "forty"),
            ],
            "CallDuration",
        ),
    ];
    for (form, field) in cases {
        let res = server.request("POST", "/call/status").form(form).send();
        assert_eq!(res.status, 400, "{form:?}");
        assert!(
            res.json()["error"].as_str().unwrap().contains(field),
            "{form:?}"
        );
    }
}

/// A raw connection to `server` with the tests' read timeout.
fn raw_connection(server: &TestServer) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(crate::support::IO_TIMEOUT))
        .unwrap();
    stream
}

/// Reads one response with a `Content-Length` from `stream`, leaving what follows unread.
fn read_one(stream: &mut std::net::TcpStream) -> (u16, String) {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the head ended early");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn a_connection_carries_several_requests_even_pipelined() {
    use std::io::Write;
    let server = TestServer::start(&[]);
    let mut stream = raw_connection(&server);
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_one(&mut stream).0, 200);
    // Two at once, the second with a body, then one that asks to close.
    stream
        .write_all(
            b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /call/status HTTP/1.1\r\nHost: a\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\n\
              CallStatus=no\
              GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    assert_eq!(read_one(&mut stream).0, 404);
    let (status, body) = read_one(&mut stream);
    assert_eq!(status, 400);
    assert!(body.contains("CallSid"), "{body}");
    assert_eq!(read_one(&mut stream).0, 200);
    let mut rest = Vec::new();
    use std::io::Read;
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the last answer");
}

#[test]
fn a_client_waiting_for_100_continue_gets_it_and_chunked_bodies_are_decoded() {
    use std::io::Write;
    let server = TestServer::start(&[]);
    let mut stream = raw_connection(&server);
    stream
        .write_all(
            b"POST /call/status HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\n",
        )
        .unwrap();
    let mut interim = [0u8; 25];
    use std::io::Read;
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"CallStatus=no").unwrap();
    assert_eq!(read_one(&mut stream).0, 400);

    // A chunked body (what a proxy sends when it did not know the length) is decoded.
    let mut chunked = raw_connection(&server);
    chunked
        .write_all(
            b"POST /call/status HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\r\n\
              8\r\nCallSid=\r\n22\r\nCA0123456789abcdef0123456789abcdef\r\n\
              13\r\n&CallStatus=ringing\r\n0\r\n\r\n",
        )
        .unwrap();
    assert_eq!(read_one(&mut chunked).0, 204);
    // Any other coding is not guessed at.
    chunked
        .write_all(
            b"POST /call/status HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        )
        .unwrap();
    let (status, body) = read_one(&mut chunked);
    assert_eq!(status, 411);
    assert!(body.contains("Content-Length"), "{body}");
}

#[test]
fn a_head_request_gets_the_head_only_and_the_connection_goes_on() {
    use std::io::{Read, Write};
    let server = TestServer::start(&[]);
    let mut stream = raw_connection(&server);
    stream
        .write_all(
            b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 405 "), "{raw}");
    assert!(head.contains("Content-Length: "), "{head}");
    // No body after the HEAD answer's head: the next bytes are the GET's answer.
    assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
}
