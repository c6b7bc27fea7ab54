//! The load run's summary: counts, wall time, throughput, latency percentiles and the
//! cross-check against the server's own total, as text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::plan::{Plan, Verify};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// What the server's total said about the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// It moved as `--verify` requires.
    Match,
    /// It did not: the server counted other than what this run was acknowledged.
    Mismatch,
    /// It could not be read after the run (the reason): nothing can be said.
    Unverifiable(String),
    /// `--verify off`.
    Off,
}

impl Check {
    fn name(&self) -> &'static str {
        match self {
            Check::Match => "match",
            Check::Mismatch => "mismatch",
            Check::Unverifiable(_) => "unverifiable",
            Check::Off => "off",
        }
    }
}

/// Exit statuses of a load run (the man page's EXIT STATUS).
pub mod status {
    /// Every request planned was sent and acknowledged, and the server's count agrees.
    pub const OK: i32 = 0;
    /// Requests failed or were not sent, or the server's count disagrees (`mismatch`), or the
    /// run could not start.
    pub const FAILED: i32 = 1;
    /// A bad option.
    pub const USAGE: i32 = 2;
    /// The server's count could not be read after the run (`unverifiable`).
    pub const UNVERIFIABLE: i32 = 3;
    /// Stopped by SIGINT (Ctrl-C) before the end; SIGTERM gives 143.
    pub const INTERRUPTED: i32 = 130;
    /// Every status a load run exits with.
    pub const ALL: [i32; 5] = [OK, FAILED, USAGE, UNVERIFIABLE, INTERRUPTED];
}

/// What the run was, for the header printed before it starts.
pub struct Header<'a>(pub &'a Plan);

impl fmt::Display for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.0;
        let what = match (plan.duration, plan.rate) {
            (None, _) => {
                let n = plan.requests;
                format!("{n} request{} each", if n == 1 { "" } else { "s" })
            }
            (Some(d), _) => format!("for {} s", d.as_secs_f64()),
        };
        let mode = if plan.connect_per_request {
            "a connection per request"
        } else {
            "keep-alive"
        };
        let threads = if plan.conns_per_thread == 1 {
            String::new()
        } else {
            format!(" on {} threads", plan.threads)
        };
        let pace = match plan.rate {
            Some(r) => format!(", open loop at {r} req/s"),
            None => String::new(),
        };
        write!(
            f,
            "cclient: {} users{threads} ({}) to {}, {what}, {mode}{pace}",
            plan.sessions(),
            plan.login.user,
            plan.addr
        )
    }
}

/// Everything `cclient` reports about a load run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub addr: String,
    pub threads: usize,
    /// Concurrent sessions: `threads` × `--conns-per-thread` (for the text; not in the JSON,
    /// whose shape stays that of one connection per thread).
    #[serde(skip)]
    pub users: usize,
    pub user: String,
    pub requests_per_thread: Option<u64>,
    pub duration_s: Option<f64>,
    pub connect_per_request: bool,
    /// `--rate`: an open-loop run at this many requests a second.
    pub rate_rps: Option<f64>,
    /// Requests written to the server.
    pub sent: u64,
    /// Sent and answered `OK`.
    pub acknowledged: u64,
    /// Sent and not answered `OK` (an `ERR`, a timeout, a closed connection).
    pub failed: u64,
    /// Planned and never sent (a connect that failed, an interrupted run, an open-loop
    /// schedule the client could not keep).
    pub not_sent: u64,
    pub wall_s: f64,
    pub throughput_rps: f64,
    /// From each request's start to its `OK`; in an open-loop run from its intended send time,
    /// so a stall of the server shows in every request it delayed (coordinated omission).
    pub latency: Latency,
    /// Open loop: how late the client sent requests after their intended time (ms).
    pub behind_max_ms: Option<f64>,
    pub behind_mean_ms: Option<f64>,
    pub server_total_before: Option<u64>,
    pub server_total_after: Option<u64>,
    /// After minus before, when both are known.
    pub server_delta: Option<u64>,
    pub verify: Verify,
    /// `match`, `mismatch`, `unverifiable` or `off`.
    pub check: &'static str,
    /// Why the check is `unverifiable`.
    pub check_reason: Option<String>,
    /// The server counted what this run was acknowledged (`check` is `match`).
    pub accounting_ok: bool,
    /// SIGINT stopped the run before its end.
    pub interrupted: bool,
    pub errors: BTreeMap<String, u64>,
    #[serde(skip)]
    outcome: Check,
    /// Every latency, for `--histogram`.
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

