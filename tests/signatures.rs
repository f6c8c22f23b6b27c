//! Twilio request signatures: our computation and our verdicts against the official `twilio`
//! Python package's `RequestValidator`, then the signature gate on the running server with the
//! Host / X-Forwarded-Host / X-Forwarded-Proto combinations a TLS proxy sends.

use serde_json::json;

use cotrackpro_voice::twilio::signature as twilio_signature;

use crate::support::{owned, run_interop, TestServer, AUTH_TOKEN, DOMAIN};

const CALL_FORM: &[(&str, &str)] = &[
    ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
    ("CallSid", "CA0123456789abcdef0123456789abcdef"),
    ("From", "+15551234567"),
    ("To", "+15557654321"),
    ("CallStatus", "ringing"),
];

#[test]
fn our_signatures_are_twilios() {
    let cases = [
        (
            "tok",
            "https://voice.example.com/call/incoming",
            owned(CALL_FORM),
        ),
        (
            "tok",
            "https://voice.example.com/call/incoming?role=judge&x=1",
            owned(CALL_FORM),
        ),
        ("tok", "https://voice.example.com/call/status", vec![]),
        (
            "другой",
            "https://voice.example.com:8443/a",
            owned(&[("Name", "Zoë ✓"), ("Empty", "")]),
        ),
        // Repeated names: each value signed once, sorted.
        (
            "tok",
            "https://voice.example.com/x",
            owned(&[("E", "b"), ("E", "a"), ("E", "b"), ("D", "z")]),
        ),
    ];
    let input = json!({ "cases": cases.iter().map(|(token, url, params)| json!({
        "token": token, "url": url, "params": params,
    })).collect::<Vec<_>>() });
    let output = run_interop("signatures", &input);
    for (idx, (token, url, params)) in cases.iter().enumerate() {
        let theirs = output["results"][idx]["signature"].as_str().unwrap();
        assert_eq!(
            twilio_signature::compute(token, url, params),
            theirs,
            "case {idx}: {url}"
        );
    }
}

/// What was signed (token, URL, parameters), what arrived, and the verdict Twilio gives.
struct VerdictCase {
    name: &'static str,
    token: &'static str,
    signed_url: &'static str,
    signed: Vec<(String, String)>,
    received: Vec<(String, String)>,
    expected: bool,
}

#[test]
fn our_verdicts_are_twilios() {
    let form = owned(CALL_FORM);
    let mut changed = form.clone();
    changed[4].1 = "completed".into();
    let mut added = form.clone();
    added.push(("Extra".into(), "1".into()));
    let url = "https://voice.example.com/call/incoming?role=judge&direction=inbound";
    let case =
        |name, token, signed_url, signed: &Vec<_>, received: &Vec<_>, expected| VerdictCase {
            name,
            token,
            signed_url,
            signed: signed.clone(),
            received: received.clone(),
            expected,
        };
    let cases = [
        case("right token", AUTH_TOKEN, url, &form, &form, true),
        case("wrong token", "not-the-token", url, &form, &form, false),
        case("changed parameter", AUTH_TOKEN, url, &form, &changed, false),
        case("added parameter", AUTH_TOKEN, url, &form, &added, false),
        case(
            "reordered query",
            AUTH_TOKEN,
            "https://voice.example.com/call/incoming?direction=inbound&role=judge",
            &form,
            &form,
            false,
        ),
        case(
            "explicit :443 signed, none received",
            AUTH_TOKEN,
            "https://voice.example.com:443/call/incoming?role=judge&direction=inbound",
            &form,
            &form,
            true,
        ),
        case("empty body", AUTH_TOKEN, url, &vec![], &vec![], true),
    ];
    let signature = |c: &VerdictCase| twilio_signature::compute(c.token, c.signed_url, &c.signed);
    let input = json!({ "cases": cases.iter().map(|c| json!({
        "token": AUTH_TOKEN,
        "url": url,
        "params": c.received,
        "signature": signature(c),
    })).collect::<Vec<_>>() });
    let output = run_interop("signatures", &input);
    for (idx, c) in cases.iter().enumerate() {
        let ours = twilio_signature::verify(
            AUTH_TOKEN,
            Some(&signature(c)),
            &[url.to_string()],
            &c.received,
        )
        .is_ok();
        let theirs = output["results"][idx]["valid"].as_bool().unwrap();
        assert_eq!(theirs, c.expected, "twilio's verdict on {}", c.name);
        assert_eq!(
            ours, theirs,
            "our verdict on {} differs from twilio's",
            c.name
        );
    }
}

