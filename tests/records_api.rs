//! The records API and a call's life in the records, over real sockets: auth (missing, wrong,
//! right key), validation, each route's JSON, status callbacks that are retried and arrive out
//! of order, deletion, and the per-key rate limit.

use cotrackpro_voice::records::event::{
    CallStatus, CostSummary, Event, EventKind, TurnLatencyRecord,
};
use cotrackpro_voice::records::ttl_from;
use cotrackpro_voice::timestamp;

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

/// Seeds a call that started at `started` (RFC 3339) with `caller`, ended as `status` with
/// `usage` when given, and `first_frames` as its turns' latencies.
fn seed_call(
    server: &TestServer,
    n: u32,
    started: &str,
    caller: &str,
    status: CallStatus,
    usage: Option<CostSummary>,
    first_frames: &[u64],
) {
    let ttl = ttl_from(timestamp::now_ms(), 30.0);
    let created = Event {
        role: Some("parent".into()),
        caller_number: Some(caller.into()),
        started_at: Some(started.into()),
        status: Some(CallStatus::Active),
        ..Event::new(EventKind::Created, &sid(n), started, ttl)
    };
    server.records().append(&created).unwrap();
    if status == CallStatus::Active {
        return;
    }
    let latencies = first_frames
        .iter()
        .enumerate()
        .map(|(i, &ms)| TurnLatencyRecord {
            turn: i as u64 + 1,
            first_frame_ms: Some(ms),
            ..TurnLatencyRecord::default()
        })
        .collect();
    let done = Event {
        status: Some(status),
        duration_secs: Some(120),
        turn_count: Some(first_frames.len() as u64),
        cost_summary: usage,
        turn_latencies: Some(latencies),
        ..Event::new(EventKind::Completed, &sid(n), started, ttl)
    };
    server.records().append(&done).unwrap();
}

fn usage() -> CostSummary {
    CostSummary {
        claude_input_tokens: 200_000,
        claude_output_tokens: 20_000,
        claude_cache_creation_tokens: 10_000,
        claude_cache_read_tokens: 50_000,
        tts_chars: 3_000,
        stt_secs: 120.0,
        ..CostSummary::default()
    }
}

#[test]
fn the_summary_totals_every_call_of_a_range_not_one_page() {
    let server = server(&[]);
    let (d20, d22) = ("2026-11-20T10:00:00.000Z", "2026-11-22T10:00:00.000Z");
    seed_call(
        &server,
        1,
        d20,
        "+1***0001",
        CallStatus::Completed,
        Some(usage()),
        &[300, 500],
    );
    seed_call(&server, 2, d20, "+1***0002", CallStatus::Failed, None, &[]);
    seed_call(
        &server,
        3,
        d20,
        "+1***0003",
        CallStatus::ForceReaped,
        Some(usage()),
        &[2_000],
    );
    seed_call(
        &server,
        4,
        d22,
        "+1***0004",
        CallStatus::Completed,
        Some(usage()),
        &[400],
    );
    seed_call(&server, 5, d22, "+1***0005", CallStatus::Active, None, &[]);
    seed_call(
        &server,
        6,
        "2026-11-25T10:00:00.000Z",
        "+1***0006",
        CallStatus::Completed,
        Some(usage()),
        &[100],
    );

    assert_eq!(server.request("GET", "/records/summary").send().status, 401);
    let range = "startDate=2026-11-19&endDate=2026-11-22";
    // One page of the same range holds two calls; the summary counts all five.
    let page = get(&server, &format!("/records?limit=2&{range}")).json();
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert!(page["cursor"].is_string());

    let res = get(&server, &format!("/records/summary?{range}"));
    assert_eq!(res.status, 200);
    let summary = res.json();
    let t = &summary["totals"];
    assert_eq!(t["callCount"], 5);
    assert_eq!(
        (
            &t["completed"],
            &t["failed"],
            &t["forceReaped"],
            &t["active"]
        ),
        (&2.into(), &1.into(), &1.into(), &1.into())
    );
    assert_eq!(t["withoutCostSummary"], 2);
    assert_eq!(t["totalTurns"], 4);
    assert_eq!(t["p95FirstFrameMs"], 2_000);
    let total = t["estimatedCostUsd"].as_f64().unwrap();
    assert!(total > 0.0);
    let parts: f64 = [
        "claudeInput",
        "claudeOutput",
        "claudeCacheWrite",
        "claudeCacheRead",
        "tts",
        "stt",
    ]
    .iter()
    .map(|k| {
        let part = t["costBreakdownUsd"][k].as_f64().unwrap();
        assert!(part > 0.0, "{k}");
        part
    })
    .sum();
    assert!((parts - total).abs() < 1e-5, "{parts} vs {total}");

    let days = summary["days"].as_array().unwrap();
    let dates: Vec<&str> = days.iter().map(|d| d["date"].as_str().unwrap()).collect();
    assert_eq!(
        dates,
        ["2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22"]
    );
    let calls: Vec<u64> = days
        .iter()
        .map(|d| d["callCount"].as_u64().unwrap())
        .collect();
    assert_eq!(calls, [0, 3, 0, 2]);
    assert_eq!(days[1]["p95FirstFrameMs"], 2_000);
    assert_eq!(days[3]["p95FirstFrameMs"], 400);
    assert!(days[0]["p95FirstFrameMs"].is_null());
    // Day 20 holds two of the three priced calls.
    let day20 = days[1]["estimatedCostUsd"].as_f64().unwrap();
    assert!(
        (day20 - total * 2.0 / 3.0).abs() < 1e-5,
        "{day20} of {total}"
    );

    // Without a range: every call, days from the first call's to the last's.
    let all = get(&server, "/records/summary").json();
    assert_eq!(all["totals"]["callCount"], 6);
    assert_eq!(all["days"].as_array().unwrap().len(), 6);

    let reversed = get(
        &server,
        "/records/summary?startDate=2026-11-22&endDate=2026-11-20",
    );
    assert_eq!(reversed.status, 400);
    let delete = server
        .request("DELETE", "/records/summary")
        .header("Authorization", &format!("Bearer {KEY}"))
        .send();
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("Allow"), Some("GET"));
}

