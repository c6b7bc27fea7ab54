//! `cclient`'s internals: options, the load generator and its report.

pub mod interactive;
pub mod line;
pub mod load;
mod multi;
pub mod plan;
pub mod report;

use std::net::{SocketAddr, ToSocketAddrs};

use clap::Parser;

use crate::config::seconds;
use plan::{Login, Proxy, ProxyVersion, Verify};

/// Hammers cserverd with many concurrent users and checks it counted what it acknowledged.
///
/// With --threads N: a load run (a summary on stdout; --json for JSON). Without --threads: the
/// interactive client, a line editor whose lines go to the server (connect <host> <port>,
/// disconnect, exit, <name>:<text> as the first line, SHELL for a remote terminal).
///
/// Exit status: 0 everything acknowledged and the server's count agrees; 1 requests failed or
/// were not sent, the count disagrees, or the run could not start (piped interactive input: could not
/// connect, or the server closed before answering); 2 a bad option; 3 the server's count could
/// not be read after the run; 130 interrupted by SIGINT (143 by SIGTERM).
#[derive(Debug, Clone, Parser)]
#[command(name = "cclient", version)]
pub struct ClientArgs {
    /// Concurrent users, one OS thread each, started together (with --conns-per-thread N:
    /// threads of N users each).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Sessions each thread drives itself with an epoll loop over non-blocking sockets
    /// (1: one blocking connection per thread). %t is then the session number.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub conns_per_thread: usize,

    /// User name every thread logs in as.
    #[arg(long, default_value = "arijort")]
    pub user: String,

    /// MSG transactions per thread.
    #[arg(long, default_value_t = 1)]
    pub requests: u64,

    /// Message text: %t thread (session) number, %r request number, %u user, %% a percent sign.
    #[arg(long, default_value = "hello from %u thread %t request %r")]
    pub message: String,

    /// Open a new connection (greeting, USER) for every request instead of keeping one.
    #[arg(long)]
    pub connect_per_request: bool,

    /// Run for this many seconds instead of --requests (at most 31536000, 365 days).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Server address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Server port.
    #[arg(long, default_value_t = 31337)]
    pub port: u16,

    /// Seconds allowed for each connect, send and receive (at most 31536000, 365 days).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,

    /// Write the text of every acknowledged message to this file, one a line (for checking
    /// them against the server's log).
    #[arg(long)]
    pub acks: Option<std::path::PathBuf>,

    /// Open loop: send R requests a second across all users, each at its intended time
    /// (start + i/R), and measure latency from that time, so a stall shows in every request
    /// it delayed (with --requests or --duration).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// How the server's total must have moved: exact (by what this run was acknowledged),
    /// at-least (a server shared with other clients) or off (not asked).
    #[arg(long, value_enum, default_value_t = Verify::Exact)]
    pub verify: Verify,

    /// Write the latency distribution to FILE in HdrHistogram's percentile format (.hgrm, as
    /// wrk2 prints and HdrHistogram's plotter reads; values in ms).
    #[arg(long, value_name = "FILE")]
    pub histogram: Option<std::path::PathBuf>,

    /// Send a PROXY protocol header first, as a load balancer would (for a server run with
    /// --proxy-protocol).
    #[arg(long, value_enum, value_name = "VERSION")]
    pub proxy_protocol: Option<ProxyVersion>,

    /// The client the PROXY header names (IP or IP:PORT; default: the connection's own).
    #[arg(long, value_name = "ADDR", requires = "proxy_protocol")]
    pub proxy_source: Option<String>,

    /// Prove the user with PASS SECRET after USER (visible to other local users in the
    /// process list: prefer --pass-file).
    #[arg(long, value_name = "SECRET", conflicts_with = "pass_file")]
    pub pass: Option<String>,

    /// Read the PASS secret from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub pass_file: Option<std::path::PathBuf>,
}

