//! A lean HTTP/1.1 client for the load generator: one keep-alive connection per task, requests
//! written straight from `Bytes` slices (no copy of a chunk's bytes), responses parsed by hand.
//!
//! It speaks only what the bench needs: `Content-Length` bodies (every chunkd, sink and
//! hello-world response has one), small chunked bodies (the tus peer's), no pipelining, no TLS.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time.
const READ_BUF: usize = 256 * 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body kept in memory (JSON replies); bigger bodies must be discarded or hashed.
const MAX_KEPT: u64 = 1 << 20;

/// What to do with a response body.
pub enum BodyMode<'a> {
    /// Keep it (small JSON replies).
    Keep,
    /// Count it and drop it.
    Discard,
    /// Feed it to a hash and drop it.
    Hash(&'a mut Sha256),
}

/// One response.
pub struct Response {
    pub status: u16,
    /// The body, if [`BodyMode::Keep`].
    pub body: Vec<u8>,
    /// The body's length.
    pub len: u64,
    /// The `Location` and `Upload-Offset` headers, which the tus peer answers with.
    pub location: Option<String>,
    pub upload_offset: Option<u64>,
}

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (a response head and body start at `pos`).
    pos: usize,
    /// Bytes of `buf` filled from the socket.
    end: usize,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: vec![0; READ_BUF],
            pos: 0,
            end: 0,
        }
    }

    async fn stream(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.pos = 0;
            self.end = 0;
        }
        Ok(self.stream.as_mut().expect("connected"))
    }

    /// Sends a request made of `head` (request line and headers, without the blank line that
    /// ends them; `Content-Length` is added from `body`) and the body pieces, then reads the
    /// response. The connection is kept open unless the server closes it.
    pub async fn request(
        &mut self,
        head: &str,
        body: &[Bytes],
        mut mode: BodyMode<'_>,
    ) -> io::Result<Response> {
        let len: usize = body.iter().map(Bytes::len).sum();
        let mut h = String::with_capacity(head.len() + 64);
        h.push_str(head);
        if !body.is_empty() || !head.starts_with("GET ") {
            h.push_str(&format!("content-length: {len}\r\n"));
        }
        h.push_str("\r\n");
        let stream = self.stream().await?;
        // Small bodies (multipart framing, JSON) go out with the head in one write.
        if len <= 4096 {
            let mut all = h.into_bytes();
            for b in body {
                all.extend_from_slice(b);
            }
            stream.write_all(&all).await?;
        } else {
            stream.write_all(h.as_bytes()).await?;
            for b in body {
                stream.write_all(b).await?;
            }
        }
        let r = self.read_response(&mut mode).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    /// Fills `buf[end..]` from the socket; an error at EOF.
    async fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let end = self.end;
        let stream = self.stream.as_mut().expect("connected");
        let n = stream.read(&mut self.buf[end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    async fn read_response(&mut self, mode: &mut BodyMode<'_>) -> io::Result<Response> {
        // The head.
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n\r\n") {
                break self.pos + i + 4;
            }
            if self.end - self.pos > MAX_HEAD {
                return Err(bad("response head too large"));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let (mut close, mut chunked) = (false, false);
        let (mut location, mut upload_offset) = (None, None);
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<u64>().map_err(|_| bad("bad content-length"))?);
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            } else if k.eq_ignore_ascii_case("location") {
                location = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("upload-offset") {
                upload_offset = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                if !v.eq_ignore_ascii_case("chunked") {
                    return Err(bad(format!("transfer-encoding {v:?}")));
                }
                chunked = true;
            }
        }
        self.pos = head_end;
        if chunked {
            // Only small bodies come chunked (the tus peer's replies): kept whatever `mode`.
            let body = self.read_chunked().await?;
            if close {
                self.stream = None;
            }
            return Ok(Response {
                status,
                len: body.len() as u64,
                body,
                location,
                upload_offset,
            });
        }
        let length = match (length, status) {
            (Some(n), _) => n,
            (None, 204 | 304) => 0,
            (None, _) => return Err(bad(format!("status {status} without content-length"))),
        };
        // The body.
        let mut body = Vec::new();
        if matches!(mode, BodyMode::Keep) {
            if length > MAX_KEPT {
                return Err(bad(format!("a {length}-byte body where JSON was expected")));
            }
            body.reserve(length as usize);
        }
        let mut left = length;
        while left > 0 {
            if self.pos == self.end {
                self.fill().await?;
            }
            let n = ((self.end - self.pos) as u64).min(left) as usize;
            let piece = &self.buf[self.pos..self.pos + n];
            match mode {
                BodyMode::Keep => body.extend_from_slice(piece),
                BodyMode::Discard => {}
                BodyMode::Hash(h) => h.update(piece),
            }
            self.pos += n;
            left -= n as u64;
        }
        if close {
            self.stream = None;
        }
        Ok(Response {
            status,
            body,
            len: length,
            location,
            upload_offset,
        })
    }
}

impl Conn {
    /// A `Transfer-Encoding: chunked` body (without trailers), up to `MAX_KEPT` bytes.
    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n") {
                    break self.pos + i;
                }
                if self.end - self.pos > MAX_HEAD {
                    return Err(bad("chunk size line too long"));
                }
                self.fill().await?;
            };
            let line = std::str::from_utf8(&self.buf[self.pos..line_end])
                .map_err(|_| bad("chunk size line is not UTF-8"))?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            self.pos = line_end + 2;
            if body.len() as u64 + size > MAX_KEPT {
                return Err(bad("a chunked body too large to keep"));
            }
            // The chunk's data and its CRLF (after the last, empty chunk: the final CRLF).
            let mut left = size + 2;
            while left > 0 {
                if self.pos == self.end {
                    self.fill().await?;
                }
                let n = ((self.end - self.pos) as u64).min(left) as usize;
                let keep = n.min(left.saturating_sub(2) as usize);
                body.extend_from_slice(&self.buf[self.pos..self.pos + keep]);
                self.pos += n;
                left -= n as u64;
            }
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
