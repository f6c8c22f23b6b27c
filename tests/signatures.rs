//! Twilio request signatures: our computation and our verdicts against the official `twilio`
//! Python package's `RequestValidator`, then the signature gate on the running server with the
//! Host / X-Forwarded-Host / X-Forwarded-Proto combinations a TLS proxy sends. Webhook Rules
//! SharedKey signatures (`X-Twilio-Webhooks-Signature-Settings`, HMAC-SHA1 or HMAC-SHA256) are
//! checked against the same package.

use std::time::Duration;

use serde_json::json;

use cotrackpro_voice::twilio::signature::{self as twilio_signature, Algorithm, WebhookKeys};

use crate::support::{
    owned, run_interop, send_raw, serve_binary, TempDir, TestServer, AUTH_TOKEN, DOMAIN,
};

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
        // An outbound call's status callback, with its placement nonce.
        (
            "tok",
            "https://voice.example.com/call/status?placement=0123456789abcdef0123456789abcdef",
            owned(CALL_FORM),
        ),
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

// ---- Webhook Rules SharedKey signatures ----

const SHARED_KEY: &str = "webhooks-sharedkey-secret-0123456789";
const SHA256_SETTINGS: &str = "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256";
const SHA1_SETTINGS: &str = "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA1";

/// The algorithm we read from a settings header: what we sign with (`None`: refused).
fn our_algorithm(settings: &str) -> Option<Algorithm> {
    twilio_signature::shared_key_settings(Some(settings))
        .and_then(|s| Algorithm::from_name(&s.algorithm))
}

#[test]
fn shared_key_signatures_are_twilios() {
    let settings = [
        SHA256_SETTINGS,
        SHA1_SETTINGS,
        " algorithm = hmac_sha256 , key=k",
        "key=webhooks_sharedkey_0123",
        "key=k,algorithm=",
        "key=k,algorithm=HMAC_SHA512",
    ];
    let requests = [
        (
            "https://voice.example.com/call/incoming?role=judge",
            owned(CALL_FORM),
        ),
        ("https://voice.example.com/call/status", vec![]),
        (
            "https://voice.example.com:8443/x",
            owned(&[("E", "b"), ("E", "a"), ("Name", "Zoë ✓")]),
        ),
    ];
    let mut cases = Vec::new();
    for settings in settings {
        for (url, params) in &requests {
            cases.push((settings, *url, params.clone()));
        }
    }
    let input = json!({ "cases": cases.iter().map(|(settings, url, params)| json!({
        "secret": SHARED_KEY, "settings": settings, "url": url, "params": params,
    })).collect::<Vec<_>>() });
    let output = run_interop("shared_key", &input);
    for (idx, (settings, url, params)) in cases.iter().enumerate() {
        let theirs = &output["results"][idx];
        let ours = our_algorithm(settings);
        // Same algorithm, or both refuse it.
        assert_eq!(
            ours.map(|a| a.name().to_string()),
            theirs["signature"]
                .as_str()
                .map(|_| theirs["algorithm"].as_str().unwrap().to_ascii_uppercase()),
            "algorithm for {settings:?}"
        );
        if let Some(alg) = ours {
            assert_eq!(
                twilio_signature::compute_with(alg, SHARED_KEY, url, params),
                theirs["signature"].as_str().unwrap(),
                "signature for {settings:?} {url}"
            );
        }
    }
    // SHA-256 really is in use: a 32-byte MAC, different from the SHA-1 one.
    let (url, params) = &requests[0];
    let sha256 = twilio_signature::compute_with(Algorithm::HmacSha256, SHARED_KEY, url, params);
    let sha1 = twilio_signature::compute_with(Algorithm::HmacSha1, SHARED_KEY, url, params);
    assert_eq!(sha256.len(), 44);
    assert_ne!(sha256, sha1);
}

/// A SharedKey webhook: what was signed (secret, algorithm, parameters), what the settings
/// header says, what arrived, and the verdict Twilio gives.
struct SharedKeyCase {
    name: String,
    secret: &'static str,
    signed_with: Algorithm,
    settings: &'static str,
    signed: Vec<(String, String)>,
    received: Vec<(String, String)>,
    expected: bool,
}

