//! `cserverd`'s options (clap-derived) and their validation into the [`Settings`] every process
//! uses.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::auth::Secrets;
use crate::files;
use crate::protocol::valid_name;

/// The port without `--port` (cserverctl looks for a master's scoreboard by it too).
pub const DEFAULT_PORT: u16 = 31337;
/// The log cserverd appends to unless told otherwise.
pub const DEFAULT_LOG: &str = "/tmp/myserver.log";
/// The address cserverd listens on unless told otherwise.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The largest `--max-workers` (the scoreboard holds twice as many slots; readers refuse a
/// header that declares more).
pub const MAX_WORKERS: usize = 4096;

/// The longest timeout or interval an option takes: a year (365 days). Far beyond any use, and
/// far below what the clock can add to now (`--idle-timeout 1e19` once made a worker panic).
pub const MAX_SECONDS: u64 = 365 * 86_400;

/// The longest `--work-ms`: an hour.
pub const MAX_WORK_MS: u64 = 3_600_000;

/// `--sync-interval` when not given: a hundred syncs a second at most.
const DEFAULT_SYNC_INTERVAL_MS: u64 = 10;

/// `--sync`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    None,
    Batch,
    Always,
}

/// What `--help` says after the options: where else they come from.
const ENV_HELP: &str = "Every option but --check may be given in the environment instead, as \
CSERVERD_<OPTION> (upper case, - as _: CSERVERD_WORKERS=3, CSERVERD_ALLOW_SHELL=true); an \
option on the command line beats its variable.";

/// A pre-fork multiprocess TCP server with a shared-memory scoreboard and one append-only log.
#[derive(Debug, Clone, Parser)]
#[command(name = "cserverd", version, after_help = ENV_HELP)]
pub struct ServerArgs {
    /// Address to listen on: an IPv4 or IPv6 address, or a host name, resolved once at start
    /// (to the first of its addresses when it has several).
    #[arg(long, env = "CSERVERD_HOST", default_value = DEFAULT_HOST)]
    pub host: String,

