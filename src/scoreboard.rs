//! The scoreboard: one shared memory segment, a header and one slot per worker index.
//!
//! It is a file (by default under `/dev/shm`) mapped `MAP_SHARED` by the master before it forks,
//! so every worker writes into the same pages and `cserverctl` can map it read-only by path. Each
//! worker is the only writer of its slot's counters; the master writes only the lifecycle fields
//! (pid and state around spawn and reap) and the header. A slot outlives the process in it: a
//! respawned worker continues the same counters, so totals never go backwards.
//!
//! Readers trust nothing: the file is opened without following a symlink or blocking and must be
//! a regular file of root, the reader or the server's user; magic, version, sizes and the slot
//! count (at most [`MAX_SLOTS`]) are checked on a copy of the header against the file's real
//! length before anything is mapped, and only the declared slots are mapped.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::{offset_of, size_of};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicI32, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{Mmap, MmapMut, MmapOptions};
use serde::Serialize;

use crate::files::{self, Access, Trust};
use crate::listen::Protocol;
use crate::procfs::{self, Identity};

/// First bytes of every scoreboard file.
pub const MAGIC: [u8; 8] = *b"CSRVSCB\x01";
/// Layout version; bumped whenever `Header` or `Slot` change (4: the master's start time and
/// the server's user in the header, the processes started for clients in each slot).
pub const VERSION: u32 = 5;

/// The most slots a cserverd makes: room for a replacement beside each worker of the largest
/// pool. A header that declares more is not one of ours.
pub const MAX_SLOTS: usize = 2 * crate::config::MAX_WORKERS;

/// The segment's header, written by the master.
#[repr(C, align(128))]
pub struct Header {
    magic: [u8; 8],
    version: u32,
    header_size: u32,
    slot_size: u32,
    capacity: u32,
    /// The master's pid (a new master after an upgrade writes its own), written with
    /// [`Header::set_master`] and read with [`Header::master`].
    master_pid: AtomicI32,
    /// The bound TCP port.
    pub port: AtomicU32,
    /// How many slots the master currently keeps filled.
    pub workers: AtomicU32,
    /// [`ServerState`] as a number.
    pub state: AtomicU32,
    /// When the master started, ms since the epoch.
    pub started_ms: AtomicU64,
    /// When the master process started, in clock ticks after boot (field 22 of
    /// `/proc/PID/stat`): with `master_pid`, the master's [`Identity`], which a process given
    /// the same pid later does not have. Written with [`Header::set_master`].
    master_start: AtomicU64,
    /// The user the master runs as once started (`--user`'s, else its own): besides root and
    /// the reader, the one owner of this file a reader accepts.
    pub server_uid: AtomicU32,
    /// `HUP`s the master has finished handling, reloaded or not: a reader that sent one waits
    /// for this to move.
    pub reloads: AtomicU32,
    /// The value of `reloads` at the last `HUP` that did not reload (a file it could not read,
    /// or a phase that ignores it); 0: none yet.
    pub reload_refused: AtomicU32,
    /// `--max-workers`: how far `TTIN` can grow the pool.
    pub max_workers: AtomicU32,
}

impl Header {
    /// One more `HUP` handled; `reloaded` false when it changed nothing.
    pub fn count_reload(&self, reloaded: bool) {
        let n = self.reloads.load(Relaxed).wrapping_add(1).max(1);
        if !reloaded {
            self.reload_refused.store(n, Relaxed);
        }
        // Release: a reader that sees the new count sees whether it was refused.
        self.reloads.store(n, std::sync::atomic::Ordering::Release);
    }

    /// The master as recorded. While [`Header::set_master`] runs in another process the pid
    /// may be the old one and the start time the new one; a reader that finds the pair
    /// inconsistent with the process reads it again.
    pub fn master(&self) -> Identity {
        Identity {
            pid: self.master_pid.load(Acquire),
            start_ticks: self.master_start.load(Acquire),
        }
    }

    /// Records `master` as the master (its start, an upgrade's take-over, a hand-back): the
    /// start time first, then the pid, so a reader that sees the new pid sees its start time.
    pub fn set_master(&self, master: Identity) {
        self.master_start.store(master.start_ticks, Release);
        self.master_pid.store(master.pid, Release);
    }
}

