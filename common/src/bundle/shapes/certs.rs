//! The X.509 half of the generator: OIDs, names with every string type, times of every length, integers,
//! algorithms, extensions, and whole certificates signed (or not) by the context's keys.

use super::*;

/// An OID: mostly one of `known`, else an arbitrary (possibly invalid) encoding.
pub(super) fn oid(src: &mut Source<'_>, known: &[&[u8]]) -> Vec<u8> {
    match src.weighted(&[8, 1, 1]) {
        0 => element(tag::OID, src.pick(known)),
        1 => element(tag::OID, &src.bytes(12)),
        _ => {
            let mut v = src.pick(known).to_vec();
            v.push(0x80 | src.byte()); // a trailing continuation byte: never a valid OID
            element(tag::OID, &v)
        }
    }
}

/// A string attribute value: every string type (and some that are not strings), holding text or any bytes.
pub(super) fn string_value(src: &mut Source<'_>) -> Vec<u8> {
    let t = src.pick(&[
        UTF8,
        PRINTABLE,
        UTF8,
        BMP,
        T61,
        IA5,
        UNIVERSAL,
        VISIBLE,
        NUMERIC,
        tag::OCTET_STRING,
        tag::INTEGER,
        tag::NULL,
        tag::SEQUENCE,
        0x80,
        0xa0,
    ]);
    let text = || "vendor-signer".to_string();
    let value = match src.weighted(&[4, 3, 3]) {
        0 => text().into_bytes(),
        1 => src.bytes(40),
        _ => {
            let mut s = text();
            let at = src.below(s.len() + 1);
            s.insert(at, src.pick(&MULTIBYTE));
            match t {
                BMP => {
                    let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
                    if src.bool() {
                        v.push(src.byte()); // odd length
                    }
                    v
                }
                UNIVERSAL => s.chars().flat_map(|c| u32::from(c).to_be_bytes()).collect(),
                _ => s.into_bytes(),
            }
        }
    };
    if t == tag::SEQUENCE {
        return constructed(tag::SEQUENCE, &[&element(UTF8, &value)]);
    }
    element(t, &value)
}

/// A Name: up to 4 RDNs of up to 3 attributes each, with any OID.
pub(super) fn name(src: &mut Source<'_>) -> Vec<u8> {
    let rdns = 1 + src.below(4);
    let mut out = Vec::new();
    for _ in 0..rdns {
        let atvs = 1 + usize::from(src.rarely()) * src.below(3);
        let mut set = Vec::new();
        for _ in 0..atvs {
            let t = oid(src, &[OID_CN, OID_O, OID_C, OID_EMAIL]);
            set.extend(constructed(tag::SEQUENCE, &[&t, &string_value(src)]));
        }
        out.extend(element(tag::SET, &set));
    }
    element(tag::SEQUENCE, &out)
}

/// A UTCTime or GeneralizedTime: well formed, the right length with a multi-byte character, arbitrary bytes of
/// the right length, any length, or a time under another tag.
pub(super) fn time(src: &mut Source<'_>) -> Vec<u8> {
    let generalized = src.rarely();
    let mut digits = |n: usize, lo: usize, hi: usize| format!("{:0n$}", lo + src.below(hi - lo + 1));
    let body = format!(
        "{}{}{}{}{}{}",
        if generalized { digits(4, 1950, 2100) } else { digits(2, 0, 99) },
        digits(2, 1, 12),
        digits(2, 1, 28),
        digits(2, 0, 23),
        digits(2, 0, 59),
        digits(2, 0, 59)
    );
    let text = format!("{body}Z");
    let t = if generalized { tag::GENERALIZED_TIME } else { tag::UTC_TIME };
    match src.weighted(&[4, 4, 2, 1, 1]) {
        0 => element(t, text.as_bytes()),
        1 => {
            // Same byte length, one multi-byte character in place of as many digits.
            let c = src.pick(&MULTIBYTE);
            let w = c.len_utf8();
            let at = src.below(text.len() - w + 1);
            let mut v = text.as_bytes()[..at].to_vec();
            v.extend(c.to_string().as_bytes());
            v.extend(&text.as_bytes()[at + w..]);
            element(t, &v)
        }
        2 => {
            let n = text.len();
            element(t, &(0..n).map(|_| src.byte()).collect::<Vec<_>>())
        }
        3 => element(t, &src.bytes(20)),
        _ => element(src.pick(&[UTF8, tag::OCTET_STRING, tag::INTEGER]), text.as_bytes()),
    }
}

pub(super) fn integer(src: &mut Source<'_>, max: usize) -> Vec<u8> {
    match src.weighted(&[6, 1, 1]) {
        0 => {
            let mut v = vec![1 + src.byte() % 0x7f];
            v.extend(src.bytes(max.saturating_sub(1)));
            element(tag::INTEGER, &v)
        }
        1 => element(tag::INTEGER, &[]),
        _ => element(tag::INTEGER, &src.bytes(max)),
    }
}

pub(super) fn algorithm(src: &mut Source<'_>, known: &[&[u8]]) -> Vec<u8> {
    let o = oid(src, known);
    if src.bool() {
        constructed(tag::SEQUENCE, &[&o, &element(tag::NULL, &[])])
    } else {
        constructed(tag::SEQUENCE, &[&o])
    }
}

