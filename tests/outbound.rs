//! `POST /call/outbound` against the Twilio REST simulator.

use std::time::Duration;

use cotrackpro_voice::outbound::placements;
use cotrackpro_voice::records::event::{CallRecord, CallStatus, Direction};
use cotrackpro_voice::records::index::sid_key;
use cotrackpro_voice::sim::twilio::TwilioSim;
use cotrackpro_voice::sim::{SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN};
use serde_json::{json, Value};

use crate::support::{HttpResponse, TempDir, TestServer, DOMAIN};

const KEY: &str = "outbound-test-key-0123456789abcdef";
const FROM: &str = "+12125550100";

struct Outbound {
    twilio: TwilioSim,
    server: TestServer,
}

impl Outbound {
    fn start(extra: &[(&str, &str)]) -> Outbound {
        let twilio = TwilioSim::start(SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN).expect("sim");
        let base = twilio.base_url();
        let mut env = vec![
            ("OUTBOUND_API_KEY", KEY),
            ("TWILIO_API_BASE", base.as_str()),
            ("TWILIO_ACCOUNT_SID", SIM_TWILIO_ACCOUNT_SID),
            ("TWILIO_AUTH_TOKEN", SIM_TWILIO_AUTH_TOKEN),
            ("TWILIO_PHONE_NUMBER", FROM),
        ];
        env.extend_from_slice(extra);
        let server = TestServer::start(&env);
        Outbound { twilio, server }
    }

    fn call(&self, body: &Value, key: Option<&str>) -> HttpResponse {
        let mut request = self
            .server
            .request("POST", "/call/outbound")
            .header("Authorization", &format!("Bearer {KEY}"))
            .header("Content-Type", "application/json")
            .body(body.to_string().as_bytes());
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    }
}