/// One worker index's counters; 128-byte aligned (256 bytes long) so two workers never share a
/// cache line pair.
#[repr(C, align(128))]
#[derive(Default)]
pub struct Slot {
    /// The pid now in this slot, 0 if none.
    pub pid: AtomicI32,
    /// [`SlotState`] as a number.
    pub state: AtomicU32,
    /// When the current process started, ms since the epoch.
    pub started_ms: AtomicU64,
    /// Last sign of life of the current process, ms since the epoch (for display).
    pub heartbeat_ms: AtomicU64,
    /// The same on the monotonic clock (for `--worker-timeout`: immune to clock changes).
    pub beat_mono_ms: AtomicU64,
    /// Which listening socket (pool position) the process accepts from.
    pub listener: AtomicU32,
    /// Connections accepted, all processes of this slot together.
    pub accepted: AtomicU64,
    /// Connections open in the current process.
    pub open: AtomicU64,
    /// Requests (`MSG` transactions) handled and logged.
    pub requests: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// `ERR` replies sent.
    pub errors: AtomicU64,
    /// Unexpected deaths of this slot's processes (a crash, a kill, a missed heartbeat).
    pub restarts: AtomicU64,
    /// The last client, as the PROXY protocol header named it (`--proxy-protocol`): IPv6 (or
    /// IPv4-mapped) address, port, and 4 or 6 (0: none yet). For display: may tear.
    pub peer_ip: [AtomicU64; 2],
    pub peer_port: AtomicU32,
    pub peer_family: AtomicU32,
    /// Programs (`RUN`) and shells (`SHELL`) the current process started and has not reaped
    /// (reset by the master when the process dies: its children die with it).
    pub procs: AtomicU32,
    /// Planned ends of this slot's processes (replaced at HUP, recycled, TTOU, upgraded).
    pub retired: AtomicU32,
    /// Requests of the other listeners' protocols handled and logged (chat, reverse, procman,
    /// rembash: [`Protocol::index`] - 1); cserver's are `requests`.
    pub served: [AtomicU64; 4],
    /// Idle sessions this slot's processes handed to another worker at a planned retirement,
    /// and sessions they adopted from one (what layout 5 left as zero padding: an older
    /// server's file reads as none moved).
    pub handed_over: AtomicU64,
    pub adopted: AtomicU64,
    /// `--sync`: `fdatasync`s of the log this slot's processes made, those that failed, their
    /// nanoseconds in all and the longest (also from what layout 5 left as zero padding).
    pub syncs: AtomicU64,
    pub sync_failures: AtomicU64,
    pub sync_ns: AtomicU64,
    pub sync_max_ns: AtomicU64,
}

/// Lifecycle of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Never used.
    Empty = 0,
    /// Forked, not yet serving.
    Starting = 1,
    /// Serving connections.
    Ready = 2,
    /// Finishing its sessions before exiting.
    Stopping = 3,
    /// Its process exited and nothing will restart it here: free for a new worker.
    Dead = 4,
    /// Its process exited and the master will restart it here after a backoff: reserved.
    Respawning = 5,
    /// Its process ended as planned (retired, or at a stop): free for a new worker.
    Free = 6,
}

impl ServerState {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Running => "running",
            ServerState::Stopping => "stopping",
        }
    }
}

impl SlotState {
    fn from_u32(v: u32) -> SlotState {
        match v {
            1 => SlotState::Starting,
            2 => SlotState::Ready,
            3 => SlotState::Stopping,
            4 => SlotState::Dead,
            5 => SlotState::Respawning,
            6 => SlotState::Free,
            _ => SlotState::Empty,
        }
    }

    /// Lower-case name, as shown by `STATS` and `cserverctl`.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Stopping => "stopping",
            SlotState::Dead => "dead",
            SlotState::Respawning => "respawning",
            SlotState::Free => "free",
        }
    }
}

/// Lifecycle of the whole server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Starting or serving.
    Running = 0,
    /// Graceful stop in progress.
    Stopping = 1,
}

impl Slot {
    /// Sets the state.
    pub fn set_state(&self, state: SlotState) {
        self.state.store(state as u32, Relaxed);
    }

    /// Adds to a counter this process alone writes (a plain load and store: no locked
    /// instruction on the hot path).
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    /// Counts one `fdatasync` of the log: how long it took, or that it failed.
    pub fn count_sync(&self, outcome: Result<std::time::Duration, ()>) {
        Slot::add(&self.syncs, 1);
        match outcome {
            Ok(took) => {
                let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
                Slot::add(&self.sync_ns, ns);
                if ns > self.sync_max_ns.load(Relaxed) {
                    self.sync_max_ns.store(ns, Relaxed);
                }
            }
            Err(()) => Slot::add(&self.sync_failures, 1),
        }
    }

