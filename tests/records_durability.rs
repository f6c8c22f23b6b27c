//! The records files under stress, through the real binary: a server killed with SIGKILL at
//! random moments loses no record it acknowledged, and a separate `compact` process running
//! while many threads append loses nothing and duplicates nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cotrackpro_voice::records::{index, RecordStore};

use crate::support::{binary, encode_form, send_raw, serve_binary, Spawned, TempDir, DOMAIN};

fn start_server(records: &TempDir) -> (Spawned, SocketAddr) {
    let (server, addr, _) = serve_binary(records, &[]);
    (server, addr)
}

fn sid(n: u32) -> String {
    format!("CA{n:032x}")
}

/// Answers call `n` on the server; true when the server acknowledged it (200).
fn answer(addr: SocketAddr, n: u32) -> bool {
    let body = encode_form(&[("CallSid", &sid(n)), ("From", "+15551234567")]);
    let headers = vec![(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    // A connection cut by the kill is simply not acknowledged.
    std::panic::catch_unwind(|| {
        send_raw(
            addr,
            "POST",
            "/call/incoming?role=parent",
            &headers,
            body.as_bytes(),
        )
        .status
    })
    .map(|status| status == 200)
    .unwrap_or(false)
}

/// A pseudo-random number from the clock: enough to vary kill moments between runs.
fn jitter(max_ms: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    nanos % max_ms
}

#[test]
fn a_killed_server_loses_no_acknowledged_record() {
    let records = TempDir::new("crash");
    let next = Arc::new(AtomicU32::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    for round in 0..5 {
        let (mut server, addr) = start_server(&records);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (next, acknowledged, stop) = (next.clone(), acknowledged.clone(), stop.clone());
                thread::Builder::new()
                    .name(format!("crash-client-{c}"))
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            let n = next.fetch_add(1, Ordering::SeqCst);
                            if answer(addr, n) {
                                acknowledged.lock().unwrap().insert(n);
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        thread::sleep(Duration::from_millis(30 + jitter(200)));
        server.child.kill().expect("SIGKILL the server");
        server.child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().unwrap();
        }

        let (store, bad) = RecordStore::open(records.path()).unwrap();
        // The server compacted at its start, so only this round's kill can have torn a line.
        assert!(
            bad.len() <= 1,
            "round {round}: at most the torn last line, got {bad:?}"
        );
        let acknowledged = acknowledged.lock().unwrap();
        assert!(
            !acknowledged.is_empty(),
            "round {round}: the server acknowledged nothing"
        );
        for n in acknowledged.iter() {
            let key = index::sid_key(&sid(*n)).unwrap();
            assert!(
                store.summary(&key).is_some(),
                "round {round}: acknowledged call {n} was lost"
            );
        }
    }
}

#[test]
fn compaction_in_another_process_loses_and_duplicates_nothing() {
    let records = TempDir::new("concurrent");
    let (_server, addr) = start_server(&records);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU32::new(0));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (next, answered, stop) = (next.clone(), answered.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("append-client-{c}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        assert!(answer(addr, n), "the live server refused call {n}");
                        answered.lock().unwrap().push(n);
                    }
                })
                .unwrap()
        })
        .collect();
    let mut compactions = 0;
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(20 + jitter(40)));
        let output = binary()
            .arg("compact")
            .env_clear()
            .env("RECORDS_DIR", records.path())
            .env("SERVER_DOMAIN", DOMAIN)
            .env("LOG_LEVEL", "off")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(report["callsKept"].as_u64().is_some());
        compactions += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(compactions, 5);

    // One last compaction folds every call into exactly one line.
    let status = Command::new(env!("CARGO_BIN_EXE_cotrackpro-voice"))
        .arg("compact")
        .env_clear()
        .env("RECORDS_DIR", records.path())
        .env("SERVER_DOMAIN", DOMAIN)
        .env("LOG_LEVEL", "off")
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    let text = std::fs::read_to_string(records.path().join("calls.jsonl")).unwrap();
    let mut lines_per_call: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("every line is whole");
        *lines_per_call
            .entry(event["callSid"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let answered = answered.lock().unwrap();
    assert!(
        answered.len() > 20,
        "the clients got going ({} calls)",
        answered.len()
    );
    for n in answered.iter() {
        assert_eq!(lines_per_call.get(&sid(*n)), Some(&1), "call {n}");
    }
    assert_eq!(lines_per_call.len(), answered.len(), "nothing extra");
}
