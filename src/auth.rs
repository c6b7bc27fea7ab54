//! Secrets for `PASS` (`--secrets FILE`): who must prove their name, compared in constant time.
//! The file holds `name:secret` lines; like ssh with its keys, the server refuses a file that
//! other users may read. No secret is ever a constant in the code.
//!
//! The comparison is the `subtle` crate's (`ConstantTimeEq`), whose result is hidden from the
//! optimizer, so the compiler cannot turn it back into a loop that stops at the first
//! difference. Its slices of different lengths compare unequal at once, which would tell a
//! guesser the secret's length by timing; so a secret is kept padded with zeros to a fixed
//! [`MAX_SECRET`] bytes with its length beside it, a guess is padded the same way, and a check
//! compares all `MAX_SECRET` bytes and the two lengths, every time: its time depends on neither
//! the secret's length nor its contents (only copying the guess depends on the guess's own
//! length).

use std::collections::HashMap;
use std::io;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::files::{self, Access, Trust};

use crate::protocol::valid_name;

/// The longest secret a `--secrets` file may hold, in bytes; every check compares this many.
pub const MAX_SECRET: usize = 1024;

/// The users that must give `PASS`, with their secrets.
#[derive(Clone, Default)]
pub struct Secrets(HashMap<String, Padded>);

/// A secret or a guess, zero-padded to [`MAX_SECRET`] bytes, with its real length (a guess
/// longer than that keeps its first `MAX_SECRET` bytes and its length, so it matches nothing).
#[derive(Clone)]
struct Padded {
    bytes: Box<[u8; MAX_SECRET]>,
    len: u64,
}

impl Padded {
    fn new(value: &[u8]) -> Padded {
        let mut bytes = Box::new([0u8; MAX_SECRET]);
        let kept = value.len().min(MAX_SECRET);
        bytes[..kept].copy_from_slice(&value[..kept]);
        Padded {
            bytes,
            len: value.len() as u64,
        }
    }

    /// True if both hold the same bytes: all of both blocks and both lengths are compared,
    /// whatever they hold.
    fn matches(&self, other: &Padded) -> bool {
        let same = self.bytes[..].ct_eq(&other.bytes[..]) & self.len.ct_eq(&other.len);
        same.into()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: secrets never reach a log or a panic message.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// Reads a `--secrets` file (`name:secret` a line; blank lines and `#` comments ignored).
    pub fn load(path: &Path) -> Result<Secrets, String> {
        let private = Trust {
            private: true,
            ..Trust::operator()
        };
        let text = files::open(path, Access::Read, &private)
            .and_then(io::read_to_string)
            .map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (name, secret) = line
                .split_once(':')
                .ok_or_else(|| format!("{}:{}: expected name:secret", path.display(), n + 1))?;
            let name = valid_name(name.trim().as_bytes())
                .ok_or_else(|| format!("{}:{}: bad user name", path.display(), n + 1))?;
            if secret.is_empty() {
                return Err(format!("{}:{}: empty secret", path.display(), n + 1));
            }
            if secret.len() > MAX_SECRET {
                return Err(format!(
                    "{}:{}: secret longer than {MAX_SECRET} bytes",
                    path.display(),
                    n + 1
                ));
            }
            map.insert(name.to_string(), Padded::new(secret.as_bytes()));
        }
        Ok(Secrets(map))
    }

    /// True if `user` must give `PASS`.
    pub fn required(&self, user: &str) -> bool {
        self.0.contains_key(user)
    }

    /// True if `given` is `user`'s secret. The time taken does not depend on where the bytes
    /// differ, nor on the secret's length (nor on whether the user has a secret at all): see
    /// the module's notes.
    pub fn check(&self, user: &str, given: &[u8]) -> bool {
        let guess = Padded::new(given);
        match self.0.get(user) {
            Some(secret) => secret.matches(&guess),
            None => {
                // Same work for an unknown user.
                let _ = guess.matches(&guess);
                false
            }
        }
    }
}

