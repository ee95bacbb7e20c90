//! A structure-aware generator for the parsers of untrusted bytes: it decodes any byte string into a DER shape that
//! is well formed where it matters to get deep (lengths always right, the expected tags and OIDs most of the time)
//! and odd where the parsers must hold (arbitrary serials, names with any OID and every string type holding any
//! bytes, times of the right and wrong lengths with multi-byte UTF-8 in them, extensions with any OID, flag and
//! value, SignerInfos and signed attributes of every kind), then feeds the shape to every entry point.
//!
//! Byte-flipping fuzzers rarely get past the first length they break; this gets to `parse_time` inside a signed
//! attribute of a SignerInfo of a SignedData. The same generator runs as a proptest in `cargo test` and under
//! libFuzzer (`common/fuzz`, target `shapes`). Choices read from the bytes; once they run out every choice is 0,
//! which is always the well-formed one, so any input ends in a finite, sound shape.

use std::path::PathBuf;

use jiff::Timestamp;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::der::{constructed, element, tag};

mod certs;
use super::{cms, inspect, verify, verify_detached, x509, BundleError, Expectations, TrustStore, Verdict};
use certs::{algorithm, certificate, integer, name, oid, string_value, time, GenCert};

const UTF8: u8 = 0x0c;
const PRINTABLE: u8 = 0x13;
const T61: u8 = 0x14;
const IA5: u8 = 0x16;
const BMP: u8 = 0x1e;
const UNIVERSAL: u8 = 0x1c;
const VISIBLE: u8 = 0x1a;
const NUMERIC: u8 = 0x12;
const BOOLEAN: u8 = 0x01;
const BIT_STRING: u8 = 0x03;
const CTX3: u8 = 0xa3;

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_C: &[u8] = &[0x55, 0x04, 0x06];
const OID_EMAIL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EKU: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_ATTR_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_ATTR_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_ATTR_SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

/// Characters of 2, 3 and 4 bytes in UTF-8, to put into times and strings.
const MULTIBYTE: [char; 4] = ['é', 'ß', '€', '😀'];