#[test]
fn shared_key_verdicts_are_twilios() {
    let url = "https://voice.example.com/call/incoming?role=judge&direction=inbound";
    let form = owned(CALL_FORM);
    let mut changed = form.clone();
    changed[4].1 = "completed".into();
    let mut cases = Vec::new();
    for (alg, settings) in [
        (Algorithm::HmacSha256, SHA256_SETTINGS),
        (Algorithm::HmacSha1, SHA1_SETTINGS),
    ] {
        let case =
            |name: &str, secret, signed: &Vec<_>, received: &Vec<_>, expected| SharedKeyCase {
                name: format!("{} {name}", alg.name()),
                secret,
                signed_with: alg,
                settings,
                signed: signed.clone(),
                received: received.clone(),
                expected,
            };
        cases.push(case("valid", SHARED_KEY, &form, &form, true));
        cases.push(case("wrong key", "not-the-shared-key", &form, &form, false));
        cases.push(case("auth token instead", AUTH_TOKEN, &form, &form, false));
        cases.push(case(
            "changed parameter",
            SHARED_KEY,
            &form,
            &changed,
            false,
        ));
        cases.push(case("empty body", SHARED_KEY, &vec![], &vec![], true));
    }
    let extra = |name: &str, signed_with, settings, expected| SharedKeyCase {
        name: name.to_string(),
        secret: SHARED_KEY,
        signed_with,
        settings,
        signed: form.clone(),
        received: form.clone(),
        expected,
    };
    cases.push(extra(
        "SHA-1 MAC, SHA-256 named",
        Algorithm::HmacSha1,
        SHA256_SETTINGS,
        false,
    ));
    cases.push(extra(
        "SHA-256 MAC, SHA-1 named",
        Algorithm::HmacSha256,
        SHA1_SETTINGS,
        false,
    ));
    cases.push(extra(
        "lower-case name",
        Algorithm::HmacSha256,
        "key=k,algorithm=hmac_sha256",
        true,
    ));
    cases.push(extra(
        "no algorithm named: SHA-1",
        Algorithm::HmacSha1,
        "key=k",
        true,
    ));
    cases.push(extra(
        "unsupported algorithm",
        Algorithm::HmacSha256,
        "key=k,algorithm=HMAC_SHA512",
        false,
    ));
    let signature =
        |c: &SharedKeyCase| twilio_signature::compute_with(c.signed_with, c.secret, url, &c.signed);
    let input = json!({ "cases": cases.iter().map(|c| json!({
        "secret": SHARED_KEY,
        "settings": c.settings,
        "url": url,
        "params": c.received,
        "signature": signature(c),
    })).collect::<Vec<_>>() });
    let output = run_interop("shared_key", &input);
    let keys = WebhookKeys {
        auth_token: AUTH_TOKEN,
        shared_key: Some(SHARED_KEY),
    };
    for (idx, c) in cases.iter().enumerate() {
        let ours = twilio_signature::verify_webhook(
            keys,
            Some(c.settings),
            Some(&signature(c)),
            &[url.to_string()],
            &c.received,
        );
        let theirs = output["results"][idx]["valid"].as_bool().unwrap();
        assert_eq!(theirs, c.expected, "twilio's verdict on {}", c.name);
        assert_eq!(
            ours.is_ok(),
            theirs,
            "our verdict on {} differs from twilio's: {ours:?}",
            c.name
        );
    }
}

fn post_shared_key(server: &TestServer, settings: Option<&str>, signature: &str) -> u16 {
    let mut req = server
        .request("POST", "/call/status")
        .header("Host", DOMAIN)
        .header("X-Twilio-Signature", signature)
        .form(CALL_FORM);
    if let Some(settings) = settings {
        req = req.header("X-Twilio-Webhooks-Signature-Settings", settings);
    }
    req.send().status
}

