//! The mutual-TLS channel to the patch server: connect (to the addresses resolved for the window, TLS checking the
//! server's name), `GET` small files whole and bundles with resume (`Range` on a `.part`), every wait bounded and
//! every retry counted. Errors say whether a retry can help.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use otpatch_common::policy::PatchServer;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::http;
use crate::backend::{BackendError, BackendResult, ProgressFn};
use crate::fsutil::sync_dir;

/// Limits and timings of the channel.
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// Connect, handshake and each read.
    pub io_timeout: Duration,
    /// Attempts per download (the first included).
    pub attempts: u32,
    /// First backoff; doubles up to 30 s.
    pub backoff: Duration,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits { io_timeout: Duration::from_secs(30), attempts: 6, backoff: Duration::from_secs(1) }
    }
}

/// A connection factory to the patch server.
#[derive(Clone)]
pub struct Channel {
    server: PatchServer,
    connector: TlsConnector,
    limits: ChannelLimits,
    /// Connect to these (in order) instead of resolving the server's host: the addresses resolved once for the
    /// window (or a test's fault-injecting proxy).
    connect_to: Vec<SocketAddr>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("url", &self.server.url).finish_non_exhaustive()
    }
}

/// A failure that retrying will not fix.
fn fatal(msg: String) -> (bool, BackendError) {
    (false, BackendError::new(msg))
}

fn transient(msg: String) -> (bool, BackendError) {
    (true, BackendError::new(msg))
}

impl Channel {
    pub fn new(server: PatchServer, tls: Arc<rustls::ClientConfig>, limits: ChannelLimits) -> Self {
        Channel { server, connector: TlsConnector::from(tls), limits, connect_to: Vec::new() }
    }

    /// Connects to `addr` instead of the server's resolved address (the TLS name stays the server's).
    pub fn connect_via(mut self, addr: SocketAddr) -> Self {
        self.connect_to = vec![addr];
        self
    }

    /// Connects to the first of `addrs` that answers (the TLS name stays the server's); none resolves anything.
    pub fn connect_via_any(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.connect_to = addrs;
        self
    }

    fn path_of(&self, file: &str) -> String {
        let base = self.server.url.splitn(4, '/').nth(3).unwrap_or_default();
        format!("/{base}{file}")
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, (bool, BackendError)> {
        let host = &self.server.host;
        let t = self.limits.io_timeout;
        let tcp = match self.connect_to.as_slice() {
            [] => tokio::time::timeout(t, TcpStream::connect((host.as_str(), self.server.port))).await,
            addrs => tokio::time::timeout(t, TcpStream::connect(addrs)).await,
        }
        .map_err(|_| transient(format!("connecting to {host}:{} timed out", self.server.port)))?
        .map_err(|e| transient(format!("cannot connect to {host}:{}: {e}", self.server.port)))?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| fatal(format!("patch server name {host:?} is not usable for TLS: {e}")))?;
        let tls = tokio::time::timeout(t, self.connector.connect(name, tcp))
            .await
            .map_err(|_| transient(format!("TLS handshake with {host} timed out")))?
            .map_err(|e| tls_error(host, e))?;
        Ok(tls)
    }

