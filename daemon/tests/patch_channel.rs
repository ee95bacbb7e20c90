//! The patch channel against a real nginx (Debian's) with `ssl_verify_client on`, on loopback, with
//! certificates made at test time by the openssl CLI. Needs nginx and openssl.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use otpatch_common::policy::PatchServer;
use otpatchd::backend::ProgressFn;
use otpatchd::fetch::{tls, Channel, ChannelLimits};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`<name>-ca.pem`) and a leaf (`<leaf>.pem`, `<leaf>.key`) it signs, for `san` with `eku`.
fn ca_and_leaf(dir: &Path, ca: &str, leaf: &str, san: &str, eku: &str) {
    if !dir.join(format!("{ca}-ca.pem")).exists() {
        openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{ca}-ca.key")]);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{ca}-ca.key"),
                "-out",
                &format!("{ca}-ca.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{leaf}.key")]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={leaf}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{leaf}.ext")),
        format!("subjectAltName={san}\nextendedKeyUsage={eku}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.pem"),
            "-days",
            "1",
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}

struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx serving `www/` at `/otpatch/` over TLS, requiring a client certificate from the client CA.
fn nginx() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca_and_leaf(d, "server", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth");
    ca_and_leaf(d, "client", "gateway", "DNS:gw-test", "clientAuth");
    ca_and_leaf(d, "other", "impostor", "DNS:localhost,IP:127.0.0.1", "serverAuth");
    ca_and_leaf(d, "other", "stranger", "DNS:gw-other", "clientAuth");
    std::fs::create_dir_all(d.join("www/otpatch")).unwrap();
    std::fs::create_dir_all(d.join("logs")).unwrap();
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/logs/access.log;
  client_body_temp_path {d}/tmp;
  proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp;
  scgi_temp_path {d}/tmp;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name localhost;
    ssl_certificate {d}/localhost.pem;
    ssl_certificate_key {d}/localhost.key;
    ssl_client_certificate {d}/client-ca.pem;
    ssl_verify_client on;
    root {d}/www;
  }}
}}
"#,
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    let mut child = Command::new("nginx")
        .args(["-c", &d.join("nginx.conf").display().to_string(), "-p", &d.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx must be installed");
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Nginx { child, port, dir };
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nginx did not start: {}", std::fs::read_to_string(d.join("logs/error.log")).unwrap_or_default());
}

impl Nginx {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn server(&self) -> PatchServer {
        PatchServer {
            url: format!("https://localhost:{}/otpatch/", self.port),
            host: "localhost".into(),
            port: self.port,
            ca: self.path("server-ca.pem"),
            client_cert: self.path("gateway.pem"),
            client_key: self.path("gateway.key"),
            addresses: vec![],
        }
    }

    fn channel(&self) -> Channel {
        let s = self.server();
        let cfg = tls::client_config(&s.ca, &s.client_cert, &s.client_key).unwrap();
        Channel::new(s, cfg, limits()).connect_via(SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// Writes a payload of `len` pseudo-random bytes to www/otpatch/<name>; returns its SHA-256.
    fn publish(&self, name: &str, len: usize) -> String {
        let mut data = vec![0u8; len];
        let mut x: u32 = 0x1234_5678;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        std::fs::write(self.path("www/otpatch").join(name), &data).unwrap();
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.path("logs/access.log")).unwrap_or_default()
    }
}

fn limits() -> ChannelLimits {
    ChannelLimits { io_timeout: Duration::from_secs(5), attempts: 4, backoff: Duration::from_millis(100) }
}

fn no_progress() -> ProgressFn {
    Arc::new(|_, _| {})
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_download_arrives_whole_and_is_renamed_into_place() {
    let n = nginx();
    let sha = n.publish("b.otb", 3 << 20);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("b.otb");
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let progress: ProgressFn = Arc::new(move |pct, _| {
        if pct == 100 {
            s2.fetch_add(1, Ordering::SeqCst);
        }
    });
    rt().block_on(n.channel().download("b.otb", &dest, 3 << 20, &sha, 16 << 20, &progress)).unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 3 << 20);
    assert!(!otpatchd::fetch::part_path(&dest).exists());
    assert_eq!(otpatchd::fetch::part_path(&dest), out.path().join("b.otb.part"));
    assert_eq!(seen.load(Ordering::SeqCst), 1, "progress reached 100% once");
    let e = rt().block_on(n.channel().get_small("b.otb", 1)).unwrap_err();
    assert!(e.0.contains("larger than"), "{e}");
}

/// A TCP proxy that cuts its first connection after `cut` bytes from the server; later ones pass.
fn cutting_proxy(to: u16, cut: usize) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    std::thread::spawn(move || {
        for client in l.incoming().take(20) {
            let Ok(mut client) = client else { continue };
            let nth = c2.fetch_add(1, Ordering::SeqCst);
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)) else { continue };
            let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_r, &mut s_w);
            });
            std::thread::spawn(move || {
                let mut sent = 0usize;
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if nth == 0 && sent + n > cut {
                        let _ = client.write_all(&buf[..cut - sent]);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        let _ = server.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
            });
        }
    });
    (port, conns)
}