    /// TCP port; 0 picks a free one and prints it as `listening on HOST:PORT`.
    #[arg(long, env = "CSERVERD_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Another listener, repeatable: `[ADDR:]PORT[=PROTOCOL]` (the address --host's if left
    /// out, IPv6 in brackets: `[::1]:9090=reverse`; protocols: cserver, chat, reverse, procman,
    /// rembash; cserver if left out). Port 0 picks a free one and prints it as `listening on
    /// ADDR:PORT (PROTOCOL)`. Every worker serves every listener.
    #[arg(
        long,
        env = "CSERVERD_LISTEN",
        value_delimiter = ',',
        value_name = "[ADDR:]PORT[=PROTOCOL]"
    )]
    pub listen: Vec<String>,

    /// The secret a `rembash` listener's clients must send (as `<SECRET>`): the first line of
    /// this file, which must be private to its owner (mode 0600, like --secrets). Needed, with
    /// --allow-shell, for a `--listen ...=rembash`; reread on HUP.
    #[arg(long, env = "CSERVERD_REMBASH_SECRET", value_name = "FILE")]
    pub rembash_secret: Option<PathBuf>,

    /// Worker processes [default: number of CPUs].
    #[arg(long, env = "CSERVERD_WORKERS")]
    pub workers: Option<usize>,

    /// Most workers the pool may grow to (sizes the scoreboard); not below --workers
    /// [default: 64, or --workers if more].
    #[arg(long, env = "CSERVERD_MAX_WORKERS")]
    pub max_workers: Option<usize>,

    /// The append-only log every process writes.
    #[arg(long, env = "CSERVERD_LOG", default_value = DEFAULT_LOG)]
    pub log: PathBuf,

    /// File of allowed user names, one a line (`#` comments); without it any valid name.
    #[arg(long, env = "CSERVERD_USERS")]
    pub users: Option<PathBuf>,

    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "CSERVERD_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,

    /// Longest request line in bytes; longer lines get ERR 413 and are discarded.
    #[arg(long, env = "CSERVERD_MAX_LINE", default_value_t = 64 * 1024)]
    pub max_line: usize,

    /// Bytes of a client's text a log record keeps; a longer text is logged as
    /// `"<its first BYTES bytes>"... (<its length> bytes)`; 0 keeps only the length [default:
    /// whole texts].
    #[arg(long, env = "CSERVERD_MAX_LOG_TEXT", value_name = "BYTES")]
    pub max_log_text: Option<usize>,

    /// When a request is acknowledged, relative to the disk: `none`, once its record is in the
    /// file (survives a crash of any process, not a power loss); `always`, once the records of
    /// its event-loop turn are written and `fdatasync`ed (group commit); `batch`, once a sync
    /// made at most --sync-interval after it covered its record.
    #[arg(long, env = "CSERVERD_SYNC", value_enum, default_value_t = SyncArg::None)]
    pub sync: SyncArg,

    /// With --sync batch: milliseconds between syncs of the log, 1 to 10000 [default: 10].
    #[arg(long, env = "CSERVERD_SYNC_INTERVAL", value_name = "MS")]
    pub sync_interval: Option<u64>,

    /// Simulated work per MSG, in milliseconds, served by a timer (the worker never sleeps);
    /// 0: none, MSG is answered at once. At most 3600000 (an hour).
    #[arg(long, env = "CSERVERD_WORK_MS", default_value_t = 0)]
    pub work_ms: u64,

    /// Seconds between the master's `total requests N` records, from 0.01 (0 is refused: it
    /// would report without pause) to 31536000 (365 days).
    #[arg(long, env = "CSERVERD_REPORT_INTERVAL", default_value_t = 2.0)]
    pub report_interval: f64,

    /// Scoreboard file [default: /dev/shm/cserverd-HOST-PORT.scoreboard].
    #[arg(long, env = "CSERVERD_STATS_FILE")]
    pub stats_file: Option<PathBuf>,

    /// Write the master's pid here (removed at exit).
    #[arg(long, env = "CSERVERD_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    /// Seconds a graceful stop (or a worker's --max-requests retirement) waits for open sessions
    /// before closing them; 0: no wait, they are closed at once. At most 31536000 (365 days).
    #[arg(long, env = "CSERVERD_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub shutdown_timeout: f64,

    /// Seconds a session may take to send USER before it is closed (ERR 408), from more than 0
    /// (0 is refused: it would close every session at once) to 31536000 (365 days).
    #[arg(long, env = "CSERVERD_HANDSHAKE_TIMEOUT", default_value_t = 10.0)]
    pub handshake_timeout: f64,

    /// Seconds a logged-in session may stay without a complete request before it is closed
    /// (ERR 408), from more than 0 (0 is refused: it would close every session at once) to
    /// 31536000 (365 days).
    #[arg(long, env = "CSERVERD_IDLE_TIMEOUT", default_value_t = 300.0)]
    pub idle_timeout: f64,

    /// Kill and replace a worker whose heartbeat stops for this many seconds; 0: never (no
    /// heartbeat check). Otherwise at least 2, at most 31536000 (365 days).
    #[arg(long, env = "CSERVERD_WORKER_TIMEOUT", default_value_t = 0.0)]
    pub worker_timeout: f64,

    /// Recycle a worker gracefully after it handled this many requests (0: never).
    #[arg(long, env = "CSERVERD_MAX_REQUESTS", default_value_t = 0)]
    pub max_requests: u64,

    /// Expect a PROXY protocol header (v1 or v2) first on every connection, as sent by HAProxy
    /// `send-proxy`/`send-proxy-v2`: the log and scoreboard keep the real client address, and a
    /// connection without a valid header is refused.
    #[arg(long, env = "CSERVERD_PROXY_PROTOCOL", requires = "proxy_from")]
    pub proxy_protocol: bool,

    /// With --proxy-protocol: the proxies trusted to send the header (nginx's set_real_ip_from),
    /// addresses or networks, comma-separated (`127.0.0.1,10.0.0.0/8`). A connection from any
    /// other peer is refused with `ERR 403` and logged with its real address.
    #[arg(
        long,
        env = "CSERVERD_PROXY_FROM",
        value_name = "CIDR[,CIDR...]",
        value_delimiter = ',',
        requires = "proxy_protocol"
    )]
    pub proxy_from: Vec<crate::proxy::Cidr>,

    /// Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (from the master).
    #[arg(long, env = "CSERVERD_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// File of `name:secret` lines (mode 0600): these users must give `PASS <secret>`.
    #[arg(long, env = "CSERVERD_SECRETS")]
    pub secrets: Option<PathBuf>,

    /// Enable `RUN`, for programs inside this directory only.
    #[arg(long, env = "CSERVERD_ALLOW_RUN", value_name = "DIR")]
    pub allow_run: Option<PathBuf>,

    /// Enable `SHELL` (a login shell on a pty) for users that logged in with `PASS`.
    #[arg(long, env = "CSERVERD_ALLOW_SHELL")]
    pub allow_shell: bool,

    /// At most this many connections open in one worker; more are answered
    /// `ERR 503` and closed (the worst-case memory of a worker is this times a connection's).
    #[arg(long, env = "CSERVERD_MAX_CONNS", default_value_t = 16384)]
    pub max_conns: usize,

    /// At most this many connections from one client address (an IPv4 address, an IPv6 /64)
    /// in each worker; more are answered `ERR 503` and closed. 0: no limit.
    #[arg(long, env = "CSERVERD_MAX_CONNS_PER_IP", default_value_t = 0)]
    pub max_conns_per_ip: usize,

    /// At most this many `RUN` programs and `SHELL`s running at once, server-wide (and, with
    /// --user, the service account's process limit, RLIMIT_NPROC, sized from it).
    #[arg(long, env = "CSERVERD_MAX_PROCESSES", default_value_t = 64)]
    pub max_processes: usize,

    /// Workers run as this user (the master keeps root, as nginx's does, to reread root-only
    /// files on HUP, reopen the log and re-execute on USR2); the log is handed to it.
    #[arg(long, env = "CSERVERD_USER")]
    pub user: Option<String>,

    /// With --user: run as this group instead of the user's primary group.
    #[arg(long, env = "CSERVERD_GROUP", requires = "user")]
    pub group: Option<String>,

    /// Check the options and the files they name as a start would, and that the address can be
    /// bound; print `configuration ok` and exit 0, or the first problem and exit 1. Starts
    /// nothing, creates nothing (as `nginx -t`). The one option without a CSERVERD_
    /// variable: one left in an environment would turn every start into a check.
    #[arg(long, short = 't')]
    pub check: bool,

    /// Add a random 0..=J to each worker's --max-requests, so workers do not all recycle at
    /// once; 0: no jitter [default: a tenth of --max-requests].
    #[arg(long, env = "CSERVERD_MAX_REQUESTS_JITTER")]
    pub max_requests_jitter: Option<u64>,
}