    /// Records the last client (the worker, for `--proxy-protocol`).
    pub fn set_last_client(&self, addr: SocketAddr) {
        let (ip, family) = match addr {
            SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), 4),
            SocketAddr::V6(a) => (a.ip().octets(), 6),
        };
        let hi = u64::from_be_bytes(ip[..8].try_into().unwrap_or([0; 8]));
        let lo = u64::from_be_bytes(ip[8..].try_into().unwrap_or([0; 8]));
        self.peer_ip[0].store(hi, Relaxed);
        self.peer_ip[1].store(lo, Relaxed);
        self.peer_port.store(addr.port() as u32, Relaxed);
        self.peer_family.store(family, Relaxed);
    }

    /// The last client recorded, if any.
    pub fn last_client(&self) -> Option<SocketAddr> {
        let family = self.peer_family.load(Relaxed);
        let mut ip = [0u8; 16];
        ip[..8].copy_from_slice(&self.peer_ip[0].load(Relaxed).to_be_bytes());
        ip[8..].copy_from_slice(&self.peer_ip[1].load(Relaxed).to_be_bytes());
        let v6 = std::net::Ipv6Addr::from(ip);
        let port = self.peer_port.load(Relaxed) as u16;
        match family {
            4 => v6.to_ipv4_mapped().map(|v4| SocketAddr::from((v4, port))),
            6 => Some(SocketAddr::from((v6, port))),
            _ => None,
        }
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self, index: usize) -> SlotSnapshot {
        SlotSnapshot {
            slot: index,
            pid: self.pid.load(Relaxed),
            state: SlotState::from_u32(self.state.load(Relaxed)),
            started_ms: self.started_ms.load(Relaxed),
            heartbeat_ms: self.heartbeat_ms.load(Relaxed),
            listener: self.listener.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            open: self.open.load(Relaxed),
            requests: self.requests.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            retired: u64::from(self.retired.load(Relaxed)),
            handed_over: self.handed_over.load(Relaxed),
            adopted: self.adopted.load(Relaxed),
            sync: SyncStats {
                syncs: self.syncs.load(Relaxed),
                failures: self.sync_failures.load(Relaxed),
                total_ns: self.sync_ns.load(Relaxed),
                max_ns: self.sync_max_ns.load(Relaxed),
            },
            last_client: self.last_client().map(|a| a.to_string()),
            by_protocol: ByProtocol::of(
                self.requests.load(Relaxed),
                self.served.each_ref().map(|n| n.load(Relaxed)),
            ),
        }
    }
}

/// A copy of one slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotSnapshot {
    pub slot: usize,
    pub pid: i32,
    pub state: SlotState,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    pub listener: u32,
    pub accepted: u64,
    pub open: u64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    pub restarts: u64,
    pub retired: u64,
    /// Idle sessions handed to another worker at planned retirements, and adopted from one.
    pub handed_over: u64,
    pub adopted: u64,
    /// The log's syncs (`--sync`).
    pub sync: SyncStats,
    /// The last client named by a PROXY protocol header.
    pub last_client: Option<String>,
    /// Requests handled and logged, per protocol (cserver's are its `MSG`s: `requests`).
    pub by_protocol: ByProtocol,
}

/// The `fdatasync`s of the log (`--sync`): how many, how many failed, how long they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncStats {
    pub syncs: u64,
    pub failures: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl SyncStats {
    /// The mean successful sync in microseconds (0 before the first).
    pub fn mean_us(&self) -> u64 {
        (self.total_ns / self.syncs.saturating_sub(self.failures).max(1)) / 1000
    }

    fn add(&mut self, other: &SyncStats) {
        self.syncs += other.syncs;
        self.failures += other.failures;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }
}

/// Requests handled and logged, per listener protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ByProtocol {
    pub cserver: u64,
    pub chat: u64,
    pub reverse: u64,
    pub procman: u64,
    pub rembash: u64,
}

impl ByProtocol {
    fn of(cserver: u64, [chat, reverse, procman, rembash]: [u64; 4]) -> ByProtocol {
        ByProtocol {
            cserver,
            chat,
            reverse,
            procman,
            rembash,
        }
    }

    /// Each protocol and its count, in [`Protocol::ALL`] order.
    pub fn each(&self) -> [(Protocol, u64); 5] {
        [
            (Protocol::Cserver, self.cserver),
            (Protocol::Chat, self.chat),
            (Protocol::Reverse, self.reverse),
            (Protocol::Procman, self.procman),
            (Protocol::Rembash, self.rembash),
        ]
    }

    fn add(&mut self, other: &ByProtocol) {
        self.cserver += other.cserver;
        self.chat += other.chat;
        self.reverse += other.reverse;
        self.procman += other.procman;
        self.rembash += other.rembash;
    }
}

/// A copy of the whole scoreboard: header fields, totals and the used slots.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub master_pid: i32,
    pub port: u32,
    pub workers: u32,
    pub state: ServerState,
    pub started_ms: u64,
    pub total: Totals,
    pub slots: Vec<SlotSnapshot>,
}

/// Sums over all slots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub requests: u64,
    /// Requests handled and logged, per protocol.
    pub by_protocol: ByProtocol,
    pub accepted: u64,
    pub open: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    pub restarts: u64,
    pub retired: u64,
    pub handed_over: u64,
    pub adopted: u64,
    pub sync: SyncStats,
}

enum Map {
    Owner(MmapMut),
    Reader(Mmap),
}

/// A mapped scoreboard: created by the master (and inherited by workers), or opened read-only.
pub struct Scoreboard {
    map: Map,
    capacity: usize,
    path: PathBuf,
    /// The file's owner (from `fstat` when opened).
    owner: u32,
}