#[test]
fn a_cut_transfer_resumes_with_a_range_and_the_file_is_intact() {
    let n = nginx();
    let sha = n.publish("big.otb", 4 << 20);
    let (proxy, conns) = cutting_proxy(n.port, 1 << 20);
    let s = n.server();
    let cfg = tls::client_config(&s.ca, &s.client_cert, &s.client_key).unwrap();
    let ch = Channel::new(s, cfg, limits()).connect_via(SocketAddr::from(([127, 0, 0, 1], proxy)));
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big.otb");
    rt().block_on(ch.download("big.otb", &dest, 4 << 20, &sha, 16 << 20, &no_progress())).unwrap();
    assert!(conns.load(Ordering::SeqCst) >= 2, "the first connection was cut");
    let log = n.access_log();
    assert!(log.contains("\"GET /otpatch/big.otb HTTP/1.1\" 206"), "the second request asked for the rest: {log}");
    // The sha was checked inside download; check the bytes once more from here.
    let data = std::fs::read(&dest).unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&data)), sha);
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let n = nginx();
    n.publish("b.otb", 10);
    let mut s = n.server();
    s.ca = n.path("other-ca.pem");
    let cfg = tls::client_config(&s.ca, &s.client_cert, &s.client_key).unwrap();
    let ch = Channel::new(s, cfg, limits()).connect_via(SocketAddr::from(([127, 0, 0, 1], n.port)));
    let e = rt().block_on(ch.get_small("b.otb", 100)).unwrap_err();
    assert!(e.0.contains("does not vouch"), "{e}");
}

#[test]
fn without_an_accepted_client_certificate_the_server_refuses_and_we_say_so() {
    let n = nginx();
    n.publish("b.otb", 10);
    // No client certificate at all.
    let s = n.server();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&s.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ch = Channel::new(s.clone(), Arc::new(cfg), limits()).connect_via(SocketAddr::from(([127, 0, 0, 1], n.port)));
    let e = rt().block_on(ch.get_small("b.otb", 100)).unwrap_err();
    eprintln!("without a client certificate: {e}");
    assert!(e.0.contains("client certificate"), "{e}");
    // A client certificate from a CA the server does not trust.
    let cfg = tls::client_config(&s.ca, &n.path("stranger.pem"), &n.path("stranger.key")).unwrap();
    let ch = Channel::new(s, cfg, limits()).connect_via(SocketAddr::from(([127, 0, 0, 1], n.port)));
    let e = rt().block_on(ch.get_small("b.otb", 100)).unwrap_err();
    eprintln!("with a stranger's client certificate: {e}");
    assert!(e.0.contains("client certificate"), "{e}");
}

