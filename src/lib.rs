//! cserver: a pre-fork multiprocess TCP server for Linux.
//!
//! The process picture: `cserverd` starts a **master** that binds one `SO_REUSEPORT` listener per
//! worker slot, opens the append-only **log**, creates the shared-memory **scoreboard**, and forks
//! a fixed pool of **workers**. Each worker runs one epoll loop serving many sessions at once and
//! counts what it does in its own scoreboard slot; the master reaps, respawns and reports.
//! `cclient` is the load generator, `cserverctl` reads the scoreboard.
//!
//! Modules, one concept each:
//!
//! - [`config`]: `cserverd`'s options and their validation
//! - [`check`]: `cserverd --check`: what a start would refuse, found without starting
//! - [`clock`]: deadline arithmetic that cannot panic (`Instant` + a duration, saturating)
//! - [`master`]: bind, scoreboard, log, the master's loop; acts on the phase's and the pool's
//!   decisions; the one `fork`
//! - [`metrics`]: `--metrics-addr`: Prometheus text over HTTP, served by the master
//! - [`phase`]: the master's life as a state machine, and the one table of its signals
//! - [`pool`]: positions and slots as the master wants them: who is due to start, backoff,
//!   what an exit means, replace, grow, shrink (decisions only)
//! - [`worker`]: the per-process event loop: accept, read, answer, timers, flush
//! - [`connection`]: a client socket with its framed input and pending output
//! - [`output`]: replies waiting to be written (a leaf)
//! - [`framing`]: bytes to lines, the same for any split, bounded by `--max-line`
//! - [`handoff`]: an idle session's state and socket passed to another worker (`SCM_RIGHTS`)
//! - [`proxy`]: the PROXY protocol v1/v2 header (`--proxy-protocol`)
//! - [`protocol`]: a line to a `Command`, a refusal to `ERR <code> <text>`
//! - [`request`]: a request's context: session state, worker state, provisional outcomes (a
//!   leaf below `session` and `services`)
//! - [`session`]: what a command does; provisional replies settled after the log write
//! - [`services`]: reverse, arithmetic, process table, chat hub, pty shell: one module each
//! - [`auth`]: `--secrets` and the constant-time `PASS` check
//! - [`penalty`]: wrong `PASS` secrets counted per client address in a shared table: each
//!   penalises the address for twice as long as the last
//! - [`scoreboard`]: the shared segment: header and per-worker atomic slots
//! - [`files`]: opening a file another local user may have placed (no symlink, no FIFO, one
//!   link, a trusted owner, not writable by others)
//! - [`procfs`]: a process's start time, state, real uid and arguments from `/proc`
//! - [`log`]: the `O_APPEND` record writer, timestamps and escaping
//! - [`listener`]: the reuseport listening sockets and the SYN filter used before closing one
//! - [`notify`]: the worker-to-master pipe ("this slot stopped accepting")
//! - [`sys`]: fork, parent-death signal, rlimits, signal mask, pidfds
//! - [`title`]: process titles (`comm` and the command line) that `ps` and `pgrep` show
//! - [`token`]: typed connection ids and the epoll tokens that carry them
//! - [`upgrade`]: `USR2`: hand the listening sockets to a new binary
//! - [`client`]: `cclient`'s load generator and report
//! - [`ctl`]: `cserverctl`'s commands
//! - [`docs`]: man pages and completions from the clap definitions

pub mod activation;
pub mod auth;
pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod docs;
pub mod files;
pub mod framing;
pub mod handoff;
pub mod listen;
pub mod listener;
pub mod log;
pub mod master;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod penalty;
pub mod phase;
pub mod pool;
pub mod procfs;
pub mod protocol;
pub mod protocols;
pub mod proxy;
pub mod record;
pub mod request;
pub mod scoreboard;
pub mod services;
pub mod session;
pub mod steering;
pub mod sys;
pub mod title;
pub mod token;
pub mod upgrade;
pub mod worker;
