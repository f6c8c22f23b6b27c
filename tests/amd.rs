//! Answering-machine detection on outbound calls, end to end: `POST /call/outbound` asks
//! Twilio (the simulator) for it, the simulator carries the call out against the server and
//! posts the signed result to `/call/amd`; a machine hears the voicemail message and the
//! server hangs up, a person carries on. Also the webhook's own checks.

use std::time::{Duration, Instant};

use cotrackpro_voice::personas::Role;
use cotrackpro_voice::records::event::{CallStatus, Direction, Event};
use cotrackpro_voice::records::index::sid_key;
use cotrackpro_voice::sim::twilio::{AnsweredCall, Callee, CreatedCall};
use cotrackpro_voice::twilio::signature;
use serde_json::json;

use crate::call::{heard, Rig};
use crate::support::{owned, TestServer, AUTH_TOKEN, DOMAIN};

const API_KEY: &str = "outbound-api-key-for-amd-tests";
const MACHINE: &str = "+14165550123";
const PERSON: &str = "+14165550199";
const MESSAGE: &str = "This is a test message. Please call us back.";
const WAIT: Duration = Duration::from_secs(20);

fn rig(extra: &[(&str, &str)]) -> Rig {
    let mut env = vec![
        ("VALIDATE_TWILIO_SIGNATURE", "true"),
        ("OUTBOUND_API_KEY", API_KEY),
        ("TWILIO_PHONE_NUMBER", "+12125550100"),
        ("VOICEMAIL_MESSAGE", MESSAGE),
    ];
    env.extend_from_slice(extra);
    let rig = Rig::start(&env);
    rig.sims.twilio.dial_into(Callee {
        http_base: format!("http://{}", rig.server.addr),
        media_addr: rig.server.media_addr,
        playback_speed: 25,
    });
    rig.sims.twilio.answer_as(MACHINE, "machine_end_beep");
    rig.sims.twilio.set_amd_delay(Duration::from_millis(300));
    rig
}

/// Places a call through the API; returns its SID.
fn place(rig: &Rig, body: serde_json::Value) -> String {
    let res = rig
        .server
        .request("POST", "/call/outbound")
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .header("Content-Type", "application/json")
        .body(body.to_string().as_bytes())
        .send();
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["callSid"]
        .as_str()
        .expect("a call sid")
        .to_string()
}

/// Waits for the simulator to have carried out the call `sid`.
fn carried_out(rig: &Rig, sid: &str) -> AnsweredCall {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(call) = rig
            .sims
            .twilio
            .answered()
            .into_iter()
            .find(|c| c.sid == sid)
        {
            return call;
        }
        assert!(Instant::now() < deadline, "the call was not carried out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn created(rig: &Rig, sid: &str) -> CreatedCall {
    rig.sims
        .twilio
        .created()
        .into_iter()
        .find(|c| c.sid == sid)
        .expect("the call was created")
}

#[test]
fn a_machine_hears_the_message_after_the_beep_and_the_server_hangs_up() {
    let rig = rig(&[]);
    let sid = place(
        &rig,
        json!({ "to": MACHINE, "role": "attorney", "machineDetection": true }),
    );
    let form = created(&rig, &sid);
    assert_eq!(form.field("MachineDetection"), Some("DetectMessageEnd"));
    assert_eq!(form.field("AsyncAmd"), Some("true"));
    let amd_url = format!("https://{DOMAIN}/call/amd");
    assert_eq!(form.field("AsyncAmdStatusCallback"), Some(amd_url.as_str()));
    assert_eq!(form.field("AsyncAmdStatusCallbackMethod"), Some("POST"));

    let call = carried_out(&rig, &sid);
    assert_eq!(call.error, None, "{call:?}");
    assert_eq!(
        call.amd_callback,
        Some(("machine_end_beep".to_string(), 204)),
        "the signed result was taken"
    );
    assert!(call.server_hung_up, "the server ended the call: {call:?}");
    let record = rig.record_after_end(&sid);
    assert_eq!(record.answered_by.as_deref(), Some("machine_end_beep"));
    assert_eq!(record.status, CallStatus::Completed);
    let said = heard(&record);
    assert_eq!(
        said.last().map(String::as_str),
        Some(MESSAGE),
        "the message was heard to its end: {said:?}"
    );
    assert_eq!(
        record.end_reason.as_deref(),
        Some("answering machine: voicemail left"),
        "{record:?}"
    );
    assert_eq!(record.ended_by.as_deref(), Some("system"), "{record:?}");
}

#[test]
fn a_person_carries_on_as_without_detection() {
    // Detection by default; the request does not say.
    let rig = rig(&[("OUTBOUND_MACHINE_DETECTION", "on")]);
    let sid = place(&rig, json!({ "to": PERSON, "role": "attorney" }));
    assert_eq!(
        created(&rig, &sid).field("MachineDetection"),
        Some("DetectMessageEnd")
    );
    let call = carried_out(&rig, &sid);
    assert_eq!(call.error, None, "{call:?}");
    assert_eq!(call.amd_callback, Some(("human".to_string(), 204)));
    assert!(call.heard_greeting, "{call:?}");
    assert!(!call.server_hung_up, "the person hung up, not us: {call:?}");
    let record = rig.record_after_end(&sid);
    assert_eq!(record.answered_by.as_deref(), Some("human"));
    assert_eq!(record.status, CallStatus::Completed);
    assert!(
        !heard(&record).iter().any(|t| t == MESSAGE),
        "{:?}",
        heard(&record)
    );
}

#[test]
fn a_request_can_turn_detection_off_and_must_say_it_plainly() {
    let rig = Rig::start(&[
        ("OUTBOUND_API_KEY", API_KEY),
        ("TWILIO_PHONE_NUMBER", "+12125550100"),
        ("OUTBOUND_MACHINE_DETECTION", "on"),
    ]);
    let sid = place(&rig, json!({ "to": PERSON, "machineDetection": false }));
    let form = created(&rig, &sid);
    assert_eq!(form.field("MachineDetection"), None);
    assert_eq!(form.field("AsyncAmdStatusCallback"), None);
    let res = rig
        .server
        .request("POST", "/call/outbound")
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .body(
            json!({ "to": PERSON, "machineDetection": "yes" })
                .to_string()
                .as_bytes(),
        )
        .send();
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.body.contains("machineDetection"), "{}", res.body);
}