impl ClientArgs {
    /// Without `--threads`: the interactive mode's options (`None` for a load run).
    pub fn interactive(&self) -> Result<Option<interactive::Options>, String> {
        if self.threads.is_some() {
            return Ok(None);
        }
        let timeout = crate::config::seconds("timeout", self.timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                format!(
                    "--timeout must be a number of seconds above 0, at most {} (365 days)",
                    crate::config::MAX_SECONDS
                )
            })?;
        Ok(Some(interactive::Options {
            host: self.host.clone(),
            port: self.port,
            timeout,
        }))
    }

    /// Checks the options and resolves the address into a load plan.
    pub fn plan(&self) -> Result<load::Plan, String> {
        let threads = self
            .threads
            .ok_or("--threads N is required for a load run (without it: interactive mode)")?;
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.conns_per_thread == 0 {
            return Err("--conns-per-thread must be at least 1".into());
        }
        if threads
            .checked_mul(self.conns_per_thread)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err("--threads × --conns-per-thread is too large".into());
        }
        if crate::protocol::valid_name(self.user.as_bytes()).is_none() {
            return Err(format!(
                "--user {:?}: 1 to 32 of A-Z a-z 0-9 . _ -",
                self.user
            ));
        }
        if self.message.contains(['\n', '\r']) {
            return Err("--message must be one line".into());
        }
        let rate = match self.rate {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Some(r),
            Some(_) => return Err("--rate must be a number of requests a second above 0".into()),
        };
        let login = self.login()?;
        if self.conns_per_thread > 1
            && (rate.is_some() || login.pass.is_some() || login.proxy.is_some())
        {
            return Err(
                "--rate, --pass and --proxy-protocol need one connection per thread \
                 (--conns-per-thread 1)"
                    .into(),
            );
        }
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))?;
        Ok(load::Plan {
            addr,
            threads,
            conns_per_thread: self.conns_per_thread,
            login,
            requests: self.requests,
            message: self.message.clone(),
            connect_per_request: self.connect_per_request,
            duration: self.duration.map(|d| seconds("duration", d)).transpose()?,
            rate,
            timeout: seconds("timeout", self.timeout)?,
            record_acks: self.acks.is_some(),
            verify: self.verify,
        })
    }

    /// How sessions log in: the user, its secret, the PROXY header.
    fn login(&self) -> Result<Login, String> {
        let pass = match (&self.pass, &self.pass_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--pass-file {}: {e}", path.display()))?;
                let secret = text.lines().next().unwrap_or("").to_string();
                if secret.is_empty() {
                    return Err(format!(
                        "--pass-file {}: no secret on its first line",
                        path.display()
                    ));
                }
                Some(secret)
            }
            (None, None) => None,
        };
        if pass.as_deref().is_some_and(|p| p.contains(['\n', '\r'])) {
            return Err("--pass must be one line".into());
        }
        let source = match &self.proxy_source {
            None => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .or_else(|_| {
                        text.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 0))
                    })
                    .map_err(|_| format!("--proxy-source {text:?}: an IP address or IP:PORT"))?,
            ),
        };
        Ok(Login {
            user: self.user.clone(),
            pass,
            proxy: self.proxy_protocol.map(|version| Proxy { version, source }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(extra: &[&str]) -> ClientArgs {
        let mut argv = vec!["cclient"];
        argv.extend_from_slice(extra);
        ClientArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn durations_are_refused_beyond_a_year() {
        let year = crate::config::MAX_SECONDS.to_string();
        let load = ["--threads", "1"];
        let plan = client(&[&load[..], &["--timeout", &year, "--duration", &year]].concat())
            .plan()
            .unwrap();
        assert_eq!(plan.timeout.as_secs(), crate::config::MAX_SECONDS);
        assert!(client(&["--timeout", &year])
            .interactive()
            .unwrap()
            .is_some());
        for bad in ["1e19", "31536000.5", "inf", "NaN"] {
            let err = client(&[&load[..], &["--timeout", bad]].concat())
                .plan()
                .unwrap_err();
            assert!(err.contains("--timeout"), "{err}");
            let err = client(&[&load[..], &["--duration", bad]].concat())
                .plan()
                .unwrap_err();
            assert!(err.contains("--duration"), "{err}");
            let err = client(&["--timeout", bad]).interactive().unwrap_err();
            assert!(err.contains("--timeout"), "{err}");
        }
        assert!(client(&["--timeout", "0"]).interactive().is_err());
    }
}
