//! The card's promise under load: `cclient --threads 1000` against `cserverd --workers 8`, with
//! client acknowledgements, log records and the scoreboard agreeing exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;

use common::*;

/// The load tests share two cores: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Checks that client, log and scoreboard all say `n`, and that each worker's counts run 1..=k.
fn assert_accounting(server: &Server, summary: &serde_json::Value, n: u64) {
    assert_eq!(summary["acknowledged"], n, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["accounting_ok"], true, "{summary}");
    assert_eq!(summary["server_delta"], n, "{summary}");

    let records = parse_log(&server.log_text());
    let (recvd, completed) = message_counts(&records);
    assert_eq!((recvd as u64, completed as u64), (n, n));
    let mut counts: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for r in &records {
        if let Record::Completed { pid, count, .. } = r {
            assert!(
                counts.entry(*pid).or_default().insert(*count),
                "count {count} twice on {pid}"
            );
        }
    }
    for (pid, seen) in &counts {
        let k = seen.len() as u64;
        assert_eq!(
            seen.iter().copied().collect::<Vec<_>>(),
            (1..=k).collect::<Vec<_>>(),
            "worker {pid}"
        );
    }
    let status = server.status();
    assert_eq!(status["total"]["requests"], n, "{status}");
    let per_slot: u64 = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_slot, n);
}

#[test]
fn a_thousand_users_each_send_one_message() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["--workers", "8"]);
    let (status, summary) = server.cclient(&["--threads", "1000", "--user", "arijort"]);
    assert!(status.success(), "{summary}");
    assert_accounting(&server, &summary, 1000);

    let records = parse_log(&server.log_text());
    let pids: BTreeSet<u32> = records
        .iter()
        .filter_map(|r| match r {
            Record::Completed { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    assert!(pids.len() >= 2, "all work on {pids:?}");
    assert!(records.iter().all(|r| match r {
        Record::Recvd { user, .. } => user == "arijort",
        _ => true,
    }));

    // The text view says the same, and every process is still there.
    let out = Command::new(CSERVERCTL)
        .args(["status", "--stats-file"])
        .arg(&server.board)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("total requests 1000 "), "{text}");
    assert!(alive(server.pid().as_raw()));
    let workers = server.worker_pids();
    assert_eq!(workers.len(), 8);
    assert!(workers.iter().all(|&p| p > 0 && alive(p)), "{workers:?}");
}

#[test]
fn sessions_with_many_transactions_are_counted_exactly() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["--workers", "8"]);
    let (status, summary) = server.cclient(&["--threads", "1000", "--requests", "20"]);
    assert!(status.success(), "{summary}");
    assert_accounting(&server, &summary, 20_000);
}

#[test]
fn a_thousand_slow_requests_are_served_concurrently() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["--workers", "8", "--work-ms", "2000"]);
    let (status, summary) = server.cclient(&["--threads", "1000"]);
    assert!(status.success(), "{summary}");
    assert_accounting(&server, &summary, 1000);
    // Each request took its 2 s of work, yet all 1000 together took nowhere near 250 s.
    assert!(
        summary["latency"]["p50_us"].as_u64().unwrap() >= 2_000_000,
        "{summary}"
    );
    let wall = summary["wall_s"].as_f64().unwrap();
    assert!(
        wall < 30.0,
        "1000 requests of 2 s took {wall} s: not concurrent"
    );
}