/// Who may log in.
#[derive(Debug, Clone, Default)]
pub enum Users {
    /// Any syntactically valid name.
    #[default]
    Any,
    /// Only these names (`--users FILE`).
    Listed(HashSet<String>),
}

impl Users {
    /// Reads a `--users` file: one name a line; blank lines and `#` comments ignored.
    pub fn load(path: &Path) -> Result<Users, String> {
        let file = files::open(path, files::Access::Read, &files::Trust::operator());
        let text = file
            .and_then(std::io::read_to_string)
            .map_err(|e| format!("cannot read users file {}: {e}", path.display()))?;
        let mut names = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name = valid_name(line.as_bytes())
                .ok_or_else(|| format!("{}:{}: bad user name {line:?}", path.display(), n + 1))?;
            names.insert(name.to_string());
        }
        Ok(Users::Listed(names))
    }

    /// True if `name` may log in.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Users::Any => true,
            Users::Listed(names) => names.contains(name),
        }
    }
}

/// Validated settings shared by the master and every worker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The default listener's address (`--host`, `--port`).
    pub addr: SocketAddr,
    /// Every listener: the default one first (`cserver` on `addr`), then each `--listen`.
    pub listens: Vec<crate::listen::Listen>,
    pub workers: usize,
    pub max_workers: usize,
    pub log: PathBuf,
    pub users_file: Option<PathBuf>,
    pub users: Users,
    pub backlog: i32,
    pub max_line: usize,
    /// `--max-log-text`: `None` keeps whole texts.
    pub max_log_text: Option<usize>,
    /// `--sync`, with `--sync-interval` for `batch`.
    pub sync: crate::log::SyncMode,
    pub work: Duration,
    pub report_interval: Duration,
    pub stats_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Zero: no heartbeat check.
    pub worker_timeout: Duration,
    /// Zero: never recycle.
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// `--user`/`--group`, looked up.
    pub account: Option<crate::sys::Account>,
    pub secrets_file: Option<PathBuf>,
    pub secrets: Secrets,
    /// `--rembash-secret`, and the secret it holds.
    pub rembash_secret_file: Option<PathBuf>,
    pub rembash_secret: Option<crate::auth::Secret>,
    /// `--allow-run`, canonical.
    pub allow_run: Option<PathBuf>,
    pub allow_shell: bool,
    pub max_processes: usize,
    pub max_conns: usize,
    pub max_conns_per_ip: usize,
    pub metrics_addr: Option<SocketAddr>,
    pub proxy_protocol: bool,
    /// `--proxy-from`.
    pub proxy_from: Vec<crate::proxy::Cidr>,
}

