//! Raw HTTP/1.1 on loopback, for the agent's probes and metrics and for hostile test servers that
//! must control every byte they send (no client library between the test and the wire).

use std::io::{Read, Write as _};
use std::time::Duration;

/// `GET path` on `127.0.0.1:port` (`Connection: close`, 5 s read timeout): the status code and the
/// body; `None` when nothing answers.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The status code of `GET path` on `127.0.0.1:port`.
pub fn status(port: u16, path: &str) -> Option<u16> {
    get(port, path).map(|(status, _)| status)
}

/// Reads a request's head, byte by byte up to the blank line (nothing of the body): its text, or
/// `None` when the client hangs up first.
pub fn read_request_head(stream: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The path of a request head (`GET /v2/ HTTP/1.1` → `/v2/`).
pub fn request_path(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("/")
}
