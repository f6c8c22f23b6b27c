//! The daily rollup through the real binary and the HTTP trigger: the right day's calls in
//! total and per role, the file under `rollups/` replaced on a re-run, the log line, and the
//! `CRON_SECRET` gate.

use cotrackpro_voice::records::event::{CallStatus, CostSummary, Event, EventKind};
use cotrackpro_voice::records::{ttl_from, RecordStore};
use cotrackpro_voice::timestamp;

use crate::support::{binary, TempDir, TestServer, DOMAIN};

const DAY: &str = "2026-11-23";

fn seed(store: &RecordStore) {
    let day_ms = timestamp::parse_date(DAY).unwrap() * timestamp::MS_PER_DAY;
    let ttl = ttl_from(timestamp::now_ms(), 30.0);
    let calls = [
        (1, "judge", day_ms + 1_000, Some(1_000_000)),
        (2, "judge", day_ms + 3_600_000, Some(0)),
        (3, "kid_teen", day_ms + timestamp::MS_PER_DAY - 1, Some(0)),
        (4, "parent", day_ms + 7_200_000, None),
        (5, "judge", day_ms - 1, Some(5)),
    ];
    for (n, role, started, tokens) in calls {
        let sid = format!("CA{n:032x}");
        let created = Event {
            role: Some(role.into()),
            started_at: Some(timestamp::format_ms(started)),
            status: Some(CallStatus::Active),
            ..Event::new(
                EventKind::Created,
                &sid,
                &timestamp::format_ms(started),
                ttl,
            )
        };
        store.append(&created).unwrap();
        if let Some(tokens) = tokens {
            let completed = Event {
                status: Some(CallStatus::Completed),
                duration_secs: Some(120),
                turn_count: Some(6),
                cost_summary: Some(CostSummary {
                    claude_input_tokens: tokens,
                    tts_chars: 1000,
                    tts_chars_cached: 200,
                    stt_secs: 60.0,
                    ..CostSummary::default()
                }),
                ..Event::new(
                    EventKind::Completed,
                    &sid,
                    &timestamp::format_ms(started),
                    ttl,
                )
            };
            store.append(&completed).unwrap();
        }
    }
}

#[test]
fn the_rollup_command_sums_the_day_and_replaces_its_file() {
    let dir = TempDir::new("rollup");
    seed(&RecordStore::open(dir.path()).unwrap().0);
    let run = || {
        let output = binary()
            .args(["rollup", "--date", DAY])
            .env_clear()
            .env("RECORDS_DIR", dir.path())
            .env("SERVER_DOMAIN", DOMAIN)
            .env("LOG_FORMAT", "json")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (stdout, String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (rollup, stderr) = run();
    assert_eq!(rollup["date"], DAY);
    let totals = &rollup["totals"];
    assert_eq!(totals["callCount"], 3);
    assert_eq!(totals["totalDurationSecs"], 360);
    assert_eq!(totals["totalMinutes"], 6.0);
    assert_eq!(totals["totalTurns"], 18);
    assert_eq!(totals["claudeInputTokens"], 1_000_000);
    assert_eq!(totals["ttsChars"], 3000);
    assert_eq!(totals["ttsCharsCached"], 600);
    assert_eq!(totals["sttSecs"], 180.0);
    // 3.00 (tokens) + 3 × (0.10 TTS + 0.008 STT)
    assert_eq!(totals["estimatedCostUsd"], 3.324);
    assert_eq!(rollup["byRole"]["judge"]["callCount"], 2);
    assert_eq!(rollup["byRole"]["kid_teen"]["callCount"], 1);
    assert_eq!(rollup["skipped"]["withoutCostSummary"], 1);
    assert_eq!(rollup["skipped"]["byStatus"]["active"], 1);

    let daily = stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["message"] == "cost.rollup.daily")
        .expect("a cost.rollup.daily log line");
    assert_eq!(daily["callCount"], 3);
    assert_eq!(daily["estimatedCostUsd"], 3.324);
    // Per-role totals are an object on the line, not JSON inside a string.
    assert_eq!(daily["byRole"]["judge"]["callCount"], 2);
    let skipped = stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cost.rollup.skipped"))
        })
        .expect("a cost.rollup.skipped log line");
    assert_eq!(skipped["byStatus"]["active"], 1);

    let file = dir.path().join("rollups").join(format!("{DAY}.json"));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, rollup);
    let (again, _) = run();
    assert_eq!(again, rollup);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("rollups"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1, "a re-run replaces the day's file");
}

#[test]
fn the_http_trigger_needs_the_cron_secret() {
    let server = TestServer::start(&[("CRON_SECRET", "cron-secret-value")]);
    seed(server.records());
    let path = format!("/api/cron/cost-rollup?date={DAY}");
    assert_eq!(server.request("GET", &path).send().status, 401);
    let res = server
        .request("GET", &path)
        .header("Authorization", "Bearer cron-secret-value")
        .send();
    assert_eq!(res.status, 200);
    let body = res.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["totals"]["callCount"], 3);
    assert!(server
        .records_dir
        .path()
        .join("rollups")
        .join(format!("{DAY}.json"))
        .exists());
    let bad = server
        .request("GET", "/api/cron/cost-rollup?date=yesterday")
        .header("Authorization", "Bearer cron-secret-value")
        .send();
    assert_eq!(bad.status, 400);
}
