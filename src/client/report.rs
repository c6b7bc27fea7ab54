//! The load run's summary: counts, wall time, throughput, latency percentiles and the
//! cross-check against the server's own total, as text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::plan::Plan;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
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
            max_us: h.max(),
        }
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
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub wall_s: f64,
    pub throughput_rps: f64,
    pub latency: Latency,
    pub server_total_before: u64,
    pub server_total_after: Option<u64>,
    /// After minus before, when both are known.
    pub server_delta: Option<u64>,
    /// The server counted exactly what this run had acknowledged.
    pub accounting_ok: bool,
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &Plan,
        sent: u64,
        acknowledged: u64,
        failed: u64,
        wall: Duration,
        latency: Latency,
        before: u64,
        after: io::Result<u64>,
        mut errors: BTreeMap<String, u64>,
    ) -> Summary {
        let after = match after {
            Ok(n) => Some(n),
            Err(e) => {
                errors.insert(format!("STATS after the run: {e}"), 1);
                None
            }
        };
        let delta = after.map(|a| a.wrapping_sub(before));
        let wall_s = wall.as_secs_f64();
        Summary {
            addr: plan.addr.to_string(),
            threads: plan.threads,
            users: plan.threads.saturating_mul(plan.conns_per_thread),
            user: plan.user.clone(),
            requests_per_thread: plan.duration.is_none().then_some(plan.requests),
            duration_s: plan.duration.map(|d| d.as_secs_f64()),
            connect_per_request: plan.connect_per_request,
            sent,
            acknowledged,
            failed,
            wall_s,
            throughput_rps: if wall_s > 0.0 {
                acknowledged as f64 / wall_s
            } else {
                0.0
            },
            latency,
            server_total_before: before,
            server_total_after: after,
            server_delta: delta,
            accounting_ok: delta == Some(acknowledged),
            errors,
        }
    }

    /// True when nothing failed and the server's count matches.
    pub fn success(&self) -> bool {
        self.failed == 0 && self.accounting_ok
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.requests_per_thread, self.duration_s) {
            (Some(n), _) => format!("{n} request{} each", if n == 1 { "" } else { "s" }),
            (None, Some(d)) => format!("for {d} s"),
            (None, None) => String::new(),
        };
        let mode = if self.connect_per_request {
            "a connection per request"
        } else {
            "keep-alive"
        };
        let threads = if self.users == self.threads {
            String::new()
        } else {
            format!(" on {} threads", self.threads)
        };
        writeln!(
            f,
            "cclient: {} users{threads} ({}) to {}, {what}, {mode}",
            self.users, self.user, self.addr
        )?;
        writeln!(
            f,
            "sent {}  acknowledged {}  failed {}",
            self.sent, self.acknowledged, self.failed
        )?;
        writeln!(
            f,
            "wall {:.3} s  throughput {:.0} req/s",
            self.wall_s, self.throughput_rps
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.max_us)
        )?;
        match (self.server_total_after, self.server_delta) {
            (Some(after), Some(delta)) => writeln!(
                f,
                "server total {} -> {} (+{delta}) {} acknowledged {}: {}",
                self.server_total_before,
                after,
                if self.accounting_ok { "=" } else { "!=" },
                self.acknowledged,
                if self.accounting_ok {
                    "match"
                } else {
                    "MISMATCH"
                }
            )?,
            _ => writeln!(
                f,
                "server total {} -> unknown: MISMATCH",
                self.server_total_before
            )?,
        }
        for (e, n) in &self.errors {
            writeln!(f, "error x{n}: {e}")?;
        }
        write!(f, "handled {} requests", self.acknowledged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            addr: "127.0.0.1:31337".parse().unwrap(),
            threads: 4,
            conns_per_thread: 1,
            user: "arijort".into(),
            requests: 5,
            message: "m".into(),
            connect_per_request: false,
            duration: None,
            timeout: Duration::from_secs(1),
            record_acks: false,
        }
    }

    fn summary(acked: u64, failed: u64, after: io::Result<u64>) -> Summary {
        let latency = Latency {
            p50_us: 1500,
            p90_us: 2250,
            p99_us: 10_000,
            max_us: 123_456,
        };
        let wall = Duration::from_millis(500);
        Summary::new(
            &plan(),
            acked + failed,
            acked,
            failed,
            wall,
            latency,
            100,
            after,
            BTreeMap::new(),
        )
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
            (l.p50_us, l.p90_us, l.p99_us, l.max_us),
            (500, 900, 990, 1000)
        );
    }

    #[test]
    fn the_servers_count_must_differ_by_exactly_the_acknowledged() {
        let ok = summary(20, 0, Ok(120));
        assert_eq!(ok.server_delta, Some(20));
        assert!(ok.accounting_ok && ok.success());
        for after in [119, 121, 100] {
            let off = summary(20, 0, Ok(after));
            assert!(!off.accounting_ok && !off.success(), "after {after}");
        }
        let unknown = summary(20, 0, Err(io::Error::other("gone")));
        assert_eq!(unknown.server_delta, None);
        assert!(!unknown.accounting_ok && !unknown.success());
        assert_eq!(unknown.errors.get("STATS after the run: gone"), Some(&1));
        // A failed request fails the run even when the books agree.
        let failed = summary(19, 1, Ok(119));
        assert!(failed.accounting_ok && !failed.success());
    }

    #[test]
    fn the_text_says_what_happened() {
        let text = summary(20, 0, Ok(120)).to_string();
        assert_eq!(
            text,
            "cclient: 4 users (arijort) to 127.0.0.1:31337, 5 requests each, keep-alive\n\
             sent 20  acknowledged 20  failed 0\n\
             wall 0.500 s  throughput 40 req/s\n\
             latency ms  p50 1.50  p90 2.25  p99 10.00  max 123.46\n\
             server total 100 -> 120 (+20) = acknowledged 20: match\n\
             handled 20 requests"
        );
        let off = summary(20, 0, Ok(121)).to_string();
        assert!(
            off.contains("server total 100 -> 121 (+21) != acknowledged 20: MISMATCH\n"),
            "{off}"
        );
        let unknown = summary(20, 0, Err(io::Error::other("gone"))).to_string();
        assert!(
            unknown.contains(
                "server total 100 -> unknown: MISMATCH\nerror x1: STATS after the run: gone\n"
            ),
            "{unknown}"
        );
    }
}