#[test]
fn size_limits_and_digest_mismatches_are_refused_and_nothing_is_kept() {
    let n = nginx();
    let sha = n.publish("b.otb", 1 << 20);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("b.otb");
    let e = rt().block_on(n.channel().download("b.otb", &dest, 1 << 20, &sha, 1000, &no_progress())).unwrap_err();
    assert!(e.0.contains("limits.max_download"), "{e}");
    let wrong = "ab".repeat(32);
    let e = rt().block_on(n.channel().download("b.otb", &dest, 1 << 20, &wrong, 16 << 20, &no_progress())).unwrap_err();
    assert!(e.0.contains("does not match the signed index"), "{e}");
    assert!(!dest.exists() && !dest.with_extension("part").exists());
    let e = rt().block_on(n.channel().get_small("missing.otb", 100)).unwrap_err();
    assert!(e.0.contains("404"), "{e}");
}

/// The signed index, verified with the bundle verifier's detached-signature check against `anchor`.
struct AnchorIndex(otpatch_common::bundle::TrustStore);

impl otpatchd::fetch::IndexVerifier for AnchorIndex {
    fn verify(&self, content: &[u8], signature: &[u8], now: jiff::Timestamp) -> Result<String, String> {
        otpatch_common::bundle::verify_detached(content, signature, &self.0, now).map_err(|e| e.to_string())
    }
}

/// A signing CA and a codeSigning signer for the index.
fn index_signer(d: &Path) {
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sign-ca.key"]);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "sign-ca.key",
            "-out",
            "sign-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=site signing root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "signer.key"]);
    openssl(d, &["req", "-new", "-key", "signer.key", "-out", "signer.csr", "-subj", "/CN=index signer"]);
    std::fs::write(d.join("signer.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=codeSigning\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "signer.csr",
            "-CA",
            "sign-ca.pem",
            "-CAkey",
            "sign-ca.key",
            "-CAcreateserial",
            "-out",
            "signer.pem",
            "-days",
            "1",
            "-extfile",
            "signer.ext",
        ],
    );
}

