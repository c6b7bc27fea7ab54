//! Penalties for wrong `PASS` secrets, per client address, across connections and workers
//! (OpenSSH 9.8's `PerSourcePenalties`).
//!
//! The rule. A `PASS` from an address that is not penalised is *charged* before its secret is
//! compared: the address is penalised at once for as long as a wrong secret would cost it. A
//! wrong secret lets the charge stand; a right one takes it back and forgives one earlier wrong
//! secret ([`Penalties::refund`]). While an address is penalised, its `PASS` lines are refused
//! without being looked at. Because the charge comes first and is one compare-and-swap, at most
//! one secret per address is compared per penalty, however many connections it opens on
//! however many workers. The n-th wrong secret in a row costs 2^(n-1) s ([`BASE`]), at most
//! [`CAP`] (10 minutes, OpenSSH's `max`); an address whose penalty ended [`FORGET`] ago starts
//! from nothing again.
//!
//! Keys ([`Source`]). An IPv4 address is one key, whether it arrives as IPv4 or IPv4-mapped
//! IPv6. An IPv6 address is keyed by its /64: that is the block one host or one LAN is given,
//! and a host may take any address in it, so a per-address key would cost an attacker nothing.
//!
//! The table. The master maps it (shared, anonymous) before it forks, like the chat hub, so
//! every worker, respawned or reloaded, shares it; a binary upgrade's new master starts an empty
//! one. It has a fixed [`ENTRIES`] entries of two atomic words (1 MiB, whose pages the kernel
//! provides only as addresses arrive) and never grows. An address lives in one of
//! [`NEIGHBOURS`] neighbouring entries chosen by a hash with a random key per table (so nobody
//! can aim at another address's neighbourhood); when all of them are taken the stalest one
//! (whose penalty ended longest ago) is given up. Entries are claimed and updated by
//! compare-and-swap only, with no lock: no worker ever waits for another, or for one killed
//! half-way (an entry whose claim was abandoned is taken back after [`ABANDONED_MS`]).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The first wrong secret's penalty; each further one doubles it.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest penalty.
pub const CAP: Duration = Duration::from_secs(600);
/// An address whose penalty ended this long ago is forgotten: its next wrong secret is a first.
pub const FORGET: Duration = CAP;
/// Entries in the table (16 bytes each).
pub const ENTRIES: usize = 65_536;
/// The entries one address may use.
pub const NEIGHBOURS: usize = 16;
/// A claim whose worker did not finish it (killed half-way) is taken back after this long.
pub const ABANDONED_MS: u64 = 1000;

/// Wrong secrets counted at most (the penalty is at its cap long before).
const STRIKES_MAX: u64 = 255;
/// Tries to settle on an entry while other workers change the same ones, before refusing.
const ATTEMPTS: usize = 64;

// Keys in the 64-bit space of IPv6 /64 networks. Every network of ff00::/8 (multicast, never a
// TCP source; a PROXY header may still claim one) is folded into `MULTICAST`, which frees the
// rest of that range for IPv4 addresses, claims in progress and the empty entry.
const TAG: u64 = 0xffff << 48;
const MULTICAST: u64 = 0xff00 << 48;
const V4: u64 = 0xff04 << 48;
/// A claim in progress: this tag, and the monotonic milliseconds (48 bits) it began at.
const CLAIMING: u64 = 0xff0c << 48;
const STAMP: u64 = (1 << 48) - 1;
/// An empty entry. Keys are stored inverted, so the zero-filled mapping starts all empty.
const FREE: u64 = u64::MAX;

/// Who is penalised: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u64);

impl Source {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => Source::v4(a),
                None => {
                    let net = (a.to_bits() >> 64) as u64;
                    Source(if net >> 56 == 0xff { MULTICAST } else { net })
                }
            },
        }
    }

    fn v4(a: Ipv4Addr) -> Source {
        Source(V4 | u64::from(a.to_bits()))
    }

    /// The word an entry holds for this key.
    fn stored(self) -> u64 {
        !self.0
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            k if k & TAG == V4 => write!(f, "{}", Ipv4Addr::from_bits(k as u32)),
            MULTICAST => f.write_str("ff00::/8"),
            k => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(k) << 64)),
        }
    }
}

