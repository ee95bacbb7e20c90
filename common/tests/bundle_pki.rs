//! A small PKI made at test time with the real `openssl` CLI, shared by the bundle interop tests (included with
//! `#[path]`): a root CA, an intermediate, signing certificates (RSA 2048/3072, ECDSA P-256/P-384), one without
//! codeSigning, expired and not-yet-valid ones (`openssl ca -startdate/-enddate`), a revoked one with its CRL (and
//! a CRL valid for one day, the root's CRL, an unrelated CA's CRL), signers and a CA whose keyUsage forbids what
//! they do, and an unrelated CA with its own signer.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct Pki {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

const SIGNER_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
extendedKeyUsage=codeSigning\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
const NO_EKU_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
/// A signer whose keyUsage does not permit digitalSignature (RFC 5280 4.2.1.3).
const KEYENC_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,keyEncipherment\n\
extendedKeyUsage=codeSigning\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
/// A CA whose keyUsage does not permit keyCertSign.
const CA_NO_CERTSIGN_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature\n\
subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

pub fn run(dir: &Path, program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Pki {
    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::build)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        run(&self.root, "openssl", args);
    }

    fn key(&self, name: &str, kind: &str) {
        let out = format!("{name}.key");
        match kind {
            "rsa2048" | "rsa3072" => {
                let bits = format!("rsa_keygen_bits:{}", &kind[3..]);
                self.openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", &bits, "-out", &out]);
            }
            "p256" | "p384" => {
                let curve = format!("ec_paramgen_curve:P-{}", &kind[1..]);
                self.openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", &curve, "-out", &out]);
            }
            other => panic!("key kind {other}"),
        }
    }

    fn root_ca(&self, name: &str, cn: &str) {
        self.key(name, "rsa3072");
        std::fs::write(self.path(&format!("{name}.ext")), CA_EXT).unwrap();
        let subj = format!("/CN={cn}");
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &subj,
            "-days",
            "3650",
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// Issues `name` from `issuer` with `openssl x509 -req`, valid from now for 10 years.
    fn issue(&self, name: &str, cn: &str, kind: &str, issuer: &str, ext: &str, serial: u32) {
        self.key(name, kind);
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        let subj = format!("/O=otpatch tests/CN={cn}");
        self.openssl(&["req", "-new", "-key", &format!("{name}.key"), "-subj", &subj, "-out", &format!("{name}.csr")]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// Issues `name` from the intermediate with `openssl ca` and explicit dates.
    fn issue_dated(&self, name: &str, cn: &str, start: &str, end: &str) {
        self.key(name, "rsa2048");
        std::fs::write(self.path(&format!("{name}.ext")), SIGNER_EXT).unwrap();
        let subj = format!("/O=otpatch tests/CN={cn}");
        self.openssl(&["req", "-new", "-key", &format!("{name}.key"), "-subj", &subj, "-out", &format!("{name}.csr")]);
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-in",
            &format!("{name}.csr"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn build() -> Pki {
        let dir = tempfile::Builder::new().prefix("bundle-pki").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let pki = Pki { root: dir.path().to_path_buf(), _dir: dir };
        pki.root_ca("root", "otpatch Test Root CA");
        pki.issue("inter", "otpatch Test Intermediate CA", "rsa2048", "root", CA_EXT, 100);
        pki.issue("rsa2048", "vendor-signer-rsa2048", "rsa2048", "inter", SIGNER_EXT, 201);
        pki.issue("rsa3072", "vendor-signer-rsa3072", "rsa3072", "inter", SIGNER_EXT, 202);
        pki.issue("p256", "vendor-signer-p256", "p256", "inter", SIGNER_EXT, 203);
        pki.issue("p384", "vendor-signer-p384", "p384", "inter", SIGNER_EXT, 204);
        pki.issue("noeku", "vendor-tls-server", "p256", "inter", NO_EKU_EXT, 205);
        pki.issue("revoked", "vendor-signer-revoked", "p256", "inter", SIGNER_EXT, 206);
        pki.issue("keyenc", "vendor-signer-keyenc", "p256", "inter", KEYENC_EXT, 207);
        // An intermediate that may not sign certificates (keyUsage digitalSignature only), with a signer under it.
        pki.issue("nocertsign", "otpatch Test CA without keyCertSign", "p256", "root", CA_NO_CERTSIGN_EXT, 101);
        pki.issue("undernocertsign", "vendor-signer-under-nocertsign", "p256", "nocertsign", SIGNER_EXT, 401);
        // A second CA the gateway does not trust, with a signer of its own.
        pki.root_ca("otherroot", "Unknown Vendor CA");
        pki.issue("other", "vendor-signer-other", "p256", "otherroot", SIGNER_EXT, 301);
        // `openssl ca` for explicit validity dates and the CRL.
        std::fs::create_dir(pki.path("newcerts")).unwrap();
        std::fs::write(pki.path("index.txt"), "").unwrap();
        std::fs::write(pki.path("serial"), "1000\n").unwrap();
        std::fs::write(pki.path("crlnumber"), "01\n").unwrap();
        std::fs::write(
            pki.path("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = index.txt\nnew_certs_dir = newcerts\nserial = serial\n\
             crlnumber = crlnumber\ncertificate = inter.pem\nprivate_key = inter.key\ndefault_md = sha256\n\
             default_crl_days = 3650\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n\
             organizationName = optional\n[crl_ext]\nauthorityKeyIdentifier = keyid\n",
        )
        .unwrap();
        pki.issue_dated("expired", "vendor-signer-expired", "20200101000000Z", "20210101000000Z");
        pki.issue_dated("future", "vendor-signer-future", "20900101000000Z", "20950101000000Z");
        pki.openssl(&["ca", "-batch", "-config", "ca.cnf", "-revoke", "revoked.pem"]);
        pki.openssl(&["ca", "-batch", "-config", "ca.cnf", "-gencrl", "-crlexts", "crl_ext", "-out", "inter.crl"]);
        // The intermediate's CRL valid for one day only, the root's (an anchor's) own, and an unrelated CA's.
        pki.openssl(&["ca", "-batch", "-config", "ca.cnf", "-gencrl", "-crldays", "1", "-out", "inter-1day.crl"]);
        let as_ca = |cert: &str, out: &str| {
            let (c, k) = (format!("{cert}.pem"), format!("{cert}.key"));
            pki.openssl(&["ca", "-batch", "-config", "ca.cnf", "-gencrl", "-cert", &c, "-keyfile", &k, "-out", out]);
        };
        as_ca("root", "root.crl");
        as_ca("otherroot", "other.crl");
        pki
    }

    /// A copy of certificate `template` (a PEM of this PKI) with its subject replaced by `subject` (a DER Name),
    /// re-signed by `issuer` with `openssl dgst -sha256 -sign`: names no `openssl req` would write (odd-length
    /// BMPString, invalid UTF-8, a CN that is no string) on a certificate that still chains. Returns the PEM path.
    pub fn forge(&self, name: &str, template: &str, issuer: &str, subject: &[u8]) -> PathBuf {
        let der_path = format!("{template}.der");
        self.openssl(&["x509", "-in", &format!("{template}.pem"), "-outform", "DER", "-out", &der_path]);
        let der = std::fs::read(self.path(&der_path)).unwrap();
        let cert = der_elements(der_value(&der));
        let (tbs, alg) = (cert[0], cert[1]);
        let mut fields = der_elements(der_value(tbs));
        // [0] version, serial, signature, issuer, validity, subject, ...
        fields[5] = subject;
        let tbs = der_tlv(0x30, &fields.concat());
        std::fs::write(self.path(&format!("{name}.tbs")), &tbs).unwrap();
        self.openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            &format!("{issuer}.key"),
            "-out",
            &format!("{name}.sig"),
            &format!("{name}.tbs"),
        ]);
        let sig = std::fs::read(self.path(&format!("{name}.sig"))).unwrap();
        let bits = [&[0u8][..], &sig].concat();
        let forged = der_tlv(0x30, &[tbs.as_slice(), alg, &der_tlv(0x03, &bits)].concat());
        std::fs::write(self.path(&format!("{name}.der")), &forged).unwrap();
        // `openssl base64` only encodes; it does not parse the (deliberately odd) certificate.
        let b64 = run(&self.root, "openssl", &["base64", "-in", &format!("{name}.der")]).stdout;
        let pem =
            format!("-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n", String::from_utf8(b64).unwrap());
        let path = self.path(&format!("{name}.pem"));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// `openssl cms -sign -binary -outform DER` over `content`, detached, with the intermediate carried.
    pub fn sign(&self, content: &Path, signers: &[&str], extra: &[&str]) -> Vec<u8> {
        let out = tempfile::NamedTempFile::new_in(&self.root).unwrap();
        let content = content.to_str().unwrap().to_string();
        let out_s = out.path().to_str().unwrap().to_string();
        let mut args: Vec<String> = ["cms", "-sign", "-binary", "-outform", "DER", "-in", &content, "-out", &out_s]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // The intermediate travels with every signature, except when it is itself the (wrongful) signer.
        if !signers.contains(&"inter") {
            args.extend(["-certfile".into(), "inter.pem".into()]);
        }
        for s in signers {
            args.extend(["-signer".into(), format!("{s}.pem"), "-inkey".into(), format!("{s}.key")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.openssl(&refs);
        std::fs::read(out.path()).unwrap()
    }
}

/// A DER element (tag, definite length, value), for the forged certificates.
pub fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

/// (header length, total length) of the DER element at the start of `b` (well-formed input only).
fn der_header(b: &[u8]) -> (usize, usize) {
    let first = b[1] as usize;
    if first < 0x80 {
        (2, 2 + first)
    } else {
        let n = first & 0x7f;
        let len = b[2..2 + n].iter().fold(0usize, |acc, x| (acc << 8) | *x as usize);
        (2 + n, 2 + n + len)
    }
}

/// The value of the element at the start of `b`.
pub fn der_value(b: &[u8]) -> &[u8] {
    let (h, t) = der_header(b);
    &b[h..t]
}

/// The elements (whole encodings) of a run of DER elements.
pub fn der_elements(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (_, t) = der_header(b);
        out.push(&b[..t]);
        b = &b[t..];
    }
    out
}
