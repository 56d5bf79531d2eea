//! The HTTP/1.1 of the control socket: one request per connection, read with bounds
//! (headers, body, time), parsed by `httparse`; responses with a JSON body or none.

use std::io::{self, Read, Write};

/// The most bytes of request line and headers accepted.
pub const MAX_HEAD: usize = 8 << 10;
/// The largest request body accepted.
pub const MAX_BODY: usize = 64 << 10;

/// A request that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection failed or timed out mid-request.
    #[error("the request could not be read")]
    Io(#[source] io::Error),
    /// The connection ended before the request was complete.
    #[error("the connection ended before the request was complete")]
    Truncated,
    /// More header bytes than [`MAX_HEAD`].
    #[error("the request headers are over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A body larger than [`MAX_BODY`].
    #[error("the request body is over {MAX_BODY} bytes")]
    BodyTooLarge,
    /// Not HTTP/1.x as httparse reads it.
    #[error("the request is not valid HTTP/1.1")]
    Malformed(#[source] httparse::Error),
    /// A Content-Length that is not a number.
    #[error("the Content-Length header is not a number")]
    BadLength,
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without a query string.
    pub path: String,
    /// Whether the client asked to upgrade the connection (`Connection: Upgrade`).
    pub upgrade: bool,
    /// The body (empty without one).
    pub body: Vec<u8>,
}

/// Reads one request from `stream` (whose read timeout the caller set).
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf).map_err(HttpError::Malformed)? {
            httparse::Status::Complete(head_len) => {
                let method = req.method.unwrap_or_default().to_string();
                let path = req
                    .path
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let mut length = 0usize;
                let mut upgrade = false;
                for h in req.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().map_err(|_| HttpError::BadLength)?;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        upgrade |= value
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
                    }
                }
                if length > MAX_BODY {
                    return Err(HttpError::BodyTooLarge);
                }
                let mut body = buf[head_len..].to_vec();
                body.truncate(length);
                while body.len() < length {
                    let n = stream.read(&mut chunk).map_err(HttpError::Io)?;
                    if n == 0 {
                        return Err(HttpError::Truncated);
                    }
                    let take = n.min(length - body.len());
                    body.extend_from_slice(&chunk[..take]);
                }
                return Ok(Request {
                    method,
                    path,
                    upgrade,
                    body,
                });
            }
            httparse::Status::Partial => {
                if buf.len() >= MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                let n = stream.read(&mut chunk).map_err(HttpError::Io)?;
                if n == 0 {
                    return Err(HttpError::Truncated);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// The reason phrase of the status codes the socket answers with.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        101 => "Switching Protocols",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a response: `body` as JSON, or no body.
pub fn write_response(
    stream: &mut impl Write,
    status: u16,
    body: Option<&serde_json::Value>,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    match body {
        Some(v) => {
            let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n\r\n{text}", text.len()));
        }
        None if status == 101 => out.push_str("Connection: Upgrade\r\nUpgrade: console\r\n\r\n"),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// A response as the client reads it.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (JSON when there is one).
    pub body: Vec<u8>,
}

/// Reads a response's status line, headers and body (the client side).
pub fn read_response(stream: &mut impl Read) -> Result<Response, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    // Byte by byte up to the end of the head: after a 101 the rest is the console's.
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let n = stream.read(&mut byte).map_err(HttpError::Io)?;
        if n == 0 {
            return Err(HttpError::Truncated);
        }
        buf.push(byte[0]);
        if buf.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).map_err(HttpError::Malformed)?;
    let status = resp.code.unwrap_or(0);
    let mut length = 0usize;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = String::from_utf8_lossy(h.value)
                .trim()
                .parse()
                .map_err(|_| HttpError::BadLength)?;
        }
    }
    if length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(HttpError::Io)?;
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_a_body_split_across_reads() {
        let raw =
            b"PUT /api/v1/vm.pause?x=1 HTTP/1.1\r\nHost: l\r\nContent-Length: 4\r\n\r\n{}\r\n";
        let r = read_request(&mut &raw[..]).unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/api/v1/vm.pause");
        assert_eq!(r.body, b"{}\r\n");
        assert!(!r.upgrade);
    }

    #[test]
    fn upgrade_is_seen_in_a_token_list() {
        let raw = b"GET /api/v1/vm.console HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert!(read_request(&mut &raw[..]).unwrap().upgrade);
    }

    #[test]
    fn hostile_requests_get_errors_not_waits() {
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(matches!(
            read_request(&mut &big[..]),
            Err(HttpError::Malformed(_) | HttpError::HeadTooLarge)
        ));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(matches!(
            read_request(&mut &long[..]),
            Err(HttpError::HeadTooLarge)
        ));
        let body = b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
        assert!(matches!(
            read_request(&mut &body[..]),
            Err(HttpError::BodyTooLarge)
        ));
        let cut = b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab";
        assert!(matches!(
            read_request(&mut &cut[..]),
            Err(HttpError::Truncated)
        ));
        let nan = b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert!(matches!(
            read_request(&mut &nan[..]),
            Err(HttpError::BadLength)
        ));
        assert!(matches!(
            read_request(&mut &b"GET / HT"[..]),
            Err(HttpError::Truncated)
        ));
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        let v = serde_json::json!({"state": "running"});
        write_response(&mut out, 200, Some(&v)).unwrap();
        let r = read_response(&mut &out[..]).unwrap();
        assert_eq!(r.status, 200);
        let back: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(back, v);
        let mut out = Vec::new();
        write_response(&mut out, 204, None).unwrap();
        let r = read_response(&mut &out[..]).unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }
}