/// An entry's state in one word, so that it changes in one compare-and-swap: when its penalty
/// ends (40 bits of monotonic milliseconds, 34 years of uptime), wrong secrets counted
/// (8 bits), and which claim of the entry it belongs to (16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    until: u64,
    strikes: u64,
    claim: u64,
}

const UNTIL_BITS: u32 = 40;

impl State {
    fn pack(self) -> u64 {
        (self.until.min((1 << UNTIL_BITS) - 1) << 24)
            | (self.strikes.min(STRIKES_MAX) << 16)
            | (self.claim & 0xffff)
    }

    fn unpack(word: u64) -> State {
        State {
            until: word >> 24,
            strikes: (word >> 16) & 0xff,
            claim: word & 0xffff,
        }
    }
}

#[repr(C)]
struct Entry {
    /// The key, inverted (0: empty), or a claim in progress.
    key: AtomicU64,
    /// [`State`], packed.
    state: AtomicU64,
}

/// A `PASS` let through: its address is penalised already, as if its secret were wrong. Not
/// `Clone`: a charge is refunded at most once.
#[derive(Debug, PartialEq, Eq)]
pub struct Charge {
    entry: usize,
    source: Source,
    claim: u64,
    /// Wrong secrets counted, this one included if it is wrong.
    pub strikes: u64,
    /// The penalty that stands if the secret is wrong.
    pub length: Duration,
}

/// A `PASS` refused unlooked-at: its address is penalised for this much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalised {
    pub remaining: Duration,
}

impl Penalised {
    /// Whole seconds to wait, rounded up (at least 1).
    pub fn retry_secs(self) -> u64 {
        (self.remaining.as_millis() as u64).div_ceil(1000).max(1)
    }
}

/// The penalty for the `strikes`-th wrong secret in a row.
pub fn penalty(strikes: u64) -> Duration {
    let doublings = strikes.saturating_sub(1).min(20) as u32;
    (BASE * 2u32.pow(doublings)).min(CAP)
}

/// Where an address was placed in the table.
enum Place {
    At(usize),
    /// Another worker changed the neighbourhood under us: look again.
    Raced,
    /// Every neighbour is being claimed right now.
    Busy,
}

/// The shared table. Made by the master before forking.
pub struct Penalties {
    entries: NonNull<Entry>,
    len: usize,
    hasher: RandomState,
}

// SAFETY: the mapping is only ever read and written through atomics, from any thread or
// process, and lives as long as the table.
unsafe impl Sync for Penalties {}

impl Penalties {
    /// Maps an empty table of [`ENTRIES`] (shared, anonymous: inherited by every worker forked
    /// afterwards).
    pub fn create() -> io::Result<Penalties> {
        Penalties::with_entries(ENTRIES)
    }

    fn with_entries(len: usize) -> io::Result<Penalties> {
        // Zero-filled is a valid array of `Entry` (all atomics at 0, every entry empty).
        // Unmapped only in Drop.
        let entries = crate::sys::map_shared(len * std::mem::size_of::<Entry>())?.cast::<Entry>();
        Ok(Penalties {
            entries,
            len,
            hasher: RandomState::new(),
        })
    }

    fn entries(&self) -> &[Entry] {
        // SAFETY: `entries` points at a live mapping of `len` entries for the table's lifetime.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr(), self.len) }
    }

    /// The entries `source` may use, in the order they are tried.
    fn neighbourhood(&self, source: Source) -> impl Iterator<Item = usize> {
        let start = self.hasher.hash_one(source.0) as usize % self.len;
        let len = self.len;
        (0..NEIGHBOURS.min(len)).map(move |i| (start + i) % len)
    }

