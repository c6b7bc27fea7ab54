//! `cclient`'s internals: options, the load generator and its report.

pub mod interactive;
pub mod line;
pub mod load;
mod multi;
pub mod plan;
pub mod report;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;

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

    /// Run for this many seconds instead of --requests.
    #[arg(long)]
    pub duration: Option<f64>,

    /// Server address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Server port.
    #[arg(long, default_value_t = 31337)]
    pub port: u16,

    /// Seconds allowed for each connect, send and receive.
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
        let timeout = Duration::try_from_secs_f64(self.timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or("--timeout must be seconds > 0")?;
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
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be seconds ≥ 0"))
        };
        Ok(load::Plan {
            addr,
            threads,
            conns_per_thread: self.conns_per_thread,
            user: self.user.clone(),
            requests: self.requests,
            message: self.message.clone(),
            connect_per_request: self.connect_per_request,
            duration: self.duration.map(|d| secs("duration", d)).transpose()?,
            timeout: secs("timeout", self.timeout)?,
            record_acks: self.acks.is_some(),
        })
    }
}