fn post_amd(server: &TestServer, params: &[(&str, &str)], signed: bool) -> u16 {
    let params = owned(params);
    let url = format!("https://{DOMAIN}/call/amd");
    let mut req = server.request("POST", "/call/amd");
    if signed {
        req = req.header(
            "X-Twilio-Signature",
            &signature::compute(AUTH_TOKEN, &url, &params),
        );
    }
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    req.form(&pairs).send().status
}

#[test]
fn the_webhook_takes_only_signed_results_of_twilios_and_records_the_first() {
    let server = TestServer::with_signatures();
    let sid = "CA00000000000000000000000000000a1d";
    // The record placing the call wrote.
    let now = cotrackpro_voice::timestamp::now_ms();
    let placed = Event::created(
        sid,
        Role::Attorney,
        Direction::Outbound,
        "+1***0123",
        now,
        now / 1000 + 86_400,
    );
    server.records().append(&placed).unwrap();
    let form = |by: &'static str| {
        vec![
            ("CallSid", sid),
            ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ("AnsweredBy", by),
            ("MachineDetectionDuration", "2400"),
        ]
    };
    assert_eq!(post_amd(&server, &form("human"), false), 403, "unsigned");
    assert_eq!(post_amd(&server, &form("robot"), true), 400, "not Twilio's");
    assert_eq!(post_amd(&server, &form("machine_end_silence"), true), 204);
    assert_eq!(
        post_amd(&server, &form("human"), true),
        204,
        "a repeat is fine"
    );
    let record = server
        .records()
        .get(&sid_key(sid).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(record.answered_by.as_deref(), Some("machine_end_silence"));
    // A call we never placed gets no record.
    let stranger = "CA00000000000000000000000000000b2e";
    let mut other = form("human");
    other[0] = ("CallSid", stranger);
    assert_eq!(post_amd(&server, &other, true), 204);
    assert!(server
        .records()
        .get(&sid_key(stranger).unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn the_twilio_simulator_refuses_a_detection_mode_twilio_does_not_know() {
    use cotrackpro_voice::sim::{SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN};
    let sim = cotrackpro_voice::sim::twilio::TwilioSim::start(
        SIM_TWILIO_ACCOUNT_SID,
        SIM_TWILIO_AUTH_TOKEN,
    )
    .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!(
        "{}/2010-04-01/Accounts/{SIM_TWILIO_ACCOUNT_SID}/Calls.json",
        sim.base_url()
    );
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{SIM_TWILIO_ACCOUNT_SID}:{SIM_TWILIO_AUTH_TOKEN}"),
    );
    let response = agent
        .post(&url)
        .header("Authorization", &format!("Basic {credentials}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(
            "To=%2B14165550123&From=%2B12125550100&Url=https%3A%2F%2Fvoice.example.com%2Fcall%2Fincoming\
             &MachineDetection=Always",
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value =
        serde_json::from_str(&response.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(body["code"], 21234);
    assert_eq!(body["status"], 400);
    assert!(sim.created().is_empty(), "no call was created");
}
