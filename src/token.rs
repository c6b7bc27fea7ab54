//! Typed connection ids, and the epoll tokens that carry them: the one place that knows how a
//! token's 64 bits are laid out (mio's `Token`, here with the connection's generation in it, so
//! an event for a closed connection never reaches the one that reused its slot).

/// A connection of a worker: its index in the connection table and the generation of that
/// slot (bumped for every new connection), so a stale id never matches a newer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    pub idx: usize,
    pub generation: u32,
}

/// Generations are 30 bits: the top two bits of a token say what it is.
pub const GENERATION_MASK: u32 = (1 << 30) - 1;

impl ConnId {
    pub fn new(idx: usize, generation: u32) -> ConnId {
        ConnId {
            idx,
            generation: generation & GENERATION_MASK,
        }
    }
}

/// What an epoll event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// A listening socket: which listener (0 the default one, then each `--listen`).
    Listener(u32),
    /// The worker's signalfd.
    Signals,
    /// The chat hub's eventfd.
    Chat,
    /// The channel on which the master hands sessions over.
    Handoff,
    /// A client connection's socket.
    Conn(ConnId),
    /// The pty of a connection's shell.
    Pty(ConnId),
}

const SIGNALS: u64 = u64::MAX - 1;
const CHAT: u64 = u64::MAX - 2;
const HANDOFF: u64 = u64::MAX - 3;
/// Index in the low 32 bits, generation in the next 30, kind in the top two (0 a socket, 1 its
/// shell's pty, 2 a listener, its number in the low 32 bits; 3 is taken by the fixed tokens
/// above).
const PTY: u64 = 1 << 62;
const LISTENER: u64 = 2 << 62;
const KIND: u64 = 3 << 62;

impl Token {
    /// The number given to epoll.
    pub fn raw(self) -> u64 {
        let conn = |id: ConnId| ((id.generation & GENERATION_MASK) as u64) << 32 | id.idx as u64;
        match self {
            Token::Listener(group) => LISTENER | u64::from(group),
            Token::Signals => SIGNALS,
            Token::Chat => CHAT,
            Token::Handoff => HANDOFF,
            Token::Conn(id) => conn(id),
            Token::Pty(id) => conn(id) | PTY,
        }
    }

    /// The token behind an epoll event's number.
    pub fn from_raw(raw: u64) -> Token {
        match raw {
            SIGNALS => Token::Signals,
            CHAT => Token::Chat,
            HANDOFF => Token::Handoff,
            _ => {
                let id = ConnId::new(raw as u32 as usize, (raw >> 32) as u32);
                match raw & KIND {
                    PTY => Token::Pty(id),
                    LISTENER => Token::Listener(raw as u32),
                    _ => Token::Conn(id),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_comes_back_from_its_number() {
        let ids = [
            ConnId::new(0, 0),
            ConnId::new(7, 1),
            ConnId::new(u32::MAX as usize, GENERATION_MASK),
            ConnId::new(12, 12345),
        ];
        let mut tokens = vec![
            Token::Listener(0),
            Token::Listener(4),
            Token::Signals,
            Token::Chat,
            Token::Handoff,
        ];
        for id in ids {
            tokens.push(Token::Conn(id));
            tokens.push(Token::Pty(id));
        }
        let mut raws = Vec::new();
        for t in tokens {
            assert_eq!(Token::from_raw(t.raw()), t, "{t:?}");
            raws.push(t.raw());
        }
        raws.sort_unstable();
        raws.dedup();
        assert_eq!(raws.len(), 5 + 2 * ids.len(), "distinct numbers");
    }

    #[test]
    fn a_generation_wraps_within_its_bits() {
        let id = ConnId::new(3, GENERATION_MASK + 2);
        assert_eq!(id.generation, 1);
        assert_eq!(Token::from_raw(Token::Pty(id).raw()), Token::Pty(id));
    }
}