#[test]
fn places_the_call_and_records_it() {
    let rig = Outbound::start(&[]);
    let res = rig.call(&json!({"to": "+14165550123", "role": "attorney"}), None);
    assert_eq!(res.status, 200, "{}", res.body);
    let body = res.json();
    assert_eq!(body["success"], json!(true));
    assert_eq!(body["to"], json!("+14165550123"));
    assert_eq!(body["role"], json!("attorney"));
    assert!(
        res.header("X-Idempotent-Replay").is_none(),
        "no key, no header"
    );
    let created = rig.twilio.created();
    assert_eq!(created.len(), 1);
    let call = &created[0];
    assert_eq!(body["callSid"], json!(call.sid));
    assert_eq!(call.field("To"), Some("+14165550123"));
    assert_eq!(call.field("From"), Some(FROM));
    assert_eq!(
        call.field("Url"),
        Some(format!("https://{DOMAIN}/call/incoming?role=attorney").as_str())
    );
    // The callback URL names the placement (see `a_status_callback_that_beats_…`).
    let nonce = call
        .field("StatusCallback")
        .and_then(|url| url.strip_prefix(&format!("https://{DOMAIN}/call/status?placement=")))
        .expect("the callback URL with its placement nonce");
    assert!(placements::is_nonce(nonce), "{nonce}");
    assert_eq!(
        call.fields("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    let record = record_of(&rig, &call.sid);
    assert_eq!(record.direction, Direction::Outbound);
    assert_eq!(record.role, "attorney");
    assert_eq!(record.caller_number, "+1***0123");
    assert_eq!(record.twilio_status.as_deref(), Some("queued"));
    let now = cotrackpro_voice::timestamp::now_ms();
    assert_eq!(
        placements::shared().get(nonce, now),
        None,
        "the call has its record: its placement is forgotten"
    );
}

#[test]
fn authentication_needs_a_positive_match() {
    let rig = Outbound::start(&[]);
    for header in [None, Some("Bearer wrong-key-0123456789abcdef"), Some(KEY)] {
        let mut request = rig.server.request("POST", "/call/outbound");
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let res = request.body(br#"{"to":"+12125550123"}"#).send();
        assert_eq!(res.status, 401, "{header:?}");
        assert_eq!(res.header("WWW-Authenticate"), Some("Bearer"));
    }
    assert!(rig.twilio.created().is_empty());

    // No key configured: refused even in development (never an open dialler).
    let open = TestServer::start(&[]);
    let res = open
        .request("POST", "/call/outbound")
        .body(br#"{"to":"+12125550123"}"#)
        .send();
    assert_eq!(res.status, 503);
    assert!(res.body.contains("OUTBOUND_API_KEY"));
}

#[test]
fn numbers_roles_and_bodies_are_checked_before_twilio() {
    let rig = Outbound::start(&[]);
    for (body, detail) in [
        (json!({"to": "+18765550123"}), "JM"),
        (json!({"to": "+19005550123"}), "Premium"),
        (json!({"to": "+442071838750"}), "GB"),
        (json!({"to": "2125550123"}), "E.164"),
        (json!({"to": "+1 212 555 0123"}), "E.164"),
    ] {
        let res = rig.call(&body, None);
        assert_eq!(res.status, 400, "{body}");
        assert_eq!(
            res.json()["error"],
            json!("Invalid destination phone number")
        );
        assert!(
            res.json()["details"]
                .as_str()
                .is_some_and(|d| d.contains(detail)),
            "{}",
            res.body
        );
    }
    assert_eq!(
        rig.call(&json!({"role": "judge"}), None).json()["error"],
        json!("Missing 'to' phone number")
    );
    assert_eq!(
        rig.call(&json!({"to": "+12125550123", "role": "pirate"}), None)
            .status,
        400
    );
    assert_eq!(rig.call(&json!([1, 2]), None).status, 400);
    let res = rig.call(&json!({"to": "+12125550123"}), Some(""));
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"], json!("Invalid Idempotency-Key"));
    assert!(rig.twilio.created().is_empty(), "nothing reached Twilio");
    // +1 416 (Canada) and +1 212 (US) pass under US,CA; the role defaults.
    assert_eq!(rig.call(&json!({"to": "+14165550123"}), None).status, 200);
    let res = rig.call(&json!({"to": "+12125550123"}), None);
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["role"], json!("parent"));
    assert_eq!(rig.twilio.created().len(), 2);
}

#[test]
fn the_rate_limit_holds_at_its_edge_and_replays_are_free() {
    let rig = Outbound::start(&[("OUTBOUND_RATE_LIMIT_PER_MIN", "2")]);
    let first = rig.call(&json!({"to": "+12125550123"}), Some("order-1"));
    assert_eq!(first.status, 200);
    assert_eq!(first.header("X-Idempotent-Replay"), Some("false"));
    for _ in 0..3 {
        let replay = rig.call(&json!({"to": "+12125550123"}), Some("order-1"));
        assert_eq!(replay.status, 200);
        assert_eq!(replay.header("X-Idempotent-Replay"), Some("true"));
        assert_eq!(replay.body, first.body, "the identical answer");
    }
    // The replays were not charged: one request is still within the budget.
    assert_eq!(rig.call(&json!({"to": "+12125550124"}), None).status, 200);
    let limited = rig.call(&json!({"to": "+12125550125"}), Some("order-2"));
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("X-Idempotent-Replay"), Some("false"));
    let retry = limited
        .header("Retry-After")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
    assert_eq!(limited.json()["retryAfterSeconds"].as_u64(), retry);
    assert_eq!(
        rig.twilio.created().len(),
        2,
        "one dial per distinct request"
    );
}

#[test]
fn one_key_names_one_request() {
    let rig = Outbound::start(&[]);
    assert_eq!(
        rig.call(&json!({"to": "+12125550123"}), Some("k-1")).status,
        200
    );
    let other = rig.call(&json!({"to": "+12125550199"}), Some("k-1"));
    assert_eq!(other.status, 422);
    assert_eq!(other.header("X-Idempotent-Replay"), Some("false"));
    // The same JSON with its keys in another order is the same request.
    let reordered = rig
        .server
        .request("POST", "/call/outbound")
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("Idempotency-Key", "k-2")
        .body(br#"{"to":"+12125550123","role":"judge"}"#)
        .send();
    assert_eq!(reordered.status, 200);
    let again = rig
        .server
        .request("POST", "/call/outbound")
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("Idempotency-Key", "k-2")
        .body(br#"{ "role": "judge", "to": "+12125550123" }"#)
        .send();
    assert_eq!(again.header("X-Idempotent-Replay"), Some("true"));
    assert_eq!(rig.twilio.created().len(), 2);
}

#[test]
fn concurrent_requests_with_one_key_dial_once() {
    let rig = Outbound::start(&[("HTTP_WORKERS", "16")]);
    rig.twilio.set_delay(Duration::from_millis(300));
    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("burst-{i}"))
                    .spawn_scoped(scope, || {
                        rig.call(&json!({"to": "+12125550123"}), Some("burst"))
                    })
                    .expect("spawn")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request"))
            .collect()
    });
    assert_eq!(rig.twilio.created().len(), 1, "exactly one create-call");
    assert!(answers.iter().all(|a| a.status == 200));
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    let fresh = answers
        .iter()
        .filter(|a| a.header("X-Idempotent-Replay") == Some("false"))
        .count();
    assert_eq!(
        fresh, 1,
        "one did the work, the others waited for its answer"
    );
}

#[test]
fn a_kept_answer_survives_a_restart() {
    let records = TempDir::new("outbound-restart");
    let dir = records.path().display().to_string();
    let twilio = TwilioSim::start(SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN).expect("sim");
    let base = twilio.base_url();
    let env = [
        ("OUTBOUND_API_KEY", KEY),
        ("TWILIO_API_BASE", base.as_str()),
        ("TWILIO_ACCOUNT_SID", SIM_TWILIO_ACCOUNT_SID),
        ("TWILIO_AUTH_TOKEN", SIM_TWILIO_AUTH_TOKEN),
        ("TWILIO_PHONE_NUMBER", FROM),
        ("RECORDS_DIR", dir.as_str()),
    ];
    let rig = Outbound {
        twilio,
        server: TestServer::start(&env),
    };
    let first = rig.call(&json!({"to": "+12125550123"}), Some("survivor"));
    assert_eq!(first.status, 200);
    // The server stops and a new one starts on the same records directory.
    let Outbound { twilio, server } = rig;
    drop(server);
    let rig = Outbound {
        twilio,
        server: TestServer::start(&env),
    };
    let replay = rig.call(&json!({"to": "+12125550123"}), Some("survivor"));
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("X-Idempotent-Replay"), Some("true"));
    assert_eq!(replay.body, first.body);
    assert_eq!(
        rig.twilio.created().len(),
        1,
        "dialled once, before the restart"
    );
}