#[test]
fn the_gate_verifies_shared_key_webhooks() {
    let server = TestServer::start(&[
        ("VALIDATE_TWILIO_SIGNATURE", "true"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("TWILIO_WEBHOOK_SHARED_KEY", SHARED_KEY),
    ]);
    let url = format!("https://{DOMAIN}/call/status");
    let form = owned(CALL_FORM);
    let sign = |alg, key| twilio_signature::compute_with(alg, key, &url, &form);
    let sha256 = sign(Algorithm::HmacSha256, SHARED_KEY);
    let sha1 = sign(Algorithm::HmacSha1, SHARED_KEY);
    let by_token = sign(Algorithm::HmacSha1, AUTH_TOKEN);
    assert_eq!(
        post_shared_key(&server, Some(SHA256_SETTINGS), &sha256),
        204
    );
    assert_eq!(post_shared_key(&server, Some(SHA1_SETTINGS), &sha1), 204);
    // The auth-token path is unchanged when the header is absent …
    assert_eq!(post_shared_key(&server, None, &by_token), 204);
    assert_eq!(post_shared_key(&server, None, &sha1), 403);
    // … and the auth token signs nothing once the header says SharedKey.
    assert_eq!(
        post_shared_key(&server, Some(SHA1_SETTINGS), &by_token),
        403
    );
    assert_eq!(post_shared_key(&server, Some(SHA256_SETTINGS), &sha1), 403);
    assert_eq!(
        post_shared_key(&server, Some("key=k,algorithm=HMAC_SHA512"), &sha256),
        403
    );
    let wrong = sign(Algorithm::HmacSha256, "not-the-shared-key");
    assert_eq!(post_shared_key(&server, Some(SHA256_SETTINGS), &wrong), 403);
}

#[test]
fn a_shared_key_webhook_without_the_configured_key_is_refused_and_logged() {
    let records = TempDir::new("sig-shared-key");
    let (server, addr, _) = serve_binary(
        &records,
        &[
            ("VALIDATE_TWILIO_SIGNATURE", "true"),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ],
    );
    let url = format!("https://{DOMAIN}/call/incoming");
    let params = owned(&[("CallSid", "CA0123456789abcdef0123456789abcdef")]);
    let signature =
        twilio_signature::compute_with(Algorithm::HmacSha256, SHARED_KEY, &url, &params);
    let res = send_raw(
        addr,
        "POST",
        "/call/incoming",
        &[
            ("Host".into(), DOMAIN.into()),
            ("X-Twilio-Signature".into(), signature.clone()),
            (
                "X-Twilio-Webhooks-Signature-Settings".into(),
                SHA256_SETTINGS.into(),
            ),
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        b"CallSid=CA0123456789abcdef0123456789abcdef",
    );
    assert_eq!(res.status, 403);
    let warning = server.wait_for_line("the signature warning", |l| {
        l.contains("Invalid Twilio signature")
    });
    let warning: serde_json::Value = serde_json::from_str(&warning).unwrap();
    let reason = warning["reason"].as_str().unwrap();
    assert!(
        reason.contains("TWILIO_WEBHOOK_SHARED_KEY is not set")
            && reason.contains("webhooks_sharedkey_0123")
            && reason.contains("HMAC_SHA256"),
        "{reason}"
    );
    let rest = server.drain(Duration::from_millis(200));
    assert!(rest.iter().all(|l| !l.contains(&signature)));
}

#[test]
fn a_placement_nonce_in_the_status_callback_url_is_covered_by_the_signature() {
    // Twilio signs the StatusCallback URL as we gave it, query included: the nonce cannot be
    // added, changed or dropped without breaking the signature, by Twilio's verdict and ours.
    let nonce = "0123456789abcdef0123456789abcdef";
    let with_nonce = format!("https://{DOMAIN}/call/status?placement={nonce}");
    let other_nonce = format!("https://{DOMAIN}/call/status?placement={}", "f".repeat(32));
    let without = format!("https://{DOMAIN}/call/status");
    let params = owned(CALL_FORM);
    let cases = [
        (&with_nonce, &with_nonce, true),
        (&without, &with_nonce, false),
        (&other_nonce, &with_nonce, false),
        (&with_nonce, &without, false),
    ];
    let input = json!({ "cases": cases.iter().map(|(signed, received, _)| json!({
        "token": AUTH_TOKEN,
        "url": received,
        "params": params,
        "signature": twilio_signature::compute(AUTH_TOKEN, signed, &params),
    })).collect::<Vec<_>>() });
    let output = run_interop("signatures", &input);
    for (idx, (signed, received, expected)) in cases.iter().enumerate() {
        let theirs = output["results"][idx]["valid"].as_bool().unwrap();
        let ours = twilio_signature::verify(
            AUTH_TOKEN,
            Some(&twilio_signature::compute(AUTH_TOKEN, signed, &params)),
            &[received.to_string()],
            &params,
        )
        .is_ok();
        assert_eq!(
            theirs, *expected,
            "twilio: signed {signed}, received {received}"
        );
        assert_eq!(ours, theirs, "ours: signed {signed}, received {received}");
    }

    // And the running server's gate, which rebuilds the URL from the request line.
    let server = TestServer::with_signatures();
    let path = format!("/call/status?placement={nonce}");
    assert_eq!(
        post_signed(&server, &path, &with_nonce, &[("Host", DOMAIN)]),
        204
    );
    assert_eq!(
        post_signed(&server, &path, &without, &[("Host", DOMAIN)]),
        403
    );
    assert_eq!(
        post_signed(&server, &path, &other_nonce, &[("Host", DOMAIN)]),
        403
    );
}
