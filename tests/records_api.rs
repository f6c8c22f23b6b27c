//! The records API and a call's life in the records, over real sockets: auth (missing, wrong,
//! right key), validation, each route's JSON, status callbacks that are retried and arrive out
//! of order, deletion, and the per-key rate limit.

use crate::support::{TestServer, DOMAIN};

const KEY: &str = "records-key-0123456789abcdef";

fn server(extra: &[(&str, &str)]) -> TestServer {
    let mut vars = vec![("OUTBOUND_API_KEY", KEY)];
    vars.extend_from_slice(extra);
    TestServer::start(&vars)
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

fn answer(server: &TestServer, n: u32, role: &str) {
    server.answer_call(&sid(n), role);
}

fn status(server: &TestServer, n: u32, status: &str, seq: u32, duration: Option<&str>) -> u16 {
    let seq = seq.to_string();
    let sid = sid(n);
    let mut form = vec![
        ("CallSid", sid.as_str()),
        ("CallStatus", status),
        ("SequenceNumber", seq.as_str()),
    ];
    if let Some(d) = duration {
        form.push(("CallDuration", d));
    }
    server
        .request("POST", "/call/status")
        .form(&form)
        .send()
        .status
}

fn get(server: &TestServer, path: &str) -> crate::support::HttpResponse {
    server
        .request("GET", path)
        .header("Authorization", &format!("Bearer {KEY}"))
        .send()
}

fn records_lines(server: &TestServer) -> Vec<serde_json::Value> {
    std::fs::read_to_string(server.records_dir.path().join("calls.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn authentication_is_required_and_compared_exactly() {
    let server = server(&[]);
    let missing = server.request("GET", "/records").send();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(missing.json()["error"], "Unauthorized");
    let wrong = server
        .request("GET", "/records")
        .header("Authorization", "Bearer records-key-0123456789abcdeX")
        .send();
    assert_eq!(wrong.status, 401);
    assert_eq!(get(&server, "/records").status, 200);
}

#[test]
fn production_without_a_key_refuses_to_serve_records() {
    let server = TestServer::start(&[
        ("APP_ENV", "production"),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", "t"),
        ("TWILIO_PHONE_NUMBER", "+15550001111"),
        ("ELEVENLABS_API_KEY", "e"),
        ("ANTHROPIC_API_KEY", "a"),
    ]);
    let res = server
        .request("GET", "/records")
        .header("Authorization", "Bearer anything-at-all")
        .send();
    assert_eq!(res.status, 503);
    assert_eq!(
        res.json()["details"],
        "OUTBOUND_API_KEY or READ_API_KEY is required in production"
    );
}

#[test]
fn an_answered_call_is_recorded_and_its_status_callbacks_update_it() {
    let server = server(&[]);
    answer(&server, 1, "attorney");
    let record = get(&server, &format!("/records/{}", sid(1)));
    assert_eq!(record.status, 200);
    let record = record.json();
    assert_eq!(record["callSid"], sid(1));
    assert_eq!(record["role"], "attorney");
    assert_eq!(record["direction"], "inbound");
    assert_eq!(record["callerNumber"], "+1***4567");
    assert_eq!(record["status"], "active");
    assert!(record["ttl"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(record["transcript"], serde_json::json!([]));

    assert_eq!(status(&server, 1, "in-progress", 1, None), 204);
    assert_eq!(status(&server, 1, "completed", 2, Some("93")), 204);
    // Twilio retries, and a late callback arrives after the final one.
    assert_eq!(status(&server, 1, "completed", 2, Some("93")), 204);
    assert_eq!(status(&server, 1, "in-progress", 1, None), 204);
    // A retried /call/incoming does not create a second record either.
    answer(&server, 1, "attorney");

    let record = get(&server, &format!("/records/{}", sid(1))).json();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["twilioStatus"], "completed");
    assert_eq!(record["durationSecs"], 93);
    assert!(record["endedAt"].is_string());

    let events: Vec<String> = records_lines(&server)
        .iter()
        .map(|l| {
            format!(
                "{}:{}",
                l["event"].as_str().unwrap(),
                l["twilioStatus"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        events,
        vec!["created:ringing", "status:in-progress", "status:completed"]
    );
    assert!(
        records_lines(&server).iter().all(|l| l["ttl"].is_i64()),
        "every line can expire"
    );
}

/// A status callback for a CallSid we never answered or placed is refused (answered 204, as
/// Twilio expects, and logged): it leaves no orphan record behind.
#[test]
fn a_callback_for_a_call_we_never_answered_makes_no_record() {
    let server = server(&[]);
    assert_eq!(status(&server, 7, "ringing", 0, None), 204);
    assert_eq!(status(&server, 7, "no-answer", 1, None), 204);
    assert_eq!(get(&server, &format!("/records/{}", sid(7))).status, 404);
    assert!(get(&server, "/records").json()["records"]
        .as_array()
        .unwrap()
        .is_empty());
    let file = server.records_dir.path().join("calls.jsonl");
    let lines = std::fs::read_to_string(file).unwrap_or_default();
    assert!(!lines.contains(&sid(7)), "{lines}");
}

#[test]
fn lists_page_through_every_record_once_newest_first() {
    let server = server(&[]);
    for n in 0..12 {
        answer(&server, n, ["parent", "judge", "gal"][n as usize % 3]);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut seen = Vec::new();
    let mut path = "/records?limit=5".to_string();
    loop {
        let page = get(&server, &path).json();
        assert!(page["records"].as_array().unwrap().len() <= 5);
        for record in page["records"].as_array().unwrap() {
            seen.push(record["callSid"].as_str().unwrap().to_string());
            assert!(record.get("transcript").is_none());
        }
        match page["cursor"].as_str() {
            Some(cursor) => path = format!("/records?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..12).rev().map(sid).collect();
    assert_eq!(seen, expected);

    let judges = get(&server, "/records/by-role/judge").json();
    let judges = judges["records"].as_array().unwrap();
    assert_eq!(judges.len(), 4);
    assert!(judges.iter().all(|r| r["role"] == "judge"));

    status(&server, 3, "completed", 5, Some("10"));
    let completed = get(&server, "/records/by-status/completed").json();
    assert_eq!(completed["records"][0]["callSid"], sid(3));
    assert_eq!(completed["cursor"], serde_json::Value::Null);
    let active = get(&server, "/records/by-status/active?limit=100").json();
    assert_eq!(active["records"].as_array().unwrap().len(), 11);
}

#[test]
fn roles_statuses_and_sids_are_validated_before_anything_else() {
    let server = server(&[]);
    let res = get(&server, "/records/by-role/wizard");
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["error"], "Unknown role: wizard");
    assert!(res.json()["details"]
        .as_str()
        .unwrap()
        .contains("school_counselor"));
    let res = get(&server, "/records/by-status/exploded");
    assert_eq!(res.status, 400);
    assert!(res.json()["details"]
        .as_str()
        .unwrap()
        .contains("force-reaped"));
    for bad in [
        "CA123",
        "..%2F..%2Fetc%2Fpasswd",
        "CA0123456789abcdef0123456789abcdeZ",
    ] {
        let res = get(&server, &format!("/records/{bad}"));
        assert_eq!(res.status, 400, "{bad}");
        assert_eq!(res.json()["error"], "Invalid callSid");
    }
    assert_eq!(get(&server, &format!("/records/{}", sid(99))).status, 404);
    let res = server
        .request("PUT", &format!("/records/{}", sid(1)))
        .send();
    assert_eq!(
        (res.status, res.header("Allow")),
        (405, Some("GET, DELETE"))
    );
}

#[test]
fn deleting_a_record_removes_it_for_good() {
    let server = server(&[]);
    answer(&server, 5, "cps");
    let delete = |auth: &str| {
        server
            .request("DELETE", &format!("/records/{}", sid(5)))
            .header("Authorization", auth)
            .send()
    };
    assert_eq!(delete("Bearer nope").status, 401);
    let res = delete(&format!("Bearer {KEY}"));
    assert_eq!(res.status, 204);
    assert_eq!(delete(&format!("Bearer {KEY}")).status, 404);
    assert_eq!(get(&server, &format!("/records/{}", sid(5))).status, 404);
    // A late callback does not bring it back.
    assert_eq!(status(&server, 5, "completed", 9, Some("5")), 204);
    assert_eq!(get(&server, &format!("/records/{}", sid(5))).status, 404);
    assert!(get(&server, "/records").json()["records"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn the_records_api_has_its_own_rate_limit() {
    let server = server(&[("RECORDS_RATE_LIMIT_PER_MIN", "3")]);
    // Seven requests: even if a minute boundary passes mid-test, one window sees more than 3.
    let responses: Vec<_> = (0..7).map(|_| get(&server, "/records")).collect();
    let limited = responses
        .iter()
        .find(|r| r.status == 429)
        .expect("some request was rate-limited");
    let retry: u64 = limited.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(limited.json()["retryAfterSeconds"], retry);
    assert_eq!(
        limited.json()["details"],
        "Rate limit exceeded (minute window)"
    );
    assert!(responses.iter().filter(|r| r.status == 200).count() >= 3);
    // An unauthenticated flood is refused before it can spend the key's budget.
    assert_eq!(server.request("GET", "/records").send().status, 401);
}

#[test]
fn the_stream_parameters_say_which_way_the_call_went() {
    let server = server(&[]);
    let res = server
        .request("POST", "/call/incoming?role=gal")
        .form(&[
            ("CallSid", &sid(8)),
            ("Direction", "outbound-api"),
            ("To", "+15551230000"),
        ])
        .send();
    assert!(res
        .body
        .contains(r#"<Parameter name="direction" value="outbound" />"#));
    assert!(res.body.contains(&format!("wss://{DOMAIN}/call/stream")));
    assert_eq!(
        get(&server, &format!("/records/{}", sid(8))).json()["direction"],
        "outbound"
    );
}

#[test]
fn lists_can_be_limited_to_a_time_window() {
    let server = server(&[]);
    let records = server.records();
    let day = cotrackpro_voice::timestamp::parse_date("2026-11-20").unwrap() * 86_400_000;
    for (n, offset_h) in [(1u32, 1i64), (2, 23), (3, 25), (4, 49)] {
        let at = cotrackpro_voice::timestamp::format_ms(day + offset_h * 3_600_000);
        records
            .append(&cotrackpro_voice::records::event::Event {
                role: Some("judge".into()),
                started_at: Some(at.clone()),
                ..cotrackpro_voice::records::event::Event::new(
                    cotrackpro_voice::records::event::EventKind::Created,
                    &sid(n),
                    &at,
                    i64::MAX,
                )
            })
            .unwrap();
    }
    let sids = |path: &str| -> Vec<String> {
        get(&server, path).json()["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["callSid"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        sids("/records/by-role/judge?startDate=2026-11-20&endDate=2026-11-20"),
        vec![sid(2), sid(1)]
    );
    assert_eq!(
        sids("/records/by-role/judge?startDate=2026-11-21"),
        vec![sid(4), sid(3)]
    );
    assert_eq!(
        sids("/records?endDate=2026-11-21T01:00:00Z"),
        vec![sid(3), sid(2), sid(1)]
    );
    let bad = get(&server, "/records?startDate=last-week");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "Invalid startDate");
}

#[test]
fn a_made_up_cursor_and_reversed_dates_are_400_not_a_quiet_page() {
    let server = server(&[]);
    for n in 1..=3 {
        answer(&server, n, "judge");
    }
    // A real cursor still pages, and an empty one is the first page.
    let first = get(&server, "/records?limit=2");
    assert_eq!(first.status, 200);
    let cursor = first.json()["cursor"].as_str().unwrap().to_string();
    let second = get(&server, &format!("/records?limit=2&cursor={cursor}"));
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["records"].as_array().unwrap().len(), 1);
    assert_eq!(get(&server, "/records?limit=2&cursor=").status, 200);

    for garbage in ["garbage", "%25%25", "MTIzOkNBbm90YXNpZA", "////"] {
        let res = get(&server, &format!("/records?cursor={garbage}"));
        assert_eq!(res.status, 400, "{garbage}");
        assert_eq!(res.json()["error"], "Invalid cursor", "{garbage}");
        assert!(res.json()["details"]
            .as_str()
            .unwrap()
            .contains("previous page"));
    }
    let by_role = get(&server, "/records/by-role/judge?cursor=nope");
    assert_eq!(by_role.status, 400);

    let reversed = get(&server, "/records?startDate=2026-11-21&endDate=2026-11-20");
    assert_eq!(reversed.status, 400);
    assert_eq!(reversed.json()["error"], "startDate is after endDate");
    let reversed_times = get(
        &server,
        "/records/by-status/active?startDate=2026-11-20T10:00:00Z&endDate=2026-11-20T09:00:00Z",
    );
    assert_eq!(reversed_times.status, 400);
    // One day given as both ends is a window, not a mistake.
    let same_day = get(&server, "/records?startDate=2026-11-20&endDate=2026-11-20");
    assert_eq!(same_day.status, 200);
}