#[test]
fn twilio_errors_are_mapped_and_only_deterministic_ones_kept() {
    let rig = Outbound::start(&[]);
    rig.twilio
        .fail_next(400, 21211, "Invalid 'To' Phone Number");
    let refused = rig.call(&json!({"to": "+12125550123"}), Some("t-1"));
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.json()["twilioCode"], json!(21211));
    let replay = rig.call(&json!({"to": "+12125550123"}), Some("t-1"));
    assert_eq!(
        (replay.status, replay.header("X-Idempotent-Replay")),
        (422, Some("true"))
    );

    rig.twilio.fail_next(500, 20500, "Internal Server Error");
    let failed = rig.call(&json!({"to": "+12125550123"}), Some("t-2"));
    assert_eq!(failed.status, 502);
    // Not kept: the retry does the work.
    let retried = rig.call(&json!({"to": "+12125550123"}), Some("t-2"));
    assert_eq!(
        (retried.status, retried.header("X-Idempotent-Replay")),
        (200, Some("false"))
    );

    rig.twilio.fail_next(401, 20003, "Authenticate");
    let ours = rig.call(&json!({"to": "+12125550123"}), None);
    assert_eq!(ours.status, 502);
    assert!(ours.body.contains("credentials"));
}

#[test]
fn the_operator_script_places_a_call_and_retries_safely() {
    let rig = Outbound::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/place-call");
    let run = |key: Option<&str>| {
        let mut command = std::process::Command::new("sh");
        command
            .arg(script)
            .args(["+14165550123", "judge"])
            .env("OUTBOUND_API_KEY", KEY)
            .env("VOICE_URL", format!("http://{}", rig.server.addr));
        if let Some(key) = key {
            command.env("IDEMPOTENCY_KEY", key);
        }
        command.output().expect("the script runs")
    };
    let first = run(None);
    let stdout = String::from_utf8_lossy(&first.stdout).to_string();
    let stderr = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(first.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("\"callSid\":\"CA") && stdout.contains("HTTP 200"),
        "{stdout}"
    );
    let key = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Idempotency-Key: "))
        .expect("the key is printed");
    assert_eq!(key.len(), 32);
    let retry = run(Some(key));
    assert_eq!(
        String::from_utf8_lossy(&retry.stdout),
        stdout,
        "the retry replays the answer"
    );
    assert_eq!(rig.twilio.created().len(), 1);

    let refused = std::process::Command::new("sh")
        .arg(script)
        .args(["+1212\"; rm -rf x", "judge"])
        .env("OUTBOUND_API_KEY", KEY)
        .output()
        .expect("the script runs");
    assert_eq!(refused.status.code(), Some(2));
}