/// Writes and signs `www/otpatch/index.json` (detached CMS, DER, as a vendor would with openssl).
fn publish_index(n: &Nginx, issued: &str, expires: &str, entries: serde_json::Value) {
    let www = n.path("www/otpatch");
    let index = serde_json::json!({"format": 1, "issued": issued, "expires": expires, "bundles": entries});
    std::fs::write(www.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    openssl(
        n.dir.path(),
        &[
            "cms",
            "-sign",
            "-binary",
            "-outform",
            "DER",
            "-in",
            "www/otpatch/index.json",
            "-signer",
            "signer.pem",
            "-inkey",
            "signer.key",
            "-out",
            "www/otpatch/index.json.sig",
        ],
    );
}

/// The fetcher for gateway `acme-gw` over `n`, trusting the index signer's CA, keeping its state in `state`.
fn index_fetcher(
    n: &Nginx,
    state: &Path,
    installed: Arc<dyn Fn() -> otpatchd::fetch::Installed + Send + Sync>,
) -> otpatchd::fetch::HttpsFetcher {
    let trust = otpatch_common::bundle::TrustStore::from_pem_files(&[n.path("sign-ca.pem")], &[], None).unwrap();
    otpatchd::fetch::HttpsFetcher {
        channel: n.channel(),
        compatible: "acme-gw".into(),
        max_download: 16 << 20,
        state_dir: state.to_path_buf(),
        verifier: Arc::new(AnchorIndex(trust)),
        installed,
        clock: Arc::new(otpatchd::backend::SystemClock),
    }
}

#[test]
fn the_fetcher_follows_the_signed_index_and_refuses_stale_replayed_or_forged_ones() {
    use otpatchd::backend::{FetchOutcome, Fetcher};
    let n = nginx();
    index_signer(n.dir.path());
    let sha = n.publish("lp-1.2.0.otb", 200_000);
    let entry = |v: &str| {
        serde_json::json!([{"compatible": "acme-gw", "version": v, "kind": "livepatch", "file": "lp-1.2.0.otb",
                             "size": 200_000, "sha256": sha}])
    };
    let day = jiff::SignedDuration::from_hours(24);
    let now = jiff::Timestamp::now();
    publish_index(&n, &(now - day).to_string(), &(now + day).to_string(), entry("1.2.0"));
    let state = tempfile::tempdir().unwrap();
    let installed = Arc::new(std::sync::Mutex::new(otpatchd::fetch::Installed::new()));
    let i2 = installed.clone();
    let fetcher = index_fetcher(&n, state.path(), Arc::new(move || i2.lock().unwrap().clone()));
    let window = otpatchd::engine::WindowCtx { id: "w-1".into(), start: now, end: now + day, auto_start: true };
    let r = rt();
    match r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap() {
        FetchOutcome::Bundle(b) => {
            assert_eq!(b.path, state.path().join("bundles/lp-1.2.0.otb"));
            assert_eq!(std::fs::metadata(&b.path).unwrap().len(), 200_000);
        }
        other => panic!("expected a bundle, got {other:?}"),
    }
    // Once 1.2.0 is committed, the same index offers nothing newer.
    installed.lock().unwrap().insert("livepatch".into(), "1.2.0".into());
    assert_eq!(
        r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap(),
        FetchOutcome::NothingNewer
    );
    // An index past its expiry (a frozen mirror) is refused.
    publish_index(
        &n,
        &(now - day).to_string(),
        &(now - jiff::SignedDuration::from_secs(60)).to_string(),
        entry("1.3.0"),
    );
    let e = r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap_err();
    assert!(e.0.contains("expired"), "{e}");
    // An index issued before the one already accepted (a replay) is refused.
    publish_index(&n, &(now - day - day).to_string(), &(now + day).to_string(), entry("1.3.0"));
    let e = r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap_err();
    assert!(e.0.contains("replayed"), "{e}");
    // An index changed after signing is refused.
    publish_index(&n, &now.to_string(), &(now + day).to_string(), entry("1.3.0"));
    let idx = n.path("www/otpatch/index.json");
    let text = std::fs::read_to_string(&idx).unwrap().replace("1.3.0", "9.9.9");
    std::fs::write(&idx, text).unwrap();
    let e = r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap_err();
    assert!(e.0.contains("signature refused"), "{e}");
}

#[test]
fn a_stale_partial_of_another_file_never_fails_a_download_and_a_rolled_back_version_is_not_fetched() {
    use otpatchd::backend::{FetchOutcome, Fetcher};
    let n = nginx();
    index_signer(n.dir.path());
    let sha = n.publish("lp-1.2.0.otb", 200_000);
    let entries = serde_json::json!([{"compatible": "acme-gw", "version": "1.2.0", "kind": "livepatch",
                                      "file": "lp-1.2.0.otb", "size": 200_000, "sha256": sha}]);
    let day = jiff::SignedDuration::from_hours(24);
    let now = jiff::Timestamp::now();
    publish_index(&n, &(now - day).to_string(), &(now + day).to_string(), entries);
    let state = tempfile::tempdir().unwrap();
    let fetcher = index_fetcher(&n, state.path(), Arc::new(Default::default));
    let window = otpatchd::engine::WindowCtx { id: "w-1".into(), start: now, end: now + day, auto_start: true };
    let r = rt();
    // 1.2.0 was rolled back here: nothing is downloaded, and the fetch says which version it left out.
    let rec = otpatch_common::api::RolledBackVersion {
        compatible: "acme-gw".into(),
        version: "1.2.0".into(),
        digest: "d".into(),
        rolled_back_at: now,
        why: "health failed: boiler".into(),
    };
    let avoid = otpatchd::rolled_back::RolledBack { versions: vec![rec.clone()] };
    assert_eq!(r.block_on(fetcher.fetch(&window, &avoid, no_progress())).unwrap(), FetchOutcome::RolledBack(rec));
    assert!(!state.path().join("bundles/lp-1.2.0.otb").exists());
    // A partial download of another file (an A/B bundle of the same version, cut in an earlier window) is in
    // downloads/; the livepatch bundle still downloads whole and intact.
    let downloads = state.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(downloads.join("lp-1.2.0.part"), vec![0x5a; 50_000]).unwrap();
    std::fs::write(downloads.join("lp-1.2.0.raucb.part"), vec![0x5a; 50_000]).unwrap();
    match r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())) {
        Ok(FetchOutcome::Bundle(b)) => {
            assert_eq!(b.path, state.path().join("bundles/lp-1.2.0.otb"));
            use sha2::Digest;
            assert_eq!(hex::encode(sha2::Sha256::digest(std::fs::read(&b.path).unwrap())), sha);
        }
        other => panic!("expected the bundle, got {other:?}"),
    }
}