/// A duration option in seconds: from 0 up to [`MAX_SECONDS`] (no NaN, no infinity).
pub fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| *d <= Duration::from_secs(MAX_SECONDS))
        .ok_or_else(|| {
            format!("--{name} must be a number of seconds from 0 to {MAX_SECONDS} (365 days)")
        })
}

/// A timeout for which 0 would mean "at once", not "never": refused with the reason.
fn nonzero_seconds(name: &str, v: f64, what: &str) -> Result<Duration, String> {
    let d = seconds(name, v)?;
    if d.is_zero() {
        return Err(format!(
            "--{name} 0 would {what} at once; give seconds (up to {MAX_SECONDS}, 365 days)"
        ));
    }
    Ok(d)
}

/// `--host` and `--port` as the address to listen on: an IP address as given, else a name
/// resolved now (blocking) to the first address it has.
pub fn listen_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let unresolved =
        |why: String| format!("--host {host:?} is not an address or a name that resolves: {why}");
    if host.is_empty() {
        return Err(unresolved("empty".into()));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| unresolved(e.to_string()))?
        .next()
        .ok_or_else(|| unresolved("no address".into()))
}

/// Why the options cannot be used: a bad option (exit status 2, like clap's own errors) or a
/// file they name that cannot be used (a start-up problem: exit status 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Option(String),
    File(String),
}

impl ConfigError {
    /// The exit status `cserverd` ends with.
    pub fn status(&self) -> i32 {
        match self {
            ConfigError::Option(_) => 2,
            ConfigError::File(_) => 1,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Option(e) | ConfigError::File(e) => f.write_str(e),
        }
    }
}

impl From<String> for ConfigError {
    fn from(e: String) -> ConfigError {
        ConfigError::Option(e)
    }
}

impl From<&str> for ConfigError {
    fn from(e: &str) -> ConfigError {
        ConfigError::Option(e.to_string())
    }
}

