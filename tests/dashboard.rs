//! The dashboard in a real headless Chromium (Debian's `chromium`; `.ci/run` installs it): rows
//! render and open to a call's detail (transcript with barge-ins and tool uses, latencies, cost
//! by component, how it ended); the date range, search and cursor paging; totals over the
//! range; the per-day charts; failed and force-reaped calls marked; auto-refresh; and records
//! holding markup render as text. Most checks read the DOM after the page ran (`--dump-dom`);
//! clicks, typing and auto-refresh are driven over the DevTools protocol ([`Browser`]).
//! Screenshots of the list, the chart and a detail view are written to the test target's
//! temporary directory (`target/tmp/dashboard-*.png`) for a person to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cotrackpro_voice::records::event::{
    CallStatus, CostSummary, Event, EventKind, ToolCallRecord, Transcript, TranscriptEntry,
    TransferRecord, TurnLatencyRecord,
};
use cotrackpro_voice::records::ttl_from;
use cotrackpro_voice::timestamp::{self, MS_PER_DAY};

use crate::support::{TempDir, TestServer};

const KEY: &str = "dashboard-key-0123456789abcdef";
const IMG_PAYLOAD: &str = "<img src=x onerror=\"document.body.setAttribute('data-xss','img')\">";
const SCRIPT_PAYLOAD: &str = "<script>document.body.setAttribute('data-xss','script')</script>";

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "the dashboard test needs Debian's chromium (apt-get install chromium; .ci/run does), or CHROMIUM=path"
    );
    path
}

/// Starts headless Chromium on `url` with the profile `profile` and `flags` besides the ones
/// every run needs.
fn start_chromium(
    profile: &TempDir,
    flags: &[&str],
    url: &str,
    stdout: Stdio,
) -> std::process::Child {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium")
}

/// Runs headless Chromium on `url` with `output` (`--dump-dom` or `--screenshot=…`) after
/// 10 s of the page's virtual time; its stdout (at most 60 s).
fn run_chromium(url: &str, output: &str) -> String {
    let profile = TempDir::new("chromium-profile");
    let flags = [
        "--hide-scrollbars",
        "--window-size=1280,2000",
        "--virtual-time-budget=10000",
        output,
    ];
    let mut child = start_chromium(&profile, &flags, url, Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM of `url` after its scripts ran.
fn rendered_dom(url: &str) -> String {
    run_chromium(url, "--dump-dom")
}

/// A 1280×2000 PNG of `url` after its scripts ran, written to `path`; its bytes.
fn screenshot(url: &str, path: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(path);
    run_chromium(url, &format!("--screenshot={}", path.display()));
    let png = std::fs::read(path).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let dimension =
        |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    assert_eq!((dimension(16), dimension(20)), (1280, 2000));
    png
}

/// The text between the first `start` and the next `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.split_once(start).map_or("", |(_, rest)| rest);
    from.split(end).next().unwrap_or("")
}

/// A rendered call row: its class and the text of each cell.
struct Row {
    class: String,
    cells: Vec<String>,
}

fn rows(dom: &str) -> Vec<Row> {
    dom.split("<tr class=\"call")
        .skip(1)
        .map(|row| Row {
            class: format!("call{}", row.split('"').next().unwrap_or("")),
            cells: cells(row),
        })
        .collect()
}

/// The text of each cell of the row `row` begins.
fn cells(row: &str) -> Vec<String> {
    let row = row.split("</tr>").next().unwrap_or("");
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let text = cell.split_once('>').map_or("", |(_, t)| t);
            text.split("</td>").next().unwrap_or("").to_string()
        })
        .collect()
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

struct Call<'a> {
    n: u32,
    days_ago: i64,
    role: &'a str,
    caller: &'a str,
    status: CallStatus,
    usd: Option<f64>,
    first_frames: &'a [u64],
}

/// The start of today (UTC) in epoch milliseconds, and the date `days_ago` days before it.
fn today_ms() -> i64 {
    timestamp::now_ms().div_euclid(MS_PER_DAY) * MS_PER_DAY
}