/// The choices, read from the input; past its end every choice is 0.
#[derive(Debug)]
pub struct Source<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Source<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Source { data, pos: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        let v = usize::from(self.byte()) << 8 | usize::from(self.byte());
        v % n.max(1)
    }

    /// Index into `weights`, each chosen in proportion to its weight; index 0 when the input is exhausted.
    fn weighted(&mut self, weights: &[usize]) -> usize {
        let total: usize = weights.iter().sum();
        let mut v = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if v < *w {
                return i;
            }
            v -= w;
        }
        0
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Mostly false (and false when exhausted).
    fn rarely(&mut self) -> bool {
        self.below(8) == 7
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn attribute(src: &mut Source<'_>, digest: &[u8]) -> Vec<u8> {
    let (id, value) = match src.weighted(&[3, 3, 4, 1]) {
        0 => (OID_ATTR_CONTENT_TYPE, oid(src, &[OID_DATA, OID_SIGNED_DATA])),
        1 => {
            let v = if src.rarely() { src.bytes(64) } else { digest.to_vec() };
            (OID_ATTR_MESSAGE_DIGEST, element(tag::OCTET_STRING, &v))
        }
        2 => (OID_ATTR_SIGNING_TIME, time(src)),
        _ => (OID_EMAIL, string_value(src)),
    };
    let mut values = value;
    if src.rarely() {
        values.extend(time(src)); // a second value
    }
    let values = if src.rarely() { Vec::new() } else { values };
    constructed(tag::SEQUENCE, &[&element(tag::OID, id), &element(tag::SET, &values)])
}

/// A SignerInfo; a `faithful` one is what OpenSSL writes (SHA-256, ECDSA, the three signed attributes, a real
/// signature), so that whatever is odd about the certificates is what the verifier meets.
fn signer_info(src: &mut Source<'_>, certs: &[GenCert], content: &[u8], ctx: &Context, faithful: bool) -> Vec<u8> {
    let version = element(tag::INTEGER, &[if src.rarely() { 3 } else { 1 }]);
    let sid = match (src.weighted(&[6, 1, 1]), certs.is_empty()) {
        (0, false) => {
            let c = &certs[src.below(certs.len())];
            constructed(tag::SEQUENCE, &[&c.issuer, &element(tag::INTEGER, &c.serial)])
        }
        (2, _) => element(tag::CTX0_PRIM, &src.bytes(20)),
        _ => constructed(tag::SEQUENCE, &[&name(src), &integer(src, 8)]),
    };
    let (digest_oid, alg) = match if faithful { 0 } else { src.weighted(&[6, 1, 1, 1]) } {
        0 => (OID_SHA256, &ring::digest::SHA256),
        1 => (OID_SHA384, &ring::digest::SHA384),
        2 => (OID_SHA512, &ring::digest::SHA512),
        _ => (OID_SHA1, &ring::digest::SHA256),
    };
    let digest = ring::digest::digest(alg, content);
    let dalg = if faithful {
        constructed(tag::SEQUENCE, &[&element(tag::OID, digest_oid)])
    } else {
        algorithm(src, &[digest_oid])
    };
    let attrs = if faithful || src.weighted(&[8, 1]) == 0 {
        // Mostly the three OpenSSL writes, in its order; sometimes any mix.
        let list: Vec<Vec<u8>> = if faithful || src.bool() {
            let ct = constructed(
                tag::SEQUENCE,
                &[&element(tag::OID, OID_ATTR_CONTENT_TYPE), &constructed(tag::SET, &[&element(tag::OID, OID_DATA)])],
            );
            let st = constructed(
                tag::SEQUENCE,
                &[
                    &element(tag::OID, OID_ATTR_SIGNING_TIME),
                    &element(
                        tag::SET,
                        &if faithful && src.bool() { element(tag::UTC_TIME, b"290101000000Z") } else { time(src) },
                    ),
                ],
            );
            let md = constructed(
                tag::SEQUENCE,
                &[
                    &element(tag::OID, OID_ATTR_MESSAGE_DIGEST),
                    &constructed(tag::SET, &[&element(tag::OCTET_STRING, digest.as_ref())]),
                ],
            );
            vec![ct, st, md]
        } else {
            let n = src.below(6);
            (0..n).map(|_| attribute(src, digest.as_ref())).collect()
        };
        element(tag::CTX0, &list.concat())
    } else {
        Vec::new()
    };
    let salg = if faithful {
        constructed(tag::SEQUENCE, &[&element(tag::OID, OID_ECDSA_SHA256)])
    } else {
        algorithm(src, &[OID_ECDSA_SHA256, OID_RSA, OID_RSA_SHA256, OID_EC_PUBLIC_KEY, OID_ECDSA_SHA384])
    };
    // Mostly a real signature by the context's signer key over the attributes as a SET.
    let signature = match (if faithful { 0 } else { src.weighted(&[3, 1]) }, attrs.first()) {
        (0, Some(_)) => {
            let mut set = attrs.clone();
            set[0] = tag::SET;
            ctx.signer_key.sign(&ctx.rng, &set).map(|s| s.as_ref().to_vec()).unwrap_or_default()
        }
        _ => src.bytes(80),
    };
    let signature = element(tag::OCTET_STRING, &signature);
    let unsigned = if src.rarely() { element(tag::CTX1, &src.bytes(8)) } else { Vec::new() };
    constructed(tag::SEQUENCE, &[&version, &sid, &dalg, &attrs, &salg, &signature, &unsigned])
}

/// A CMS ContentInfo with a SignedData over `content` (detached, mostly) carrying generated certificates and the
/// context's real ones, with generated SignerInfos.
pub fn cms_shape(src: &mut Source<'_>, content: &[u8], ctx: &Context) -> Vec<u8> {
    let mut certs: Vec<GenCert> = (0..src.below(3)).map(|_| certificate(src, ctx)).collect();
    for r in &ctx.real {
        if src.weighted(&[1, 1]) == 0 {
            if let Ok(c) = x509::Cert::parse(r) {
                certs.push(GenCert { der: r.clone(), issuer: c.issuer_raw, serial: c.serial });
            }
        }
    }
    let version = element(tag::INTEGER, &[1]);
    let digest_algs = element(tag::SET, &algorithm(src, &[OID_SHA256]));
    let econtent_type = if src.weighted(&[16, 1]) == 0 { element(tag::OID, OID_DATA) } else { oid(src, &[OID_DATA]) };
    let econtent = if src.weighted(&[16, 1]) == 1 {
        constructed(tag::CTX0, &[&element(tag::OCTET_STRING, content)])
    } else {
        Vec::new()
    };
    let eci = constructed(tag::SEQUENCE, &[&econtent_type, &econtent]);
    let cert_set = if certs.is_empty() && src.bool() {
        Vec::new()
    } else {
        let ders: Vec<&[u8]> = certs.iter().map(|c| c.der.as_slice()).collect();
        constructed(tag::CTX0, &ders)
    };
    let crls = if src.rarely() { element(tag::CTX1, &src.bytes(16)) } else { Vec::new() };
    let n_signers = match src.weighted(&[16, 1, 1]) {
        0 => 1,
        1 => 0,
        _ => 2,
    };
    let faithful = src.bool();
    let signers: Vec<Vec<u8>> = (0..n_signers).map(|_| signer_info(src, &certs, content, ctx, faithful)).collect();
    let sd = constructed(
        tag::SEQUENCE,
        &[&version, &digest_algs, &eci, &cert_set, &crls, &element(tag::SET, &signers.concat())],
    );
    let ct =
        if src.weighted(&[16, 1]) == 0 { element(tag::OID, OID_SIGNED_DATA) } else { oid(src, &[OID_SIGNED_DATA]) };
    constructed(tag::SEQUENCE, &[&ct, &constructed(tag::CTX0, &[&sd])])
}

/// What every shape is checked against: a trust store, the keys of its generated CA and signer, and real
/// certificates that may travel in the shapes.
pub struct Context {
    trust: TrustStore,
    rng: SystemRandom,
    ca_key: EcdsaKeyPair,
    /// The generated CA's subject (DER Name), for the issuer of the certificates it signs.
    ca_name: Vec<u8>,
    signer_key: EcdsaKeyPair,
    signer_spki: Vec<u8>,
    real: Vec<Vec<u8>>,
    now: Timestamp,
    /// A file to write bundles to for `inspect` and `verify`; `None` skips them.
    scratch: Option<PathBuf>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("now", &self.now).field("scratch", &self.scratch).finish_non_exhaustive()
    }
}

