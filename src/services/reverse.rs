//! `REV <text>`: the text reversed by characters. UTF-8 safe: a multi-byte character stays
//! whole; a byte that is not UTF-8 is kept as one unit of its own.

/// Appends `text` reversed to `out`.
pub fn reverse_into(out: &mut Vec<u8>, text: &[u8]) {
    // Units: each character's bytes, or one invalid byte.
    let mut units: Vec<&[u8]> = Vec::with_capacity(text.len());
    for chunk in text.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, _) in valid.char_indices().skip(1) {
            units.push(&valid.as_bytes()[start..i]);
            start = i;
        }
        if start < valid.len() {
            units.push(&valid.as_bytes()[start..]);
        }
        for b in chunk.invalid().chunks(1) {
            units.push(b);
        }
    }
    for u in units.iter().rev() {
        out.extend_from_slice(u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(t: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        reverse_into(&mut out, t);
        out
    }

    #[test]
    fn reverses_by_characters() {
        assert_eq!(rev(b"abc"), b"cba");
        assert_eq!(rev("héllo wörld ✓".as_bytes()), "✓ dlröw olléh".as_bytes());
        assert_eq!(rev("日本語".as_bytes()), "語本日".as_bytes());
        assert_eq!(rev(b"a\xffb"), b"b\xffa");
        assert_eq!(rev(b""), b"");
        let s = "x😀y".as_bytes();
        assert_eq!(rev(&rev(s)), s);
    }
}
