//! Keys with roles, over real sockets: `READ_API_KEY` reads the records and `/metrics` and
//! cannot place a call or delete a record; `OUTBOUND_API_KEY` does all of it; other keys are
//! refused everywhere.

use cotrackpro_voice::sim::twilio::TwilioSim;
use cotrackpro_voice::sim::{SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN};

use crate::support::{HttpResponse, TestServer};

const CALLS_KEY: &str = "calls-key-0123456789abcdef";
const READ_KEY: &str = "read-key-0123456789abcdef";

struct Rig {
    twilio: TwilioSim,
    server: TestServer,
}

fn rig() -> Rig {
    let twilio = TwilioSim::start(SIM_TWILIO_ACCOUNT_SID, SIM_TWILIO_AUTH_TOKEN).expect("sim");
    let base = twilio.base_url();
    let server = TestServer::start(&[
        ("OUTBOUND_API_KEY", CALLS_KEY),
        ("READ_API_KEY", READ_KEY),
        ("TWILIO_API_BASE", base.as_str()),
        ("TWILIO_ACCOUNT_SID", SIM_TWILIO_ACCOUNT_SID),
        ("TWILIO_AUTH_TOKEN", SIM_TWILIO_AUTH_TOKEN),
        ("TWILIO_PHONE_NUMBER", "+12125550100"),
    ]);
    Rig { twilio, server }
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

impl Rig {
    fn send(&self, method: &str, path: &str, key: &str) -> HttpResponse {
        let request = self
            .server
            .request(method, path)
            .header("Authorization", &format!("Bearer {key}"));
        if method == "POST" {
            request
                .header("Content-Type", "application/json")
                .body(br#"{"to":"+14165550123","role":"attorney"}"#)
                .send()
        } else {
            request.send()
        }
    }

    /// A call answered by the server, so that there is a record to read and delete.
    fn answer(&self, n: u32) {
        self.server.answer_call(&sid(n), "attorney");
    }
}

#[test]
fn the_read_key_reads_records_and_metrics_and_nothing_more() {
    let rig = rig();
    rig.answer(1);
    for path in ["/records", "/records/by-role/attorney", "/metrics"] {
        let res = rig.send("GET", path, READ_KEY);
        assert_eq!(res.status, 200, "{path}: {}", res.body);
    }
    assert_eq!(
        rig.send("GET", &format!("/records/{}", sid(1)), READ_KEY)
            .json()["callSid"],
        sid(1)
    );
    // Deleting a record is a write: the read key is refused and the record stays.
    let delete = rig.send("DELETE", &format!("/records/{}", sid(1)), READ_KEY);
    assert_eq!(delete.status, 401, "{}", delete.body);
    assert_eq!(delete.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(
        rig.send("GET", &format!("/records/{}", sid(1)), READ_KEY)
            .status,
        200
    );
    // It cannot place a call: Twilio is never asked.
    let placed = rig.send("POST", "/call/outbound", READ_KEY);
    assert_eq!(placed.status, 401, "{}", placed.body);
    assert!(rig.twilio.created().is_empty());
}

#[test]
fn the_calls_key_reads_places_calls_and_deletes() {
    let rig = rig();
    rig.answer(2);
    for path in ["/records", "/metrics"] {
        assert_eq!(rig.send("GET", path, CALLS_KEY).status, 200, "{path}");
    }
    let placed = rig.send("POST", "/call/outbound", CALLS_KEY);
    assert_eq!(placed.status, 200, "{}", placed.body);
    assert_eq!(rig.twilio.created().len(), 1);
    let path = format!("/records/{}", sid(2));
    assert_eq!(rig.send("DELETE", &path, CALLS_KEY).status, 204);
    assert_eq!(rig.send("GET", &path, READ_KEY).status, 404);
}

#[test]
fn other_keys_are_refused_everywhere() {
    let rig = rig();
    rig.answer(3);
    let path = format!("/records/{}", sid(3));
    for key in [
        "read-key-0123456789abcdeX",
        "calls-key-0123456789abcde",
        "",
        "read-key-0123456789abcdef-and-more",
    ] {
        for (method, path) in [
            ("GET", "/records"),
            ("GET", "/metrics"),
            ("DELETE", path.as_str()),
            ("POST", "/call/outbound"),
        ] {
            let res = rig.send(method, path, key);
            assert_eq!(res.status, 401, "{method} {path} with {key:?}");
        }
    }
    let bare = rig.server.request("GET", "/metrics").send();
    assert_eq!(bare.status, 401);
    assert!(rig.twilio.created().is_empty());
}