fn p256_spki(key: &EcdsaKeyPair) -> Vec<u8> {
    let alg = constructed(tag::SEQUENCE, &[&element(tag::OID, OID_EC_PUBLIC_KEY), &element(tag::OID, OID_P256)]);
    let bits = [&[0u8][..], key.public_key().as_ref()].concat();
    constructed(tag::SEQUENCE, &[&alg, &element(BIT_STRING, &bits)])
}

fn new_key(rng: &SystemRandom) -> Result<EcdsaKeyPair, BundleError> {
    let bad = |e: String| BundleError::Request { reason: format!("generating a test key: {e}") };
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng).map_err(|e| bad(e.to_string()))?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), rng).map_err(|e| bad(e.to_string()))
}

impl Context {
    /// A CA generated here (self-signed, P-256, keyCertSign) and the CA certificates of `seed_cms` (a CMS signed by
    /// a real PKI, the `cms` seed of the fuzz corpus) as the trust anchors; the seed's certificates may travel in
    /// the shapes. The time is 2030-01-01, inside the validity the generated certificates mostly get.
    pub fn new(seed_cms: &[u8], scratch: Option<PathBuf>) -> Result<Context, BundleError> {
        let sd = cms::parse(seed_cms)?;
        let real: Vec<Vec<u8>> = sd.certs.iter().map(|c| c.to_vec()).collect();
        let parsed = real.iter().map(|d| x509::Cert::parse(d)).collect::<Result<Vec<_>, _>>()?;
        let mut anchors: Vec<Vec<u8>> = parsed.iter().filter(|c| c.is_ca).map(|c| c.der.clone()).collect();
        let rng = SystemRandom::new();
        let ca_key = new_key(&rng)?;
        let signer_key = new_key(&rng)?;
        let ca_name = constructed(
            tag::SEQUENCE,
            &[&constructed(
                tag::SET,
                &[&constructed(tag::SEQUENCE, &[&element(tag::OID, OID_CN), &element(UTF8, b"shapes CA")])],
            )],
        );
        let alg = constructed(tag::SEQUENCE, &[&element(tag::OID, OID_ECDSA_SHA256)]);
        let ext = |id: &[u8], value: Vec<u8>| {
            constructed(
                tag::SEQUENCE,
                &[&element(tag::OID, id), &element(BOOLEAN, &[0xff]), &element(tag::OCTET_STRING, &value)],
            )
        };
        let exts = constructed(
            tag::SEQUENCE,
            &[
                &ext(OID_BASIC_CONSTRAINTS, constructed(tag::SEQUENCE, &[&element(BOOLEAN, &[0xff])])),
                &ext(OID_KEY_USAGE, element(BIT_STRING, &[2, 0x04])),
            ],
        );
        let tbs = constructed(
            tag::SEQUENCE,
            &[
                &constructed(tag::CTX0, &[&element(tag::INTEGER, &[2])]),
                &element(tag::INTEGER, &[1]),
                &alg,
                &ca_name,
                &constructed(
                    tag::SEQUENCE,
                    &[&element(tag::UTC_TIME, b"000101000000Z"), &element(tag::GENERALIZED_TIME, b"20990101000000Z")],
                ),
                &ca_name,
                &p256_spki(&ca_key),
                &constructed(CTX3, &[&exts]),
            ],
        );
        let sig = ca_key.sign(&rng, &tbs).map_err(|e| BundleError::Request { reason: format!("signing: {e}") })?;
        let sig = [&[0u8][..], sig.as_ref()].concat();
        anchors.push(constructed(tag::SEQUENCE, &[&tbs, &alg, &element(BIT_STRING, &sig)]));
        let now = "2030-01-01T00:00:00Z".parse().map_err(|_| BundleError::Request { reason: "time".into() })?;
        Ok(Context {
            trust: TrustStore::from_der_anchors(&anchors, &[])?,
            rng,
            signer_spki: p256_spki(&signer_key),
            ca_key,
            ca_name,
            signer_key,
            real,
            now,
            scratch,
        })
    }
}

