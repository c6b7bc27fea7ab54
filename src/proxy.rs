//! The PROXY protocol header (HAProxy, versions 1 and 2): what a load balancer in front of the
//! server says about the real client, sent before the client's own bytes.
//!
//! [`parse`] looks at the first bytes of a connection and answers as early as it can: `Incomplete`
//! while those bytes are the start of some valid header, [`ProxyError::NotProxy`] as soon as they
//! cannot start either signature (a client speaking the plain protocol is refused at once),
//! [`ProxyError::Malformed`] as soon as they cannot start a valid header, and the
//! [`Origin`] with the header's length once it is complete. Call it again with the whole buffer
//! after every read; the bytes after the header are the client's and are left alone.
//!
//! Version 1 is one text line, at most 107 bytes with its CRLF:
//! `PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n`. Checked strictly, as the specification
//! says ("any sequence which does not exactly match the protocol must be discarded"):
//!
//! - single spaces between fields, no trailing space, the line ends at the first CRLF (a lone CR
//!   or LF is not an end of line, and is malformed inside a `TCP4`/`TCP6` line);
//! - `TCP4` and `TCP6` are upper case, and the addresses must be of that family: `TCP4` wants a
//!   dotted quad without leading zeros (`010.0.0.1` is refused, it could be read as octal),
//!   `TCP6` an IPv6 address, where the embedded-IPv4 form (`::ffff:192.0.2.1`, which `inet_ntop`
//!   and so HAProxy produce for mapped addresses) is accepted, zone ids and brackets are not;
//! - ports are decimal `0..=65535` without sign and without leading zeros (`0` itself is fine,
//!   `080` is not): the specification forbids them to avoid any confusion with octal;
//! - `UNKNOWN` may be followed by a space and anything up to the CRLF, which is ignored, and
//!   gives [`Origin::Local`];
//! - no CRLF within the first 107 bytes is [`ProxyError::TooLong`].
//!
//! While a line is still arriving every complete field is checked as soon as the space after it
//! arrives, and the field in progress only for its characters and length, so a header that has
//! gone wrong is refused before its CRLF (a valid start is never refused).
//!
//! Version 2 is binary: the 12-byte signature `\r\n\r\n\0\r\nQUIT\n`, a version/command byte (the
//! version must be 2, the command 0 LOCAL or 1 PROXY), a family/transport byte, a big-endian
//! 16-bit length of what follows, then the addresses and optional TLVs, which are skipped
//! unread. For a PROXY command:
//!
//! - TCP over IPv4 (`0x11`, 12 address bytes) and over IPv6 (`0x21`, 36) give
//!   [`Origin::Proxied`];
//! - any other valid family/transport (UNSPEC, UDP, UNIX, and the UNSPEC-transport mixes) gives
//!   [`Origin::Local`], the fall-back the specification asks of receivers that do not support
//!   them; a family above 3 or a transport above 2 is malformed ("must be rejected");
//! - a length shorter than the family's address block (IPv4 12, IPv6 36, UNIX 216) is
//!   malformed.
//!
//! A LOCAL command (the proxy's own health checks) gives [`Origin::Local`] whatever its family
//! byte, which the specification says to ignore, and its length is skipped too. A length above
//! 4096 (a header of more than 16 + 4096 bytes) is [`ProxyError::TooLong`] as soon as the length
//! field arrives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A network, `address/prefix` (`10.0.0.0/8`, `::1/128`; a bare address is one host): the
/// peers `--proxy-from` trusts to send a PROXY header, as nginx's `set_real_ip_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True if `ip` is inside (an IPv4 peer on an IPv6 socket, `::ffff:a.b.c.d`, counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or a network (address/prefix)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The real client and the address it connected to (TCP over IPv4 or IPv6).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v1 `PROXY UNKNOWN` or a v2 LOCAL command (health checks from the proxy itself) or an
    /// unsupported family (UNIX, UDP): use the connection's own addresses.
    Local,
}

/// Why the first bytes of a connection are not an acceptable header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The first bytes are neither signature: the client does not speak the PROXY protocol.
    NotProxy,
    /// A signature followed by something that is not a valid header; the text says what.
    Malformed(&'static str),
    /// A v1 line without CRLF in its first 107 bytes, or a v2 header of more than 16 + 4096 bytes.
    TooLong,
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes needed: what arrived so far is the start of a valid header.
    Incomplete,
    /// The header and its length in bytes (the rest of the buffer is client data).
    Done(Origin, usize),
}