#[test]
fn a_fallback_bundle_is_fetched_by_name_only_when_the_signed_index_lists_it_for_this_gateway() {
    use otpatchd::backend::Fetcher;
    let n = nginx();
    index_signer(n.dir.path());
    let lp = n.publish("lp-2.1.1.otb", 50_000);
    let os = n.publish("gateway-os-2.1.raucb", 120_000);
    let other = n.publish("other-os.raucb", 1_000);
    let day = jiff::SignedDuration::from_hours(24);
    let now = jiff::Timestamp::now();
    publish_index(
        &n,
        &(now - day).to_string(),
        &(now + day).to_string(),
        serde_json::json!([
            {"compatible": "acme-gw", "version": "2.1.1", "kind": "livepatch", "file": "lp-2.1.1.otb",
             "size": 50_000, "sha256": lp},
            {"compatible": "acme-gw", "version": "2.1.0", "kind": "rauc", "file": "gateway-os-2.1.raucb",
             "size": 120_000, "sha256": os},
            {"compatible": "someone-else", "version": "9.0", "kind": "rauc", "file": "other-os.raucb",
             "size": 1_000, "sha256": other},
        ]),
    );
    let state = tempfile::tempdir().unwrap();
    let fetcher = index_fetcher(&n, state.path(), Arc::new(Default::default));
    let window = otpatchd::engine::WindowCtx { id: "w-1".into(), start: now, end: now + day, auto_start: true };
    let r = rt();
    let b = r.block_on(fetcher.fetch_named(&window, "gateway-os-2.1.raucb", no_progress())).unwrap();
    assert_eq!(b.path, state.path().join("bundles/gateway-os-2.1.raucb"));
    assert_eq!(std::fs::metadata(&b.path).unwrap().len(), 120_000);
    // A file on the server that the index does not list for this gateway is not fetched.
    let e = r.block_on(fetcher.fetch_named(&window, "other-os.raucb", no_progress())).unwrap_err();
    assert!(e.0.contains("not in the patch server's signed index for acme-gw"), "{e}");
    assert!(!state.path().join("bundles/other-os.raucb").exists());
    let e = r.block_on(fetcher.fetch_named(&window, "missing.raucb", no_progress())).unwrap_err();
    assert!(e.0.contains("not in the patch server's signed index"), "{e}");
}

/// An index verifier that panics, as a parser bug reached by a crafted signature would.
struct PanickingIndex;

impl otpatchd::fetch::IndexVerifier for PanickingIndex {
    fn verify(&self, _: &[u8], _: &[u8], _: jiff::Timestamp) -> Result<String, String> {
        let s = "é1";
        // A byte-offset slice inside a multi-byte character: the kind of panic a crafted DER time once caused.
        Ok(s.get(..1).map_or_else(|| panic!("byte index 1 is not a char boundary"), str::to_string))
    }
}