pub(super) fn extension(src: &mut Source<'_>) -> Vec<u8> {
    let which = src.pick(&[OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_EKU, OID_SKI, OID_AKI, OID_SAN]);
    let id = if src.rarely() { element(tag::OID, &src.bytes(10)) } else { element(tag::OID, which) };
    let critical = match src.weighted(&[4, 2, 1, 1]) {
        0 => Vec::new(),
        1 => element(BOOLEAN, &[0xff]),
        2 => element(BOOLEAN, &[0x00]),
        _ => element(BOOLEAN, &src.bytes(2)),
    };
    let value = if src.rarely() {
        src.bytes(24)
    } else {
        match which {
            OID_BASIC_CONSTRAINTS => {
                let mut parts = Vec::new();
                if src.bool() {
                    parts.extend(element(BOOLEAN, &[if src.bool() { 0xff } else { 0 }]));
                }
                if src.rarely() {
                    parts.extend(integer(src, 3));
                }
                element(tag::SEQUENCE, &parts)
            }
            OID_KEY_USAGE => {
                let mut v = vec![src.byte() % 9];
                v.extend(src.bytes(3));
                element(BIT_STRING, &v)
            }
            OID_EKU => {
                let n = src.below(4);
                let oids: Vec<Vec<u8>> = (0..n).map(|_| oid(src, &[OID_CODE_SIGNING])).collect();
                element(tag::SEQUENCE, &oids.concat())
            }
            OID_SKI => element(tag::OCTET_STRING, &src.bytes(24)),
            _ => element(tag::SEQUENCE, &src.bytes(24)),
        }
    };
    constructed(tag::SEQUENCE, &[&id, &critical, &element(tag::OCTET_STRING, &value)])
}

/// A Certificate, with the issuer and serial a SignerInfo may point at.
pub(super) struct GenCert {
    pub(super) der: Vec<u8>,
    pub(super) issuer: Vec<u8>,
    pub(super) serial: Vec<u8>,
}

pub(super) fn certificate(src: &mut Source<'_>, ctx: &Context) -> GenCert {
    // Mostly a certificate the context's CA really signed, over the context's signer key, so that chain building,
    // keyUsage and the names are reached with odd contents too.
    let signed = src.weighted(&[3, 1]) == 0;
    let version = match src.weighted(&[6, 1, 1]) {
        0 => constructed(tag::CTX0, &[&element(tag::INTEGER, &[2])]),
        1 => Vec::new(),
        _ => constructed(tag::CTX0, &[&integer(src, 3)]),
    };
    let serial = integer(src, 21);
    let sig_alg = if signed {
        constructed(tag::SEQUENCE, &[&element(tag::OID, OID_ECDSA_SHA256)])
    } else {
        algorithm(src, &[OID_ECDSA_SHA256, OID_RSA_SHA256, OID_ECDSA_SHA384])
    };
    let issuer = if signed && src.weighted(&[6, 1]) == 0 { ctx.ca_name.clone() } else { name(src) };
    let validity = if src.weighted(&[2, 1]) == 0 {
        constructed(
            tag::SEQUENCE,
            &[&element(tag::UTC_TIME, b"200101000000Z"), &element(tag::GENERALIZED_TIME, b"20900101000000Z")],
        )
    } else {
        constructed(tag::SEQUENCE, &[&time(src), &time(src)])
    };
    let subject = name(src);
    let spki = if signed {
        ctx.signer_spki.clone()
    } else if src.rarely() {
        element(tag::SEQUENCE, &src.bytes(40))
    } else {
        let alg = constructed(tag::SEQUENCE, &[&oid(src, &[OID_EC_PUBLIC_KEY, OID_RSA]), &oid(src, &[OID_P256])]);
        let mut key = vec![0u8, 0x04];
        key.extend((0..64).map(|_| src.byte()));
        constructed(tag::SEQUENCE, &[&alg, &element(BIT_STRING, &key)])
    };
    let mut tbs_parts = vec![version, serial.clone(), sig_alg.clone(), issuer.clone(), validity, subject, spki];
    if src.weighted(&[3, 1]) == 0 {
        let mut exts: Vec<Vec<u8>> = Vec::new();
        if src.weighted(&[1, 1]) == 0 {
            // What a signing certificate carries, then whatever else.
            exts.push(constructed(
                tag::SEQUENCE,
                &[&element(tag::OID, OID_BASIC_CONSTRAINTS), &element(tag::OCTET_STRING, &element(tag::SEQUENCE, &[]))],
            ));
            exts.push(constructed(
                tag::SEQUENCE,
                &[&element(tag::OID, OID_KEY_USAGE), &element(tag::OCTET_STRING, &element(BIT_STRING, &[7, 0x80]))],
            ));
            exts.push(constructed(
                tag::SEQUENCE,
                &[
                    &element(tag::OID, OID_EKU),
                    &element(tag::OCTET_STRING, &constructed(tag::SEQUENCE, &[&element(tag::OID, OID_CODE_SIGNING)])),
                ],
            ));
        }
        let n = src.below(4);
        exts.extend((0..n).map(|_| extension(src)));
        tbs_parts.push(constructed(CTX3, &[&element(tag::SEQUENCE, &exts.concat())]));
    }
    let tbs = element(tag::SEQUENCE, &tbs_parts.concat());
    let mut sig = vec![0u8];
    if signed {
        sig.extend(ctx.ca_key.sign(&ctx.rng, &tbs).map(|s| s.as_ref().to_vec()).unwrap_or_default());
    } else {
        sig.extend(src.bytes(72));
    }
    let der = constructed(tag::SEQUENCE, &[&tbs, &sig_alg, &element(BIT_STRING, &sig)]);
    // The serial as a SignerInfo names it: the INTEGER's value.
    let serial_value = serial.get(2..).unwrap_or_default().to_vec();
    GenCert { der, issuer, serial: serial_value }
}