/// The v1 signature.
const V1_SIG: &[u8] = b"PROXY";
/// Longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and length.
const V2_FIXED: usize = 16;
/// Largest v2 length field accepted (addresses and TLVs).
const V2_MAX_BODY: usize = 4096;

/// Parses a header at the start of `buf` (the first bytes a connection sent, possibly partial).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.starts_with(V1_SIG) {
        v1(buf)
    } else if buf.starts_with(V2_SIG) {
        v2(buf)
    } else if V1_SIG.starts_with(buf) || V2_SIG.starts_with(buf) {
        Ok(Parsed::Incomplete)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// A v1 header; `buf` starts with "PROXY".
fn v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    if let Some(end) = window.windows(2).position(|w| w == b"\r\n") {
        return match v1_fields(&window[V1_SIG.len()..end], true)? {
            Some(origin) => Ok(Parsed::Done(origin, end + 2)),
            None => Err(ProxyError::Malformed("v1: incomplete line")),
        };
    }
    let line = &window[V1_SIG.len()..];
    match line.split_last() {
        // The CR may be the start of the CRLF: what precedes it must then be a whole line.
        Some((b'\r', whole)) => v1_fields(whole, true)?,
        _ => v1_fields(line, false)?,
    };
    if buf.len() >= V1_MAX {
        Err(ProxyError::TooLong)
    } else {
        Ok(Parsed::Incomplete)
    }
}

/// Checks the part of a v1 line after "PROXY", without its CRLF. With `complete` false, `rest` is
/// what has arrived so far and only has to be the start of a valid line. Returns the origin of a
/// complete line, `None` for a valid start.
fn v1_fields(rest: &[u8], complete: bool) -> Result<Option<Origin>, ProxyError> {
    let body = match rest.split_first() {
        Some((b' ', body)) => body,
        None if !complete => return Ok(None),
        _ => return Err(ProxyError::Malformed("v1: expected one space after PROXY")),
    };
    if let Some(after) = body.strip_prefix(b"UNKNOWN") {
        if after.first().is_none_or(|&b| b == b' ') {
            return Ok(complete.then_some(Origin::Local));
        }
    }
    let mut fields = body.split(|&b| b == b' ').peekable();
    let mut v6 = false;
    let (mut src, mut dst, mut sport, mut dport) = (None, None, None, None);
    let mut count = 0;
    while let Some(field) = fields.next() {
        let partial = !complete && fields.peek().is_none();
        match count {
            0 => v6 = protocol(field, partial)?,
            1 => src = address(field, v6, partial, "v1: bad source address")?,
            2 => dst = address(field, v6, partial, "v1: bad destination address")?,
            3 => sport = port(field, partial, "v1: bad source port")?,
            4 => dport = port(field, partial, "v1: bad destination port")?,
            _ => return Err(ProxyError::Malformed("v1: too many fields")),
        }
        count += 1;
    }
    if complete && count < 5 {
        return Err(ProxyError::Malformed("v1: missing fields"));
    }
    let (Some(src), Some(dst), Some(sport), Some(dport)) = (src, dst, sport, dport) else {
        return Ok(None);
    };
    Ok(Some(Origin::Proxied {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    }))
}

/// The protocol field: true for TCP6. A `partial` field need only start one of the names.
fn protocol(field: &[u8], partial: bool) -> Result<bool, ProxyError> {
    const NAMES: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    match field {
        _ if partial && NAMES.iter().any(|name| name.starts_with(field)) => Ok(false),
        b"TCP4" if !partial => Ok(false),
        b"TCP6" if !partial => Ok(true),
        _ => Err(ProxyError::Malformed("v1: unknown protocol")),
    }
}

