//! A minimal, strict DER reader and writer for the CMS envelope and its signed attributes (certificates are read
//! with `x509-parser`, in `x509.rs`; `create.rs` writes CMS with the writer here).
//!
//! Why our own: the signature over the signed attributes must be checked against the exact bytes the signer
//! produced (re-encoding a parsed structure could silently "fix" them), and every error has to name the offset
//! where the input went wrong. The reader only accepts definite lengths and single-byte tags, which is all that
//! CMS and certificates made by OpenSSL, RAUC or an HSM use; anything else is refused, never guessed at.

use super::BundleError;

/// Universal and context tags used by CMS.
pub(crate) mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const CTX0: u8 = 0xa0;
    pub const CTX1: u8 = 0xa1;
    /// `[0] IMPLICIT` on a primitive (SubjectKeyIdentifier in a SignerIdentifier).
    pub const CTX0_PRIM: u8 = 0x80;
}

/// One element: its tag, its value, and the whole encoding (tag and length included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
    /// Offset of the tag byte from the start of the outermost buffer, for error messages.
    pub offset: usize,
}

/// A cursor over a run of DER elements.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
    part: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], part: &'static str) -> Self {
        Reader { data, pos: 0, base: 0, part }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn err(&self, offset: usize, reason: impl Into<String>) -> BundleError {
        BundleError::Der { part: self.part, offset, reason: reason.into() }
    }

    /// Absolute offset of the next element.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    /// Reads the next element, whatever its tag.
    pub fn any(&mut self) -> Result<Tlv<'a>, BundleError> {
        let start = self.pos;
        let at = self.base + start;
        let tag = *self.data.get(start).ok_or_else(|| self.err(at, "unexpected end of data, expected an element"))?;
        if tag & 0x1f == 0x1f {
            return Err(self.err(at, format!("multi-byte tag 0x{tag:02x} is not supported")));
        }
        let first = *self.data.get(start + 1).ok_or_else(|| self.err(at, "truncated length"))?;
        let mut p = start + 2;
        let len = if first < 0x80 {
            first as usize
        } else if first == 0x80 {
            return Err(self.err(at, "indefinite length (BER) is not DER"));
        } else {
            let n = (first & 0x7f) as usize;
            if n > 4 {
                return Err(self.err(at, format!("length of {n} bytes is absurd")));
            }
            let bytes = self.data.get(p..p + n).ok_or_else(|| self.err(at, "truncated length"))?;
            p += n;
            if bytes[0] == 0 {
                return Err(self.err(at, "length with a leading zero byte is not DER"));
            }
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            if len < 0x80 {
                return Err(self.err(at, "long-form length for a short value is not DER"));
            }
            len
        };
        let end = p.checked_add(len).ok_or_else(|| self.err(at, "length overflows"))?;
        if end > self.data.len() {
            return Err(self.err(
                at,
                format!("element declares {len} bytes but only {} remain", self.data.len().saturating_sub(p)),
            ));
        }
        self.pos = end;
        Ok(Tlv { tag, value: &self.data[p..end], raw: &self.data[start..end], offset: at })
    }

    /// Reads the next element and checks its tag.
    pub fn expect(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, BundleError> {
        let at = self.offset();
        match self.peek_tag() {
            Some(t) if t == tag => self.any(),
            Some(t) => Err(self.err(at, format!("expected {what} (tag 0x{tag:02x}), found tag 0x{t:02x}"))),
            None => Err(self.err(at, format!("expected {what}, found the end of the data"))),
        }
    }

    /// Reads the next element if it has this tag.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, BundleError> {
        if self.peek_tag() == Some(tag) {
            self.any().map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn finish(&self, what: &str) -> Result<(), BundleError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.err(self.offset(), format!("unexpected data after {what}")))
        }
    }
}

impl<'a> Tlv<'a> {
    /// A reader over the contents of a constructed element, keeping absolute offsets.
    pub fn contents(&self, part: &'static str) -> Reader<'a> {
        let header = self.raw.len() - self.value.len();
        Reader { data: self.value, pos: 0, base: self.offset + header, part }
    }
}

/// Dotted text of an OID, for error messages.
pub(crate) fn oid_to_string(oid: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut acc: u128 = 0;
    for (i, b) in oid.iter().enumerate() {
        acc = (acc << 7) | u128::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let (first, second) = if acc < 40 {
                    (0, acc)
                } else if acc < 80 {
                    (1, acc - 40)
                } else {
                    (2, acc - 80)
                };
                parts.push(first.to_string());
                parts.push(second.to_string());
            } else {
                parts.push(acc.to_string());
            }
            acc = 0;
        } else if i == oid.len() - 1 || acc > (u128::MAX >> 8) {
            return format!("invalid OID {}", hex::encode(oid));
        }
    }
    parts.join(".")
}

/// Appends a DER element to `out`.
pub(crate) fn write(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    if let Ok(short @ 0..0x80) = u8::try_from(len) {
        out.push(short);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        // At most size_of::<usize>() length bytes: always fits the low seven bits.
        out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(0x7f));
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

/// One DER element as a new vector.
pub(crate) fn element(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    write(&mut out, tag, value);
    out
}

/// A constructed element from already-encoded parts.
pub(crate) fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    element(tag, &parts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20] {
            let v = vec![7u8; len];
            let enc = element(tag::OCTET_STRING, &v);
            let mut r = Reader::new(&enc, "test");
            let t = r.expect(tag::OCTET_STRING, "octets").unwrap();
            assert_eq!(t.value.len(), len);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn refuses_non_der() {
        for bad in [&[0x30u8, 0x80, 0, 0][..], &[0x04, 0x81, 0x05, 1, 2, 3, 4, 5], &[0x04, 0x05, 1], &[0x1f, 1, 0]] {
            let err = Reader::new(bad, "test").any().unwrap_err();
            assert!(matches!(err, BundleError::Der { offset: 0, .. }), "{err}");
        }
    }

    #[test]
    fn oid_text() {
        assert_eq!(oid_to_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]), "1.2.840.113549.1.7.2");
    }
}
