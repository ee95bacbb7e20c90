//! The little HTTP/1.1 the patch channel needs: `GET` with an optional `Range`, one request per connection,
//! bodies delimited by `Content-Length` (static files, as nginx serves them). Header size (each line as it is
//! read), body size and every read are bounded.
//!
//! Kept instead of hyper for now: the channel needs only this, its resume and digest rules are proven against
//! nginx, and it is one small function. The fleet (DDI) client needs a general HTTP client: that is
//! when both move to hyper (http1 client) over tokio-rustls, as one stack.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::backend::BackendError;

/// Largest response head we read.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    /// `(first, last, total)` of a 206 response.
    pub content_range: Option<(u64, u64, Option<u64>)>,
}

/// Sends a GET and reads the response head. The returned reader is positioned at the body.
pub async fn get<S>(
    stream: S,
    host: &str,
    path: &str,
    range_from: Option<u64>,
    timeout: Duration,
) -> Result<(Head, BufReader<S>), BackendError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: otpatchd/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(from) = range_from {
        req.push_str(&format!("Range: bytes={from}-\r\n"));
    }
    req.push_str("\r\n");
    let mut r = BufReader::new(stream);
    tokio::time::timeout(timeout, async {
        r.get_mut().write_all(req.as_bytes()).await?;
        r.get_mut().flush().await
    })
    .await
    .map_err(|_| BackendError::new(format!("sending the request for {path} timed out")))?
    .map_err(|e| BackendError::new(format!("sending the request for {path}: {e}")))?;

    let mut head_len = 0usize;
    let mut lines = Vec::new();
    // Bounded by MAX_HEAD bytes.
    loop {
        // Each line is read through a limit of what is left of MAX_HEAD (+1 to see it overflow), so a server that
        // streams one endless line is cut off there, not buffered until the timeout.
        let mut raw = Vec::new();
        let left = (MAX_HEAD - head_len) as u64 + 1;
        let n = tokio::time::timeout(timeout, (&mut r).take(left).read_until(b'\n', &mut raw))
            .await
            .map_err(|_| BackendError::new(format!("no response for {path} within {timeout:?}")))?
            .map_err(|e| BackendError::new(format!("reading the response for {path}: {e}")))?;
        if n == 0 {
            return Err(BackendError::new(format!("the server closed the connection before answering {path}")));
        }
        head_len += n;
        if head_len > MAX_HEAD {
            return Err(BackendError::new(format!("response head for {path} larger than {MAX_HEAD} bytes")));
        }
        if raw.last() != Some(&b'\n') {
            return Err(BackendError::new(format!("the server closed the connection inside the head of {path}")));
        }
        let line = String::from_utf8(raw)
            .map_err(|_| BackendError::new(format!("the response head for {path} is not text")))?;
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let head = parse_head(&lines).map_err(|e| BackendError::new(format!("{path}: {e}")))?;
    Ok((head, r))
}

/// Parses a status line and headers.
pub fn parse_head(lines: &[String]) -> Result<Head, String> {
    let status_line = lines.first().ok_or("empty response")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = Head { status, content_length: None, content_range: None };
    for l in &lines[1..] {
        let Some((name, value)) = l.split_once(':') else { return Err(format!("bad header line {l:?}")) };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = Some(value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?);
            }
            "content-range" => head.content_range = Some(parse_content_range(value)?),
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(format!("unsupported Transfer-Encoding {value:?} (static files only)"));
            }
            _ => {}
        }
    }
    Ok(head)
}

fn parse_content_range(v: &str) -> Result<(u64, u64, Option<u64>), String> {
    let bad = || format!("bad Content-Range {v:?}");
    let rest = v.strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, total) = rest.split_once('/').ok_or_else(bad)?;
    let (a, b) = span.split_once('-').ok_or_else(bad)?;
    let total = if total == "*" { None } else { Some(total.parse().map_err(|_| bad())?) };
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?, total))
}

/// Reads a whole small body (an index), at most `max` bytes.
pub async fn read_small<R: AsyncRead + Unpin>(
    r: &mut R,
    head: &Head,
    max: u64,
    timeout: Duration,
) -> Result<Vec<u8>, BackendError> {
    let len = head.content_length.ok_or_else(|| BackendError::new("response without Content-Length"))?;
    if len > max {
        return Err(BackendError::new(format!("response of {len} bytes is larger than the {max} allowed")));
    }
    let mut buf = vec![0u8; len as usize];
    tokio::time::timeout(timeout, r.read_exact(&mut buf))
        .await
        .map_err(|_| BackendError::new("reading the response timed out"))?
        .map_err(|e| BackendError::new(format!("reading the response: {e}")))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn heads_are_read() {
        let h = parse_head(&lines(&[
            "HTTP/1.1 206 Partial Content",
            "Content-Length: 10",
            "Content-Range: bytes 90-99/100",
        ]))
        .unwrap();
        assert_eq!(h, Head { status: 206, content_length: Some(10), content_range: Some((90, 99, Some(100))) });
        assert!(parse_head(&lines(&["SSH-2.0-OpenSSH"])).unwrap_err().contains("not an HTTP"));
        assert!(parse_head(&lines(&["HTTP/1.1 200 OK", "Transfer-Encoding: chunked"]))
            .unwrap_err()
            .contains("chunked"));
        assert!(parse_head(&lines(&["HTTP/1.1 200 OK", "Content-Length: lots"])).unwrap_err().contains("lots"));
    }

    #[tokio::test]
    async fn get_sends_range_and_reads_the_head() {
        let (client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let n = server.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            server
                .write_all(b"HTTP/1.1 206 Partial\r\nContent-Length: 3\r\nContent-Range: bytes 5-7/8\r\n\r\nabc")
                .await
                .unwrap();
            req
        });
        let (head, mut r) = get(client, "patch.example", "/b.otb", Some(5), Duration::from_secs(5)).await.unwrap();
        assert_eq!(head.status, 206);
        let body = read_small(&mut r, &head, 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(body, b"abc");
        let req = srv.await.unwrap();
        assert!(req.starts_with("GET /b.otb HTTP/1.1\r\nHost: patch.example\r\n"), "{req}");
        assert!(req.contains("Range: bytes=5-\r\n"));
    }

    #[tokio::test]
    async fn an_endless_header_line_is_cut_at_the_head_limit() {
        let (client, mut server) = tokio::io::duplex(8192);
        let srv = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\nX-Junk: ").await;
            // A hostile server streams one header line without end (bounded here at 64 MiB).
            let chunk = vec![b'a'; 8192];
            let mut sent = 0usize;
            while sent < 64 << 20 {
                if server.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        let e = get(client, "patch.example", "/index.json", None, Duration::from_secs(20)).await.unwrap_err();
        assert!(e.0.contains("larger than 16384 bytes"), "{e}");
        let sent = srv.await.unwrap();
        assert!(sent < 1 << 20, "the client read {sent} bytes of one header line before refusing it");
    }
}