/// An address field of the family; a `partial` one is only checked for characters and length
/// (`None`).
fn address(
    field: &[u8],
    v6: bool,
    partial: bool,
    what: &'static str,
) -> Result<Option<IpAddr>, ProxyError> {
    let bad = ProxyError::Malformed(what);
    if partial {
        // The longest forms: "255.255.255.255" and "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
        let (max, allowed): (usize, fn(&u8) -> bool) = if v6 {
            (45, |b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        } else {
            (15, |b| b.is_ascii_digit() || *b == b'.')
        };
        return if field.len() <= max && field.iter().all(allowed) {
            Ok(None)
        } else {
            Err(bad)
        };
    }
    let text = std::str::from_utf8(field).map_err(|_| bad.clone())?;
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map(Some).map_err(|_| bad)
}

/// A port field: decimal, no sign, no leading zero, at most 65535; a `partial` one may be empty
/// (`None`).
fn port(field: &[u8], partial: bool, what: &'static str) -> Result<Option<u16>, ProxyError> {
    let bad = ProxyError::Malformed(what);
    let digits = field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits || (field.len() > 1 && field[0] == b'0') || (field.is_empty() && !partial) {
        return Err(bad);
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    let value = u16::try_from(value).map_err(|_| bad)?;
    Ok((!partial).then_some(value))
}

/// A v2 header; `buf` starts with the signature.
fn v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2: unsupported version"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("v2: unknown command")),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // A LOCAL command's family is ignored; for PROXY it says how long the addresses are.
    let addr_len = if local {
        0
    } else {
        if fam & 0x0f > 2 {
            return Err(ProxyError::Malformed("v2: unknown transport protocol"));
        }
        match fam >> 4 {
            0 => 0,
            1 => 12,
            2 => 36,
            3 => 216,
            _ => return Err(ProxyError::Malformed("v2: unknown address family")),
        }
    };
    let Some(&[hi, lo]) = buf.get(14..V2_FIXED) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_BODY {
        return Err(ProxyError::TooLong);
    }
    if len < addr_len {
        return Err(ProxyError::Malformed(
            "v2: length shorter than the address block",
        ));
    }
    let total = V2_FIXED + len;
    let Some(block) = buf.get(V2_FIXED..total) else {
        return Ok(Parsed::Incomplete);
    };
    let origin = match (local, fam) {
        (false, 0x11) => Origin::Proxied {
            source: SocketAddr::new(IpAddr::from(octets::<4>(block, 0)), be16(block, 8)),
            destination: SocketAddr::new(IpAddr::from(octets::<4>(block, 4)), be16(block, 10)),
        },
        (false, 0x21) => Origin::Proxied {
            source: SocketAddr::new(IpAddr::from(octets::<16>(block, 0)), be16(block, 32)),
            destination: SocketAddr::new(IpAddr::from(octets::<16>(block, 16)), be16(block, 34)),
        },
        _ => Origin::Local,
    };
    Ok(Parsed::Done(origin, total))
}

/// `N` bytes of `block` from `at` (in bounds: the length was checked against the family).
fn octets<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&block[at..at + N]);
    out
}

/// The big-endian 16-bit number at `at`.
fn be16(block: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([block[at], block[at + 1]])
}