/// What a run measured, for [`Summary::new`].
pub struct Counts {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub wall: Duration,
    pub latency: Latency,
    /// Open loop: the worst and the mean lateness of sends (µs).
    pub behind_us: Option<(u64, f64)>,
    pub interrupted: bool,
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// `before` is `None` with `--verify off`; `after` is the total read after the run.
    pub fn new(
        plan: &Plan,
        counts: Counts,
        before: Option<u64>,
        after: Option<io::Result<u64>>,
    ) -> Summary {
        let Counts {
            sent,
            acknowledged,
            failed,
            wall,
            latency,
            behind_us,
            interrupted,
            errors,
        } = counts;
        let (after, check) = match (before, after) {
            (Some(b), Some(Ok(a))) => {
                let grew = a.checked_sub(b);
                let ok = match plan.verify {
                    Verify::Exact => grew == Some(acknowledged),
                    Verify::AtLeast | Verify::Off => grew.is_some_and(|g| g >= acknowledged),
                };
                (Some(a), if ok { Check::Match } else { Check::Mismatch })
            }
            (Some(_), Some(Err(e))) => (
                None,
                Check::Unverifiable(format!("STATS after the run: {e}")),
            ),
            _ => (None, Check::Off),
        };
        let delta = before.zip(after).map(|(b, a)| a.wrapping_sub(b));
        let wall_s = wall.as_secs_f64();
        let planned = plan.planned();
        Summary {
            addr: plan.addr.to_string(),
            threads: plan.threads,
            users: plan.sessions() as usize,
            user: plan.login.user.clone(),
            requests_per_thread: plan.duration.is_none().then_some(plan.requests),
            duration_s: plan.duration.map(|d| d.as_secs_f64()),
            connect_per_request: plan.connect_per_request,
            rate_rps: plan.rate,
            sent,
            acknowledged,
            failed,
            not_sent: planned.map_or(0, |p| p.saturating_sub(sent)),
            wall_s,
            throughput_rps: if wall_s > 0.0 {
                acknowledged as f64 / wall_s
            } else {
                0.0
            },
            latency,
            behind_max_ms: behind_us.map(|(max, _)| max as f64 / 1000.0),
            behind_mean_ms: behind_us.map(|(_, mean)| mean / 1000.0),
            server_total_before: before,
            server_total_after: after,
            server_delta: delta,
            verify: plan.verify,
            check: check.name(),
            check_reason: match &check {
                Check::Unverifiable(why) => Some(why.clone()),
                _ => None,
            },
            accounting_ok: check == Check::Match,
            interrupted,
            errors,
            outcome: check,
            histogram: None,
        }
    }

