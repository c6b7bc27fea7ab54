//! Secrets for `PASS` (`--secrets FILE`): who must prove their name, compared in constant time.
//! The file holds `name:secret` lines; like ssh with its keys, the server refuses a file that
//! other users may read. No secret is ever a constant in the code.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::files::{self, Access, Trust};

use crate::protocol::valid_name;

/// The users that must give `PASS`, with their secrets.
#[derive(Clone, Default)]
pub struct Secrets(HashMap<String, Vec<u8>>);

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
            map.insert(name.to_string(), secret.as_bytes().to_vec());
        }
        Ok(Secrets(map))
    }

    /// True if `user` must give `PASS`.
    pub fn required(&self, user: &str) -> bool {
        self.0.contains_key(user)
    }

    /// True if `given` is `user`'s secret. The time taken does not depend on where the bytes
    /// differ (nor on whether the user has a secret at all).
    pub fn check(&self, user: &str, given: &[u8]) -> bool {
        match self.0.get(user) {
            Some(secret) => ct_eq(secret, given),
            None => {
                // Same work for an unknown user.
                let _ = ct_eq(given, given);
                false
            }
        }
    }
}

/// Constant-time equality: every byte of the longer input is looked at.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as u64;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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
    }
}
