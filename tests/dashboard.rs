//! The dashboard in a real headless Chromium (Debian's `chromium`; `.ci/run` installs it):
//! rows render, the role and status filters work, and records holding markup render as text.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cotrackpro_voice::records::event::{CallStatus, CostSummary, Event, EventKind};
use cotrackpro_voice::records::ttl_from;
use cotrackpro_voice::timestamp;

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

/// The DOM of `url` after its scripts ran, from headless Chromium (at most 60 s).
fn rendered_dom(url: &str) -> String {
    let profile = TempDir::new("chromium-profile");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
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

/// The text of each cell of each rendered call row.
fn rows(dom: &str) -> Vec<Vec<String>> {
    dom.split("<tr class=\"call\">")
        .skip(1)
        .map(|row| {
            let row = row.split("</tr>").next().unwrap();
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = cell.split_once('>').unwrap().1;
                    text.split("</td>").next().unwrap().to_string()
                })
                .collect()
        })
        .collect()
}

fn seed(server: &TestServer) {
    let now = timestamp::now_ms();
    let ttl = ttl_from(now, 30.0);
    let calls: [(u32, &str, &str, Option<f64>); 5] = [
        (1, "judge", "+1***0001", Some(0.0123)),
        (2, "judge", "+1***0002", None),
        (3, "parent", IMG_PAYLOAD, Some(0.5)),
        (4, "therapist", SCRIPT_PAYLOAD, Some(0.25)),
        (5, "parent", "+1***0005", None),
    ];
    for (n, role, caller, cost) in calls {
        let sid = format!("CA{n:032x}");
        let at = timestamp::format_ms(now - 60_000 * (10 - n as i64));
        server
            .records()
            .append(&Event {
                role: Some(role.into()),
                caller_number: Some(caller.into()),
                started_at: Some(at.clone()),
                status: Some(CallStatus::Active),
                ..Event::new(EventKind::Created, &sid, &at, ttl)
            })
            .unwrap();
        if let Some(usd) = cost {
            server
                .records()
                .append(&Event {
                    status: Some(CallStatus::Completed),
                    duration_secs: Some(125),
                    turn_count: Some(6),
                    cost_summary: Some(CostSummary {
                        estimated_cost_usd: usd,
                        ..CostSummary::default()
                    }),
                    ..Event::new(EventKind::Completed, &sid, &at, ttl)
                })
                .unwrap();
        }
    }
}

#[test]
fn the_dashboard_lists_filters_and_escapes() {
    let server = TestServer::start(&[("OUTBOUND_API_KEY", KEY)]);
    seed(&server);
    let base = format!("http://{}/dashboard", server.addr);

    let all = rendered_dom(&format!("{base}#key={KEY}"));
    let all_rows = rows(&all);
    assert_eq!(all_rows.len(), 5, "{all}");
    assert_eq!(all_rows[0][0], format!("CA{:032x}", 5), "newest first");
    assert!(all.contains("data-loaded=\"5\""));
    let first = all_rows.iter().find(|r| r[0].ends_with("01")).unwrap();
    assert_eq!(
        (first[1].as_str(), first[4].as_str()),
        ("judge", "completed")
    );
    assert_eq!(
        (first[6].as_str(), first[7].as_str(), first[8].as_str()),
        ("2:05", "6", "$0.01")
    );
    // Totals: 3 completed calls of 125 s, 18 turns, $0.7623.
    assert!(
        all.contains(r#"id="total-calls"><div class="value">5<"#),
        "{all}"
    );
    assert!(all.contains(r#"id="total-turns"><div class="value">18<"#));
    assert!(all.contains(r#"id="total-cost"><div class="value">$0.76<"#));

    // Markup in a record is shown as text and never runs.
    let body_tag = all
        .split("<body")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap();
    assert!(
        !body_tag.contains("data-xss"),
        "a payload ran: <body{body_tag}>"
    );
    assert!(all.contains("&lt;img src=x onerror="), "{all}");
    assert!(all.contains("&lt;script&gt;document.body.setAttribute"));
    assert_eq!(all.matches("<img").count(), 0);

    let judges = rows(&rendered_dom(&format!("{base}#key={KEY}&role=judge")));
    assert_eq!(judges.len(), 2);
    assert!(judges.iter().all(|r| r[1] == "judge"));

    let completed = rows(&rendered_dom(&format!("{base}#key={KEY}&status=completed")));
    assert_eq!(completed.len(), 3);
    assert!(completed.iter().all(|r| r[4] == "completed"));

    let both = rows(&rendered_dom(&format!(
        "{base}#key={KEY}&role=parent&status=completed"
    )));
    assert_eq!(both.len(), 1);
    assert_eq!(both[0][0], format!("CA{:032x}", 3));

    let wrong_key = rendered_dom(&format!("{base}#key=not-the-key"));
    assert!(rows(&wrong_key).is_empty());
    assert!(wrong_key.contains("unauthorized — check your API key"));
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
    for external in ["src=\"http", "href=\"http", "//cdn", "@import"] {
        assert!(!res.body.contains(external), "external asset: {external}");
    }
    assert!(
        !res.body.contains(".innerHTML"),
        "values must not go through innerHTML"
    );
}