    /// The exit status (see [`status`]): an interrupted run first, then a server that could
    /// not be asked, then anything that failed or disagrees.
    pub fn exit_status(&self) -> i32 {
        if self.interrupted {
            status::INTERRUPTED
        } else if matches!(self.outcome, Check::Unverifiable(_)) {
            status::UNVERIFIABLE
        } else if self.failed > 0 || self.not_sent > 0 || self.outcome == Check::Mismatch {
            status::FAILED
        } else {
            status::OK
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Writes `h` (µs) as HdrHistogram's percentile distribution in milliseconds: the `.hgrm` text
/// that wrk2 prints and HdrHistogram's plotter reads (five steps per halving of the distance to
/// 100 %).
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl io::Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = ms(v.value_iterated_to());
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    let sub_buckets = (2.0 * 10f64.powi(i32::from(h.sigfig())))
        .log2()
        .ceil()
        .exp2() as u64;
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(h.max()),
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    )
}

/// The results (the header was printed before the run).
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sent {}  acknowledged {}  failed {}  not sent {}",
            self.sent, self.acknowledged, self.failed, self.not_sent
        )?;
        writeln!(
            f,
            "wall {:.3} s  throughput {:.0} req/s",
            self.wall_s, self.throughput_rps
        )?;
        let l = &self.latency;
        let from = if self.rate_rps.is_some() {
            " (from intended send times)"
        } else {
            ""
        };
        writeln!(
            f,
            "latency ms{from}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.mean_us / 1000.0
        )?;
        if let (Some(rate), Some(max), Some(mean)) =
            (self.rate_rps, self.behind_max_ms, self.behind_mean_ms)
        {
            writeln!(
                f,
                "schedule {rate} req/s  behind by max {max:.2} ms  mean {mean:.2} ms"
            )?;
        }
        let (before, after, delta) = (
            self.server_total_before,
            self.server_total_after,
            self.server_delta,
        );
        match (&self.outcome, before, after, delta) {
            (Check::Off, ..) => writeln!(f, "server total not checked (--verify off)")?,
            (Check::Unverifiable(why), Some(b), ..) => {
                writeln!(f, "server total {b} -> unknown: unverifiable ({why})")?
            }
            (check, Some(b), Some(a), Some(d)) => {
                let (agrees, differs) = match self.verify {
                    Verify::AtLeast => (">=", "<"),
                    Verify::Exact | Verify::Off => ("=", "!="),
                };
                let sign = if *check == Check::Match {
                    agrees
                } else {
                    differs
                };
                let at_least = if self.verify == Verify::AtLeast {
                    " (at least)"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "server total {b} -> {a} (+{d}) {sign} acknowledged {}: {}{at_least}",
                    self.acknowledged,
                    check.name()
                )?
            }
            _ => writeln!(f, "server total: {}", self.outcome.name())?,
        }
        for (e, n) in &self.errors {
            writeln!(f, "error x{n}: {e}")?;
        }
        if self.interrupted {
            writeln!(f, "interrupted (SIGINT) before the end of the run")?;
        }
        write!(f, "handled {} requests", self.acknowledged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::plan::Login;

    fn plan(verify: Verify) -> Plan {
        Plan {
            addr: "127.0.0.1:31337".parse().unwrap(),
            threads: 4,
            conns_per_thread: 1,
            login: Login {
                user: "arijort".into(),
                ..Login::default()
            },
            requests: 5,
            message: "m".into(),
            connect_per_request: false,
            duration: None,
            rate: None,
            timeout: Duration::from_secs(1),
            record_acks: false,
            verify,
        }
    }

    fn latency() -> Latency {
        Latency {
            p50_us: 1500,
            p90_us: 2250,
            p99_us: 10_000,
            p999_us: 20_000,
            max_us: 123_456,
            mean_us: 2500.0,
        }
    }

    fn counts(sent: u64, acked: u64) -> Counts {
        Counts {
            sent,
            acknowledged: acked,
            failed: sent - acked,
            wall: Duration::from_millis(500),
            latency: latency(),
            behind_us: None,
            interrupted: false,
            errors: BTreeMap::new(),
        }
    }

    fn summary(verify: Verify, sent: u64, acked: u64, after: io::Result<u64>) -> Summary {
        Summary::new(&plan(verify), counts(sent, acked), Some(100), Some(after))
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let empty = Histogram::<u64>::new(3).unwrap();
        let l = Latency::from(&empty);
        assert_eq!((l.p50_us, l.p90_us, l.p99_us, l.max_us), (0, 0, 0, 0));
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::from(&h);
        assert_eq!(
            (l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us),
            (500, 900, 990, 999, 1000)
        );
        assert!((l.mean_us - 500.5).abs() < 1.0, "{}", l.mean_us);
    }

    #[test]
    fn the_servers_count_must_differ_by_exactly_the_acknowledged() {
        let ok = summary(Verify::Exact, 20, 20, Ok(120));
        assert_eq!(ok.server_delta, Some(20));
        assert!(ok.accounting_ok);
        assert_eq!((ok.check, ok.exit_status()), ("match", 0));
        for after in [119, 121, 100, 99] {
            let off = summary(Verify::Exact, 20, 20, Ok(after));
            assert_eq!(
                (off.check, off.exit_status()),
                ("mismatch", 1),
                "after {after}"
            );
            assert!(!off.accounting_ok);
        }
        let unknown = summary(Verify::Exact, 20, 20, Err(io::Error::other("gone")));
        assert_eq!(unknown.server_delta, None);
        assert_eq!((unknown.check, unknown.exit_status()), ("unverifiable", 3));
        assert_eq!(
            unknown.check_reason.as_deref(),
            Some("STATS after the run: gone")
        );
        // A failed request fails the run even when the books agree.
        let failed = summary(Verify::Exact, 20, 19, Ok(119));
        assert!(failed.accounting_ok);
        assert_eq!(failed.exit_status(), 1);
    }

    #[test]
    fn a_shared_server_must_have_counted_at_least_the_acknowledged() {
        for (after, check) in [
            (120, "match"),
            (150, "match"),
            (119, "mismatch"),
            (90, "mismatch"),
        ] {
            let s = summary(Verify::AtLeast, 20, 20, Ok(after));
            assert_eq!(s.check, check, "after {after}");
        }
        let off = Summary::new(&plan(Verify::Off), counts(20, 20), None, None);
        assert_eq!((off.check, off.exit_status()), ("off", 0));
        assert!(off
            .to_string()
            .contains("server total not checked (--verify off)\n"));
    }

    #[test]
    fn what_was_not_sent_is_counted_apart_and_an_interrupt_wins() {
        // 4 users x 5 requests planned; 12 sent, 10 acknowledged.
        let mut c = counts(12, 10);
        c.interrupted = true;
        let s = Summary::new(&plan(Verify::Exact), c, Some(100), Some(Ok(110)));
        assert_eq!(
            (s.sent, s.acknowledged, s.failed, s.not_sent),
            (12, 10, 2, 8)
        );
        assert_eq!(s.exit_status(), 130);
        assert!(s.to_string().contains("interrupted (SIGINT)"), "{s}");
        // Not sent alone fails the run.
        let s = Summary::new(
            &plan(Verify::Exact),
            counts(12, 12),
            Some(100),
            Some(Ok(112)),
        );
        assert_eq!((s.not_sent, s.exit_status()), (8, 1));
    }

    #[test]
    fn the_histogram_file_is_hdrhistograms_percentile_format() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).unwrap();
        for us in 1..=1000 {
            h.record(us * 1000).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines[1], "");
        // The first row: the smallest value (1 ms), then rows up to 100 % with every sample.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first[0], "1.000");
        assert_eq!(first.len(), 4, "rows below 100 % have 1/(1-Percentile)");
        let last_row = lines[lines.len() - 4];
        let last: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(last.len(), 3, "{last_row}");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(
            text.contains("#[Max     =     1000.447, Total count    =         1000]"),
            "{text}"
        );
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn the_text_says_what_happened() {
        assert_eq!(
            Header(&plan(Verify::Exact)).to_string(),
            "cclient: 4 users (arijort) to 127.0.0.1:31337, 5 requests each, keep-alive"
        );
        let text = summary(Verify::Exact, 20, 20, Ok(120)).to_string();
        assert_eq!(
            text,
            "sent 20  acknowledged 20  failed 0  not sent 0\n\
             wall 0.500 s  throughput 40 req/s\n\
             latency ms  p50 1.50  p90 2.25  p99 10.00  p99.9 20.00  max 123.46  mean 2.50\n\
             server total 100 -> 120 (+20) = acknowledged 20: match\n\
             handled 20 requests"
        );
        let off = summary(Verify::Exact, 20, 20, Ok(121)).to_string();
        assert!(
            off.contains("server total 100 -> 121 (+21) != acknowledged 20: mismatch\n"),
            "{off}"
        );
        let shared = summary(Verify::AtLeast, 20, 20, Ok(125)).to_string();
        assert!(
            shared.contains("server total 100 -> 125 (+25) >= acknowledged 20: match (at least)\n"),
            "{shared}"
        );
        let unknown = summary(Verify::Exact, 20, 20, Err(io::Error::other("gone"))).to_string();
        assert!(
            unknown.contains(
                "server total 100 -> unknown: unverifiable (STATS after the run: gone)\n"
            ),
            "{unknown}"
        );
    }
}