fn date(days_ago: i64) -> String {
    timestamp::format_date(today_ms().div_euclid(MS_PER_DAY) - days_ago)
}

fn seed(server: &TestServer, calls: &[Call<'_>]) {
    let ttl = ttl_from(timestamp::now_ms(), 30.0);
    for call in calls {
        // Apart within the day, call 1 first; today's calls a few seconds ago.
        let start = match call.days_ago {
            0 => timestamp::now_ms() - 1_000 * (60 - i64::from(call.n)),
            days => today_ms() - days * MS_PER_DAY + 3_600_000 + 60_000 * i64::from(call.n),
        };
        let at = timestamp::format_ms(start);
        let created = Event {
            role: Some(call.role.into()),
            caller_number: Some(call.caller.into()),
            started_at: Some(at.clone()),
            status: Some(CallStatus::Active),
            ..Event::new(EventKind::Created, &sid(call.n), &at, ttl)
        };
        server.records().append(&created).unwrap();
        if call.status == CallStatus::Active {
            continue;
        }
        let latencies = call
            .first_frames
            .iter()
            .enumerate()
            .map(|(i, &ms)| TurnLatencyRecord {
                turn: i as u64 + 1,
                speech_end_to_commit_ms: Some(ms / 4),
                first_token_ms: Some(ms / 2),
                first_frame_ms: Some(ms),
            })
            .collect();
        let done = Event {
            status: Some(call.status),
            duration_secs: Some(125),
            turn_count: Some(6),
            cost_summary: call.usd.map(|usd| CostSummary {
                claude_input_tokens: (usd * 1_000_000.0) as u64,
                estimated_cost_usd: usd,
                ..CostSummary::default()
            }),
            turn_latencies: Some(latencies),
            ..Event::new(EventKind::Completed, &sid(call.n), &at, ttl)
        };
        server.records().append(&done).unwrap();
    }
}

/// Five calls of today; the two with markup for a caller.
fn five_of_today(server: &TestServer) {
    let call = |n, role, caller, status, usd| Call {
        n,
        days_ago: 0,
        role,
        caller,
        status,
        usd,
        first_frames: &[],
    };
    seed(
        server,
        &[
            call(1, "judge", "+1***0001", CallStatus::Completed, Some(0.0123)),
            call(2, "judge", "+1***0002", CallStatus::Active, None),
            call(3, "parent", IMG_PAYLOAD, CallStatus::Completed, Some(0.5)),
            call(
                4,
                "therapist",
                SCRIPT_PAYLOAD,
                CallStatus::Completed,
                Some(0.25),
            ),
            call(5, "parent", "+1***0005", CallStatus::Active, None),
        ],
    );
}

fn assert_no_payload_ran(dom: &str) {
    let body_tag = between(dom, "<body", ">");
    assert!(
        !body_tag.contains("data-xss"),
        "a payload ran: <body{body_tag}>"
    );
    assert_eq!(dom.matches("<img").count(), 0);
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
}

#[test]
fn the_dashboard_lists_filters_and_escapes() {
    let server = TestServer::start(&[("OUTBOUND_API_KEY", KEY)]);
    five_of_today(&server);
    let base = format!("http://{}/dashboard", server.addr);

    let all = rendered_dom(&format!("{base}#key={KEY}"));
    let all_rows = rows(&all);
    assert_eq!(all_rows.len(), 5, "{all}");
    assert_eq!(all_rows[0].cells[0], sid(5), "newest first");
    assert!(all.contains("data-loaded=\"5\""));
    let first = &all_rows
        .iter()
        .find(|r| r.cells[0] == sid(1))
        .unwrap()
        .cells;
    assert_eq!(
        (first[1].as_str(), first[4].as_str()),
        ("judge", "completed")
    );
    assert_eq!(
        (first[6].as_str(), first[7].as_str(), first[8].as_str()),
        ("2:05", "6", "$0.01")
    );
    // Totals say what they total: every call of the range, from the summary endpoint.
    assert!(
        all.contains(r#"id="total-calls"><div class="value">5<"#),
        "{all}"
    );
    assert!(all.contains(r#"<div class="name">calls in range<"#));
    assert!(all.contains(r#"id="total-turns"><div class="value">18<"#));
    assert!(between(&all, "id=\"range-label\">", "<")
        .contains("all roles and statuses, across all pages"));

    // Markup in a record is shown as text and never runs.
    assert_no_payload_ran(&all);
    assert!(all.contains("&lt;img src=x onerror="), "{all}");
    assert!(all.contains("&lt;script&gt;document.body.setAttribute"));

    let judges = rows(&rendered_dom(&format!("{base}#key={KEY}&role=judge")));
    assert_eq!(judges.len(), 2);
    assert!(judges.iter().all(|r| r.cells[1] == "judge"));

    let both = rows(&rendered_dom(&format!(
        "{base}#key={KEY}&role=parent&status=completed"
    )));
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].cells[0], sid(3));

    let wrong_key = rendered_dom(&format!("{base}#key=not-the-key"));
    assert!(rows(&wrong_key).is_empty());
    assert!(wrong_key.contains("unauthorized — check your read key (READ_API_KEY)"));
}

/// The call the detail test opens: force-reaped, with markup in every text a record holds.
fn seed_detail_call(server: &TestServer) {
    let ttl = ttl_from(timestamp::now_ms(), 30.0);
    let now = timestamp::now_ms();
    let at = |secs: i64| timestamp::format_ms(now - 120_000 + secs * 1000);
    let created = Event {
        role: Some("attorney".into()),
        caller_number: Some("+1***0123".into()),
        started_at: Some(at(0)),
        status: Some(CallStatus::Active),
        ..Event::new(EventKind::Created, &sid(9), &at(0), ttl)
    };
    server.records().append(&created).unwrap();
    let line = |role: &str, text: &str, secs| TranscriptEntry {
        role: role.into(),
        text: text.into(),
        timestamp: at(secs),
    };
    let done = Event {
        status: Some(CallStatus::ForceReaped),
        ended_at: Some(at(90)),
        duration_secs: Some(90),
        turn_count: Some(2),
        barge_ins: Some(1),
        end_reason: Some(format!("reaped: no media for 60 s {SCRIPT_PAYLOAD}")),
        ended_by: Some("system".into()),
        transfers: Some(vec![TransferRecord {
            number: "+15557654321".into(),
            requested_by: "caller".into(),
            timestamp: at(60),
            outcome: "failed".into(),
            error: Some(format!("twilio answered 500 {SCRIPT_PAYLOAD}")),
        }]),
        transcript: Some(Transcript::from_entries(&[
            line("assistant", "Hello, how can I help?", 1),
            line("user", &format!("My custody hearing {IMG_PAYLOAD}"), 5),
            line(
                "assistant",
                "Custody has two parts. The first — [cut off]",
                8,
            ),
            line("user", "When is the filing deadline?", 10),
            line("assistant", "Usually thirty days.", 14),
        ])),
        tool_calls: Some(vec![ToolCallRecord {
            tool_name: format!("lookup_deadline{SCRIPT_PAYLOAD}"),
            duration_ms: 240,
            timestamp: at(12),
            success: false,
        }]),
        turn_latencies: Some(vec![
            TurnLatencyRecord {
                turn: 1,
                speech_end_to_commit_ms: Some(180),
                first_token_ms: Some(610),
                first_frame_ms: Some(910),
            },
            TurnLatencyRecord {
                turn: 2,
                speech_end_to_commit_ms: Some(200),
                first_token_ms: None,
                first_frame_ms: Some(1_450),
            },
        ]),
        cost_summary: Some(CostSummary {
            claude_input_tokens: 12_000,
            claude_output_tokens: 800,
            claude_cache_creation_tokens: 3_000,
            claude_cache_read_tokens: 9_000,
            tts_chars: 420,
            tts_chars_cached: 30,
            stt_secs: 90.0,
            estimated_cost_usd: 0.1,
        }),
        ..Event::new(EventKind::Completed, &sid(9), &at(90), ttl)
    };
    server.records().append(&done).unwrap();
}

#[test]
fn a_call_opens_to_its_detail() {
    let server = TestServer::start(&[("OUTBOUND_API_KEY", KEY)]);
    five_of_today(&server);
    seed_detail_call(&server);
    let base = format!("http://{}/dashboard", server.addr);
    let url = format!("{base}#key={KEY}&call={}", sid(9));
    let dom = rendered_dom(&url);

    assert!(
        dom.contains("<section id=\"detail\">"),
        "the detail is shown: {dom}"
    );
    assert_eq!(between(&dom, "id=\"detail-sid\">", "<"), sid(9));
    assert!(dom.contains(r#"<span id="detail-status" class="force-reaped">force-reaped</span>"#));
    let facts = between(&dom, "<dl id=\"facts\">", "</dl>");
    assert!(
        facts.contains(
            "<dt>How it ended</dt><dd class=\"bad\">reaped: no media for 60 s &lt;script&gt;"
        ),
        "{facts}"
    );
    assert!(facts.contains("<dt>Barge-ins</dt><dd>1</dd>"));
    assert!(
        facts.contains("<dt>Ended by</dt><dd>system</dd>"),
        "{facts}"
    );
    assert!(
        facts.contains(
            "<dt>Transfers</dt><dd class=\"bad\">+15557654321 (failed: twilio answered 500 &lt;script&gt;"
        ),
        "{facts}"
    );
    assert!(facts.contains("<dt>Caller</dt><dd>+1***0123</dd>"));

    // The transcript in order, the tool use placed where it happened, the barge-in marked and
    // its marker text replaced by the mark.
    let transcript = between(&dom, "<ol id=\"transcript\">", "</ol>");
    let items: Vec<&str> = transcript.split("<li class=\"").skip(1).collect();
    let kinds: Vec<&str> = items.iter().map(|i| i.split('"').next().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "assistant",
            "user",
            "assistant barge-in",
            "user",
            "tool",
            "assistant"
        ]
    );
    assert!(
        items[2].contains(">Custody has two parts. The first</span>"),
        "{}",
        items[2]
    );
    assert!(
        items[2].contains("<span class=\"mark\">cut off: the caller talked over it here</span>")
    );
    assert!(items[1].contains("My custody hearing &lt;img src=x onerror="));
    assert!(
        items[4].contains("lookup_deadline&lt;script&gt;"),
        "{}",
        items[4]
    );
    assert!(items[4].contains("<span class=\"mark tool-failed\">tool failed</span>"));

    let latencies: Vec<Row> = rows_of(&dom, "latencies", "latency");
    assert_eq!(latencies.len(), 2);
    assert_eq!(latencies[0].cells, ["1", "180", "610", "910"]);
    assert_eq!(latencies[1].cells, ["2", "200", "—", "1450"]);

    let cost = rows_of(&dom, "cost", "cost");
    let names: Vec<&str> = cost.iter().map(|r| r.cells[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "Claude input",
            "Claude output",
            "Claude cache write",
            "Claude cache read",
            "TTS",
            "STT",
            "Total, as estimated when the call ended"
        ]
    );
    assert_eq!(cost[3].cells[1], "9000 tokens");
    assert_eq!(cost[4].cells[1], "420 chars (+30 cached, free)");
    assert!(
        cost.iter()
            .take(6)
            .all(|r| r.cells[2].starts_with('$') && r.cells[2] != "$0.000000"),
        "every component is priced"
    );
    assert_eq!(cost[6].cells[2], "$0.100000");
    assert_no_payload_ran(&dom);

    // Look at these: the detail view below the list, and the list alone.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let detail = screenshot(&url, &dir.join("dashboard-detail.png"));
    let list = screenshot(
        &format!("{base}#key={KEY}"),
        &dir.join("dashboard-list.png"),
    );
    assert!(
        detail.len() > list.len() + 10_000,
        "the detail view adds a screenful: {} vs {} bytes",
        detail.len(),
        list.len()
    );
}

/// The value of `attribute` of each element of `svg` that opens with `element`.
fn attribute_of_each(svg: &str, element: &str, attribute: &str) -> Vec<String> {
    svg.split(element)
        .skip(1)
        .map(|e| between(e, &format!("{attribute}=\""), "\"").to_string())
        .collect()
}

/// The rows of `<tbody id="{tbody}">` whose class is `class`.
fn rows_of(dom: &str, tbody: &str, class: &str) -> Vec<Row> {
    let body = between(dom, &format!("<tbody id=\"{tbody}\">"), "</tbody>");
    body.split(&format!("<tr class=\"{class}\">"))
        .skip(1)
        .map(|row| Row {
            class: class.to_string(),
            cells: cells(row),
        })
        .collect()
}

#[test]
fn range_search_paging_chart_and_refresh() {
    let server = TestServer::start(&[("OUTBOUND_API_KEY", KEY)]);
    let call = |n, days_ago, caller, status, first_frames| Call {
        n,
        days_ago,
        role: "parent",
        caller,
        status,
        usd: Some(0.2),
        first_frames,
    };
    seed(
        &server,
        &[
            call(1, 6, "+1***7777", CallStatus::Completed, &[100]),
            call(2, 3, "+1***0123", CallStatus::Completed, &[300, 500]),
            call(3, 3, "+1***4444", CallStatus::Failed, &[]),
            call(4, 1, "+1***0123", CallStatus::ForceReaped, &[800]),
            call(5, 1, "+1***5555", CallStatus::Completed, &[200]),
            call(6, 0, "+1***0123", CallStatus::Completed, &[400]),
        ],
    );
    let base = format!("http://{}/dashboard#key={KEY}", server.addr);
    let range = format!("from={}&to={}", date(4), date(0));

    // The range leaves out call 1; a page of two still totals the five of the range.
    let url = format!("{base}&{range}&limit=2&refresh=2");
    let dom = rendered_dom(&url);
    let page1 = rows(&dom);
    let sids: Vec<&str> = page1.iter().map(|r| r.cells[0].as_str()).collect();
    assert_eq!(sids, [sid(6), sid(5)]);
    assert!(
        dom.contains(r#"id="total-calls"><div class="value">5<"#),
        "{dom}"
    );
    assert!(dom.contains(r#"id="total-failed"><div class="value">1<"#));
    assert!(dom.contains(r#"<div class="total bad" id="total-reaped"><div class="value">1<"#));
    assert!(dom.contains(r#"id="total-p95"><div class="value">800 ms<"#));
    assert!(dom.contains("<span id=\"page-label\">page 1 · 2 calls on this page</span>"));

    // The chart: a bar per day of the range, a cost point per day, a latency point per day
    // that had turns, failures drawn over their day's bar.
    let chart = between(&dom, "<svg id=\"chart-calls\"", "</svg>");
    assert_eq!(
        attribute_of_each(chart, "<rect class=\"bar\"", "data-date"),
        [date(4), date(3), date(2), date(1), date(0)]
    );
    assert_eq!(
        attribute_of_each(chart, "<rect class=\"bar\"", "data-calls"),
        ["0", "2", "0", "2", "1"]
    );
    assert_eq!(chart.matches("<rect class=\"bar-bad\"").count(), 2);
    assert_eq!(chart.matches("<circle class=\"cost-point\"").count(), 5);
    let latency = between(&dom, "<svg id=\"chart-latency\"", "</svg>");
    assert_eq!(
        attribute_of_each(latency, "<circle class=\"latency-point\"", "data-ms"),
        ["500", "800", "400"]
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    screenshot(&url, &dir.join("dashboard-chart.png"));

    // Paging follows the API's cursor: the next page starts where the first ended.
    let cursor = between(&dom, "id=\"older\" type=\"button\" data-cursor=\"", "\"");
    assert!(!cursor.is_empty(), "{dom}");
    let page2 = rows(&rendered_dom(&format!(
        "{base}&{range}&limit=2&cursor={cursor}"
    )));
    let sids: Vec<&str> = page2.iter().map(|r| r.cells[0].as_str()).collect();
    assert_eq!(sids, [sid(4), sid(3)]);
    // Failed and force-reaped calls stand out.
    assert_eq!(page2[0].class, "call force-reaped");
    assert_eq!(page2[1].class, "call failed");
    assert_eq!(page1[0].class, "call");

    // Auto-refresh: with a 2 s period, the 10 s the page ran asked again several times.
    let refreshes: u32 = between(&dom, "data-refreshes=\"", "\"").parse().unwrap();
    assert!(refreshes >= 3, "{refreshes} refreshes");

    // Search by the last digits, within the range.
    let found = rows(&rendered_dom(&format!("{base}&{range}&q=0123")));
    let sids: Vec<&str> = found.iter().map(|r| r.cells[0].as_str()).collect();
    assert_eq!(sids, [sid(6), sid(4), sid(2)]);
    // A CallSid opens its call.
    let by_sid = rendered_dom(&format!("{base}&{range}&q={}", sid(3)));
    assert_eq!(rows(&by_sid).len(), 1);
    assert_eq!(between(&by_sid, "id=\"detail-sid\">", "<"), sid(3));
}

#[test]
fn the_page_is_self_contained() {
    let server = TestServer::start(&[]);
    let res = server.request("GET", "/dashboard").send();
    assert_eq!(res.status, 200);
    assert_eq!(res.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(res
        .header("Content-Security-Policy")
        .unwrap()
        .contains("default-src 'none'"));
    for external in [
        "src=\"http",
        "href=\"http",
        "//cdn",
        "@import",
        "<script src",
    ] {
        assert!(!res.body.contains(external), "external asset: {external}");
    }
    assert!(
        !res.body.contains(".innerHTML") && !res.body.contains("insertAdjacentHTML"),
        "values must not go through HTML parsing"
    );
}

/// Headless Chromium driven over the DevTools protocol, for what a deep link cannot show:
/// clicks, typing, and the page refreshing itself while the test adds a call.
struct Browser {
    child: std::process::Child,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
    _profile: TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = TempDir::new("chromium-cdp");
        let child = start_chromium(&profile, &["--remote-debugging-port=0"], url, Stdio::null());
        // Chromium writes the port it chose to the profile, once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Some(port) = text.lines().next().and_then(|l| l.parse::<u16>().ok()) {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let page = loop {
            let targets = http_get_json(port, "/json/list");
            let page = targets.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(page) = page {
                break page;
            }
            assert!(Instant::now() < deadline, "no page target: {targets}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (mut socket, _) = tungstenite::connect(page.as_str()).expect("DevTools WebSocket");
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_mut() {
            // A page that never answers fails the test instead of hanging it.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        }
        Browser {
            child,
            socket,
            next_id: 1,
            _profile: profile,
        }
    }

    /// The value of the JavaScript expression `expr` in the page.
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expr, "returnByValue": true, "awaitPromise": true },
        });
        self.socket
            .send(tungstenite::Message::text(request.to_string()))
            .expect("send to DevTools");
        loop {
            let message = self.socket.read().expect("read from DevTools");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            if reply["id"] == id {
                assert!(
                    reply["result"]["exceptionDetails"].is_null(),
                    "{expr}: {reply}"
                );
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// Waits (at most 15 s) until `expr` is true in the page.
    fn wait_until(&mut self, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.eval(&format!("Boolean({expr})")) != serde_json::Value::Bool(true) {
            assert!(Instant::now() < deadline, "never true: {expr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The CallSid of each listed row.
    fn listed(&mut self) -> Vec<String> {
        let sids = self.eval("[...document.querySelectorAll('#rows tr')].map(r => r.dataset.sid)");
        serde_json::from_value(sids).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get_json(port: u16, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return serde_json::Value::Null;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    // DevTools keeps the connection open whatever `Connection` says: read what
    // `Content-Length` announces.
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let body = loop {
        let Ok(n) = stream.read(&mut buf) else {
            return serde_json::Value::Null;
        };
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Content-Length:")
                        .or(l.strip_prefix("content-length:"))
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if n == 0 || length.is_some_and(|len| body.len() >= len) {
                break body.to_string();
            }
        }
        if n == 0 {
            return serde_json::Value::Null;
        }
    };
    serde_json::from_str(&body).unwrap_or_default()
}

#[test]
fn clicks_typing_and_auto_refresh_in_a_live_page() {
    let server = TestServer::start(&[("OUTBOUND_API_KEY", KEY)]);
    let call = |n, days_ago, caller| Call {
        n,
        days_ago,
        role: "judge",
        caller,
        status: CallStatus::Completed,
        usd: Some(0.1),
        first_frames: &[700],
    };
    seed(
        &server,
        &[
            call(1, 2, "+1***1111"),
            call(2, 1, "+1***2222"),
            call(3, 0, "+1***0123"),
            call(4, 0, "+1***4444"),
            call(5, 0, "+1***0123"),
        ],
    );
    let mut page = Browser::open(&format!(
        "http://{}/dashboard#key={KEY}&limit=2&refresh=1",
        server.addr
    ));
    page.wait_until("document.body.dataset.loaded === '2'");
    assert_eq!(page.listed(), [sid(5), sid(4)]);

    // Older follows the cursor page by page; Newer goes back.
    page.eval("document.getElementById('older').click()");
    page.wait_until(&format!(
        "document.querySelector('#rows tr')?.dataset.sid === '{}'",
        sid(3)
    ));
    assert_eq!(page.listed(), [sid(3), sid(2)]);
    page.eval("document.getElementById('older').click()");
    page.wait_until(&format!(
        "document.querySelector('#rows tr')?.dataset.sid === '{}'",
        sid(1)
    ));
    assert_eq!(page.listed(), [sid(1)]);
    assert_eq!(page.eval("document.getElementById('older').disabled"), true);
    page.eval("document.getElementById('newer').click()");
    page.wait_until(&format!(
        "document.querySelector('#rows tr')?.dataset.sid === '{}'",
        sid(3)
    ));
    assert_eq!(
        page.eval("document.getElementById('page-label').textContent"),
        "page 2 · 2 calls on this page"
    );

    // A click on a row opens its detail.
    page.eval(&format!(
        "document.querySelector('#rows tr[data-sid=\"{}\"]').click()",
        sid(2)
    ));
    page.wait_until(&format!(
        "document.getElementById('detail-sid').textContent === '{}'",
        sid(2)
    ));
    assert_eq!(page.eval("document.getElementById('detail').hidden"), false);
    assert_eq!(
        page.eval("document.querySelectorAll('#latencies tr.latency').length"),
        1
    );

    // Typing a search and pressing Enter starts from the first page of what it finds.
    page.eval(
        "const q = document.getElementById('q'); q.value = '0123'; \
         q.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter' }))",
    );
    page.wait_until("document.getElementById('page-label').textContent.startsWith('page 1')");
    page.wait_until("document.querySelectorAll('#rows tr').length === 2");
    assert_eq!(page.listed(), [sid(5), sid(3)]);

    // Narrowing the range changes the totals: they are the range's, not the page's.
    page.eval("document.getElementById('q').value = ''");
    page.wait_until("document.querySelector('#total-calls .value').textContent === '5'");
    page.eval(&format!(
        "const f = document.getElementById('from'); f.value = '{}'; f.dispatchEvent(new Event('change'))",
        date(0)
    ));
    page.wait_until("document.querySelector('#total-calls .value').textContent === '3'");
    assert_eq!(
        page.eval("document.querySelectorAll('#chart-calls rect.bar').length"),
        5 - 4
    );

    // The page refreshes itself: a call that starts now shows up without a reload.
    seed(&server, &[call(6, 0, "+1***6666")]);
    page.wait_until("document.querySelector('#total-calls .value').textContent === '4'");
    page.wait_until(&format!(
        "document.querySelector('#rows tr')?.dataset.sid === '{}'",
        sid(6)
    ));
}