/// Why a scoreboard file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open scoreboard {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a cserverd scoreboard ({why})")]
    Foreign { path: PathBuf, why: String },
    /// Not a file to trust: a symlink, a FIFO or device, writable by others, another user's.
    #[error("refusing scoreboard {path}: {why}")]
    Refused { path: PathBuf, why: String },
}

/// A scoreboard file opened and checked, not yet mapped.
struct Checked {
    file: File,
    capacity: usize,
    owner: u32,
}

/// Milliseconds on the monotonic clock, shared by every process of the machine.
pub fn mono_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, the unit of every time field.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn file_len(capacity: usize) -> usize {
    size_of::<Header>() + capacity * size_of::<Slot>()
}

/// Opens the file at `path` as an untrusted scoreboard (see [`files::open`]: any owner, judged
/// below) and checks a
/// copy of its header: magic, version, sizes, a slot count from 1 to [`MAX_SLOTS`] that the
/// file's real length holds, and an owner that is root, the caller or the server's user the
/// header names. Reads 128 bytes whatever the file claims.
fn open_checked(path: &Path, write: bool) -> Result<Checked, OpenError> {
    let io_err = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let foreign = |why: String| OpenError::Foreign {
        path: path.to_path_buf(),
        why,
    };
    let access = if write {
        Access::ReadWrite
    } else {
        Access::Read
    };
    let file = files::open(path, access, &Trust::any_owner()).map_err(|e| {
        if files::is_refusal(&e) {
            OpenError::Refused {
                path: path.to_path_buf(),
                why: e.to_string(),
            }
        } else {
            io_err(e)
        }
    })?;
    let meta = file.metadata().map_err(io_err)?;
    let len = meta.len();
    let mut raw = [0u8; size_of::<Header>()];
    if len < raw.len() as u64 {
        return Err(foreign(format!("{len} bytes is too short")));
    }
    file.read_exact_at(&mut raw, 0).map_err(io_err)?;
    let u32_at = |offset: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&raw[offset..offset + 4]);
        u32::from_ne_bytes(b)
    };
    if raw[..MAGIC.len()] != MAGIC {
        return Err(foreign("bad magic".into()));
    }
    let version = u32_at(offset_of!(Header, version));
    if version != VERSION {
        return Err(foreign(format!(
            "layout version {version} (this tool reads {VERSION})"
        )));
    }
    if u32_at(offset_of!(Header, header_size)) as usize != size_of::<Header>()
        || u32_at(offset_of!(Header, slot_size)) as usize != size_of::<Slot>()
    {
        return Err(foreign("header or slot size differs".into()));
    }
    let capacity = u32_at(offset_of!(Header, capacity)) as usize;
    if capacity > MAX_SLOTS {
        return Err(foreign(format!(
            "it declares {capacity} slots; a cserverd makes at most {MAX_SLOTS}"
        )));
    }
    if capacity == 0 || len < file_len(capacity) as u64 {
        return Err(foreign(format!("{len} bytes cannot hold {capacity} slots")));
    }
    let owner = meta.uid();
    let caller = nix::unistd::getuid().as_raw();
    let server = u32_at(offset_of!(Header, server_uid));
    if owner != 0 && owner != caller && owner != server {
        return Err(OpenError::Refused {
            path: path.to_path_buf(),
            why: format!(
                "owned by uid {owner}, not by root, you (uid {caller}) or the server's user \
                 (uid {server})"
            ),
        });
    }
    Ok(Checked {
        file,
        capacity,
        owner,
    })
}