impl ServerArgs {
    /// Checks the options and loads the files they name.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cpus);
        if workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        let max_workers = match self.max_workers {
            None => workers.max(64),
            Some(max) if max < workers => {
                let given = if self.workers.is_some() {
                    "--workers"
                } else {
                    "--workers (the number of CPUs by default)"
                };
                return Err(format!(
                    "--max-workers {max} is below {given} {workers}: the pool could not hold \
                     its own workers"
                )
                .into());
            }
            Some(max) => max,
        };
        if max_workers > MAX_WORKERS {
            return Err(format!("--max-workers must be at most {MAX_WORKERS}").into());
        }
        if self.backlog < 1 {
            return Err("--backlog must be at least 1".into());
        }
        if !(16..=64 * 1024 * 1024).contains(&self.max_line) {
            return Err("--max-line must be between 16 bytes and 64 MiB".into());
        }
        if !(1..=1_000_000).contains(&self.max_conns) {
            return Err("--max-conns must be between 1 and 1000000".into());
        }
        if self.max_conns_per_ip > 1_000_000 {
            return Err("--max-conns-per-ip must be at most 1000000 (0: no limit)".into());
        }
        if !(1..=65536).contains(&self.max_processes) {
            return Err("--max-processes must be between 1 and 65536".into());
        }
        if self.work_ms > MAX_WORK_MS {
            return Err(format!("--work-ms must be at most {MAX_WORK_MS} (an hour)").into());
        }
        let sync = match (self.sync, self.sync_interval) {
            (SyncArg::Batch, ms) => {
                let ms = ms.unwrap_or(DEFAULT_SYNC_INTERVAL_MS);
                if !(1..=10_000).contains(&ms) {
                    return Err("--sync-interval must be from 1 to 10000 milliseconds".into());
                }
                crate::log::SyncMode::Batch(Duration::from_millis(ms))
            }
            (_, Some(_)) => {
                return Err("--sync-interval is for --sync batch only".into());
            }
            (SyncArg::None, None) => crate::log::SyncMode::None,
            (SyncArg::Always, None) => crate::log::SyncMode::Always,
        };
        let report_interval = seconds("report-interval", self.report_interval)?;
        if report_interval.is_zero() {
            return Err(
                "--report-interval 0 would report without pause; give seconds, at least 0.01"
                    .into(),
            );
        }
        if report_interval < Duration::from_millis(10) {
            return Err("--report-interval must be at least 0.01 s".into());
        }
        let handshake_timeout = nonzero_seconds(
            "handshake-timeout",
            self.handshake_timeout,
            "close every session",
        )?;
        let idle_timeout =
            nonzero_seconds("idle-timeout", self.idle_timeout, "close every session")?;
        let addr = listen_addr(&self.host, self.port)?;
        let mut listens = vec![crate::listen::Listen {
            addr,
            protocol: crate::listen::Protocol::Cserver,
        }];
        for value in &self.listen {
            listens.push(crate::listen::parse(value, addr.ip())?);
        }
        crate::listen::check_distinct(&listens)?;
        let rembash = listens
            .iter()
            .any(|l| l.protocol == crate::listen::Protocol::Rembash);
        if rembash && !self.allow_shell {
            return Err("a rembash listener runs shells: it needs --allow-shell".into());
        }
        if rembash && self.rembash_secret.is_none() {
            return Err(
                "a rembash listener needs --rembash-secret FILE (its clients' secret)".into(),
            );
        }
        let worker_timeout = seconds("worker-timeout", self.worker_timeout)?;
        if !worker_timeout.is_zero() && worker_timeout < Duration::from_secs(2) {
            // Workers beat every half second; leave room for a busy turn.
            return Err("--worker-timeout must be 0 (off) or at least 2 seconds".into());
        }
        let account = match &self.user {
            Some(user) => Some(crate::sys::lookup_account(user, self.group.as_deref())?),
            None => None,
        };
        let secrets = match &self.secrets {
            Some(path) => Secrets::load(path).map_err(ConfigError::File)?,
            None => Secrets::default(),
        };
        let rembash_secret = match &self.rembash_secret {
            Some(path) => Some(crate::auth::Secret::load(path).map_err(ConfigError::File)?),
            None => None,
        };
        let allow_run = match &self.allow_run {
            Some(dir) => {
                Some(crate::services::proctable::allowed_dir(dir).map_err(ConfigError::File)?)
            }
            None => None,
        };
        let users = match &self.users {
            Some(path) => Users::load(path).map_err(ConfigError::File)?,
            None => Users::Any,
        };
        Ok(Settings {
            addr,
            listens,
            workers,
            max_workers,
            log: self.log,
            users_file: self.users,
            users,
            backlog: self.backlog,
            max_line: self.max_line,
            max_log_text: self.max_log_text,
            sync,
            work: Duration::from_millis(self.work_ms),
            report_interval,
            stats_file: self.stats_file,
            pid_file: self.pid_file,
            shutdown_timeout: seconds("shutdown-timeout", self.shutdown_timeout)?,
            handshake_timeout,
            idle_timeout,
            worker_timeout,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter.unwrap_or(self.max_requests / 10),
            account,
            secrets_file: self.secrets,
            secrets,
            rembash_secret_file: self.rembash_secret,
            rembash_secret,
            allow_run,
            allow_shell: self.allow_shell,
            max_processes: self.max_processes,
            max_conns: self.max_conns,
            max_conns_per_ip: self.max_conns_per_ip,
            metrics_addr: self.metrics_addr,
            proxy_protocol: self.proxy_protocol,
            proxy_from: self.proxy_from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn args(extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["cserverd"];
        argv.extend_from_slice(extra);
        ServerArgs::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = args(&[]).unwrap();
        assert_eq!(s.addr, "127.0.0.1:31337".parse().unwrap());
        assert_eq!(s.log, PathBuf::from("/tmp/myserver.log"));
        assert_eq!(s.backlog, 4096);
        assert_eq!(s.max_line, 65536);
        assert_eq!(s.max_log_text, None, "the log keeps whole messages");
        assert_eq!(
            args(&["--max-log-text", "0"]).unwrap().max_log_text,
            Some(0)
        );
        assert_eq!(s.report_interval, Duration::from_secs(2));
        assert!(s.workers >= 1);
        assert!(matches!(s.users, Users::Any));
    }

    #[test]
    fn sync_modes_and_their_interval() {
        use crate::log::SyncMode;
        assert_eq!(args(&[]).unwrap().sync, SyncMode::None, "today's behaviour");
        assert_eq!(args(&["--sync", "always"]).unwrap().sync, SyncMode::Always);
        let ms = Duration::from_millis;
        assert_eq!(
            args(&["--sync", "batch"]).unwrap().sync,
            SyncMode::Batch(ms(10))
        );
        for (given, want) in [("1", 1), ("250", 250), ("10000", 10_000)] {
            let s = args(&["--sync", "batch", "--sync-interval", given]).unwrap();
            assert_eq!(s.sync, SyncMode::Batch(ms(want)));
        }
        for bad in ["0", "10001", "-5", "x"] {
            assert!(
                args(&["--sync", "batch", "--sync-interval", bad]).is_err(),
                "{bad}"
            );
        }
        // An interval means nothing without batch: said, not ignored.
        for mode in ["none", "always"] {
            let e = args(&["--sync", mode, "--sync-interval", "5"]).unwrap_err();
            assert!(e.contains("--sync batch only"), "{e}");
        }
        assert!(args(&["--sync", "sometimes"]).is_err());
        assert_eq!(SyncMode::Batch(ms(1)).name(), "batch");
        assert_eq!(SyncMode::Always.name(), "always");
        assert_eq!(SyncMode::None.name(), "none");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(args(&["--workers", "0"]).is_err());
        assert!(args(&["--shutdown-timeout", "-1"]).is_err());
        assert!(args(&["--max-line", "1"]).is_err());
        assert!(args(&["--host", "localhost:80"]).is_err());
    }

    /// Every duration option: its limit is taken, just beyond it (and far beyond, and not a
    /// number) is refused with a message naming the option, as a bad option (exit status 2).
    #[test]
    fn durations_are_refused_beyond_their_limits() {
        let year = MAX_SECONDS.to_string();
        let beyond = (MAX_SECONDS as f64 + 0.001).to_string();
        type Get = fn(&Settings) -> Duration;
        let cases: [(&str, Get); 5] = [
            ("--idle-timeout", |s| s.idle_timeout),
            ("--handshake-timeout", |s| s.handshake_timeout),
            ("--shutdown-timeout", |s| s.shutdown_timeout),
            ("--report-interval", |s| s.report_interval),
            ("--worker-timeout", |s| s.worker_timeout),
        ];
        for (option, get) in cases {
            let s = args(&[option, &year]).unwrap_or_else(|e| panic!("{option} {year}: {e}"));
            assert_eq!(get(&s), Duration::from_secs(MAX_SECONDS), "{option}");
            for bad in [&beyond[..], "1e19", "inf", "NaN"] {
                let argv = ["cserverd", option, bad];
                let err = ServerArgs::try_parse_from(argv)
                    .unwrap()
                    .validate()
                    .unwrap_err();
                assert_eq!(err.status(), 2, "{option} {bad}: {err}");
                assert!(err.to_string().contains(option), "{option} {bad}: {err}");
            }
        }
        let hour = MAX_WORK_MS.to_string();
        assert_eq!(
            args(&["--work-ms", &hour]).unwrap().work,
            Duration::from_secs(3600)
        );
        for bad in [MAX_WORK_MS + 1, u64::MAX] {
            let bad = bad.to_string();
            let argv = ["cserverd", "--work-ms", &bad];
            let err = ServerArgs::try_parse_from(argv)
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(err.status(), 2, "{err}");
            assert!(err.to_string().contains("--work-ms"), "{err}");
        }
    }

    /// The refused option's error: a bad option (exit status 2), its message.
    fn refused(extra: &[&str]) -> String {
        let mut argv = vec!["cserverd"];
        argv.extend_from_slice(extra);
        let err = ServerArgs::try_parse_from(argv)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.status(), 2, "{extra:?}: {err}");
        err.to_string()
    }

    /// Every timeout and interval: 0 either means off (and is kept as zero, which the code
    /// reads as off) or is refused with the reason, naming the option.
    #[test]
    fn zero_means_off_or_is_refused_with_a_reason() {
        // Off: no heartbeat check, no wait, no simulated work, no recycling, no jitter.
        let s = args(&[
            "--worker-timeout",
            "0",
            "--shutdown-timeout",
            "0",
            "--work-ms",
            "0",
            "--max-requests",
            "0",
            "--max-conns-per-ip",
            "0",
        ])
        .unwrap();
        assert!(s.worker_timeout.is_zero() && s.shutdown_timeout.is_zero() && s.work.is_zero());
        assert_eq!(
            (s.max_requests, s.max_requests_jitter, s.max_conns_per_ip),
            (0, 0, 0)
        );
        let s = args(&["--max-requests", "100", "--max-requests-jitter", "0"]).unwrap();
        assert_eq!((s.max_requests, s.max_requests_jitter), (100, 0));
        // Refused: 0 would act at once, not never.
        for (option, why) in [
            ("--idle-timeout", "close every session at once"),
            ("--handshake-timeout", "close every session at once"),
            ("--report-interval", "report without pause"),
        ] {
            for zero in ["0", "0.0", "1e-12"] {
                let err = refused(&[option, zero]);
                assert!(err.contains(&format!("{option} 0 would {why}")), "{err}");
            }
        }
        // The smallest taken values besides 0.
        let s = args(&["--idle-timeout", "0.001", "--handshake-timeout", "0.001"]).unwrap();
        assert_eq!(s.idle_timeout, Duration::from_millis(1));
        assert_eq!(s.handshake_timeout, Duration::from_millis(1));
        assert!(refused(&["--worker-timeout", "1"]).contains("0 (off)"));
        assert!(refused(&["--report-interval", "0.001"]).contains("at least 0.01"));
    }

    /// Each option's --help says what its 0 means.
    #[test]
    fn help_says_what_zero_means() {
        use clap::CommandFactory;
        let cmd = ServerArgs::command();
        for (long, says) in [
            ("shutdown-timeout", "0: no wait"),
            ("handshake-timeout", "0 is refused"),
            ("idle-timeout", "0 is refused"),
            ("report-interval", "0 is refused"),
            ("worker-timeout", "0: never"),
            ("work-ms", "0: none"),
            ("max-requests", "0: never"),
            ("max-requests-jitter", "0: no jitter"),
            ("max-conns-per-ip", "0: no limit"),
            ("port", "0 picks"),
        ] {
            let arg = cmd.get_arguments().find(|a| a.get_long() == Some(long));
            let help = arg.and_then(|a| a.get_help()).map(|h| h.to_string());
            let help = help.unwrap_or_else(|| panic!("--{long} has no help"));
            assert!(help.contains(says), "--{long}: {help}");
        }
    }

    /// --max-workers below --workers is an error naming both; without --max-workers the pool
    /// may grow to 64, or to --workers if that is more.
    #[test]
    fn max_workers_below_workers_is_refused() {
        let err = refused(&["--workers", "8", "--max-workers", "4"]);
        assert!(
            err.contains("--max-workers 4") && err.contains("--workers 8"),
            "{err}"
        );
        let s = args(&["--workers", "8", "--max-workers", "8"]).unwrap();
        assert_eq!((s.workers, s.max_workers), (8, 8));
        let s = args(&["--workers", "8"]).unwrap();
        assert_eq!(s.max_workers, 64);
        let s = args(&["--workers", "100"]).unwrap();
        assert_eq!(s.max_workers, 100);
        let s = args(&["--workers", "2", "--max-workers", "5"]).unwrap();
        assert_eq!(s.max_workers, 5);
        // Without --workers, the default (the number of CPUs) is named as such.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus > 1 {
            let err = refused(&["--max-workers", "1"]);
            assert!(err.contains("number of CPUs"), "{err}");
        }
        assert!(refused(&["--workers", "5000"]).contains("--max-workers must be at most"));
    }

