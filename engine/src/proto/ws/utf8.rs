//! Incremental UTF-8 validation, so a text message split across fragments is checked
//! as each fragment arrives (failing fast) without re-scanning what came before.

/// Validation state carried between fragments: the bytes of a code point cut off at
/// the end of the previous fragment.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// The text is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Feed the next chunk. Fails as soon as the bytes so far cannot be the start of
    /// valid UTF-8.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), InvalidUtf8> {
        // Finish a code point left over from the previous chunk first.
        if self.partial_len > 0 {
            let have = self.partial_len as usize;
            let need = utf8_len(self.partial[0]).ok_or(InvalidUtf8)?;
            let take = (need - have).min(chunk.len());
            self.partial[have..have + take].copy_from_slice(&chunk[..take]);
            self.partial_len += take as u8;
            chunk = &chunk[take..];
            let filled = self.partial_len as usize;
            match std::str::from_utf8(&self.partial[..filled]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() && filled < need => return Ok(()),
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None => {
                    // The chunk ends inside a code point whose bytes so far are valid.
                    let tail = &chunk[e.valid_up_to()..];
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// The message ended: valid only if no code point was left unfinished.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let incomplete = self.partial_len > 0;
        self.partial_len = 0;
        if incomplete {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

fn utf8_len(first: u8) -> Option<usize> {
    match first {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split_everywhere(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut v = Utf8Validator::default();
                let ok = v.feed(&bytes[..a]).is_ok()
                    && v.feed(&bytes[a..b]).is_ok()
                    && v.feed(&bytes[b..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, whole, "split {a},{b} of {bytes:x?}");
            }
        }
        whole
    }

    #[test]
    fn agrees_with_std_at_every_split() {
        assert!(check_split_everywhere("κόσμε €𝄞 ok".as_bytes()));
        assert!(!check_split_everywhere(
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"
        ));
        assert!(!check_split_everywhere(b"ab\xf4\x90\x80\x80"));
        assert!(!check_split_everywhere(b"\xf0\x9f\x98"));
        assert!(!check_split_everywhere(b"\xc0\xaf"));
    }

    #[test]
    fn fails_fast_on_an_impossible_prefix() {
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"ok \xed\xa0").is_err());
    }
}
