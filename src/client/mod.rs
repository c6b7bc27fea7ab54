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

/// cclient: hammers cserverd with many concurrent users (one OS thread each) and checks the
/// server counted exactly what it acknowledged.
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
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))?;
        Ok(load::Plan {
            addr,
            threads,
            conns_per_thread: self.conns_per_thread,
            user: self.user.clone(),
            requests: self.requests,
            message: self.message.clone(),
            connect_per_request: self.connect_per_request,
            duration: self.duration.map(|d| seconds("duration", d)).transpose()?,
            timeout: seconds("timeout", self.timeout)?,
            record_acks: self.acks.is_some(),
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