    /// A `PASS` from `source` at `now` (monotonic milliseconds): refused while the address is
    /// penalised; otherwise let through and charged (see the module's rule).
    pub fn charge(&self, source: Source, now: u64) -> Result<Charge, Penalised> {
        for _ in 0..ATTEMPTS {
            let entry = match self.place(source, now) {
                Place::At(i) => i,
                Place::Raced => continue,
                Place::Busy => break,
            };
            let e = &self.entries()[entry];
            let seen = e.state.load(Ordering::Acquire);
            // The state read belongs to this key only if the key is still there after it.
            if e.key.load(Ordering::Acquire) != source.stored() {
                continue;
            }
            let s = State::unpack(seen);
            if now < s.until {
                return Err(Penalised {
                    remaining: Duration::from_millis(s.until - now),
                });
            }
            let forgotten = now >= s.until.saturating_add(FORGET.as_millis() as u64);
            let strikes = if forgotten { 1 } else { s.strikes + 1 }.min(STRIKES_MAX);
            let length = penalty(strikes);
            let charged = State {
                until: now + length.as_millis() as u64,
                strikes,
                claim: s.claim,
            };
            let swapped =
                e.state
                    .compare_exchange(seen, charged.pack(), Ordering::AcqRel, Ordering::Acquire);
            if swapped.is_ok() {
                return Ok(Charge {
                    entry,
                    source,
                    claim: s.claim,
                    strikes,
                    length,
                });
            }
        }
        // Workers racing for the same entries without end (or all of them mid-claim): refuse
        // rather than compare a secret without its charge.
        Err(Penalised { remaining: BASE })
    }