#[test]
fn an_unreadable_replay_state_fails_closed_and_a_verifier_panic_is_a_refusal() {
    use otpatchd::backend::Fetcher;
    let n = nginx();
    index_signer(n.dir.path());
    let sha = n.publish("lp-1.2.0.otb", 1000);
    let entry = serde_json::json!([{"compatible": "acme-gw", "version": "1.2.0", "kind": "livepatch",
                                   "file": "lp-1.2.0.otb", "size": 1000, "sha256": sha}]);
    let day = jiff::SignedDuration::from_hours(24);
    let now = jiff::Timestamp::now();
    publish_index(&n, &(now - day).to_string(), &(now + day).to_string(), entry);
    let state = tempfile::tempdir().unwrap();
    // What the replay check remembers, damaged (a torn write, a bad sector): it must not read as "nothing seen".
    std::fs::write(state.path().join("index-state.json"), b"{\"newest_issued\": \"20").unwrap();
    let fetcher = index_fetcher(&n, state.path(), Arc::new(Default::default));
    let window = otpatchd::engine::WindowCtx { id: "w-1".into(), start: now, end: now + day, auto_start: true };
    let r = rt();
    let e = r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap_err();
    assert!(e.0.contains("index-state.json") && e.0.contains("unreadable"), "{e}");
    std::fs::remove_file(state.path().join("index-state.json")).unwrap();

    let mut fetcher = fetcher;
    fetcher.verifier = Arc::new(PanickingIndex);
    let e = r.block_on(fetcher.fetch(&window, &Default::default(), no_progress())).unwrap_err();
    assert!(e.0.contains("index.json signature refused") && e.0.contains("panicked"), "{e}");
}

#[test]
fn the_fetcher_connects_to_exactly_the_addresses_recorded_for_the_window() {
    use otpatchd::backend::{FetchOutcome, Fetcher};
    use otpatchd::firewall::ServerAddresses;
    let n = nginx();
    index_signer(n.dir.path());
    let sha = n.publish("lp-1.2.0.otb", 10_000);
    let entry = serde_json::json!([{"compatible": "acme-gw", "version": "1.2.0", "kind": "livepatch",
                                    "file": "lp-1.2.0.otb", "size": 10_000, "sha256": sha}]);
    let day = jiff::SignedDuration::from_hours(24);
    let now = jiff::Timestamp::now();
    publish_index(&n, &(now - day).to_string(), &(now + day).to_string(), entry);
    let state = tempfile::tempdir().unwrap();
    let mut fetcher = index_fetcher(&n, state.path(), Arc::new(Default::default));
    // The channel as configured: by the server's name ("localhost", which does resolve to nginx here).
    let s = n.server();
    fetcher.channel =
        Channel::new(s.clone(), tls::client_config(&s.ca, &s.client_cert, &s.client_key).unwrap(), limits());
    let window = |id: &str| otpatchd::engine::WindowCtx { id: id.into(), start: now, end: now + day, auto_start: true };
    let r = rt();
    let record = |id: &str, port: u16| {
        let addr = std::net::IpAddr::from([127, 0, 0, 1]);
        r.block_on(ServerAddresses::for_window(state.path(), id, "localhost", port, &[addr])).unwrap()
    };

    // Recorded for w-dead: an address where nothing listens. The fetcher goes there only, though the name would
    // have led it to the server.
    let dead = free_port();
    record("w-dead", dead);
    let e = r.block_on(fetcher.fetch(&window("w-dead"), &Default::default(), no_progress())).unwrap_err();
    assert!(e.0.contains("cannot connect"), "{e}");
    assert!(!n.access_log().contains("index.json"), "nothing reached the server: {}", n.access_log());

    // Recorded for w-1: the server's address. TLS still checks the server's name ("localhost") on it.
    record("w-1", n.port);
    match r.block_on(fetcher.fetch(&window("w-1"), &Default::default(), no_progress())).unwrap() {
        FetchOutcome::Bundle(b) => assert_eq!(std::fs::metadata(&b.path).unwrap().len(), 10_000),
        other => panic!("expected a bundle, got {other:?}"),
    }
}