#[cfg(test)]
mod tests {
    #[test]
    fn networks_contain_their_addresses_only() {
        let net: super::Cidr = "10.1.0.0/16".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.255.255")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        let host: super::Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let all: super::Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let v6: super::Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        let none: super::Cidr = "::/0".parse().unwrap();
        assert!(none.contains(ip("::1")) && !none.contains(ip("127.0.0.1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "example.com",
            "1.2.3/8",
        ] {
            assert!(bad.parse::<super::Cidr>().is_err(), "{bad}");
        }
        assert_eq!(net.to_string(), "10.1.0.0/16");
    }

    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn proxied(source: &str, destination: &str) -> Origin {
        Origin::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn malformed(buf: &[u8]) -> bool {
        matches!(parse(buf), Err(ProxyError::Malformed(_)))
    }

    /// A v2 header: signature, version 2 with `cmd`, `fam`, the length of `body`, `body`.
    fn v2_header(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIG.to_vec();
        out.extend_from_slice(&[0x20 | cmd, fam]);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// `header` followed by `rest` parses to `origin`, leaves `rest`, and every strict prefix of
    /// the header is `Incomplete`.
    fn check(header: &[u8], origin: Origin) {
        let rest = b"USER arijort\r\nMSG hi\r\n";
        let mut buf = header.to_vec();
        buf.extend_from_slice(rest);
        let Ok(Parsed::Done(got, n)) = parse(&buf) else {
            panic!(
                "{:?} for {:?}",
                parse(&buf),
                String::from_utf8_lossy(header)
            );
        };
        assert_eq!(got, origin);
        assert_eq!(n, header.len());
        assert_eq!(&buf[n..], rest);
        assert_eq!(parse(header), Ok(Parsed::Done(origin, header.len())));
        for cut in 0..header.len() {
            assert_eq!(
                parse(&header[..cut]),
                Ok(Parsed::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        check(
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            proxied("192.168.0.1:56324", "192.168.0.11:443"),
        );
        check(
            b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
            proxied("255.255.255.255:65535", "0.0.0.0:0"),
        );
        check(
            b"PROXY TCP6 2001:db8::1 2001:db8::2 51234 8080\r\n",
            proxied("[2001:db8::1]:51234", "[2001:db8::2]:8080"),
        );
        check(
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
            proxied("[::ffff:192.0.2.1]:1", "[::1]:2"),
        );
        // The longest TCP6 line (104 bytes), upper-case hex.
        let line = format!("PROXY TCP6 {0} {0} 65535 65535\r\n", ["FFFF"; 8].join(":"));
        assert_eq!(line.len(), 104);
        let all = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        check(line.as_bytes(), proxied(all, all));
        check(b"PROXY UNKNOWN\r\n", Origin::Local);
        check(
            b"PROXY UNKNOWN 10.0.0.1 10.0.0.2 1234 80\r\n",
            Origin::Local,
        );
        check(b"PROXY UNKNOWN anything\x00\r\xff goes\r\n", Origin::Local);
    }

    #[test]
    fn v1_length_limit() {
        // The specification's worst case: exactly 107 bytes.
        let worst = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            ["ffff"; 8].join(":")
        );
        assert_eq!(worst.len(), V1_MAX);
        check(worst.as_bytes(), Origin::Local);
        // One more byte before the CRLF: too long, once the 107th byte is there.
        let over = worst.replacen("UNKNOWN ", "UNKNOWN  ", 1);
        assert_eq!(parse(over.as_bytes()), Err(ProxyError::TooLong));
        assert_eq!(parse(&over.as_bytes()[..106]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&over.as_bytes()[..107]), Err(ProxyError::TooLong));
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 500]].concat();
        assert_eq!(parse(&endless), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_bad_ports() {
        for port in [
            "65536", "99999", "123456", "080", "00", "+80", "-1", "8a", "0x50", "",
        ] {
            let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 {port} 80\r\n");
            assert!(malformed(line.as_bytes()), "source port {port:?}");
            let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 80 {port}\r\n");
            assert!(malformed(line.as_bytes()), "destination port {port:?}");
        }
    }

    #[test]
    fn v1_bad_addresses_and_layout() {
        for line in [
            "PROXY TCP4 ::1 ::2 1 2\r\n",
            "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 256.0.0.1 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n",
            "PROXY TCP6 [::1] ::2 1 2\r\n",
            "PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n",
            "PROXY TCP6 1::2::3 ::2 1 2\r\n",
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "PROXY TCP4\r\n",
            "PROXY \r\n",
            "PROXY\r\n",
            "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        ] {
            assert!(malformed(line.as_bytes()), "{line:?}");
        }
        // A lone LF (no CRLF anywhere) is not an end of line.
        assert!(malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nUSER a\n"));
    }

    #[test]
    fn v1_refused_before_its_crlf() {
        for start in [
            "PROXY TCP5",
            "PROXY TCP4 1.2.3.4  ",
            "PROXY TCP4 1.2.3.4 5.6.7.8 99999",
            "PROXY TCP4 1.2.3.4 5.6.7.8 08",
            "PROXY TCP4 1.2.3.4 ::1 ",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r",
            "PROXY TCP6 2001:db8::g",
            "PROXY TCP4 1234567890123456",
            "PROXY TCP4 1.2.3.4\n",
            "PROXYX",
        ] {
            assert!(malformed(start.as_bytes()), "{start:?}");
        }
        // Still a valid start.
        for start in [
            "PROXY TCP4 1.2.3.4 5.6.7.8 65535 0\r",
            "PROXY TCP6 ::ffff:1.2.",
            "PROXY UNKNOWN whatever \r",
            "PROXY UNKN",
        ] {
            assert_eq!(parse(start.as_bytes()), Ok(Parsed::Incomplete), "{start:?}");
        }
    }

    #[test]
    fn v2_proxy_ipv4_as_haproxy_sends_it() {
        // HAProxy's header for 172.19.0.1:42578 -> 172.19.0.3:80, then "GET ".
        let header = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x0c, 0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
        ];
        check(&header, proxied("172.19.0.1:42578", "172.19.0.3:80"));
    }

    #[test]
    fn v2_proxy_with_tlvs() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 7, 0x30, 0x39, 0x01, 0xbb];
        // ALPN "h2", AUTHORITY "example.com", NOOP of 3 bytes.
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x02, 0x00, 0x0b]);
        body.extend_from_slice(b"example.com");
        body.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        check(
            &v2_header(1, 0x11, &body),
            proxied("192.0.2.1:12345", "198.51.100.7:443"),
        );

        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:0:1::ff".parse().unwrap();
        let mut body = [src.octets(), dst.octets()].concat();
        body.extend_from_slice(&[0xc3, 0x50, 0x00, 0x16]);
        check(
            &v2_header(1, 0x21, &body),
            proxied("[2001:db8::1]:50000", "[2001:db8:0:1::ff]:22"),
        );
        body.extend_from_slice(&[0x01, 0x00, 0x08]);
        body.extend_from_slice(b"http/1.1");
        check(
            &v2_header(1, 0x21, &body),
            proxied("[2001:db8::1]:50000", "[2001:db8:0:1::ff]:22"),
        );
    }

    #[test]
    fn v2_local_and_unsupported_families() {
        check(&v2_header(0, 0x00, &[]), Origin::Local);
        // LOCAL skips whatever it carries and ignores its family, even an invalid one.
        check(&v2_header(0, 0x11, &[1; 12]), Origin::Local);
        check(&v2_header(0, 0xff, &[7; 3]), Origin::Local);
        // UNSPEC, UDP over IPv4/IPv6, UNIX stream/datagram: the connection's own addresses.
        check(&v2_header(1, 0x00, &[]), Origin::Local);
        check(&v2_header(1, 0x00, &[9; 40]), Origin::Local);
        check(&v2_header(1, 0x12, &[1; 12]), Origin::Local);
        check(&v2_header(1, 0x22, &[1; 36]), Origin::Local);
        check(&v2_header(1, 0x31, &[b'/'; 216]), Origin::Local);
        check(&v2_header(1, 0x32, &[b'/'; 220]), Origin::Local);
    }

    #[test]
    fn v2_malformed() {
        let v4 = [1u8; 12];
        let mut bad_version = v2_header(1, 0x11, &v4);
        bad_version[12] = 0x11;
        assert!(malformed(&bad_version));
        assert!(malformed(&bad_version[..13]), "refused at the version byte");
        assert!(malformed(&v2_header(2, 0x11, &v4)[..13]), "command 2");
        assert!(malformed(&v2_header(0xf, 0x11, &v4)), "command 15");
        assert!(malformed(&v2_header(1, 0x41, &v4)[..14]), "family 4");
        assert!(malformed(&v2_header(1, 0x13, &v4)[..14]), "transport 3");
        assert!(malformed(&v2_header(1, 0x11, &[1; 11])[..16]), "short IPv4");
        assert!(malformed(&v2_header(1, 0x11, &[])), "no IPv4 addresses");
        assert!(malformed(&v2_header(1, 0x21, &[1; 35])), "short IPv6");
        assert!(malformed(&v2_header(1, 0x31, &[1; 215])), "short UNIX");
        assert!(malformed(&v2_header(1, 0x12, &[1; 4])), "short UDP");
    }

    #[test]
    fn v2_length_limit() {
        let big = v2_header(1, 0x11, &[0; V2_MAX_BODY]);
        check(&big, proxied("0.0.0.0:0", "0.0.0.0:0"));
        let too_big = v2_header(1, 0x11, &[0; V2_MAX_BODY + 1]);
        assert_eq!(parse(&too_big[..16]), Err(ProxyError::TooLong));
        assert_eq!(parse(&too_big), Err(ProxyError::TooLong));
        let mut max = v2_header(0, 0x00, &[]);
        max[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&max), Err(ProxyError::TooLong));
    }

    #[test]
    fn not_proxy_as_soon_as_it_shows() {
        for buf in [
            b"USER arijort\r\n".as_slice(),
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"X",
            b"PROXZ",
            b"proxy TCP4",
            b"PING\r\n",
            b"\r\n\r\nQUIT\n",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"\n",
            b" PROXY",
        ] {
            assert_eq!(parse(buf), Err(ProxyError::NotProxy), "{buf:?}");
        }
        for buf in [
            b"".as_slice(),
            b"P",
            b"PROX",
            b"\r",
            b"\r\n",
            b"\r\n\r\n\0",
            V2_SIG,
        ] {
            assert_eq!(parse(buf), Ok(Parsed::Incomplete), "{buf:?}");
        }
    }

    /// A valid header to generate.
    #[derive(Debug, Clone)]
    enum Header {
        /// `PROXY TCP4`/`TCP6` (by the addresses' family); `long_form` writes IPv6 as eight
        /// upper-case groups instead of the compressed form.
        V1Tcp {
            source: SocketAddr,
            destination: SocketAddr,
            long_form: bool,
        },
        /// `PROXY UNKNOWN`, optionally a space and arbitrary bytes without LF.
        V1Unknown(Option<Vec<u8>>),
        /// v2 PROXY over TCP, with raw TLV bytes after the addresses.
        V2Tcp {
            source: SocketAddr,
            destination: SocketAddr,
            tlvs: Vec<u8>,
        },
        /// v2 LOCAL with any family byte and body.
        V2Local { fam: u8, body: Vec<u8> },
        /// v2 PROXY of a family given `Local`: address bytes of its size and extra bytes.
        V2Other { fam: u8, body: Vec<u8> },
    }

    impl Header {
        fn encode(&self) -> (Vec<u8>, Origin) {
            match self {
                Header::V1Tcp {
                    source,
                    destination,
                    long_form,
                } => {
                    let ip = |addr: &SocketAddr| match addr.ip() {
                        IpAddr::V6(ip) if *long_form => ip
                            .segments()
                            .iter()
                            .map(|s| format!("{s:X}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                        ip => ip.to_string(),
                    };
                    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
                    let line = format!(
                        "PROXY {proto} {} {} {} {}\r\n",
                        ip(source),
                        ip(destination),
                        source.port(),
                        destination.port()
                    );
                    (line.into_bytes(), proxied_origin(*source, *destination))
                }
                Header::V1Unknown(tail) => {
                    let mut line = b"PROXY UNKNOWN".to_vec();
                    if let Some(tail) = tail {
                        line.push(b' ');
                        line.extend_from_slice(tail);
                    }
                    line.extend_from_slice(b"\r\n");
                    (line, Origin::Local)
                }
                Header::V2Tcp {
                    source,
                    destination,
                    tlvs,
                } => {
                    let (fam, mut body) = match (source.ip(), destination.ip()) {
                        (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, [s.octets(), d.octets()].concat()),
                        (IpAddr::V6(s), IpAddr::V6(d)) => (0x21, [s.octets(), d.octets()].concat()),
                        _ => unreachable!("mixed families are not generated"),
                    };
                    body.extend_from_slice(&source.port().to_be_bytes());
                    body.extend_from_slice(&destination.port().to_be_bytes());
                    body.extend_from_slice(tlvs);
                    (
                        v2_header(1, fam, &body),
                        proxied_origin(*source, *destination),
                    )
                }
                Header::V2Local { fam, body } => (v2_header(0, *fam, body), Origin::Local),
                Header::V2Other { fam, body } => (v2_header(1, *fam, body), Origin::Local),
            }
        }
    }

    fn proxied_origin(source: SocketAddr, destination: SocketAddr) -> Origin {
        Origin::Proxied {
            source,
            destination,
        }
    }

    /// IPv6 addresses, many with runs of zero groups (compressed as `::`) or IPv4-mapped.
    fn ipv6() -> BoxedStrategy<Ipv6Addr> {
        prop_oneof![
            any::<Ipv6Addr>(),
            prop::array::uniform8(prop_oneof![3 => Just(0u16), 1 => any::<u16>()])
                .prop_map(Ipv6Addr::from),
            any::<Ipv4Addr>().prop_map(|ip| ip.to_ipv6_mapped()),
        ]
        .boxed()
    }

    /// A source and destination of the same family.
    fn address_pair() -> BoxedStrategy<(SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<Ipv4Addr>(),
                any::<u16>(),
                any::<Ipv4Addr>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddrV4::new(s, sp).into(),
                    SocketAddrV4::new(d, dp).into()
                )),
            (ipv6(), any::<u16>(), ipv6(), any::<u16>()).prop_map(|(s, sp, d, dp)| (
                SocketAddrV6::new(s, sp, 0, 0).into(),
                SocketAddrV6::new(d, dp, 0, 0).into()
            )),
        ]
        .boxed()
    }

