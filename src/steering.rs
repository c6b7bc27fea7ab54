//! Even spreading of new connections across the reuseport group: a small eBPF program of type
//! `SK_REUSEPORT` attached to the group hands each new connection to the next listening socket
//! in turn (round robin), instead of the kernel's hash of the addresses, whose luck leaves one
//! of 8 workers with a third more connections than another at 1000.
//!
//! The program reads two maps the master keeps: an array `[next, n]` (a counter it increments
//! atomically, and how many sockets are in the pool) and a `REUSEPORT_SOCKARRAY` whose entries
//! `0..n` are the pool's listening sockets. Whenever it cannot choose (no map entry, `n` = 0, a
//! socket that is gone) it passes and the kernel falls back to its hash, so a missing or stale
//! entry never refuses anyone. Loading needs `CAP_BPF` and `CAP_NET_ADMIN` (the master does it,
//! and fills the maps, before dropping privileges); without them, or on a kernel older than 5.12
//! (atomic fetch-add), cserverd keeps the hash and says so in the log. A binary upgrade hands the
//! program and maps to the new master (see [`crate::upgrade`]), which adopts them.
//!
//! Written with raw `bpf(2)` calls and hand-assembled instructions: the program is 30
//! instructions, not worth a BPF toolchain or loader crate.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// bpf(2) commands, map and program types, helpers (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_SK_SELECT_REUSEPORT: i32 = 82;
const SK_PASS: i32 = 1;
/// asm-generic/socket.h (x86, arm, riscv...; sparc and a few others number it otherwise; the
/// libc crate does not export it for glibc targets).
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

// Instruction encodings used below.
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const MOD64_REG: u8 = 0x9f; // BPF_ALU64 | BPF_MOD | BPF_X
const ST_W_IMM: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const STX_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const LDX_DW: u8 = 0x79; // BPF_LDX | BPF_MEM | BPF_DW
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW (two instructions)
const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW
const FETCH_ADD: i32 = 0x01; // BPF_ADD | BPF_FETCH
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const FP: u8 = 10;

