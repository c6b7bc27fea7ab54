//! What each listening address speaks: `--listen [ADDR:]PORT[=PROTOCOL]`, beside the default
//! listener of `--host`/`--port` (protocol `cserver`). Every listener is served by every worker
//! of the one pool; each has its own reuseport group (see [`crate::listener`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The protocols a listener can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// cserverd's own: a greeting, `USER`, then verbs (`MSG`, `REV`, `JOIN`, ...).
    #[default]
    Cserver,
    /// The chat hub as a plain line stream (`nc`, `telnet`): every line goes to every member.
    Chat,
    /// Every line comes back reversed.
    Reverse,
    /// The process manager's NUL-terminated commands (`run`, `list`, `close`, `add`...).
    Procman,
    /// A remote shell after a secret handshake (`<rembash>`, `<SECRET>`, `<ok>`).
    Rembash,
}

impl Protocol {
    /// Every protocol, in the order the help lists them.
    pub const ALL: [Protocol; 5] = [
        Protocol::Cserver,
        Protocol::Chat,
        Protocol::Reverse,
        Protocol::Procman,
        Protocol::Rembash,
    ];

    /// Its name on the command line, in the log and in the metrics' labels.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Cserver => "cserver",
            Protocol::Chat => "chat",
            Protocol::Reverse => "reverse",
            Protocol::Procman => "procman",
            Protocol::Rembash => "rembash",
        }
    }

    /// Its index in [`Protocol::ALL`] (the scoreboard counts requests per protocol by it).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                format!("unknown protocol {s:?} (one of {})", names.join(", "))
            })
    }
}

/// One listening address and what it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl fmt::Display for Listen {
    /// `ADDR:PORT (PROTOCOL)`, as `listening on` lines and the log show a listener.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.protocol)
    }
}

/// Parses a `--listen` value: `[ADDR:]PORT[=PROTOCOL]`, the address an IP address (IPv6 in
/// brackets) or left out for `host` (`--host`'s address), the protocol `cserver` if left out.
pub fn parse(value: &str, host: IpAddr) -> Result<Listen, String> {
    let bad = |why: &str| format!("--listen {value:?}: {why}");
    let (place, protocol) = match value.rsplit_once('=') {
        Some((place, name)) => (place, name.parse().map_err(|e: String| bad(&e))?),
        None => (value, Protocol::Cserver),
    };
    let port_of = |text: &str| {
        text.parse::<u16>()
            .map_err(|_| bad("the port must be a number from 0 to 65535"))
    };
    let addr = if let Some(rest) = place.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 address in brackets needs its port: [::1]:31337"))?;
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
        SocketAddr::new(IpAddr::V6(ip), port_of(port)?)
    } else if let Some((ip, port)) = place.rsplit_once(':') {
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
            bad(&format!(
                "{ip:?} is not an IPv4 address (IPv6 goes in brackets: [::1]:PORT)"
            ))
        })?;
        SocketAddr::new(IpAddr::V4(ip), port_of(port)?)
    } else {
        SocketAddr::new(host, port_of(place)?)
    };
    Ok(Listen { addr, protocol })
}

/// Refuses two listeners on one address (port 0 picks a new port for each, so those may repeat).
pub fn check_distinct(listens: &[Listen]) -> Result<(), String> {
    for (i, a) in listens.iter().enumerate() {
        if a.addr.port() == 0 {
            continue;
        }
        if let Some(b) = listens[..i].iter().find(|b| b.addr == a.addr) {
            return Err(format!(
                "{} is given twice (as {} and as {}): one listener per address",
                a.addr, b.protocol, a.protocol
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[test]
    fn a_listen_value_names_address_port_and_protocol() {
        let l = parse("9090=reverse", local()).unwrap();
        assert_eq!(l.addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(l.protocol, Protocol::Reverse);
        let l = parse("0.0.0.0:6969=chat", local()).unwrap();
        assert_eq!(l.addr, "0.0.0.0:6969".parse().unwrap());
        assert_eq!(l.protocol, Protocol::Chat);
        let l = parse("[::1]:31337", local()).unwrap();
        assert_eq!(l.addr, "[::1]:31337".parse().unwrap());
        assert_eq!(l.protocol, Protocol::Cserver);
        let l = parse("[::]:0=procman", local()).unwrap();
        assert_eq!(l.addr, "[::]:0".parse().unwrap());
        assert_eq!(l.protocol, Protocol::Procman);
        assert_eq!(
            parse("4070=rembash", local()).unwrap().to_string(),
            "127.0.0.1:4070 (rembash)"
        );
    }

    #[test]
    fn a_bad_listen_value_says_what_is_wrong() {
        for (value, why) in [
            ("9090=gopher", "unknown protocol \"gopher\""),
            ("99999", "the port must be a number"),
            ("localhost:80", "is not an IPv4 address"),
            ("::1:80", "is not an IPv4 address"),
            ("[::1]", "needs its port"),
            ("[nope]:1", "is not an IPv6 address"),
            ("", "the port must be a number"),
            ("=chat", "the port must be a number"),
        ] {
            let err = parse(value, local()).unwrap_err();
            assert!(err.contains(why), "{value:?}: {err}");
            assert!(err.starts_with(&format!("--listen {value:?}")), "{err}");
        }
    }

    #[test]
    fn one_listener_per_address_but_port_0_may_repeat() {
        let l = |v: &str| parse(v, local()).unwrap();
        assert!(check_distinct(&[l("0=chat"), l("0=reverse"), l("9090")]).is_ok());
        let err = check_distinct(&[l("9090=chat"), l("9091"), l("9090=reverse")]).unwrap_err();
        assert!(
            err.contains("127.0.0.1:9090 is given twice (as chat and as reverse)"),
            "{err}"
        );
        // The same port on other addresses is another listener.
        assert!(check_distinct(&[l("127.0.0.1:9090"), l("127.0.0.2:9090")]).is_ok());
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>().unwrap(), p);
            assert_eq!(Protocol::ALL[p.index()], p);
        }
    }
}