    /// Type-length-value records with random types and values.
    fn tlvs() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..24)),
            0..4,
        )
        .prop_map(|records| {
            let mut out = Vec::new();
            for (kind, value) in records {
                out.push(kind);
                out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
                out.extend_from_slice(&value);
            }
            out
        })
    }

    fn header() -> BoxedStrategy<Header> {
        // Families a PROXY command may carry that do not give addresses, with their block size.
        const OTHER: [(u8, usize); 10] = [
            (0x00, 0),
            (0x01, 0),
            (0x02, 0),
            (0x10, 12),
            (0x12, 12),
            (0x20, 36),
            (0x22, 36),
            (0x30, 216),
            (0x31, 216),
            (0x32, 216),
        ];
        let no_lf = any::<u8>().prop_map(|b| if b == b'\n' { b' ' } else { b });
        prop_oneof![
            (address_pair(), any::<bool>()).prop_map(|((source, destination), long_form)| {
                Header::V1Tcp {
                    source,
                    destination,
                    long_form,
                }
            }),
            // "PROXY UNKNOWN " is 14 bytes, the CRLF 2: up to 91 more fit in 107.
            prop::option::of(prop::collection::vec(no_lf, 0..=91)).prop_map(Header::V1Unknown),
            (address_pair(), tlvs()).prop_map(|((source, destination), tlvs)| Header::V2Tcp {
                source,
                destination,
                tlvs,
            }),
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..48))
                .prop_map(|(fam, body)| Header::V2Local { fam, body }),
            (
                prop::sample::select(OTHER.to_vec()),
                prop::collection::vec(any::<u8>(), 216 + 32),
                0..32usize
            )
                .prop_map(|((fam, size), mut body, extra)| {
                    body.truncate(size + extra);
                    Header::V2Other { fam, body }
                }),
        ]
        .boxed()
    }

    /// Arbitrary bytes, often after the start of a header so that the deeper paths are reached.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        const STARTS: [&[u8]; 9] = [
            b"",
            b"PROXY ",
            b"PROXY TCP4 ",
            b"PROXY TCP6 ",
            b"PROXY UNKNOWN",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 ",
            V2_SIG,
            b"\r\n\r\n\0\r\nQUIT\n\x21",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
        ];
        let bytes = prop::collection::vec(any::<u8>(), 0..160);
        prop_oneof![
            bytes.clone(),
            (prop::sample::select(STARTS.to_vec()), bytes).prop_map(|(start, rest)| [
                start,
                rest.as_slice()
            ]
            .concat()),
            (header(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(h, at, x)| {
                let (mut buf, _) = h.encode();
                let i = at.index(buf.len());
                buf[i] ^= x;
                buf
            }),
        ]
    }

    proptest! {
        #[test]
        fn valid_header_then_client_bytes(
            h in header(),
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let (header, origin) = h.encode();
            let mut buf = header.clone();
            buf.extend_from_slice(&rest);
            prop_assert_eq!(parse(&buf), Ok(Parsed::Done(origin, header.len())));
        }

        #[test]
        fn every_prefix_is_incomplete(h in header()) {
            let (header, _) = h.encode();
            for cut in 0..header.len() {
                prop_assert_eq!(parse(&header[..cut]), Ok(Parsed::Incomplete), "cut at {}", cut);
            }
        }

        #[test]
        fn never_panics_and_stays_in_bounds(buf in noise()) {
            if let Ok(Parsed::Done(origin, n)) = parse(&buf) {
                prop_assert!(n <= buf.len());
                // The header alone says the same: nothing after it was looked at.
                prop_assert_eq!(parse(&buf[..n]), Ok(Parsed::Done(origin, n)));
            }
        }
    }
}