#[test]
fn a_search_finds_a_call_by_sid_or_the_last_digits_and_pages_with_the_cursor() {
    let server = server(&[]);
    let at = |minute: u32| format!("2026-11-20T10:{minute:02}:00.000Z");
    for (n, caller) in [
        (1, "+1***0123"),
        (2, "+4***4123"),
        (3, "+1***9999"),
        (4, "+1***0123"),
        (5, "***"),
    ] {
        seed_call(
            &server,
            n,
            &at(n),
            caller,
            CallStatus::Completed,
            Some(usage()),
            &[300],
        );
    }
    let sids = |path: &str| -> (Vec<String>, Option<String>) {
        let res = get(&server, path);
        assert_eq!(res.status, 200, "{path}: {}", res.body);
        let body = res.json();
        let sids = body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["callSid"].as_str().unwrap().to_string())
            .collect();
        (sids, body["cursor"].as_str().map(str::to_string))
    };
    assert_eq!(sids("/records?q=123").0, [sid(4), sid(2), sid(1)]);
    assert_eq!(sids("/records?q=0123").0, [sid(4), sid(1)]);
    assert_eq!(sids("/records?q=9").0, [sid(3)]);
    assert!(sids("/records?q=5").0.is_empty());
    assert_eq!(sids(&format!("/records?q={}", sid(3))).0, [sid(3)]);
    assert_eq!(
        sids(&format!("/records/by-role/parent?q={}", sid(2))).0,
        [sid(2)]
    );

    let (first, cursor) = sids("/records?q=123&limit=2");
    assert_eq!(first, [sid(4), sid(2)]);
    let cursor = cursor.expect("a second page");
    let (second, end) = sids(&format!("/records?q=123&limit=2&cursor={cursor}"));
    assert_eq!((second, end), (vec![sid(1)], None));

    for bad in ["abc", "12345", "%2B1***0123", "CA123"] {
        let res = get(&server, &format!("/records?q={bad}"));
        assert_eq!(res.status, 400, "{bad}");
        assert_eq!(res.json()["error"], "Invalid q");
    }
}

#[test]
fn a_full_record_carries_its_cost_by_component_and_turn_latencies() {
    let server = server(&[]);
    seed_call(
        &server,
        1,
        "2026-11-20T10:00:00.000Z",
        "+1***0001",
        CallStatus::Completed,
        Some(usage()),
        &[350, 420],
    );
    let record = get(&server, &format!("/records/{}", sid(1))).json();
    let breakdown = &record["costBreakdownUsd"];
    assert!(
        breakdown["claudeCacheRead"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    assert!(breakdown["stt"].as_f64().unwrap() > 0.0);
    let firsts: Vec<u64> = record["turnLatencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["firstFrameMs"].as_u64().unwrap())
        .collect();
    assert_eq!(firsts, [350, 420]);
    seed_call(
        &server,
        2,
        "2026-11-20T10:00:00.000Z",
        "+1***0002",
        CallStatus::Active,
        None,
        &[],
    );
    let active = get(&server, &format!("/records/{}", sid(2))).json();
    assert!(active.get("costBreakdownUsd").is_none());
    assert!(active.get("turnLatencies").is_none());
}
