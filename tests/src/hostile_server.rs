//! A loopback HTTP(S) server that plays a hostile registry or token realm: each request is
//! answered by a handler the test writes — a scripted answer, a body of any size streamed without
//! being held in memory, or no answer at all (the connection accepted, the request read, then
//! silence until the client hangs up). One request per connection (`Connection: close`); every
//! request's method and path are recorded, so a test can show that nothing reached it.

use crate::tls::TestCa;
use anyhow::Result;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path with its query (`/token?scope=…`).
    pub path: String,
    /// The whole request head (request line and headers).
    pub head: String,
}

impl Request {
    /// Whether the head has a header `name` (any case) whose value starts with `prefix`.
    pub fn header_starts_with(&self, name: &str, prefix: &str) -> bool {
        self.head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case(name) && v.trim().starts_with(prefix)
            })
        })
    }
}

/// A response body.
#[derive(Clone, Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `len` copies of `byte`, written in 64 KiB chunks until done or the client hangs up (a
    /// `Content-Length` of `len` is sent: a petabyte is fine).
    Repeat {
        byte: u8,
        len: u64,
    },
}

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Reads the request, then sends nothing until the client closes the connection.
    Never,
    Respond {
        /// The status line's code and reason: `401 Unauthorized`.
        status: String,
        headers: Vec<(String, String)>,
        body: Body,
    },
}

impl Reply {
    pub fn new(status: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        Self::Respond {
            status: status.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Body::Bytes(body.into()),
        }
    }

    /// `status` with `len` bytes of `byte` as the body.
    pub fn repeat(status: &str, headers: &[(&str, &str)], byte: u8, len: u64) -> Self {
        let Self::Respond {
            status, headers, ..
        } = Self::new(status, headers, Vec::new())
        else {
            unreachable!("Reply::new responds")
        };
        Self::Respond {
            status,
            headers,
            body: Body::Repeat { byte, len },
        }
    }

    /// A distribution-style JSON answer.
    pub fn json(status: &str, body: &str) -> Self {
        Self::new(status, &[("Content-Type", "application/json")], body)
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running server; stops accepting when dropped.
pub struct HostileServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl HostileServer {
    /// Plain HTTP on 127.0.0.1.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Result<Self> {
        Self::launch(None, Arc::new(handler))
    }

    /// HTTPS on 127.0.0.1 with a certificate `ca` signed (give the agent `ca.ca_pem`).
    pub fn start_tls(
        ca: &TestCa,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::launch(Some(ca.server_config()?), Arc::new(handler))
    }

    fn launch(tls: Option<Arc<rustls::ServerConfig>>, handler: Arc<Handler>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (handler, r, tls) = (handler.clone(), r.clone(), tls.clone());
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            match tls {
                                Some(config) => {
                                    let Ok(connection) = rustls::ServerConnection::new(config)
                                    else {
                                        return;
                                    };
                                    serve(
                                        rustls::StreamOwned::new(connection, stream),
                                        &*handler,
                                        &r,
                                    );
                                }
                                None => serve(stream, &*handler, &r),
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            port,
            requests,
            stop,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The requests read so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve<S: Read + Write>(mut stream: S, handler: &Handler, requests: &Mutex<Vec<Request>>) {
    let Some(head) = crate::http::read_request_head(&mut stream) else {
        return;
    };
    let mut words = head.split_whitespace();
    let request = Request {
        method: words.next().unwrap_or("").to_string(),
        path: words.next().unwrap_or("/").to_string(),
        head: head.clone(),
    };
    requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(request.clone());
    match handler(&request) {
        Reply::Never => {
            // Until the client gives up (EOF or an error).
            let mut buf = [0u8; 1024];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let len = match &body {
                Body::Bytes(b) => b.len() as u64,
                Body::Repeat { len, .. } => *len,
            };
            let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n");
            for (k, v) in &headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            if stream.write_all(out.as_bytes()).is_err() {
                return;
            }
            if request.method == "HEAD" {
                let _ = stream.flush();
                return;
            }
            match body {
                Body::Bytes(b) => {
                    let _ = stream.write_all(&b);
                }
                Body::Repeat { byte, len } => {
                    let chunk = vec![byte; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        if stream.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
            }
            let _ = stream.flush();
        }
    }
}
