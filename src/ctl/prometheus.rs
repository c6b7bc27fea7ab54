//! The scoreboard in the Prometheus text exposition format (0.0.4), with its label and help
//! escaping.

use std::fmt::Write as _;

use crate::scoreboard::{self, Snapshot};

/// Escapes a label value for the Prometheus text format: `\`, `"` and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes `# HELP` text: `\` and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples (`labels` already rendered as
/// `{a="1",...}` or empty).
fn family(s: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(s, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(s, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(s, "{name}{labels} {value}");
    }
}

/// Renders `{k="v",...}` with escaped values.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// `cserverd_up`'s help, for both values.
const UP_HELP: &str = "1: the master the scoreboard records is running; 0: it is not (a stale \
                       scoreboard or pid file).";

/// What `status --prometheus` prints for a master that is not running: `cserverd_up 0` alone,
/// since the scoreboard's numbers describe no running server.
pub fn prometheus_down() -> String {
    let mut s = String::new();
    family(
        &mut s,
        "cserverd_up",
        "gauge",
        UP_HELP,
        &[(String::new(), "0".into())],
    );
    s
}

/// The scoreboard in the Prometheus text exposition format, version 0.0.4: every family has its
/// `# HELP` and `# TYPE` line before its samples; totals have no labels, the per-worker families
/// (`cserverd_worker_*`) are labelled `slot`, `pid` and `state`. `now_ms` is the wall clock in
/// ms since the epoch (for the uptime). No sample carries a timestamp.
pub fn prometheus(snap: &Snapshot, now_ms: u64) -> String {
    let mut s = String::new();
    let plain = |v: String| vec![(String::new(), v)];
    let t = &snap.total;

    family(&mut s, "cserverd_up", "gauge", UP_HELP, &plain("1".into()));
    family(
        &mut s,
        "cserverd_info",
        "gauge",
        "The master's pid, port and state (running or stopping); the value is always 1.",
        &[(
            labels(&[
                ("master_pid", &snap.master_pid.to_string()),
                ("port", &snap.port.to_string()),
                ("state", snap.state.name()),
            ]),
            "1".into(),
        )],
    );
    family(
        &mut s,
        "cserverd_start_time_seconds",
        "gauge",
        "When the master started, seconds since the Unix epoch.",
        &plain(seconds(snap.started_ms)),
    );
    family(
        &mut s,
        "cserverd_uptime_seconds",
        "gauge",
        "Seconds since the master started.",
        &plain(seconds(now_ms.saturating_sub(snap.started_ms))),
    );
    family(
        &mut s,
        "cserverd_workers",
        "gauge",
        "Worker slots the master keeps filled.",
        &plain(snap.workers.to_string()),
    );

    // (name after `cserverd_` / `cserverd_worker_`, type, help, total, per-slot value)
    type Get = fn(&scoreboard::SlotSnapshot) -> u64;
    let series: [(&str, &str, &str, u64, Get); 12] = [
        (
            "requests_total",
            "counter",
            "MSG requests handled and logged.",
            t.requests,
            |w| w.requests,
        ),
        (
            "accepted_connections_total",
            "counter",
            "Client connections accepted.",
            t.accepted,
            |w| w.accepted,
        ),
        (
            "open_connections",
            "gauge",
            "Client connections open now.",
            t.open,
            |w| w.open,
        ),
        (
            "received_bytes_total",
            "counter",
            "Bytes read from clients.",
            t.bytes_in,
            |w| w.bytes_in,
        ),
        (
            "sent_bytes_total",
            "counter",
            "Bytes written to clients.",
            t.bytes_out,
            |w| w.bytes_out,
        ),
        (
            "errors_total",
            "counter",
            "ERR replies sent.",
            t.errors,
            |w| w.errors,
        ),
        (
            "restarts_total",
            "counter",
            "Worker processes that died unexpectedly (crash, kill, missed heartbeat).",
            t.restarts,
            |w| w.restarts,
        ),
        (
            "retired_total",
            "counter",
            "Worker processes ended as planned (reload, recycling, TTOU, upgrade).",
            t.retired,
            |w| w.retired,
        ),
        (
            "sessions_handed_over_total",
            "counter",
            "Idle sessions handed to another worker when their worker retired as planned.",
            t.handed_over,
            |w| w.handed_over,
        ),
        (
            "sessions_adopted_total",
            "counter",
            "Sessions taken over from a retiring worker.",
            t.adopted,
            |w| w.adopted,
        ),
        (
            "log_syncs_total",
            "counter",
            "fdatasync calls on the log (--sync always or batch), failed ones included.",
            t.sync.syncs,
            |w| w.sync.syncs,
        ),
        (
            "log_sync_failures_total",
            "counter",
            "fdatasync calls on the log that failed (each stops MSG until the log is reopened).",
            t.sync.failures,
            |w| w.sync.failures,
        ),
    ];
    for (name, kind, help, total, _) in &series {
        if *name == "requests_total" {
            // By the protocol of the listener they came on (cserver's are its MSGs).
            let samples: Vec<(String, String)> = t
                .by_protocol
                .each()
                .iter()
                .map(|(p, n)| (labels(&[("protocol", p.name())]), n.to_string()))
                .collect();
            family(
                &mut s,
                "cserverd_requests_total",
                kind,
                "Requests handled and logged, by listener protocol (cserver: MSG requests). \
                 All workers together.",
                &samples,
            );
            continue;
        }
        family(
            &mut s,
            &format!("cserverd_{name}"),
            kind,
            &format!("{help} All workers together."),
            &plain(total.to_string()),
        );
    }
    family(
        &mut s,
        "cserverd_log_sync_seconds_total",
        "counter",
        "Time spent in successful fdatasync calls on the log. All workers together.",
        &plain(format!("{:.6}", t.sync.total_ns as f64 / 1e9)),
    );
    family(
        &mut s,
        "cserverd_log_sync_max_seconds",
        "gauge",
        "The longest successful fdatasync of the log. All workers together.",
        &plain(format!("{:.6}", t.sync.max_ns as f64 / 1e9)),
    );
    for (name, kind, help, _, get) in &series {
        let samples: Vec<(String, String)> = snap
            .slots
            .iter()
            .map(|w| {
                (
                    labels(&[
                        ("slot", &w.slot.to_string()),
                        ("pid", &w.pid.to_string()),
                        ("state", w.state.name()),
                    ]),
                    get(w).to_string(),
                )
            })
            .collect();
        family(
            &mut s,
            &format!("cserverd_worker_{name}"),
            kind,
            &format!("{help} Per worker slot (counters continue across respawns)."),
            &samples,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::{Scoreboard, Slot, SlotState};
    use std::collections::HashMap;

    /// A real scoreboard (so the test keeps compiling when fields are added to the slots) with
    /// slots 0 and 2 used.
    fn sample_snapshot() -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 4, 4242).unwrap();
        let s0 = board.slot(0);
        s0.pid.store(1001, std::sync::atomic::Ordering::Relaxed);
        s0.set_state(SlotState::Ready);
        Slot::add(&s0.requests, 5);
        Slot::add(&s0.accepted, 6);
        Slot::add(&s0.open, 1);
        Slot::add(&s0.bytes_in, 100);
        Slot::add(&s0.bytes_out, 200);
        Slot::add(&s0.errors, 2);
        let s2 = board.slot(2);
        s2.pid.store(1003, std::sync::atomic::Ordering::Relaxed);
        s2.set_state(SlotState::Stopping);
        Slot::add(&s2.requests, 7);
        Slot::add(&s2.served[0], 4); // chat
        Slot::add(&s0.served[2], 2); // procman
        Slot::add(&s2.accepted, 8);
        Slot::add(&s2.restarts, 3);
        board.snapshot()
    }

    /// One parsed sample line: `name{labels} value`.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    /// Parses a sample line strictly by the 0.0.4 text format grammar (no timestamp expected).
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value in {line:?}"))?;
        let name = &line[..end];
        if !is_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or("label without '='")?;
                let lname = &rest[..eq];
                if !is_name(lname, false) {
                    return Err(format!("bad label name {lname:?}"));
                }
                let mut chars = rest[eq + 1..].char_indices();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err("label value not quoted".into());
                }
                let mut value = String::new();
                let mut closed = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = Some(eq + 1 + i + 1);
                            break;
                        }
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(format!("bad escape {other:?}")),
                        },
                        '\n' => return Err("raw newline in label value".into()),
                        c => value.push(c),
                    }
                }
                let after = closed.ok_or("unterminated label value")?;
                labels.push((lname.to_string(), value));
                rest = &rest[after..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return Err(format!("expected ',' or '}}' at {rest:?}"));
                }
            }
        }
        let value_text = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before value in {line:?}"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
        };
        Ok(Sample {
            name: name.to_string(),
            labels,
            value,
        })
    }

    /// Checks the exposition's structure; returns every sample.
    fn check_exposition(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "must end with a newline");
        let mut help: HashMap<String, usize> = HashMap::new();
        let mut kind: HashMap<String, String> = HashMap::new();
        let mut finished: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            assert!(!line.is_empty(), "blank line {n}");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has text");
                assert!(help.insert(name.into(), n).is_none(), "second HELP {name}");
                if let Some(c) = current.take() {
                    finished.push(c);
                }
                current = Some(name.into());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').expect("TYPE has a type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&k),
                    "type {k}"
                );
                assert_eq!(current.as_deref(), Some(name), "TYPE right after its HELP");
                assert!(kind.insert(name.into(), k.into()).is_none(), "second TYPE");
                if k == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                } else {
                    assert!(!name.ends_with("_total"), "{k} {name} named like a counter");
                }
            } else {
                assert!(!line.starts_with('#'), "stray comment {line:?}");
                let sample = parse_sample(line).unwrap_or_else(|e| panic!("line {n}: {e}"));
                assert!(sample.name.starts_with("cserverd_"), "{}", sample.name);
                assert_eq!(
                    current.as_deref(),
                    Some(sample.name.as_str()),
                    "sample {line:?} outside its family (HELP/TYPE must come first)"
                );
                assert!(kind.contains_key(&sample.name), "no TYPE before {line:?}");
                assert!(!finished.contains(&sample.name), "family split: {line:?}");
                samples.push(sample);
            }
        }
        assert_eq!(help.len(), kind.len(), "every HELP has a TYPE");
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}");
        found[0].value
    }

    #[test]
    fn prometheus_is_well_formed() {
        let snap = sample_snapshot();
        let text = prometheus(&snap, snap.started_ms + 2500);
        let samples = check_exposition(&text);
        assert!(text.contains("# TYPE cserverd_requests_total counter\n"));
        assert!(text.contains("# TYPE cserverd_open_connections gauge\n"));
        assert!(
            text.contains("\ncserverd_requests_total{protocol=\"cserver\"} 12\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\ncserverd_worker_requests_total{slot=\"0\",pid=\"1001\",state=\"ready\"} 5\n"
            ),
            "{text}"
        );
        assert!(!samples.is_empty());
        let down = prometheus_down();
        let samples = check_exposition(&down);
        assert_eq!(value(&samples, "cserverd_up", &[]), 0.0);
        assert_eq!(samples.len(), 1, "{down}");
    }

    #[test]
    fn prometheus_values_match_the_snapshot() {
        let snap = sample_snapshot();
        let s = check_exposition(&prometheus(&snap, snap.started_ms + 2500));
        assert_eq!(value(&s, "cserverd_up", &[]), 1.0);
        assert_eq!(value(&s, "cserverd_uptime_seconds", &[]), 2.5);
        assert_eq!(
            value(&s, "cserverd_start_time_seconds", &[]),
            snap.started_ms as f64 / 1000.0
        );
        assert_eq!(value(&s, "cserverd_workers", &[]), snap.workers as f64);
        let pid = snap.master_pid.to_string();
        assert_eq!(
            value(
                &s,
                "cserverd_info",
                &[("master_pid", &pid), ("port", "4242"), ("state", "running")]
            ),
            1.0
        );
        for (name, total) in [
            ("requests_total", 12.0),
            ("accepted_connections_total", 14.0),
            ("open_connections", 1.0),
            ("received_bytes_total", 100.0),
            ("sent_bytes_total", 200.0),
            ("errors_total", 2.0),
            ("restarts_total", 3.0),
        ] {
            let all: &[(&str, &str)] = match name {
                "requests_total" => &[("protocol", "cserver")],
                _ => &[],
            };
            assert_eq!(value(&s, &format!("cserverd_{name}"), all), total, "{name}");
            let per_worker: f64 = s
                .iter()
                .filter(|x| x.name == format!("cserverd_worker_{name}"))
                .map(|x| x.value)
                .sum();
            assert_eq!(per_worker, total, "{name} per worker");
        }
        // Every protocol's requests, by its label.
        for (protocol, n) in [
            ("chat", 4.0),
            ("reverse", 0.0),
            ("procman", 2.0),
            ("rembash", 0.0),
        ] {
            let label = [("protocol", protocol)];
            assert_eq!(
                value(&s, "cserverd_requests_total", &label),
                n,
                "{protocol}"
            );
        }
        let w2 = [("slot", "2"), ("pid", "1003"), ("state", "stopping")];
        assert_eq!(value(&s, "cserverd_worker_requests_total", &w2), 7.0);
        assert_eq!(value(&s, "cserverd_worker_restarts_total", &w2), 3.0);
        // Only used slots get series: slots 0 and 2.
        assert_eq!(
            s.iter()
                .filter(|x| x.name == "cserverd_worker_requests_total")
                .count(),
            2
        );
        // A clock behind the start does not make the uptime negative.
        let s = check_exposition(&prometheus(&snap, 0));
        assert_eq!(value(&s, "cserverd_uptime_seconds", &[]), 0.0);
    }

    #[test]
    fn label_values_are_escaped_per_the_spec() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value("a\\b"), "a\\\\b");
        assert_eq!(escape_label_value("say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(escape_label_value("two\nlines"), "two\\nlines");
        let nasty = "x\\\"\n} 1\ncserverd_up 0";
        let line = format!("cserverd_test{} 1", labels(&[("v", nasty), ("w", "ok")]));
        assert!(!line.contains('\n'));
        let sample = parse_sample(&line).unwrap();
        assert_eq!(sample.labels[0], ("v".to_string(), nasty.to_string()));
        assert_eq!(sample.labels[1], ("w".to_string(), "ok".to_string()));
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn sample_parser_rejects_malformed_lines() {
        for bad in [
            "cserverd_x",
            "cserverd_x{a=\"1\"}",
            "9bad 1",
            "cserverd_x{a=1} 1",
            "cserverd_x{a=\"1} 1",
            "cserverd_x{a=\"\\t\"} 1",
            "cserverd_x one",
        ] {
            assert!(parse_sample(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_sample("cserverd_x{a=\"1\",} 2.5").is_ok());
    }
}
