//! TwiML parsed as XML: the server's answer has the same element tree as the TwiML the official
//! `twilio` Python package builds for the same stream, and hostile values stay inert.

use serde_json::{json, Value};

use cotrackpro_voice::twilio::twiml;

use crate::support::{run_interop, TestServer, DOMAIN};

fn compare(ours: &str, stream_url: &str, params: &[(&str, &str)]) -> Value {
    let output = run_interop(
        "twiml",
        &json!({ "ours": ours, "stream_url": stream_url, "params": params }),
    );
    assert_eq!(
        output["ours"], output["twilio"],
        "our TwiML differs from twilio's:\n{ours}"
    );
    output["ours"].clone()
}

#[test]
fn the_answer_to_an_incoming_call_is_twilios_connect_stream() {
    let server = TestServer::start(&[]);
    let res = server
        .request("POST", "/call/incoming?role=therapist")
        .form(&[("CallSid", "CA0123456789abcdef0123456789abcdef")])
        .send();
    assert_eq!(res.status, 200);
    let stream_url = format!("wss://{DOMAIN}/call/stream");
    // The per-call token that admits the stream, good for this call.
    let token = res
        .body
        .split(r#"<Parameter name="token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a stream token");
    let now_secs = cotrackpro_voice::timestamp::now_ms() / 1000;
    assert_eq!(
        server.app().stream_tokens.admit(
            Some(token),
            "CA0123456789abcdef0123456789abcdef",
            now_secs
        ),
        Ok(())
    );
    let tree = compare(
        &res.body,
        &stream_url,
        &[
            ("role", "therapist"),
            ("direction", "inbound"),
            ("token", token),
        ],
    );
    assert_eq!(tree["tag"], "Response");
    let stream = &tree["children"][0]["children"][0];
    assert_eq!(stream["tag"], "Stream");
    assert_eq!(stream["attrs"]["url"], stream_url.as_str());
    assert_eq!(stream["children"][0]["attrs"]["value"], "therapist");
}

#[test]
fn hostile_values_are_escaped_into_plain_text() {
    let payload = "\"><Hangup/><Say>pwned</Say><x a='&amp;";
    let xml = twiml::connect_stream("wss://h.example/call/stream", &[("note", payload)]);
    let tree = compare(&xml, "wss://h.example/call/stream", &[("note", payload)]);
    let stream = &tree["children"][0]["children"][0];
    assert_eq!(
        stream["children"].as_array().unwrap().len(),
        1,
        "no injected elements"
    );
    assert_eq!(
        stream["children"][0]["attrs"]["value"], payload,
        "the value survives intact"
    );
}