    /// --host takes addresses as they are and resolves names; a name that does not resolve is
    /// a bad option naming it.
    #[test]
    fn host_takes_addresses_and_names() {
        assert_eq!(
            args(&["--host", "::1", "--port", "7"]).unwrap().addr,
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            args(&["--host", "0.0.0.0"]).unwrap().addr,
            "0.0.0.0:31337".parse().unwrap()
        );
        let s = args(&["--host", "localhost", "--port", "7"]).unwrap();
        assert!(s.addr.ip().is_loopback(), "{}", s.addr);
        assert_eq!(s.addr.port(), 7);
        for bad in ["no-such-host.invalid", "localhost:80", "[::1]", ""] {
            let err = refused(&["--host", bad]);
            assert!(err.contains(&format!("--host {bad:?}")), "{err}");
        }
    }

    /// Every option but --check has a CSERVERD_ variable named after it, and none is one the
    /// server sets itself for a binary upgrade.
    #[test]
    fn every_option_has_its_own_variable() {
        use clap::CommandFactory;
        let ours = [
            crate::upgrade::ENV_LISTEN_FDS,
            crate::upgrade::ENV_READY_FD,
            crate::upgrade::ENV_FROM,
            crate::upgrade::ENV_STEERING,
            crate::upgrade::ENV_METRICS_FD,
        ];
        for arg in ServerArgs::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            if matches!(long, "check" | "help" | "version") {
                assert_eq!(env, None, "--{long}");
                continue;
            }
            let want = format!("CSERVERD_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(env.as_deref(), Some(&want[..]), "--{long}");
            assert!(
                !ours.contains(&&want[..]),
                "--{long}: {want} is the upgrade's"
            );
        }
    }

    #[test]
    fn users_file_lists_names_and_rejects_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("users");
        fs::write(&good, "# staff\narijort\n\n  bob  \n").unwrap();
        let users = Users::load(&good).unwrap();
        assert!(users.allows("arijort") && users.allows("bob") && !users.allows("eve"));
        let bad = dir.path().join("bad");
        fs::write(&bad, "ok\nnot ok\n").unwrap();
        let err = Users::load(&bad).unwrap_err();
        assert!(err.contains(":2:"), "{err}");
    }
}
