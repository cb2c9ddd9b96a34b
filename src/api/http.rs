//! A minimal, strict HTTP/1.1 server loop for one connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// Largest request head (request line plus headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// An idle connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (after `?`), if any.
    pub query: Option<String>,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty if none).
    pub body: Vec<u8>,
    /// Whether the client asked to close the connection after this request.
    pub close: bool,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The percent-decoded value of query parameter `name`. `+` is kept literally (Kata's
    /// Go runtime sends paths unescaped).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode_str(k).decode_utf8_lossy();
            if k == name {
                return Some(percent_decode_str(v).decode_utf8_lossy().into_owned());
            }
        }
        None
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (JSON or empty).
    pub body: Vec<u8>,
    /// Content type of a non-empty body.
    pub content_type: &'static str,
}

impl Response {
    /// A response with a JSON body.
    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        Response {
            status,
            body: serde_json::to_vec(v).unwrap_or_default(),
            content_type: "application/json",
        }
    }

    /// A response without a body.
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            body: Vec::new(),
            content_type: "application/json",
        }
    }

    /// A text body with an explicit content type.
    pub fn text(status: u16, body: String, content_type: &'static str) -> Self {
        Response {
            status,
            body: body.into_bytes(),
            content_type,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// The request is malformed; answer with this status and close.
    Bad(u16, String),
    /// An I/O error (including timeouts).
    Io(io::Error),
}

fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(ReadError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(ReadError::Bad(400, "request head too large".into()));
    }
    *budget -= n;
    if buf.last() != Some(&b'\n') {
        return Err(ReadError::Bad(400, "truncated request".into()));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ReadError::Bad(400, "request head is not UTF-8".into()))
}

/// Reads one request from `r`.
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD;
    // Tolerate empty lines before a request line (RFC 9112 §2.2).
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(ReadError::Bad(400, format!("bad request line {line:?}"))),
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Bad(
            400,
            format!("unsupported version {version:?}"),
        ));
    }
    let mut req = Request {
        method: method.to_string(),
        close: version == "HTTP/1.0",
        ..Default::default()
    };
    let target = target
        .strip_prefix("http://unix")
        .or_else(|| target.strip_prefix("http://localhost"))
        .unwrap_or(target);
    match target.split_once('?') {
        Some((p, q)) => {
            req.path = p.to_string();
            req.query = Some(q.to_string());
        }
        None => req.path = target.to_string(),
    }
    loop {
        let l = read_line(r, &mut budget)?
            .ok_or_else(|| ReadError::Bad(400, "connection closed in headers".into()))?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| ReadError::Bad(400, format!("bad header line {l:?}")))?;
        req.headers
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if let Some(c) = req.header("connection") {
        let c = c.to_ascii_lowercase();
        if c.contains("close") {
            req.close = true;
        } else if c.contains("keep-alive") {
            req.close = false;
        }
    }
    let chunked = req
        .header("transfer-encoding")
        .map(|t| t.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    if chunked {
        req.body = read_chunked(r)?;
    } else if let Some(cl) = req.header("content-length") {
        let len: usize = cl
            .parse()
            .map_err(|_| ReadError::Bad(400, format!("bad Content-Length {cl:?}")))?;
        if len > MAX_BODY {
            return Err(ReadError::Bad(413, "body too large".into()));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(ReadError::Io)?;
        req.body = body;
    }
    Ok(req)
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_HEAD;
        let line = read_line(r, &mut budget)?
            .ok_or_else(|| ReadError::Bad(400, "connection closed in chunk".into()))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| ReadError::Bad(400, format!("bad chunk size {size_str:?}")))?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let t = read_line(r, &mut budget)?
                    .ok_or_else(|| ReadError::Bad(400, "connection closed in trailer".into()))?;
                if t.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Bad(413, "body too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(ReadError::Io)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(ReadError::Io)?;
        if &crlf != b"\r\n" {
            return Err(ReadError::Bad(400, "chunk not terminated by CRLF".into()));
        }
    }
}

/// Writes `resp` to `w`.
pub fn write_response<W: Write>(w: &mut W, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if resp.status != 204 {
        if !resp.body.is_empty() {
            head.push_str(&format!("Content-Type: {}\r\n", resp.content_type));
        }
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if resp.status != 204 {
        w.write_all(&resp.body)?;
    }
    w.flush()
}

/// Serves requests on `stream` until the peer closes it, asks to close, or sends garbage.
pub fn serve_connection(stream: UnixStream, handler: &dyn Fn(&Request) -> Response) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("api: cannot clone stream: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    loop {
        match read_request(&mut reader) {
            Ok(req) => {
                log::debug!("api: {} {}", req.method, req.path);
                let resp = handler(&req);
                if write_response(&mut writer, &resp, req.close).is_err() || req.close {
                    return;
                }
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(status, msg)) => {
                let body = serde_json::json!({"code": "INVALID_REQUEST", "message": msg});
                let _ = write_response(&mut writer, &Response::json(status, &body), true);
                return;
            }
            Err(ReadError::Io(e)) => {
                log::debug!("api: connection error: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, ReadError> {
        read_request(&mut BufReader::new(s.as_bytes()))
    }

    #[test]
    fn parses_get_without_body() {
        let r = parse(
            "GET /api/v1/daemon HTTP/1.1\r\nHost: unix\r\nContent-Type: application/json\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/daemon");
        assert!(r.body.is_empty());
        assert!(!r.close);
    }

    #[test]
    fn decodes_query() {
        let r = parse("DELETE /api/v1/mount?mountpoint=%2Frafs%2Fc1%2Flowerdir HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(r.query_param("mountpoint").unwrap(), "/rafs/c1/lowerdir");
        let r =
            parse("DELETE /api/v1/mount?mountpoint=/rafs/a+b/lowerdir HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.query_param("mountpoint").unwrap(), "/rafs/a+b/lowerdir");
    }

    #[test]
    fn chunked_body() {
        let r = parse("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            parse("HELLO\r\n\r\n"),
            Err(ReadError::Bad(400, _))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(ReadError::Bad(400, _))
        ));
        assert!(matches!(parse(""), Err(ReadError::Closed)));
    }

    #[test]
    fn no_body_on_204() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::empty(204), false).unwrap();
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