impl Scoreboard {
    /// Creates the file (mode 0600, refusing to follow a symlink or reuse someone else's file),
    /// sizes it for `capacity` slots and writes the header. A stale file of ours left by a crash
    /// is replaced.
    pub fn create(path: &Path, capacity: usize, port: u16) -> io::Result<Scoreboard> {
        match fs::symlink_metadata(path) {
            Ok(meta)
                if meta.file_type().is_file() && meta.uid() == nix::unistd::geteuid().as_raw() =>
            {
                fs::remove_file(path)?
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a scoreboard file of this user",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        if capacity == 0 || capacity > MAX_SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a scoreboard holds 1 to {MAX_SLOTS} slots, not {capacity}"),
            ));
        }
        let master = procfs::own_identity()?;
        let uid = nix::unistd::geteuid().as_raw();
        file.set_len(file_len(capacity) as u64)?;
        // SAFETY: the file was just created by us with O_EXCL and mode 0600; only this process
        // and its children map it writable, and every shared field is an atomic.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            header_size: size_of::<Header>() as u32,
            slot_size: size_of::<Slot>() as u32,
            capacity: capacity as u32,
            master_pid: AtomicI32::new(master.pid),
            port: AtomicU32::new(port as u32),
            workers: AtomicU32::new(0),
            state: AtomicU32::new(ServerState::Running as u32),
            started_ms: AtomicU64::new(now_ms()),
            master_start: AtomicU64::new(master.start_ticks),
            server_uid: AtomicU32::new(uid),
            reloads: AtomicU32::new(0),
            reload_refused: AtomicU32::new(0),
            max_workers: AtomicU32::new(0),
        };
        // SAFETY: the mapping is page-aligned and at least size_of::<Header>() long; nobody else
        // has mapped it yet. The slots stay zero (a valid all-zero Slot).
        unsafe { std::ptr::write(map.as_mut_ptr() as *mut Header, header) };
        Ok(Scoreboard {
            map: Map::Owner(map),
            capacity,
            path: path.to_path_buf(),
            owner: uid,
        })
    }

    /// Maps an existing scoreboard read-write (a new master taking over from the old one in a
    /// binary upgrade), after the same checks as [`Scoreboard::open_readonly`].
    pub fn adopt(path: &Path) -> Result<Scoreboard, OpenError> {
        let checked = open_checked(path, true)?;
        // SAFETY: the file was just checked to be a scoreboard of `checked.capacity` slots and
        // exactly that much is mapped; all shared fields are atomics, as for the mapping made
        // by `create`.
        let map = unsafe {
            MmapOptions::new()
                .len(file_len(checked.capacity))
                .map_mut(&checked.file)
        }
        .map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Scoreboard {
            map: Map::Owner(map),
            capacity: checked.capacity,
            path: path.to_path_buf(),
            owner: checked.owner,
        })
    }

    /// Maps an existing scoreboard read-only after checking it really is one (see
    /// [`open_checked`]): only the header and the slots it declares are mapped.
    pub fn open_readonly(path: &Path) -> Result<Scoreboard, OpenError> {
        let checked = open_checked(path, false)?;
        // SAFETY: read-only shared mapping of exactly the checked length; all fields are read
        // through atomics or plain integers whose every bit pattern is valid.
        let map = unsafe {
            MmapOptions::new()
                .len(file_len(checked.capacity))
                .map(&checked.file)
        }
        .map_err(|source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Scoreboard {
            map: Map::Reader(map),
            capacity: checked.capacity,
            path: path.to_path_buf(),
            owner: checked.owner,
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::Owner(m) => m,
            Map::Reader(m) => m,
        }
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned and at least one Header long (checked at open or
        // sized at create); Header is repr(C) with fields valid for any bit pattern.
        unsafe { &*(self.bytes().as_ptr() as *const Header) }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slot `i`.
    ///
    /// # Panics
    /// If `i >= capacity()`: slot indexes come from the master's own bookkeeping.
    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.capacity, "slot {i} out of range");
        let offset = size_of::<Header>() + i * size_of::<Slot>();
        // SAFETY: offset + size_of::<Slot>() <= file_len(capacity) <= mapping length; slots are
        // 128-byte aligned because the header is 128 bytes and the mapping page-aligned.
        unsafe { &*(self.bytes().as_ptr().add(offset) as *const Slot) }
    }

    /// The file this scoreboard lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's owner, as it was when opened.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Sum of `requests` over every slot: the server's total.
    pub fn total_requests(&self) -> u64 {
        (0..self.capacity)
            .map(|i| self.slot(i).requests.load(Relaxed))
            .sum()
    }

    /// Sum of `procs` over every slot: the processes started for clients, server-wide.
    pub fn processes(&self) -> u64 {
        (0..self.capacity)
            .map(|i| u64::from(self.slot(i).procs.load(Relaxed)))
            .sum()
    }

    /// Copies the header, the totals and every slot that was ever used.
    pub fn snapshot(&self) -> Snapshot {
        let h = self.header();
        let mut total = Totals::default();
        let mut slots = Vec::new();
        for i in 0..self.capacity {
            let s = self.slot(i).snapshot(i);
            total.requests += s.requests;
            total.accepted += s.accepted;
            total.open += s.open;
            total.bytes_in += s.bytes_in;
            total.bytes_out += s.bytes_out;
            total.errors += s.errors;
            total.restarts += s.restarts;
            total.retired += s.retired;
            total.handed_over += s.handed_over;
            total.adopted += s.adopted;
            total.sync.add(&s.sync);
            total.by_protocol.add(&s.by_protocol);
            if s.state != SlotState::Empty {
                slots.push(s);
            }
        }
        Snapshot {
            master_pid: h.master_pid.load(Relaxed),
            port: h.port.load(Relaxed),
            workers: h.workers.load(Relaxed),
            state: if h.state.load(Relaxed) == ServerState::Stopping as u32 {
                ServerState::Stopping
            } else {
                ServerState::Running
            },
            started_ms: h.started_ms.load(Relaxed),
            total,
            slots,
        }
    }

    /// Removes the file (the master, at exit). Processes that mapped it keep their mapping.
    pub fn remove(&self) -> io::Result<()> {
        fs::remove_file(&self.path)
    }
}

