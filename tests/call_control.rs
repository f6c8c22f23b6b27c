//! End-to-end: the assistant ending the call (`end_call`) and the transfer to a person
//! (`transfer_call`, the caller's `0`), through the simulators: the model's tool call, the
//! phone's marks, and the simulated Twilio REST API's call update, which ends the stream as
//! Twilio does.

use std::time::{Duration, Instant};

use cotrackpro_voice::config::DEFAULT_TRANSFER_PHRASE;
use cotrackpro_voice::personas::prompts::TRANSFER_FAILED;
use cotrackpro_voice::records::event::CallStatus;
use cotrackpro_voice::sim::anthropic::Reply;
use cotrackpro_voice::sim::caller::{Heard, SimCaller};
use serde_json::json;

use crate::call::{heard, Rig};

const WAIT: Duration = Duration::from_secs(15);
const NUMBERS: &str = r#"{"parent":"+15551234567","default":"+15557654321"}"#;

fn echoed(caller: &SimCaller, n: usize) {
    assert!(
        caller.wait_for_echoes(n, WAIT),
        "{n} pieces heard: {:?}",
        caller.log()
    );
}

/// The names of the tools the model was offered in request `i`.
fn offered(rig: &Rig, i: usize) -> Vec<String> {
    let requests = rig.sims.anthropic.requests();
    requests[i]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for the simulated Twilio to receive a call update; returns its form.
fn update_of(rig: &Rig, call_sid: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((_, form)) = rig
            .sims
            .twilio
            .updates()
            .into_iter()
            .find(|(sid, _)| sid == call_sid)
        {
            return form;
        }
        assert!(Instant::now() < deadline, "no call update for {call_sid}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn end_call_hangs_up_after_the_goodbye_has_played() {
    let rig = Rig::start(&[]);
    rig.sims.anthropic.push([Reply::ToolUse {
        preface: "Thank you for calling. Take good care.".into(),
        name: "end_call".into(),
        input: json!({"reason": "the caller said goodbye"}),
    }]);
    rig.script(&["That is all, thank you, goodbye"]);
    let caller = rig.greeted();
    caller.say("That is all, thank you, goodbye");
    assert!(caller.wait_closed(WAIT), "the server hung up");
    let log = caller.log();
    let closed_at = log
        .iter()
        .position(|(_, h)| matches!(h, Heard::Closed(_)))
        .expect("closed");
    let marks: Vec<&String> = log
        .iter()
        .filter_map(|(_, h)| match h {
            Heard::Mark(name) => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(
        marks,
        ["0-0", "1-0", "1-1"],
        "the greeting, then the goodbye's two sentences"
    );
    let last_echo = log
        .iter()
        .rposition(|(_, h)| *h == Heard::Echoed("1-1".into()))
        .expect("the goodbye's last mark came back");
    assert!(
        last_echo < closed_at,
        "closed only after the goodbye played"
    );
    assert_eq!(log[closed_at].1, Heard::Closed(Some(1000)));

    let call_sid = caller.call_sid().to_string();
    drop(caller);
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.ended_by.as_deref(), Some("assistant"));
    assert_eq!(
        record.end_reason.as_deref(),
        Some("the assistant ended the call: the caller said goodbye")
    );
    assert!(heard(&record).contains(&"Take good care.".to_string()));
    assert_eq!(
        rig.sims.anthropic.requests().len(),
        1,
        "no round after end_call"
    );
    assert_eq!(
        offered(&rig, 0)
            .iter()
            .filter(|n| n.ends_with("_call"))
            .collect::<Vec<_>>(),
        ["end_call"],
        "no transfer without a number"
    );
}

#[test]
fn transfer_call_updates_the_call_to_dial_the_roles_number() {
    let rig = Rig::start(&[("TRANSFER_NUMBERS", NUMBERS)]);
    rig.sims.anthropic.push([Reply::ToolUse {
        preface: "Of course.".into(),
        name: "transfer_call".into(),
        input: json!({"reason": "asked for a person"}),
    }]);
    rig.script(&["Can I speak to a real person"]);
    let caller = rig.greeted();
    let call_sid = caller.call_sid().to_string();
    rig.sims.twilio.register_stream(&call_sid, caller.line());
    caller.say("Can I speak to a real person");
    let form = update_of(&rig, &call_sid);
    let twiml = form
        .iter()
        .find(|(k, _)| k == "Twiml")
        .map(|(_, v)| v.as_str())
        .expect("the update carries TwiML");
    assert!(
        twiml.contains("<Response><Dial>+15551234567</Dial></Response>"),
        "{twiml}"
    );
    // The simulated Twilio ended the stream; the call is over.
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.ended_by.as_deref(), Some("assistant"));
    assert_eq!(
        record.end_reason.as_deref(),
        Some("transferred to a person at +1***4567")
    );
    assert_eq!(record.transfers.len(), 1);
    assert_eq!(record.transfers[0].number, "+15551234567");
    assert_eq!(record.transfers[0].outcome, "transferred");
    assert_eq!(record.transfers[0].requested_by, "assistant");
    let said = heard(&record);
    let phrase = said.iter().position(|t| t == DEFAULT_TRANSFER_PHRASE);
    let sentence = said.iter().position(|t| t == "Of course.");
    assert!(
        sentence.is_some() && phrase > sentence,
        "the model's sentence, then the phrase, both heard: {said:?}"
    );
    assert!(offered(&rig, 0).contains(&"transfer_call".to_string()));
    assert_eq!(
        rig.sims.anthropic.requests().len(),
        1,
        "no round after transfer_call"
    );
}

#[test]
fn a_failing_transfer_is_an_apology_and_the_call_goes_on() {
    let rig = Rig::start(&[("TRANSFER_NUMBERS", NUMBERS)]);
    rig.sims
        .twilio
        .fail_next_update(500, 20500, "Internal Server Error");
    rig.sims.anthropic.push([
        Reply::ToolUse {
            preface: "Of course.".into(),
            name: "transfer_call".into(),
            input: json!({"reason": "asked for a person"}),
        },
        Reply::Text("Let's keep going together.".into()),
    ]);
    rig.script(&["I want a person", "Okay, let's keep going"]);
    let caller = rig.greeted();
    let call_sid = caller.call_sid().to_string();
    rig.sims.twilio.register_stream(&call_sid, caller.line());
    caller.say("I want a person");
    // The greeting, the sentence, the phrase, the apology.
    echoed(&caller, 4);
    caller.say("Okay, let's keep going");
    echoed(&caller, 5);
    assert!(!caller.is_closed(), "the call goes on");
    assert!(rig.sims.twilio.updates().is_empty(), "Twilio refused it");
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    assert_eq!(record.transfers.len(), 1);
    assert_eq!(record.transfers[0].outcome, "failed");
    assert!(record.transfers[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("500")));
    let said = heard(&record);
    assert!(said.contains(&TRANSFER_FAILED.to_string()), "{said:?}");
    assert!(
        said.contains(&"Let's keep going together.".to_string()),
        "{said:?}"
    );
    // The model's second request carries the tool's result and the failure.
    let requests = rig.sims.anthropic.requests();
    assert_eq!(requests.len(), 2);
    let asked = requests[1]["messages"].to_string();
    assert!(asked.contains("transfer to a person failed"), "{asked}");
}

#[test]
fn zero_on_the_keypad_transfers_the_call() {
    let rig = Rig::start(&[("TRANSFER_NUMBERS", r#"{"default":"+15557654321"}"#)]);
    let caller = rig.greeted();
    let call_sid = caller.call_sid().to_string();
    rig.sims.twilio.register_stream(&call_sid, caller.line());
    caller.press('0');
    let form = update_of(&rig, &call_sid);
    assert!(
        form.iter()
            .any(|(k, v)| k == "Twiml" && v.contains("<Dial>+15557654321</Dial>")),
        "{form:?}"
    );
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.ended_by.as_deref(), Some("caller"));
    assert_eq!(record.transfers[0].requested_by, "caller");
    assert_eq!(record.transfers[0].outcome, "transferred");
    assert!(heard(&record).contains(&DEFAULT_TRANSFER_PHRASE.to_string()));
    assert!(
        rig.sims.anthropic.requests().is_empty(),
        "the model was not asked"
    );
}

#[test]
fn the_simulated_call_update_refuses_what_twilio_refuses() {
    use cotrackpro_voice::config::Secret;
    use cotrackpro_voice::sim::twilio::TwilioSim;
    use cotrackpro_voice::twilio::rest::{CallUpdate, CreateCall, TwilioError, TwilioRest};
    use cotrackpro_voice::twilio::twiml;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "twilio-auth-token-for-tests";
    let sim = TwilioSim::start(ACCOUNT, TOKEN).expect("simulator");
    let client = TwilioRest::new(&sim.base_url(), ACCOUNT, Secret::new(TOKEN));
    let refused = |result: Result<(), TwilioError>| match result {
        Err(TwilioError::Api { status, code, .. }) => (status, code),
        other => panic!("not refused: {other:?}"),
    };
    let dial = CallUpdate::Twiml(twiml::dial("+15551234567"));
    // A call Twilio does not know: its 404.
    assert_eq!(
        refused(client.update_call("CA00000000000000000000000000000000", &dial)),
        (404, 20404)
    );
    let created = client
        .create_call(&CreateCall {
            to: "+14165550123".into(),
            from: "+15551230000".into(),
            url: "https://voice.example.com/call/incoming".into(),
            status_callback: None,
            status_callback_events: Vec::new(),
            timeout_secs: None,
            time_limit_secs: None,
            amd_callback: None,
        })
        .expect("created");
    let not_twiml = CallUpdate::Twiml("hello".into());
    assert_eq!(refused(client.update_call(&created.sid, &not_twiml)).0, 400);
    let too_long = CallUpdate::Twiml(format!("<Response>{}</Response>", " ".repeat(4000)));
    assert_eq!(refused(client.update_call(&created.sid, &too_long)).0, 400);
    // A wrong password: Twilio's 401.
    let stranger = TwilioRest::new(&sim.base_url(), ACCOUNT, Secret::new("wrong"));
    assert_eq!(
        refused(stranger.update_call(&created.sid, &dial)),
        (401, 20003)
    );
    assert!(sim.updates().is_empty(), "nothing refused is recorded");

    client.update_call(&created.sid, &dial).expect("accepted");
    let updates = sim.updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].0, created.sid);
    assert!(updates[0]
        .1
        .iter()
        .any(|(k, v)| k == "Twiml" && v.contains("<Dial>+15551234567</Dial>")));
}

#[test]
fn a_transfer_whose_thread_cannot_start_is_an_apology_and_the_call_goes_on() {
    let rig = Rig::start(&[("TRANSFER_NUMBERS", NUMBERS)]);
    rig.server
        .app()
        .calls
        .refuse_threads_named(Some("-transfer"));
    let caller = rig.greeted();
    let call_sid = caller.call_sid().to_string();
    caller.press('0');
    // The greeting, the phrase, the apology: the call itself is not refused.
    echoed(&caller, 3);
    assert!(!caller.is_closed());
    rig.server.app().calls.refuse_threads_named(None);
    caller.hang_up();
    let record = rig.record_after_end(&call_sid);
    assert_eq!(record.status, CallStatus::Completed);
    assert_eq!(record.transfers[0].outcome, "failed");
    assert!(heard(&record).contains(&TRANSFER_FAILED.to_string()));
    assert!(rig.sims.twilio.updates().is_empty());
}
