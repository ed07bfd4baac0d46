//! A loopback HTTP proxy in front of the test registry: it counts requests and can inject what a
//! real registry or network does on a bad day (429 rate limits, a redirect loop, a server that
//! trickles bytes). One request per connection (`Connection: close`), plain HTTP/1.1.

use anyhow::Result;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with manifest and blob requests (`/v2/` always passes through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    TooManyRequests,
    /// `403 Forbidden` with distribution's `DENIED` error body.
    Forbidden,
    /// `503 Service Unavailable`, as a registry behind a load balancer with no backend.
    Unavailable,
    /// The connection reset (TCP RST) once the request is read, as a middlebox that drops it.
    Reset,
    RedirectLoop,
    /// Headers at once, then one byte every half second.
    Trickle,
    /// Blob downloads (`GET …/blobs/…`) only: the registry's own answer, its body one byte every
    /// half second; everything else passes.
    TrickleBlobs,
}

/// What a request asked the registry for, by method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `GET /v2/`: the API check and its auth challenge.
    Ping,
    ManifestGet,
    ManifestHead,
    BlobGet,
    BlobHead,
    /// Anything outside `/v2/` (a token service reached through the proxy).
    Token,
    /// Any other request under `/v2/`.
    Other,
}

impl Kind {
    /// Every kind, in the order tables show them.
    pub const ALL: [Kind; 7] = [
        Kind::Ping,
        Kind::ManifestGet,
        Kind::ManifestHead,
        Kind::BlobGet,
        Kind::BlobHead,
        Kind::Token,
        Kind::Other,
    ];

    /// The kind of `method` `path` (`path` as in the request line).
    pub fn of(method: &str, path: &str) -> Self {
        let path = path.split('?').next().unwrap_or(path);
        if !path.starts_with("/v2/") {
            return Kind::Token;
        }
        if path == "/v2/" {
            return Kind::Ping;
        }
        match (
            method,
            path.contains("/manifests/"),
            path.contains("/blobs/"),
        ) {
            ("GET", true, _) => Kind::ManifestGet,
            ("HEAD", true, _) => Kind::ManifestHead,
            ("GET", _, true) => Kind::BlobGet,
            ("HEAD", _, true) => Kind::BlobHead,
            _ => Kind::Other,
        }
    }

    /// A short column name.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ping => "/v2/",
            Kind::ManifestGet => "manifest GET",
            Kind::ManifestHead => "manifest HEAD",
            Kind::BlobGet => "blob GET",
            Kind::BlobHead => "blob HEAD",
            Kind::Token => "token",
            Kind::Other => "other",
        }
    }
}

/// Requests by [`Kind`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub std::collections::BTreeMap<Kind, u64>);

impl Counts {
    pub fn of(&self, kind: Kind) -> u64 {
        self.0.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicU64>,
    kinds: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let requests = Arc::new(AtomicU64::new(0));
        let kinds = Arc::new(Mutex::new(Counts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, r, k, s, upstream) = (
            mode.clone(),
            requests.clone(),
            kinds.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (m, r, k, upstream) =
                            (m.clone(), r.clone(), k.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = handle(client, &upstream, &m, &r, &k);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            port,
            mode,
            requests,
            kinds,
            stop,
        })
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests seen so far, by kind.
    pub fn counts(&self) -> Counts {
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts both counts again.
    pub fn reset_count(&self) {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.requests.store(0, Ordering::Relaxed);
        *kinds = Counts::default();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn handle(
    client: TcpStream,
    upstream: &str,
    mode: &Mutex<Mode>,
    requests: &AtomicU64,
    kinds: &Mutex<Counts>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut request_line = String::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.clone();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    {
        let method = request_line.split_whitespace().next().unwrap_or("");
        let mut kinds = kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        requests.fetch_add(1, Ordering::Relaxed);
        *kinds.0.entry(Kind::of(method, &path)).or_default() += 1;
    }
    let mode = *mode
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut client = client;
    let injected = path != "/v2/" && path.starts_with("/v2/");
    match mode {
        Mode::TooManyRequests if injected => {
            let body =
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit exceeded"}]}"#;
            write!(
                client,
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 60\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        Mode::Forbidden if injected => {
            let body = r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
            write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        Mode::Unavailable if injected => {
            let body = "no healthy upstream";
            write!(
                client,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        Mode::Reset if injected => {
            reset_on_close(&client);
            return Ok(());
        }
        Mode::RedirectLoop if injected => {
            write!(
                client,
                "HTTP/1.1 302 Found\r\nLocation: {path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Mode::Trickle if injected => {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
            )?;
            for _ in 0..200 {
                client.write_all(b" ")?;
                client.flush()?;
                std::thread::sleep(Duration::from_millis(500));
            }
            return Ok(());
        }
        _ => {}
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&head)?;
    server.write_all(&body)?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let blob_get = request_line.starts_with("GET ") && path.contains("/blobs/");
    if mode == Mode::TrickleBlobs && blob_get {
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |i| i + 4);
        client.write_all(&response[..split])?;
        for byte in response[split..].iter().take(200) {
            client.write_all(&[*byte])?;
            client.flush()?;
            std::thread::sleep(Duration::from_millis(500));
        }
        return Ok(());
    }
    client.write_all(&response)?;
    Ok(())
}

/// Makes closing `stream` send a TCP RST instead of a FIN (`SO_LINGER` with a zero timeout).
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: setsockopt(2) on a socket `stream` keeps open for the call, reading a local
    // `linger` of exactly the length passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn requests_are_kinded_by_method_and_path() {
        for (method, path, kind) in [
            ("GET", "/v2/", Kind::Ping),
            ("GET", "/v2/team/app/manifests/v1", Kind::ManifestGet),
            (
                "HEAD",
                "/v2/team/app/manifests/sha256:ab",
                Kind::ManifestHead,
            ),
            ("GET", "/v2/team/app/blobs/sha256:ab", Kind::BlobGet),
            ("HEAD", "/v2/team/app/blobs/sha256:ab", Kind::BlobHead),
            ("GET", "/token?scope=repository:team/app:pull", Kind::Token),
            ("GET", "/v2/_catalog", Kind::Other),
        ] {
            assert_eq!(Kind::of(method, path), kind, "{method} {path}");
        }
    }
}