/// The default scoreboard path for a listening address:
/// `/dev/shm/cserverd-<address>-<port>.scoreboard` (two servers on one port of two addresses
/// have two), or in the temporary directory when `/dev/shm` does not exist.
pub fn default_path(addr: std::net::SocketAddr) -> PathBuf {
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("cserverd-{}-{}.scoreboard", addr.ip(), addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_state_round_trips_through_its_number() {
        for state in [
            SlotState::Empty,
            SlotState::Starting,
            SlotState::Ready,
            SlotState::Stopping,
            SlotState::Dead,
            SlotState::Respawning,
            SlotState::Free,
        ] {
            assert_eq!(SlotState::from_u32(state as u32), state);
            let slot = Slot::default();
            slot.set_state(state);
            assert_eq!(SlotState::from_u32(slot.state.load(Relaxed)), state);
        }
        // A number no state has (a foreign or newer writer) reads as empty.
        assert_eq!(SlotState::from_u32(99), SlotState::Empty);
    }

    #[test]
    fn the_monotonic_clock_counts_milliseconds() {
        let a = mono_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = mono_ms();
        assert!(b >= a + 30, "{a} then {b}");
        // The clock's own reading, taken right after: the same milliseconds.
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        let expected = t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000;
        assert!(b <= expected && expected - b < 50, "{b} then {expected}");
    }

    #[test]
    fn the_last_client_round_trips() {
        let slot = Slot::default();
        assert_eq!(slot.last_client(), None);
        for a in ["192.0.2.7:4242", "[2001:db8::1]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            slot.set_last_client(a);
            assert_eq!(slot.last_client(), Some(a));
        }
    }

    #[test]
    fn layout_is_what_readers_expect() {
        assert_eq!(size_of::<Header>(), 128);
        assert_eq!(size_of::<Slot>(), 256);
    }

    #[test]
    fn created_board_opens_read_only_and_shares_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board");
        let board = Scoreboard::create(&path, 4, 4242).unwrap();
        Slot::add(&board.slot(2).requests, 7);
        board.slot(2).set_state(SlotState::Ready);
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let reader = Scoreboard::open_readonly(&path).unwrap();
        assert_eq!(reader.capacity(), 4);
        assert_eq!(reader.header().port.load(Relaxed), 4242);
        let snap = reader.snapshot();
        assert_eq!(snap.total.requests, 7);
        assert_eq!(snap.slots.len(), 1);
        assert_eq!(snap.slots[0].slot, 2);
        Slot::add(&board.slot(0).requests, 1);
        assert_eq!(reader.total_requests(), 8);
    }

    #[test]
    fn foreign_or_short_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        fs::write(&short, b"hello").unwrap();
        assert!(matches!(
            Scoreboard::open_readonly(&short),
            Err(OpenError::Foreign { .. })
        ));
        let foreign = dir.path().join("foreign");
        fs::write(&foreign, vec![7u8; 4096]).unwrap();
        let err = Scoreboard::open_readonly(&foreign).err().unwrap();
        assert!(err.to_string().contains("bad magic"), "{err}");
        let missing = dir.path().join("missing");
        assert!(matches!(
            Scoreboard::open_readonly(&missing),
            Err(OpenError::Io { .. })
        ));
    }

    /// A valid board of `capacity` slots at `dir/name`, then `patch` applied to its bytes.
    fn patched(
        dir: &Path,
        name: &str,
        capacity: usize,
        patch: impl FnOnce(&mut Vec<u8>),
    ) -> PathBuf {
        let path = dir.join(name);
        drop(Scoreboard::create(&path, capacity, 1).unwrap());
        let mut bytes = fs::read(&path).unwrap();
        patch(&mut bytes);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn refusal(path: &Path) -> String {
        match Scoreboard::open_readonly(path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn syncs_are_counted_timed_and_added_over_slots() {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 3, 1).unwrap();
        let ms = std::time::Duration::from_millis;
        let (a, b) = (board.slot(0), board.slot(2));
        a.count_sync(Ok(ms(2)));
        a.count_sync(Ok(ms(6)));
        a.count_sync(Err(()));
        b.count_sync(Ok(ms(1)));
        for s in [a, b] {
            s.set_state(SlotState::Ready);
        }
        let snap = board.snapshot();
        let want_a = SyncStats {
            syncs: 3,
            failures: 1,
            total_ns: 8_000_000,
            max_ns: 6_000_000,
        };
        assert_eq!(snap.slots[0].sync, want_a);
        assert_eq!(want_a.mean_us(), 4000, "of the successful ones");
        assert_eq!(
            snap.slots[1].sync.max_ns, 1_000_000,
            "a shorter one leaves the max"
        );
        let t = snap.total.sync;
        assert_eq!((t.syncs, t.failures, t.total_ns), (4, 1, 9_000_000));
        assert_eq!(t.max_ns, 6_000_000, "the longest of any slot");
        assert_eq!(SyncStats::default().mean_us(), 0);
    }

    #[test]
    fn totals_add_every_protocol_and_every_move_of_every_slot() {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 3, 1).unwrap();
        for (i, base) in [(0usize, 1u64), (2, 10)] {
            let s = board.slot(i);
            s.set_state(SlotState::Ready);
            Slot::add(&s.requests, base);
            for (k, n) in s.served.iter().enumerate() {
                Slot::add(n, base * (k as u64 + 2));
            }
            Slot::add(&s.handed_over, base * 7);
            Slot::add(&s.adopted, base * 8);
        }
        let total = board.snapshot().total;
        assert_eq!((total.handed_over, total.adopted), (77, 88));
        let t = total.by_protocol;
        assert_eq!(
            t,
            ByProtocol {
                cserver: 11,
                chat: 22,
                reverse: 33,
                procman: 44,
                rembash: 55,
            }
        );
    }

    #[test]
    fn a_board_is_checked_field_by_field_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The file is exactly a header and its slots long, and says when its master started.
        let path = d.join("board");
        let board = Scoreboard::create(&path, 3, 1).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 128 + 3 * 256);
        let started = board.header().started_ms.load(Relaxed);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(wall.abs_diff(started) < 5_000, "{started} vs {wall}");
        assert!(wall.abs_diff(now_ms()) < 5_000);
        // Shorter than a header; exactly a header but no room for its slot.
        let tiny = patched(d, "tiny", 1, |b| b.truncate(127));
        assert!(refusal(&tiny).contains("127 bytes is too short"));
        let header_only = patched(d, "header-only", 1, |b| b.truncate(128));
        assert!(refusal(&header_only).contains("128 bytes cannot hold 1 slots"));
        let one_short = patched(d, "one-short", 2, |b| b.truncate(128 + 2 * 128 - 1));
        assert!(refusal(&one_short).contains("cannot hold 2 slots"));
        // Either size field wrong on its own.
        let header_size = patched(d, "header-size", 1, |b| b[12] = 64);
        assert!(refusal(&header_size).contains("header or slot size differs"));
        let slot_size = patched(d, "slot-size", 1, |b| b[16] = 64);
        assert!(refusal(&slot_size).contains("header or slot size differs"));
        let version = patched(d, "version", 1, |b| b[8] = 99);
        assert!(refusal(&version).contains("layout version 99"));
        // No slots at all.
        let none = patched(d, "none", 1, |b| b[20..24].copy_from_slice(&[0; 4]));
        assert!(refusal(&none).contains("cannot hold 0 slots"));
        // Longer than needed is fine (a page of slack, say), and so is the exact length.
        let long = patched(d, "long", 2, |b| b.extend_from_slice(&[0; 4096]));
        assert_eq!(Scoreboard::open_readonly(&long).unwrap().capacity(), 2);
        assert_eq!(Scoreboard::adopt(&long).unwrap().capacity(), 2);
    }

    #[test]
    fn the_header_names_the_master_and_the_servers_user() {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 2, 1).unwrap();
        let h = board.header();
        assert_eq!(h.master(), procfs::own_identity().unwrap());
        assert_eq!(h.server_uid.load(Relaxed), nix::unistd::geteuid().as_raw());
        let other = Identity {
            pid: 4242,
            start_ticks: 77,
        };
        h.set_master(other);
        assert_eq!(h.master(), other);
        assert_eq!(board.snapshot().master_pid, 4242);
        assert_eq!(
            offset_of!(Header, master_pid),
            24,
            "the pid stays where v3 had it"
        );
        assert!(Scoreboard::create(&dir.path().join("big"), MAX_SLOTS + 1, 1).is_err());
        let most = Scoreboard::create(&dir.path().join("most"), MAX_SLOTS, 1).unwrap();
        assert_eq!(most.capacity(), MAX_SLOTS, "the largest pool fits");
    }

    #[test]
    fn a_refused_reload_is_the_last_one_counted() {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 1, 1).unwrap();
        let h = board.header();
        let counts = || (h.reloads.load(Relaxed), h.reload_refused.load(Relaxed));
        h.count_reload(true);
        assert_eq!(counts(), (1, 0), "a reload that applied is not refused");
        h.count_reload(false);
        assert_eq!(counts(), (2, 2), "the second reload was refused");
        h.count_reload(true);
        assert_eq!(
            counts(),
            (3, 2),
            "the third applied: the refusal stays the second's"
        );
    }

    #[test]
    fn processes_add_up_over_every_slot() {
        let dir = tempfile::tempdir().unwrap();
        let board = Scoreboard::create(&dir.path().join("board"), 3, 1).unwrap();
        assert_eq!(board.processes(), 0);
        board.slot(0).procs.store(2, Relaxed);
        board.slot(2).procs.store(3, Relaxed);
        assert_eq!(board.processes(), 5);
    }

    #[test]
    fn a_forged_slot_count_is_refused_before_anything_is_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let capacity = |n: u32| move |b: &mut Vec<u8>| b[20..24].copy_from_slice(&n.to_ne_bytes());
        // Far too many slots, in a file (sparse) long enough to hold them: refused at once. (Under
        // 1 GiB: make mutants limits the files tests write to that.)
        let huge = patched(d, "huge", 1, capacity(8_000_000));
        File::options()
            .write(true)
            .open(&huge)
            .unwrap()
            .set_len(128 + 8_000_000 * 128)
            .unwrap();
        let start = std::time::Instant::now();
        let err = refusal(&huge);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            err.contains("it declares 8000000 slots; a cserverd makes at most 8192"),
            "{err}"
        );
        assert!(Scoreboard::adopt(&huge).is_err());
        // The most a cserverd makes is fine when the file holds them.
        let most = patched(d, "most", 1, capacity(MAX_SLOTS as u32));
        File::options()
            .write(true)
            .open(&most)
            .unwrap()
            .set_len(file_len(MAX_SLOTS) as u64)
            .unwrap();
        assert_eq!(
            Scoreboard::open_readonly(&most).unwrap().capacity(),
            MAX_SLOTS
        );
        let one_more = patched(d, "one-more", 1, capacity(MAX_SLOTS as u32 + 1));
        assert!(refusal(&one_more).contains("a cserverd makes at most"));
    }

    #[test]
    fn only_a_plain_file_of_root_the_reader_or_the_server_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let path = d.join("board");
        drop(Scoreboard::create(&path, 2, 1).unwrap());
        let link = d.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(refusal(&link).contains("a symbolic link (not followed)"));
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(refusal(&fifo).contains("a FIFO, not a regular file"));
        assert!(Scoreboard::adopt(&fifo).is_err());
        let open = patched(d, "open", 2, |_| {});
        fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(refusal(&open).contains("is writable by anyone (mode 0666)"));
        if nix::unistd::getuid().is_root() {
            // Another user's copy of root's board: refused.
            let theirs = patched(d, "theirs", 2, |_| {});
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = refusal(&theirs);
            assert!(
                err.contains("owned by uid 65534, not by root, you (uid 0)"),
                "{err}"
            );
            // The same, naming 65534 as the server's user (a server run with --user): read.
            let servers = patched(d, "servers", 2, |b| {
                b[56..60].copy_from_slice(&65534u32.to_ne_bytes())
            });
            std::os::unix::fs::chown(&servers, Some(65534), Some(65534)).unwrap();
            let board = Scoreboard::open_readonly(&servers).unwrap();
            assert_eq!(board.owner(), 65534);
            assert_eq!(board.header().server_uid.load(Relaxed), 65534);
        }
    }

    #[test]
    fn without_stats_file_the_board_lives_in_dev_shm_by_port() {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let at = |s: &str| default_path(s.parse().unwrap());
        assert_eq!(
            at("127.0.0.1:31337"),
            dir.join("cserverd-127.0.0.1-31337.scoreboard")
        );
        assert_ne!(at("127.0.0.1:31337"), at("127.0.0.1:31338"));
        assert_ne!(at("127.0.0.1:31337"), at("127.0.0.2:31337"));
        assert_eq!(at("[::1]:80"), dir.join("cserverd-::1-80.scoreboard"));
    }

    #[test]
    fn adopting_shares_the_counters_and_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board");
        let board = Scoreboard::create(&path, 2, 7).unwrap();
        let adopted = Scoreboard::adopt(&path).unwrap();
        assert_eq!(adopted.capacity(), 2);
        Slot::add(&adopted.slot(1).requests, 5);
        assert_eq!(board.total_requests(), 5);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Scoreboard::adopt(&link).is_err());
    }

    #[test]
    fn a_stale_board_of_ours_is_replaced_and_anyone_elses_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board");
        // A crash left ours behind: replaced, counters from zero.
        let old = Scoreboard::create(&path, 2, 1).unwrap();
        Slot::add(&old.slot(0).requests, 9);
        drop(old);
        let new = Scoreboard::create(&path, 2, 1).unwrap();
        assert_eq!(new.total_requests(), 0);
        // A directory, and a file of another user, are left alone.
        let not_file = dir.path().join("dir");
        fs::create_dir(&not_file).unwrap();
        assert!(Scoreboard::create(&not_file, 2, 1).is_err());
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            fs::write(&theirs, b"not yours").unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = Scoreboard::create(&theirs, 2, 1).err().unwrap();
            assert!(
                err.to_string()
                    .contains("is not a scoreboard file of this user"),
                "{err}"
            );
            assert_eq!(fs::read(&theirs).unwrap(), b"not yours");
        }
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("board");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(Scoreboard::create(&link, 2, 1).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"precious");
    }
}