/// Panics (which is what the proptest and libFuzzer catch) if an error has no message.
fn checked<T>(what: &str, r: Result<T, BundleError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(!e.to_string().trim().is_empty(), "{what}: an error without a message: {e:?}");
            None
        }
    }
}

/// The content the shapes sign: a manifest an otpatch bundle could carry.
pub const CONTENT: &[u8] = b"format = 1\nkind = \"app\"\ncompatible = \"gw\"\nversion = \"1.0\"\n\
expires = \"2099-01-01T00:00:00Z\"\n\n[[payloads]]\nname = \"a\"\nsize = 1\n\
sha256 = \"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\"\n";

/// Builds the shape `data` decodes to and feeds it to every entry point: certificate parsing and the trust store
/// (each certificate as an anchor), the CMS parser and `inspect`'s summary, the detached verification against the
/// trust store, and (with a scratch file) `inspect` and `verify` of an otpatch bundle carrying it. Returns the CMS.
pub fn check(data: &[u8], ctx: &Context) -> Vec<u8> {
    let mut src = Source::new(data);
    let der = cms_shape(&mut src, CONTENT, ctx);
    let _ = super::fuzzing::cms(&der);
    if let Some(sd) = checked("cms::parse", cms::parse(&der)) {
        for c in &sd.certs {
            let _ = checked("Cert::parse", x509::Cert::parse(c));
            let _ = checked("TrustStore::from_der_anchors", TrustStore::from_der_anchors(&[c.to_vec()], &[]));
        }
        let _ = checked("single_signer", sd.single_signer());
    }
    let _ = checked("verify_detached", verify_detached(CONTENT, &der, &ctx.trust, ctx.now));
    if let Some(path) = &ctx.scratch {
        let bundle = [
            b"a".as_slice(),
            CONTENT,
            &der,
            &(CONTENT.len() as u64).to_be_bytes(),
            &(der.len() as u64).to_be_bytes(),
            super::MAGIC,
        ]
        .concat();
        let _ = checked("otpatch_bundle", super::fuzzing::otpatch_bundle(&bundle));
        if std::fs::write(path, &bundle).is_ok() {
            let exp = Expectations {
                compatible: "gw".into(),
                last_committed: Default::default(),
                allow_downgrade: false,
                now: ctx.now,
                kernel_release: None,
            };
            let _ = checked("inspect", inspect(path, None, None));
            if let Some(r) = checked("inspect with trust", inspect(path, Some(&ctx.trust), Some(&exp))) {
                if let Verdict::Invalid { error } = &r.verdict {
                    assert!(!error.trim().is_empty(), "inspect: an invalid verdict without a message");
                }
            }
            let _ = checked("verify", verify(path, &ctx.trust, &exp));
        }
    }
    der
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: &[u8] = include_bytes!("../../../fuzz/corpus/cms/seed-p256");

    fn ctx(dir: &tempfile::TempDir) -> Context {
        Context::new(SEED, Some(dir.path().join("shape.otp"))).unwrap()
    }

    #[test]
    fn exhausted_input_gives_a_well_formed_signed_data() {
        let dir = tempfile::tempdir().unwrap();
        let der = check(&[], &ctx(&dir));
        let sd = cms::parse(&der).unwrap();
        sd.single_signer().unwrap();
        assert_eq!(sd.certs.len(), 2, "the seed's signer and intermediate");
    }

    /// Every input that once failed [`check`], kept (the corpus of the `shapes` fuzz target holds them too).
    #[test]
    fn regressions() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(&dir);
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/shapes");
        let mut n = 0;
        for entry in std::fs::read_dir(corpus).unwrap() {
            check(&std::fs::read(entry.unwrap().path()).unwrap(), &ctx);
            n += 1;
        }
        assert!(n > 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn shapes_never_panic_and_every_error_has_a_message(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let dir = tempfile::tempdir().unwrap();
            check(&data, &ctx(&dir));
        }
    }
}