#[test]
fn an_explicit_443_in_the_received_url_verifies_like_twilios() {
    // The other direction: Twilio signed without a port, our rebuilt URL has one.
    let signed_url = "https://voice.example.com/call/status";
    let received_url = "https://voice.example.com:443/call/status";
    let params = owned(CALL_FORM);
    let signature = twilio_signature::compute(AUTH_TOKEN, signed_url, &params);
    let output = run_interop(
        "signatures",
        &json!({ "cases": [{
            "token": AUTH_TOKEN, "url": received_url, "params": params, "signature": signature,
        }]}),
    );
    assert_eq!(output["results"][0]["valid"], true);
    let ours = twilio_signature::verify(
        AUTH_TOKEN,
        Some(&signature),
        &[received_url.to_string()],
        &params,
    );
    assert_eq!(ours, Ok(()));
}

fn post_signed(server: &TestServer, path: &str, signed_url: &str, headers: &[(&str, &str)]) -> u16 {
    let signature = twilio_signature::compute(AUTH_TOKEN, signed_url, &owned(CALL_FORM));
    let mut req = server
        .request("POST", path)
        .header("X-Twilio-Signature", &signature)
        .form(CALL_FORM);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send().status
}

#[test]
fn the_gate_accepts_what_a_tls_proxy_forwards() {
    let server = TestServer::with_signatures();
    let public = format!("https://{DOMAIN}/call/incoming?role=judge");
    // Caddy keeps the public Host.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming?role=judge",
            &public,
            &[("Host", DOMAIN)]
        ),
        200
    );
    // nginx's default: Host is the upstream, the public host is in X-Forwarded-Host.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming?role=judge",
            &public,
            &[
                ("Host", "127.0.0.1:8080"),
                ("X-Forwarded-Host", DOMAIN),
                ("X-Forwarded-Proto", "https")
            ],
        ),
        200
    );
    // No forwarding headers at all: the configured domain is used.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming?role=judge",
            &public,
            &[("Host", "127.0.0.1:8080")]
        ),
        200
    );
    // A proxy that lists several forwarded hosts: the first is the client-facing one.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming?role=judge",
            &public,
            &[
                ("Host", "127.0.0.1"),
                ("X-Forwarded-Host", &format!("{DOMAIN}, internal.lan"))
            ],
        ),
        200
    );
    // Twilio configured with an explicit :443.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming?role=judge",
            &format!("https://{DOMAIN}:443/call/incoming?role=judge"),
            &[("Host", DOMAIN)],
        ),
        200
    );
    // The status callback is gated the same way.
    assert_eq!(
        post_signed(
            &server,
            "/call/status",
            &format!("https://{DOMAIN}/call/status"),
            &[("Host", DOMAIN)]
        ),
        204
    );
}

#[test]
fn the_gate_refuses_forgeries_and_foreign_hosts() {
    let server = TestServer::with_signatures();
    let public = format!("https://{DOMAIN}/call/incoming");
    // Signed for another host (e.g. another app on the same Twilio account), replayed here
    // with that host in the forwarding headers: not ours, so not trusted.
    let foreign = "https://other-app.example.net/call/incoming";
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming",
            foreign,
            &[("X-Forwarded-Host", "other-app.example.net")]
        ),
        403
    );
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming",
            foreign,
            &[("Host", "other-app.example.net")]
        ),
        403
    );
    // Signed for a different path or query than the one requested.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming?role=judge",
            &public,
            &[("Host", DOMAIN)]
        ),
        403
    );
    // Signed as http while the proxy says https.
    assert_eq!(
        post_signed(
            &server,
            "/call/incoming",
            &format!("http://{DOMAIN}/call/incoming"),
            &[("Host", DOMAIN), ("X-Forwarded-Proto", "https")],
        ),
        403
    );
    // No signature at all, and a garbage one.
    let res = server
        .request("POST", "/call/incoming")
        .form(CALL_FORM)
        .send();
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["error"], "Forbidden");
    let res = server
        .request("POST", "/call/incoming")
        .header("X-Twilio-Signature", "%%%")
        .form(CALL_FORM)
        .send();
    assert_eq!(res.status, 403);
}

#[test]
fn a_tampered_body_is_refused() {
    let server = TestServer::with_signatures();
    let signature = twilio_signature::compute(
        AUTH_TOKEN,
        &format!("https://{DOMAIN}/call/status"),
        &owned(CALL_FORM),
    );
    let mut tampered = CALL_FORM.to_vec();
    tampered[4] = ("CallStatus", "completed");
    let res = server
        .request("POST", "/call/status")
        .header("Host", DOMAIN)
        .header("X-Twilio-Signature", &signature)
        .form(&tampered)
        .send();
    assert_eq!(res.status, 403);
}

#[test]
fn an_empty_signed_body_verifies() {
    // The original parsed an empty body as "no parameters" in a way that broke signatures.
    let server = TestServer::with_signatures();
    let url = format!("https://{DOMAIN}/call/incoming?role=gal");
    let signature = twilio_signature::compute(AUTH_TOKEN, &url, &[]);
    let res = server
        .request("POST", "/call/incoming?role=gal")
        .header("Host", DOMAIN)
        .header("X-Twilio-Signature", &signature)
        .send();
    assert_eq!(res.status, 200, "{}", res.body);
}
