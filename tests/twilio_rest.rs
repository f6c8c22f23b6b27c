//! The Twilio REST client against the simulator: create a call with the documented form
//! fields, update (hang up, redirect), and Twilio's errors mapped to ours.

use cotrackpro_voice::config::Secret;
use cotrackpro_voice::sim::twilio::TwilioSim;
use cotrackpro_voice::twilio::rest::{CallUpdate, CreateCall, TwilioError, TwilioRest};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-for-tests";

fn call() -> CreateCall {
    CreateCall {
        to: "+14165550123".into(),
        from: "+15551230000".into(),
        url: "https://voice.example.com/call/incoming?role=attorney".into(),
        // The query (our placement nonce) must reach Twilio intact: it signs the full URL.
        status_callback: Some(
            "https://voice.example.com/call/status?placement=00ff00ff00ff00ff00ff00ff00ff00ff"
                .into(),
        ),
        status_callback_events: ["initiated", "ringing", "answered", "completed"]
            .map(String::from)
            .to_vec(),
        timeout_secs: Some(30),
        time_limit_secs: Some(7200),
        amd_callback: None,
    }
}

#[test]
fn a_call_is_created_with_the_documented_fields() {
    let sim = TwilioSim::start(SID, TOKEN).unwrap();
    let client = TwilioRest::new(&sim.base_url(), SID, Secret::new(TOKEN));
    let created = client.create_call(&call()).unwrap();
    assert!(created.sid.starts_with("CA") && created.sid.len() == 34);
    assert_eq!(created.status, "queued");
    let seen = sim.created();
    assert_eq!(seen.len(), 1);
    let form = &seen[0];
    assert_eq!(form.sid, created.sid);
    assert_eq!(form.field("To"), Some("+14165550123"));
    assert_eq!(form.field("From"), Some("+15551230000"));
    assert_eq!(
        form.field("Url"),
        Some("https://voice.example.com/call/incoming?role=attorney")
    );
    assert_eq!(
        form.field("StatusCallback"),
        Some("https://voice.example.com/call/status?placement=00ff00ff00ff00ff00ff00ff00ff00ff")
    );
    assert_eq!(form.field("StatusCallbackMethod"), Some("POST"));
    assert_eq!(
        form.fields("StatusCallbackEvent"),
        vec!["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(form.field("Timeout"), Some("30"));
    assert_eq!(form.field("TimeLimit"), Some("7200"));
    assert_eq!(form.field("Twiml"), None, "Url or Twiml, never both");
}

#[test]
fn twilio_errors_keep_their_code_and_status() {
    let sim = TwilioSim::start(SID, TOKEN).unwrap();
    let wrong = TwilioRest::new(&sim.base_url(), SID, Secret::new("not-the-token"));
    match wrong.create_call(&call()) {
        Err(TwilioError::Api {
            status: 401,
            code: 20003,
            ..
        }) => {}
        other => panic!("expected Twilio's 401/20003, got {other:?}"),
    }
    let client = TwilioRest::new(&sim.base_url(), SID, Secret::new(TOKEN));
    let mut bad = call();
    bad.to = "+1".into();
    let err = client.create_call(&bad).unwrap_err();
    assert!(err.is_client_error());
    assert!(
        matches!(&err, TwilioError::Api { status: 400, code: 21211, message, more_info: Some(_) } if message.contains("'To'"))
    );
    assert!(err.to_string().contains("21211"));

    sim.fail_next(503, 0, "Service Unavailable");
    let err = client.create_call(&call()).unwrap_err();
    assert!(!err.is_client_error());
    assert!(sim.created().is_empty());
}

#[test]
fn an_unreachable_twilio_is_a_transport_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let client = TwilioRest::new(&url, SID, Secret::new(TOKEN));
    assert!(matches!(
        client.create_call(&call()),
        Err(TwilioError::Transport(_))
    ));
}

#[test]
fn calls_can_be_hung_up_and_redirected() {
    let sim = TwilioSim::start(SID, TOKEN).unwrap();
    let client = TwilioRest::new(&sim.base_url(), SID, Secret::new(TOKEN));
    let created = client.create_call(&call()).unwrap();
    client
        .update_call(&created.sid, &CallUpdate::HangUp)
        .unwrap();
    client
        .update_call(
            &created.sid,
            &CallUpdate::Redirect("https://voice.example.com/call/incoming?role=gal".into()),
        )
        .unwrap();
    let updates = sim.updates();
    assert_eq!(updates.len(), 2);
    assert!(updates[0]
        .1
        .contains(&("Status".into(), "completed".into())));
    assert!(updates[1].1.contains(&(
        "Url".into(),
        "https://voice.example.com/call/incoming?role=gal".into()
    )));
    let unknown = format!("CA{}", "0".repeat(32));
    assert!(matches!(
        client.update_call(&unknown, &CallUpdate::HangUp),
        Err(TwilioError::Api { status: 404, .. })
    ));
    assert!(matches!(
        client.update_call("../etc", &CallUpdate::HangUp),
        Err(TwilioError::Malformed(_))
    ));
}