/// One secret for everyone: rembash's (`--rembash-secret FILE`), whose clients send it in angle
/// brackets. Read and compared as the `--secrets` ones are: a private file, a fixed-time check.
#[derive(Clone)]
pub struct Secret(Padded);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads the secret: the file's first line that is not blank or a `#` comment, without its
    /// line end. The file must be private (as for `--secrets`).
    pub fn load(path: &Path) -> Result<Secret, String> {
        let private = Trust {
            private: true,
            ..Trust::operator()
        };
        let text = files::open(path, Access::Read, &private)
            .and_then(io::read_to_string)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        let secret = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .ok_or_else(|| format!("{}: no secret in it", path.display()))?;
        if secret.len() > MAX_SECRET {
            return Err(format!(
                "{}: secret longer than {MAX_SECRET} bytes",
                path.display()
            ));
        }
        Ok(Secret(Padded::new(secret.as_bytes())))
    }

    /// True if `given` is the secret, in a time that depends on neither.
    pub fn check(&self, given: &[u8]) -> bool {
        self.0.matches(&Padded::new(given))
    }
}

/// Constant-time equality of two byte strings (`subtle`): the time does not depend on their
/// contents, but the lengths are compared first, in the open, and different lengths answer at
/// once. For a secret whose length must not show, pad both sides first, as [`Secrets::check`]
/// does.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_rembash_secret_is_read_from_a_private_file_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "# the remote shell\n\ncs407rembash\r\nignored\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let secret = Secret::load(&path).unwrap();
        assert!(secret.check(b"cs407rembash"));
        for wrong in [
            &b"cs407rembasH"[..],
            b"cs407rembas",
            b"cs407rembash ",
            b"",
            b"ignored",
        ] {
            assert!(!secret.check(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Secret::load(&path).is_err(), "a file others may read");
        fs::write(&path, "# nothing\n\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Secret::load(&path).unwrap_err().contains("no secret in it"));
        // The longest secret is kept and matched whole; one byte more is refused.
        let longest = "y".repeat(MAX_SECRET);
        fs::write(&path, format!("{longest}\n")).unwrap();
        let secret = Secret::load(&path).unwrap();
        assert!(secret.check(longest.as_bytes()));
        assert!(!secret.check(&longest.as_bytes()[1..]));
        fs::write(&path, format!("{longest}y\n")).unwrap();
        let err = Secret::load(&path).unwrap_err();
        assert!(err.contains("longer than 1024 bytes"), "{err}");
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"s3cret", b"s3cret"));
        assert!(!ct_eq(b"s3cret", b"s3creT"));
        assert!(!ct_eq(b"s3cret", b"s3cre"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn secrets_file_must_be_private_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        fs::write(&path, "# who\nari:s3cret\nbob:pa:ss\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Secrets::load(&path)
            .unwrap_err()
            .contains("readable by others"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let s = Secrets::load(&path).unwrap();
        assert!(s.required("ari") && s.required("bob") && !s.required("eve"));
        assert!(s.check("ari", b"s3cret") && s.check("bob", b"pa:ss"));
        assert!(!s.check("ari", b"wrong") && !s.check("eve", b"s3cret"));
        // Same length, differing in one byte anywhere: the whole secret is compared.
        for wrong in [&b"s3creT"[..], b"x3cret", b"s3Cret", b"s3cre\0", b"pa:ssx"] {
            assert!(
                !s.check("ari", wrong),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!s.check("ari", b"s3cre") && !s.check("ari", b"s3cret!"));
        assert!(!s.check("bob", b"pa:sS") && !s.check("bob", b"s3cret"));
        // Padding is not part of the secret: zero bytes after it, a guess past the block.
        assert!(!s.check("ari", b"s3cret\0") && !s.check("ari", b"s3cret\0\0\0"));
        let long = [&b"s3cret"[..], &[0u8; MAX_SECRET]].concat();
        assert!(!s.check("ari", &long));
        // Debug output names the users and never shows a secret.
        let shown = format!("{s:?}");
        assert!(
            shown.contains("\"ari\"") && shown.contains("\"bob\""),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("pa:ss"),
            "{shown}"
        );
        fs::write(&path, "nocolon\n").unwrap();
        assert!(Secrets::load(&path).is_err());
        // The longest secret is kept and matched; one byte more is refused.
        let longest = "x".repeat(MAX_SECRET);
        fs::write(&path, format!("ari:{longest}\n")).unwrap();
        let s = Secrets::load(&path).unwrap();
        assert!(s.check("ari", longest.as_bytes()));
        assert!(!s.check("ari", format!("{longest}x").as_bytes()));
        assert!(!s.check("ari", &longest.as_bytes()[1..]));
        fs::write(&path, format!("ari:{longest}x\n")).unwrap();
        let err = Secrets::load(&path).unwrap_err();
        assert!(err.contains("longer than 1024 bytes"), "{err}");
    }
}