    /// The secret of `charge` was right: take the charge back and forgive one earlier wrong
    /// secret. The address is not penalised from `now` on.
    pub fn refund(&self, charge: Charge, now: u64) {
        let e = &self.entries()[charge.entry];
        for _ in 0..ATTEMPTS {
            let seen = e.state.load(Ordering::Acquire);
            let s = State::unpack(seen);
            // Given up to another address meanwhile: nothing of ours is left to take back.
            if e.key.load(Ordering::Acquire) != charge.source.stored() || s.claim != charge.claim {
                return;
            }
            let refunded = State {
                until: now,
                strikes: s.strikes.saturating_sub(2),
                claim: s.claim,
            };
            let swapped = e.state.compare_exchange(
                seen,
                refunded.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if swapped.is_ok() {
                return;
            }
        }
    }

    /// Finds `source`'s entry, or claims one for it: an empty one, one whose claim was
    /// abandoned, or else the stalest.
    fn place(&self, source: Source, now: u64) -> Place {
        let entries = self.entries();
        let mut victim: Option<(u64, usize, u64)> = None; // (rank, entry, key word seen)
        let mut claims_under_way = false;
        for i in self.neighbourhood(source) {
            let word = entries[i].key.load(Ordering::Acquire);
            if word == source.stored() {
                return Place::At(i);
            }
            let key = !word;
            let rank = if key == FREE {
                0
            } else if key & TAG == CLAIMING {
                if now.saturating_sub(key & STAMP) < ABANDONED_MS {
                    claims_under_way = true;
                    continue;
                }
                1
            } else {
                2 + State::unpack(entries[i].state.load(Ordering::Acquire)).until
            };
            if victim.is_none_or(|(r, _, _)| rank < r) {
                victim = Some((rank, i, word));
            }
        }
        // One of the claims under way may be for this very address: wait for it rather than
        // give the address two entries.
        if claims_under_way {
            return Place::Raced;
        }
        let Some((_, i, word)) = victim else {
            return Place::Busy;
        };
        let e = &entries[i];
        let claiming = !(CLAIMING | (now & STAMP));
        if e.key
            .compare_exchange(word, claiming, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Place::Raced;
        }
        // Ours now: a fresh state under a new claim number, so that nothing held for the old
        // key (a charge to refund, a state read) can match it, then the key.
        let old = State::unpack(e.state.load(Ordering::Acquire));
        let fresh = State {
            until: now,
            strikes: 0,
            claim: (old.claim + 1) & 0xffff,
        };
        e.state.store(fresh.pack(), Ordering::Release);
        e.key.store(source.stored(), Ordering::Release);
        Place::At(i)
    }
}

impl Drop for Penalties {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `with_entries` with this length and is not used
        // after.
        unsafe {
            crate::sys::unmap_shared(self.entries.cast(), self.len * std::mem::size_of::<Entry>())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    const S: u64 = 1000;

    #[test]
    fn ipv4_mapped_is_ipv4_and_ipv6_is_keyed_by_its_64() {
        assert_eq!(ip("192.0.2.7"), ip("::ffff:192.0.2.7"));
        assert_eq!(ip("::ffff:192.0.2.7").to_string(), "192.0.2.7");
        assert_ne!(ip("192.0.2.7"), ip("192.0.2.8"));
        assert_eq!(
            ip("2001:db8:1:2::1"),
            ip("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        // The IPv6 loopback, and the IPv4-compatible form, are not IPv4 addresses.
        assert_eq!(ip("::1").to_string(), "::/64");
        assert_ne!(ip("::1"), ip("0.0.0.1"));
        assert_ne!(ip("::0.0.0.1"), ip("0.0.0.1"));
        assert_ne!(ip("0.0.0.0"), ip("::"));
        // Multicast (never a TCP source) is one key, and no key is empty or a claim.
        assert_eq!(ip("ff02::1"), ip("ffff:ffff::1"));
        assert_eq!(ip("ff02::1").to_string(), "ff00::/8");
        for s in [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "::1",
            "ffff:ffff:ffff:ffff::",
            "ff0c::",
            "fe80::1",
        ] {
            let k = ip(s).0;
            assert!(k != FREE && k & TAG != CLAIMING, "{s}");
            assert_ne!(ip(s).stored(), 0, "{s}");
        }
    }

    #[test]
    fn penalties_double_up_to_the_cap() {
        let lengths: Vec<u64> = (1..=12).map(|n| penalty(n).as_secs()).collect();
        assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(penalty(STRIKES_MAX), CAP);
        assert_eq!(penalty(u64::MAX), CAP);

        let t = Penalties::with_entries(64).unwrap();
        let a = ip("192.0.2.1");
        let mut now = 5 * S;
        for n in 1..=14 {
            let c = t.charge(a, now).unwrap();
            assert_eq!((c.strikes, c.length), (n, penalty(n)));
            now += c.length.as_millis() as u64;
        }
    }

    #[test]
    fn a_penalised_address_is_refused_until_its_penalty_ends() {
        let t = Penalties::with_entries(64).unwrap();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let now = 7 * S;
        let c = t.charge(a, now).unwrap();
        assert_eq!(c.length, BASE);
        // Not looked at while penalised, however often it tries; others are not affected.
        for later in [now, now + 1, now + 999] {
            let p = t.charge(a, later).unwrap_err();
            assert_eq!(p.remaining, Duration::from_millis(now + 1000 - later));
            assert_eq!(p.retry_secs(), 1);
        }
        assert!(t.charge(b, now).is_ok());
        // Then the second wrong secret costs twice as much.
        let c = t.charge(a, now + S).unwrap();
        assert_eq!((c.strikes, c.length), (2, 2 * BASE));
        let p = t.charge(a, now + S + 1).unwrap_err();
        assert_eq!(p.retry_secs(), 2);
        // An address quiet for FORGET after its penalty starts again from one.
        let end = now + 3 * S;
        let forget = FORGET.as_millis() as u64;
        let c = t.charge(a, end + forget - 1).unwrap();
        assert_eq!(c.strikes, 3);
        let end = end + forget - 1 + 4 * S;
        let c = t.charge(a, end + forget).unwrap();
        assert_eq!((c.strikes, c.length), (1, BASE));
    }

    #[test]
    fn a_right_secret_takes_its_charge_back_and_forgives_one_wrong_one() {
        let t = Penalties::with_entries(64).unwrap();
        let a = ip("2001:db8::1");
        let mut now = 3 * S;
        for _ in 0..3 {
            now += t.charge(a, now).unwrap().length.as_millis() as u64;
        }
        // Three wrong; the fourth is right: not penalised any more, and two wrong ones counted.
        let right = t.charge(a, now).unwrap();
        assert_eq!(right.strikes, 4);
        assert!(t.charge(ip("2001:db8::2"), now + 1).is_err(), "same /64");
        t.refund(right, now + 1);
        let c = t.charge(a, now + 2).unwrap();
        assert_eq!((c.strikes, c.length), (3, 4 * BASE));
        // A first wrong secret, then the right one: as if nothing happened.
        let b = ip("192.0.2.9");
        let c = t.charge(b, now).unwrap();
        let right = t.charge(b, now + S).unwrap();
        t.refund(right, now + S);
        assert_eq!(t.charge(b, now + S).unwrap().strikes, 1);
        assert_eq!(c.strikes, 1);
    }

    /// True if the table has an entry for `source`.
    fn holds(t: &Penalties, source: Source) -> bool {
        let word = source.stored();
        t.entries()
            .iter()
            .any(|e| e.key.load(Ordering::Relaxed) == word)
    }

    #[test]
    fn a_full_table_gives_up_its_stalest_entry_and_never_grows() {
        // One neighbourhood: every address competes for the same 16 entries.
        let t = Penalties::with_entries(NEIGHBOURS).unwrap();
        let addr = |i: usize| ip(&format!("10.0.0.{i}"));
        // 16 penalised addresses; address 5's penalty ends first.
        let mut charges = Vec::new();
        for i in 0..NEIGHBOURS {
            let at = if i == 5 { 999 * S } else { 1000 * S + i as u64 };
            charges.push(t.charge(addr(i), at).unwrap());
        }
        let now = 1000 * S - 1;
        // A 17th address takes address 5's entry, though 5 is still penalised.
        let c = t.charge(addr(99), now).unwrap();
        assert_eq!(c.strikes, 1);
        assert!(!holds(&t, addr(5)) && holds(&t, addr(99)));
        for i in (0..NEIGHBOURS).filter(|&i| i != 5) {
            assert!(t.charge(addr(i), now).is_err(), "address {i} forgotten");
        }
        // Refunding address 5's old charge leaves the entry's new owner alone.
        t.refund(charges.swap_remove(5), now);
        assert!(t.charge(addr(99), now).is_err());
        // Address 5 comes back as new, and takes the entry whose penalty ends first now: 99's.
        assert_eq!(t.charge(addr(5), now).unwrap().strikes, 1);
        assert!(holds(&t, addr(5)) && !holds(&t, addr(99)));
        assert_eq!(t.len, NEIGHBOURS);
        let mut keys: Vec<u64> = t
            .entries()
            .iter()
            .map(|e| e.key.load(Ordering::Relaxed))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), NEIGHBOURS, "one entry an address, none empty");
        assert!(!keys.contains(&0));
    }

    #[test]
    fn a_claim_abandoned_half_way_is_taken_back() {
        let t = Penalties::with_entries(NEIGHBOURS).unwrap();
        let now = 50 * S;
        // A worker killed after claiming every entry (impossible, but the worst case).
        for e in t.entries() {
            e.key.store(!(CLAIMING | now), Ordering::Relaxed);
        }
        let a = ip("192.0.2.1");
        assert_eq!(t.charge(a, now + 10), Err(Penalised { remaining: BASE }));
        assert!(t.charge(a, now + ABANDONED_MS).is_ok());
    }

    #[test]
    fn racing_workers_get_one_charge_between_them() {
        let t = Penalties::with_entries(1024).unwrap();
        let a = ip("192.0.2.1");
        let now = 9 * S;
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if t.charge(a, now).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1);
    }
}
