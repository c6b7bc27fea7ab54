//! What a `telnet` client sends besides text, read out of a chat member's input: commands
//! start with IAC (255). `telnet` on a port other than 23 negotiates nothing, but it does send
//! commands for special keys: Ctrl-C sends IAC IP (interrupt) and, to learn when the server has
//! acted on it, IAC DO TIMING-MARK, and waits (output flushed) until the server answers. Here
//! IP and EL (erase line) discard the line being typed, DO TIMING-MARK is answered WILL, every
//! other option asked for is refused (WONT/DONT), and the rest is skipped; IAC IAC is a 255 byte
//! (which the chat then drops as not UTF-8).

use crate::framing::LineBuf;

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const EL: u8 = 248;
const IP: u8 = 244;
const TIMING_MARK: u8 = 6;

/// Where the reader is in telnet's command syntax.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Telnet {
    /// Text.
    #[default]
    Data,
    /// After IAC.
    Command,
    /// After IAC and DO, DONT, WILL or WONT: the option comes next.
    Option(u8),
    /// Inside a subnegotiation (IAC SB ... IAC SE).
    Sub,
    /// After IAC inside a subnegotiation.
    SubCommand,
}

/// Reads `data`: text to `input`, answers to commands to `out`.
pub fn feed(state: &mut Telnet, data: &[u8], input: &mut LineBuf, out: &mut Vec<u8>) {
    let mut text = Vec::with_capacity(data.len());
    for &b in data {
        *state = match (*state, b) {
            (Telnet::Data, IAC) => Telnet::Command,
            (Telnet::Data, _) => {
                text.push(b);
                Telnet::Data
            }
            (Telnet::Command, IAC) => {
                text.push(IAC);
                Telnet::Data
            }
            (Telnet::Command, DO | DONT | WILL | WONT) => Telnet::Option(b),
            (Telnet::Command, SB) => Telnet::Sub,
            (Telnet::Command, IP | EL) => {
                input.extend(&text);
                text.clear();
                input.drop_partial();
                Telnet::Data
            }
            (Telnet::Command, _) => Telnet::Data,
            (Telnet::Option(verb), option) => {
                let answer = match verb {
                    DO if option == TIMING_MARK => Some(WILL),
                    DO => Some(WONT),
                    WILL => Some(DONT),
                    _ => None,
                };
                if let Some(answer) = answer {
                    out.extend_from_slice(&[IAC, answer, option]);
                }
                Telnet::Data
            }
            (Telnet::Sub, IAC) => Telnet::SubCommand,
            (Telnet::Sub, _) => Telnet::Sub,
            (Telnet::SubCommand, SE) => Telnet::Data,
            (Telnet::SubCommand, _) => Telnet::Sub,
        };
    }
    input.extend(&text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Frame;

    fn lines(input: &mut LineBuf) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(Frame::Line(l)) = input.next_frame() {
            all.push(l.to_vec());
        }
        all
    }

    #[test]
    fn ctrl_c_discards_the_line_being_typed_and_is_answered() {
        // "first" sent, "abandoned" typed then Ctrl-C (IAC IP IAC DO TM), then "second".
        let bytes = b"first\r\nabandoned\xff\xf4\xff\xfd\x06second\r\n";
        for split in 0..bytes.len() {
            let mut state = Telnet::default();
            let mut input = LineBuf::new(1024);
            let mut out = Vec::new();
            feed(&mut state, &bytes[..split], &mut input, &mut out);
            let mut got = lines(&mut input);
            feed(&mut state, &bytes[split..], &mut input, &mut out);
            got.extend(lines(&mut input));
            assert_eq!(
                got,
                vec![b"first".to_vec(), b"second".to_vec()],
                "split {split}"
            );
            assert_eq!(out, [IAC, WILL, TIMING_MARK], "split {split}");
            assert_eq!(state, Telnet::Data);
        }
    }

    #[test]
    fn options_are_refused_subnegotiations_skipped_and_iac_iac_is_a_byte() {
        let mut state = Telnet::default();
        let mut input = LineBuf::new(1024);
        let mut out = Vec::new();
        let bytes =
            b"\xff\xfd\x18\xff\xfb\x1f\xff\xfe\x01\xff\xfa\x18\x00xterm\xff\xf0a\xff\xffb\n";
        feed(&mut state, bytes, &mut input, &mut out);
        assert_eq!(lines(&mut input), vec![b"a\xffb".to_vec()]);
        assert_eq!(out, [IAC, WONT, 0x18, IAC, DONT, 0x1f]);
    }
}