/// Sleeps until `secs_into` seconds past the next minute boundary of the wall clock.
fn sleep_into_next_minute(secs_into: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let next = (now / 60.0).floor() * 60.0 + 60.0 + secs_into;
    std::thread::sleep(Duration::from_secs_f64(next - now));
}

#[test]
fn the_minute_window_rolls_over() {
    let rig = Outbound::start(&[("OUTBOUND_RATE_LIMIT_PER_MIN", "1")]);
    let seconds_into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if seconds_into_minute > 50 {
        sleep_into_next_minute(0.2);
    }
    assert_eq!(rig.call(&json!({"to": "+12125550123"}), None).status, 200);
    let limited = rig.call(&json!({"to": "+12125550124"}), None);
    assert_eq!(limited.status, 429);
    sleep_into_next_minute(0.2);
    assert_eq!(rig.call(&json!({"to": "+12125550125"}), None).status, 200);
    assert_eq!(rig.twilio.created().len(), 2);
}

#[test]
fn outbound_requests_never_take_every_worker() {
    // Four workers: at most two may wait on Twilio; webhooks are still answered meanwhile.
    let rig = Outbound::start(&[]);
    rig.twilio.set_delay(Duration::from_millis(800));
    let (answers, health) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let rig = &rig;
                std::thread::Builder::new()
                    .name(format!("busy-{i}"))
                    .spawn_scoped(scope, move || {
                        rig.call(&json!({"to": format!("+1212555012{i}")}), None)
                    })
                    .expect("spawn")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let health = rig.server.request("GET", "/health").send();
        let answers: Vec<HttpResponse> = handles
            .into_iter()
            .map(|h| h.join().expect("request"))
            .collect();
        (answers, health)
    });
    assert_eq!(
        health.status, 200,
        "a webhook is answered while Twilio is slow"
    );
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503]);
    let busy = answers
        .iter()
        .find(|a| a.status == 503)
        .expect("one busy answer");
    assert_eq!(busy.header("Retry-After"), Some("1"));
}

#[test]
fn a_twin_that_waits_too_long_gets_409_and_the_call_is_still_placed_once() {
    let rig = Outbound::start(&[
        ("OUTBOUND_IDEMPOTENCY_WAIT_MS", "200"),
        ("HTTP_WORKERS", "8"),
    ]);
    rig.twilio.set_delay(Duration::from_millis(1000));
    let (first, twin) = std::thread::scope(|scope| {
        let first = std::thread::Builder::new()
            .name("slow-first".into())
            .spawn_scoped(scope, || {
                rig.call(&json!({"to": "+12125550123"}), Some("slow"))
            })
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(150));
        let twin = rig.call(&json!({"to": "+12125550123"}), Some("slow"));
        (first.join().expect("first"), twin)
    });
    assert_eq!(first.status, 200);
    assert_eq!(twin.status, 409, "{}", twin.body);
    assert_eq!(twin.header("Retry-After"), Some("2"));
    assert_eq!(twin.header("X-Idempotent-Replay"), Some("false"));
    let later = rig.call(&json!({"to": "+12125550123"}), Some("slow"));
    assert_eq!(
        (later.status, later.header("X-Idempotent-Replay")),
        (200, Some("true"))
    );
    assert_eq!(rig.twilio.created().len(), 1);
}