    /// GETs a small file (the index) whole.
    pub async fn get_small(&self, file: &str, max: u64) -> BackendResult<Vec<u8>> {
        let mut last = BackendError::new("no attempt made");
        for attempt in 0..self.limits.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            match self.get_small_once(file, max).await {
                Ok(b) => return Ok(b),
                Err((false, e)) => return Err(e),
                Err((true, e)) => {
                    tracing::warn!(file, attempt, error = %e, "patch server request failed; retrying");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn get_small_once(&self, file: &str, max: u64) -> Result<Vec<u8>, (bool, BackendError)> {
        let path = self.path_of(file);
        let tls = self.connect().await?;
        let (head, mut r) =
            http::get(tls, &self.server.host, &path, None, self.limits.io_timeout).await.map_err(read_error)?;
        check_status(head.status, &path)?;
        http::read_small(&mut r, &head, max, self.limits.io_timeout).await.map_err(|e| transient(e.0))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        (self.limits.backoff * 2u32.saturating_pow(attempt.saturating_sub(1))).min(Duration::from_secs(30))
    }

    /// Downloads `file` to `dest`, resuming a partial download, and checks its size and SHA-256.
    pub async fn download(
        &self,
        file: &str,
        dest: &Path,
        size: u64,
        sha256: &str,
        max: u64,
        progress: &ProgressFn,
    ) -> BackendResult<()> {
        if size > max {
            return Err(BackendError::new(format!(
                "{file} is {size} bytes, more than the policy's limits.max_download of {max}"
            )));
        }
        let part = part_path(dest);
        if let Some(dir) = part.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| BackendError::new(format!("{}: {e}", dir.display())))?;
        }
        let mut last = BackendError::new("no attempt made");
        let mut done = false;
        for attempt in 0..self.limits.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            match self.download_once(file, &part, size, progress).await {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err((false, e)) => return Err(e),
                Err((true, e)) => {
                    tracing::warn!(file, attempt, error = %e, "download interrupted; resuming");
                    last = e;
                }
            }
        }
        if !done {
            return Err(BackendError::new(format!("{file}: gave up after {} attempts: {last}", self.limits.attempts)));
        }
        let p = part.clone();
        let got = tokio::task::spawn_blocking(move || crate::fsutil::sha256_file(&p))
            .await
            .map_err(|e| BackendError::new(format!("hashing {}: {e}", part.display())))?
            .map_err(|e| BackendError::new(format!("{}: {e}", part.display())))?;
        if !got.eq_ignore_ascii_case(sha256) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(BackendError::new(format!(
                "{file}: SHA-256 {got} does not match the signed index ({sha256}); the download was discarded"
            )));
        }
        tokio::fs::rename(&part, dest).await.map_err(|e| BackendError::new(format!("{}: {e}", dest.display())))?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir).map_err(|e| BackendError::new(format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }

    async fn download_once(
        &self,
        file: &str,
        part: &Path,
        size: u64,
        progress: &ProgressFn,
    ) -> Result<(), (bool, BackendError)> {
        let io = |e: std::io::Error| fatal(format!("{}: {e}", part.display()));
        let mut have = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
        if have > size {
            have = 0;
            tokio::fs::remove_file(part).await.map_err(io)?;
        }
        if have == size {
            return Ok(());
        }
        let path = self.path_of(file);
        let tls = self.connect().await?;
        let (head, mut body) =
            http::get(tls, &self.server.host, &path, (have > 0).then_some(have), self.limits.io_timeout)
                .await
                .map_err(read_error)?;
        let mut out = tokio::fs::OpenOptions::new().create(true).append(true).open(part).await.map_err(io)?;
        let remaining = match head.status {
            206 => match head.content_range {
                Some((first, _, _)) if first == have => size - have,
                _ => {
                    // The server resumed elsewhere: start over.
                    out.set_len(0).await.map_err(io)?;
                    return Err(transient(format!("{path}: unexpected Content-Range {:?}", head.content_range)));
                }
            },
            200 => {
                // No range support (or a fresh start): the whole file comes.
                out.set_len(0).await.map_err(io)?;
                have = 0;
                size
            }
            416 => {
                out.set_len(0).await.map_err(io)?;
                return Err(transient(format!("{path}: range not satisfiable; starting over")));
            }
            s => return Err(check_status(s, &path).err().unwrap_or_else(|| transient(format!("{path}: HTTP {s}")))),
        };
        if let Some(len) = head.content_length {
            if len != remaining {
                out.set_len(0).await.map_err(io)?;
                return Err(fatal(format!(
                    "{path}: the server sends {len} bytes where the signed index says {remaining} remain"
                )));
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = remaining;
        let mut last_pct = -1;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = tokio::time::timeout(self.limits.io_timeout, body.read(&mut buf[..want]))
                .await
                .map_err(|_| transient(format!("{path}: no data for {:?}", self.limits.io_timeout)))?
                .map_err(|e| transient(format!("{path}: connection lost: {e}")))?;
            if n == 0 {
                out.flush().await.map_err(io)?;
                return Err(transient(format!("{path}: connection closed with {left} bytes to go")));
            }
            out.write_all(&buf[..n]).await.map_err(io)?;
            left -= n as u64;
            let pct = (((size - left) * 100) / size.max(1)) as i32;
            if pct != last_pct {
                last_pct = pct;
                progress(pct, format!("downloading {file}"));
            }
        }
        out.flush().await.map_err(io)?;
        out.sync_all().await.map_err(io)?;
        let _ = have;
        Ok(())
    }
}

/// Where the download to `dest` is kept until it is complete: `<dest file name>.part`, the whole name kept, so
/// the partial of `a-1.0.2.otb` is never taken for that of `a-1.0.2.raucb` (or `a-1.0` for `a-1.1`).
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    dest.with_file_name(name)
}

fn check_status(status: u16, path: &str) -> Result<(), (bool, BackendError)> {
    match status {
        200 | 206 => Ok(()),
        400 | 495 | 496 => Err(fatal(format!(
            "the patch server refused the request for {path} (HTTP {status}): it did not accept this gateway's \
             client certificate (policy server.client_cert)"
        ))),
        401 | 403 => Err(fatal(format!("the patch server denied access to {path} (HTTP {status})"))),
        404 => Err(fatal(format!("{path} is not on the patch server (HTTP 404)"))),
        s if s >= 500 => Err(transient(format!("the patch server failed on {path} (HTTP {s})"))),
        s => Err(fatal(format!("unexpected HTTP {s} for {path}"))),
    }
}

fn read_error(e: BackendError) -> (bool, BackendError) {
    // A TLS alert from the server after the handshake (TLS 1.3 checks the client certificate then).
    if e.0.contains("alert") || e.0.contains("CertificateRequired") || e.0.contains("BadCertificate") {
        return fatal(format!("the patch server rejected this gateway's client certificate: {}", e.0));
    }
    transient(e.0)
}

fn tls_error(host: &str, e: std::io::Error) -> (bool, BackendError) {
    let text = e.to_string();
    if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") || text.contains("NotValidForName") {
        return fatal(format!(
            "the patch server {host} presented a certificate the policy's server CA does not vouch for: {text}"
        ));
    }
    if text.contains("alert") {
        return fatal(format!("the patch server {host} rejected the TLS handshake (client certificate?): {text}"));
    }
    transient(format!("TLS with {host}: {text}"))
}