/// Index of the round-robin counter and of the pool size in the state array.
const NEXT: u32 = 0;
const COUNT: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // In `struct bpf_insn` the registers are two 4-bit fields, dst first: the low nibble on a
    // little-endian machine, the high one on a big-endian one.
    let regs = if cfg!(target_endian = "little") {
        (src << 4) | dst
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// `dst = map` (the kernel replaces the descriptor by the map).
fn load_map(dst: u8, map: &OwnedFd) -> [Insn; 2] {
    [
        insn(LD_IMM64, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The program: `next = fetch_add(state[NEXT], 1); select(socks[next % state[COUNT]])`, passing
/// to the kernel's hash whenever it cannot choose.
fn program(state: &OwnedFd, socks: &OwnedFd) -> Vec<Insn> {
    let mut p = Vec::with_capacity(32);
    let mut to_pass = Vec::new(); // jumps to patch
                                  // r0 = &state[key], or pass
    let mut lookup_state = |p: &mut Vec<Insn>, key: u32| {
        p.push(insn(ST_W_IMM, FP, 0, -4, key as i32));
        p.extend(load_map(R1, state));
        p.push(insn(MOV64_REG, R2, FP, 0, 0));
        p.push(insn(ADD64_IMM, R2, 0, 0, -4));
        p.push(insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM));
        to_pass.push(p.len());
        p.push(insn(JEQ_IMM, R0, 0, 0, 0));
    };
    p.push(insn(MOV64_REG, R6, R1, 0, 0)); // r6 = ctx
                                           // r7 = state[COUNT], or pass if 0
    lookup_state(&mut p, COUNT);
    p.push(insn(LDX_DW, R7, R0, 0, 0));
    let count_is_zero = p.len();
    p.push(insn(JEQ_IMM, R7, 0, 0, 0));
    // r1 = fetch_add(state[NEXT], 1)
    lookup_state(&mut p, NEXT);
    p.push(insn(MOV64_IMM, R1, 0, 0, 1));
    p.push(insn(ATOMIC_DW, R0, R1, 0, FETCH_ADD));
    // key = r1 % r7; sk_select_reuseport(ctx, socks, &key, 0) (its failure means: hash)
    p.push(insn(MOD64_REG, R1, R7, 0, 0));
    p.push(insn(STX_W, FP, R1, -8, 0));
    p.push(insn(MOV64_REG, R1, R6, 0, 0));
    p.extend(load_map(R2, socks));
    p.push(insn(MOV64_REG, R3, FP, 0, 0));
    p.push(insn(ADD64_IMM, R3, 0, 0, -8));
    p.push(insn(MOV64_IMM, R4, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, FN_SK_SELECT_REUSEPORT));
    let pass = p.len();
    p.push(insn(MOV64_IMM, R0, 0, 0, SK_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    for at in to_pass.into_iter().chain([count_is_zero]) {
        p[at].off = (pass - at - 1) as i16;
    }
    p
}

fn sys_bpf<T>(cmd: libc::c_int, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `repr(C)` prefix of `union bpf_attr` for `cmd`, valid for the call,
    // and the pointers in it point at memory valid for the call (a lookup writes its value
    // there); the kernel treats the rest of the union as zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn new_fd(rc: libc::c_long) -> OwnedFd {
    // SAFETY: map and program creation return a new descriptor that nothing else owns (the
    // kernel sets close-on-exec on it).
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn create_map(map_type: u32, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let attr = MapCreate {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        map_flags: 0,
    };
    sys_bpf(BPF_MAP_CREATE, &attr).map(new_fd)
}

/// `cmd` on the entry `key` of `map`, with `value` pointing at the value (or 0 for none).
fn on_elem(cmd: libc::c_int, map: &OwnedFd, key: u32, value: u64) -> io::Result<()> {
    let attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value,
        flags: 0, // BPF_ANY for an update
    };
    sys_bpf(cmd, &attr).map(drop)
}

fn update<V>(map: &OwnedFd, key: u32, value: &V) -> io::Result<()> {
    on_elem(BPF_MAP_UPDATE_ELEM, map, key, value as *const V as u64)
}

/// The 8-byte value at `key` (a socket array gives the socket's cookie), or `None` if empty.
fn lookup(map: &OwnedFd, key: u32) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    match on_elem(BPF_MAP_LOOKUP_ELEM, map, key, &mut value as *mut u64 as u64) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Empties the entry `key`; an empty one is not an error.
fn delete(map: &OwnedFd, key: u32) -> io::Result<()> {
    match on_elem(BPF_MAP_DELETE_ELEM, map, key, 0) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

fn load(code: &[Insn]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"cserverd_steer");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0, // the kernel makes it BPF_SK_REUSEPORT_SELECT
    };
    match sys_bpf(BPF_PROG_LOAD, &attr) {
        Ok(fd) => Ok(new_fd(fd)),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Refused by the verifier: load again with its log, to say why.
            let mut log = vec![0u8; 16 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = sys_bpf(BPF_PROG_LOAD, &attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err(io::Error::new(e.kind(), format!("{e}: {last}")))
        }
        Err(e) => Err(e),
    }
}

fn set_int_option(fd: &OwnedFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a c_int and its size, valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's unique, never reused identity of a socket (`SO_COOKIE`).
fn cookie(fd: &OwnedFd) -> io::Result<u64> {
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: passes a u64 and its size, valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut value as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What an old master hands to its successor in a binary upgrade.
pub struct Handed {
    pub prog: OwnedFd,
    pub state: OwnedFd,
    pub socks: OwnedFd,
    pub capacity: u32,
}

/// The round-robin program attached to a reuseport group, and its maps.
pub struct Steering {
    state: OwnedFd,
    socks: OwnedFd,
    prog: OwnedFd,
    capacity: u32,
}

impl Steering {
    /// Loads the program and attaches it to the group of `member` (any socket of it), for up
    /// to `capacity` sockets. It chooses nothing until [`Steering::set`] names the sockets.
    pub fn attach(member: &OwnedFd, capacity: usize) -> io::Result<Steering> {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        let state = create_map(BPF_MAP_TYPE_ARRAY, 8, 2)?;
        // 8-byte values: a lookup from here returns the socket's cookie.
        let socks = create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, capacity)?;
        let prog = load(&program(&state, &socks))?;
        set_int_option(member, libc::SO_ATTACH_REUSEPORT_EBPF, prog.as_raw_fd())?;
        Ok(Steering {
            state,
            socks,
            prog,
            capacity,
        })
    }

    /// Takes over the program and maps of the master this one replaces (a binary upgrade): the
    /// program stays attached, so connections keep going in turn throughout, and no privilege
    /// is needed.
    pub fn adopt(handed: Handed) -> Steering {
        let Handed {
            prog,
            state,
            socks,
            capacity,
        } = handed;
        Steering {
            state,
            socks,
            prog,
            capacity,
        }
    }

    /// The descriptors and size to hand to a new master (see [`Steering::adopt`]).
    pub fn parts(&self) -> ([&OwnedFd; 3], u32) {
        ([&self.prog, &self.state, &self.socks], self.capacity)
    }

    /// Makes the program choose among `listeners`, in turn. It works from what the maps hold,
    /// not from what this process put there (another master may have changed them during an
    /// upgrade). While it changes, a connection may still reach a socket being removed (which
    /// then refuses it, see [`crate::listener::refuse_new_connections`]) or fall back to the
    /// hash; never nowhere.
    pub fn set(&mut self, listeners: &[&OwnedFd]) -> io::Result<()> {
        let n = (listeners.len() as u32).min(self.capacity);
        let mut held = (0..self.capacity)
            .map(|i| lookup(&self.socks, i))
            .collect::<io::Result<Vec<Option<u64>>>>()?;
        let count = lookup(&self.state, COUNT)?.unwrap_or(0);
        // Shrinking: stop choosing the last entries first; growing: fill them first.
        if u64::from(n) < count {
            update(&self.state, COUNT, &u64::from(n))?;
        }
        for (i, fd) in listeners.iter().take(n as usize).enumerate() {
            let want = cookie(fd)?;
            if held[i] == Some(want) {
                continue;
            }
            // A socket sits in one entry at most: take it out of its old one first.
            if let Some(j) = held.iter().position(|&e| e == Some(want)) {
                delete(&self.socks, j as u32)?;
                held[j] = None;
            }
            update(&self.socks, i as u32, &(fd.as_raw_fd() as u64))?;
            held[i] = Some(want);
        }
        update(&self.state, COUNT, &u64::from(n))?;
        for i in n..self.capacity {
            if held[i as usize].is_some() {
                delete(&self.socks, i)?;
            }
        }
        Ok(())
    }

    /// Attaches the program again to the group of `member` (after another master's program
    /// replaced it: a binary upgrade that gave up).
    pub fn reattach(&self, member: &OwnedFd) -> io::Result<()> {
        set_int_option(
            member,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            self.prog.as_raw_fd(),
        )
    }

    /// Takes the program off the group of `member`: the kernel's hash spreads connections again.
    pub fn detach(member: &OwnedFd) -> io::Result<()> {
        set_int_option(member, SO_DETACH_REUSEPORT_BPF, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener;
    use std::net::TcpStream;

    fn accept_all(fd: &OwnedFd) -> usize {
        let mut n = 0;
        while nix::sys::socket::accept(fd.as_raw_fd()).is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn theprogram_jumps_only_forward_to_its_end() {
        let state = create_map_or_dummy();
        let p = program(&state, &state);
        let exit = p.len() - 1;
        assert_eq!(p[exit].code, EXIT);
        for (i, ins) in p.iter().enumerate() {
            if ins.code == JEQ_IMM {
                assert_eq!(i + 1 + ins.off as usize, exit - 1, "jump at {i}");
            }
        }
    }

    /// A descriptor to stand for a map when only the instructions are looked at.
    fn create_map_or_dummy() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn connections_go_round_robin_and_follow_the_pool() {
        let (addr, fds) = listener::bind_group("127.0.0.1:0".parse().unwrap(), 4, 128).unwrap();
        let mut steering = match Steering::attach(&fds[0], 8) {
            Ok(s) => s,
            Err(e) => {
                // Only a privileged process may load it; cserverd then keeps the hash.
                assert!(
                    !nix::unistd::geteuid().is_root(),
                    "root could not load it: {e}"
                );
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                return;
            }
        };
        let all: Vec<&OwnedFd> = fds.iter().collect();
        steering.set(&all).unwrap();
        let clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = fds.iter().map(accept_all).collect();
        assert_eq!(counts, vec![10; 4]);
        // The pool shrinks to the first three: the fourth gets nothing more.
        steering.set(&all[..3]).unwrap();
        let more: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = fds.iter().map(accept_all).collect();
        assert_eq!(counts, vec![10, 10, 10, 0]);
        // A socket from the middle leaves and the fourth takes its entry.
        steering.set(&[all[0], all[1], all[3]]).unwrap();
        let moved: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = fds.iter().map(accept_all).collect();
        assert_eq!(counts, vec![10, 10, 0, 10]);
        // A new master adopts the maps (a binary upgrade) and reorders: sockets move between
        // entries (each must leave its old entry first), and the turns go on.
        let parts = steering.parts();
        let mut adopted = Steering::adopt(Handed {
            prog: parts.0[0].try_clone().unwrap(),
            state: parts.0[1].try_clone().unwrap(),
            socks: parts.0[2].try_clone().unwrap(),
            capacity: parts.1,
        });
        drop(steering);
        adopted.set(&[all[3], all[2], all[0], all[1]]).unwrap();
        let swapped: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = fds.iter().map(accept_all).collect();
        assert_eq!(counts, vec![10; 4]);
        adopted.set(&[all[1], all[0]]).unwrap();
        let two: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = fds.iter().map(accept_all).collect();
        assert_eq!(counts, vec![10, 10, 0, 0]);
        // Detached: the hash spreads them again, somewhere.
        Steering::detach(&fds[0]).unwrap();
        let last: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let counts: Vec<usize> = fds.iter().map(accept_all).collect();
        assert_eq!(counts.iter().sum::<usize>(), 20);
        drop((clients, more, moved, swapped, two, last));
    }
}