fn record_of(rig: &Outbound, sid: &str) -> CallRecord {
    rig.server
        .records()
        .get(&sid_key(sid).expect("sid"))
        .expect("readable")
        .expect("a record")
}

/// Posts a status callback signed by the simulator's Twilio account, as Twilio would.
fn post_status(rig: &Outbound, path: &str, call_sid: &str, status: &str) -> u16 {
    let form = [
        ("CallSid", call_sid),
        ("AccountSid", SIM_TWILIO_ACCOUNT_SID),
        ("CallStatus", status),
        ("Direction", "outbound-api"),
    ];
    let signed = cotrackpro_voice::twilio::signature::compute(
        SIM_TWILIO_AUTH_TOKEN,
        &format!("https://{DOMAIN}{path}"),
        &crate::support::owned(&form),
    );
    rig.server
        .request("POST", path)
        .header("X-Twilio-Signature", &signed)
        .form(&form)
        .send()
        .status
}

#[test]
fn a_status_callback_that_beats_the_create_answer_makes_the_record() {
    let rig = Outbound::start(&[("VALIDATE_TWILIO_SIGNATURE", "true")]);
    rig.twilio
        .callback_before_answering(&format!("http://{}", rig.server.addr));
    let res = rig.call(&json!({"to": "+14165550123", "role": "attorney"}), None);
    assert_eq!(res.status, 200, "{}", res.body);
    let sid = res.json()["callSid"].as_str().expect("a sid").to_string();
    assert_eq!(
        rig.twilio.early_callbacks(),
        [(sid.clone(), 204)],
        "the signed callback reached us before the create was answered"
    );

    let created = rig.twilio.created();
    let callback_url = created[0].field("StatusCallback").expect("a callback URL");
    let nonce = callback_url
        .strip_prefix(&format!("https://{DOMAIN}/call/status?placement="))
        .expect("the placement nonce is in the callback URL");
    assert!(placements::is_nonce(nonce), "{callback_url}");

    // The callback wrote the record place_call would have, and its status stuck: the
    // create's own `queued` did not move it back.
    let record = record_of(&rig, &sid);
    assert_eq!(record.direction, Direction::Outbound);
    assert_eq!(record.role, "attorney");
    assert_eq!(record.caller_number, "+1***0123");
    assert_eq!(record.twilio_status.as_deref(), Some("initiated"));
    assert_eq!(record.status, CallStatus::Active);
    let lines = std::fs::read_to_string(rig.server.records().path()).expect("records file");
    let created_lines = lines
        .lines()
        .filter(|l| l.contains(&sid) && l.contains(r#""event":"created""#))
        .count();
    assert_eq!(
        created_lines, 1,
        "place_call did not write a second record:\n{lines}"
    );

    // The nonce is spent once the record exists: it makes no record for another call.
    let now = cotrackpro_voice::timestamp::now_ms();
    assert_eq!(placements::shared().get(nonce, now), None);
    let path = format!("/call/status?placement={nonce}");
    let stranger = "CAffffffffffffffffffffffffffffffff";
    assert_eq!(post_status(&rig, &path, stranger, "initiated"), 204);
    // Nor does a nonce never handed out, nor none at all.
    let forged = format!("/call/status?placement={}", placements::new_nonce());
    assert_eq!(post_status(&rig, &forged, stranger, "initiated"), 204);
    assert_eq!(post_status(&rig, "/call/status", stranger, "ringing"), 204);
    let key = sid_key(stranger).expect("sid");
    assert!(rig.server.records().get(&key).expect("readable").is_none());

    // Later callbacks carry the same URL and go on updating the call's record.
    assert_eq!(post_status(&rig, &path, &sid, "completed"), 204);
    let record = record_of(&rig, &sid);
    assert_eq!(record.status, CallStatus::Completed);
}
