//! A real registry (Debian `docker-registry`, distribution 2.8) on 127.0.0.1, with htpasswd (bcrypt)
//! authentication and its storage in a temp dir; or ([`Registry::start_token`]) with `auth: token`
//! against a [`TokenServer`]; or ([`Registry::start_proxy`]) as a pull-through mirror (`proxy`
//! mode, no auth of its own) in front of another registry; optionally behind TLS with a
//! certificate of a private CA ([`Registry::serve_tls`]), and requiring a client certificate of
//! that CA.

use crate::process::{ChildGuard, free_port, require_binary, wait_until};
use crate::token_server::{self, TokenServer};
use anyhow::{Context as _, Result};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// A running registry. Stopped and its storage removed on drop.
pub struct Registry {
    dir: TempDir,
    port: u16,
    users: Vec<(String, String)>,
    child: Option<ChildGuard>,
    binary: PathBuf,
    /// How it authenticates, and whether it proxies: htpasswd unless a `start_*` says otherwise.
    mode: Mode,
    /// Served over TLS (`http.tls`), and whether a client certificate is required.
    tls: Option<bool>,
}

/// Token auth or proxy mode: the configuration beyond the htpasswd registry of [`Registry::start`].
/// Not `Debug`: a mirror's mode holds its upstream password.
#[derive(Clone, Default)]
enum Mode {
    #[default]
    Htpasswd,
    /// `auth: token` (`realm`, `service`, `issuer`, `rootcertbundle` = `cert_pem`, written next
    /// to the configuration).
    Token { realm: String, cert_pem: String },
    /// `proxy` mode with no auth of its own: `remoteurl` and the upstream credential.
    Proxy {
        remote: String,
        username: String,
        password: String,
    },
}

impl Registry {
    /// Starts a registry that accepts the given `(user, password)` pairs.
    pub fn start(users: &[(&str, &str)]) -> Result<Self> {
        Self::start_mode(users, Mode::Htpasswd)
    }

    /// Starts a registry with `auth: token`: it trusts the tokens `tokens` signs (its issuer,
    /// its service as audience, its certificate as `rootcertbundle`); `tokens` checks passwords.
    pub fn start_token(tokens: &TokenServer) -> Result<Self> {
        Self::start_mode(
            &[],
            Mode::Token {
                realm: tokens.realm(),
                cert_pem: tokens.root_cert_pem().to_string(),
            },
        )
    }

    /// Starts a pull-through mirror (`proxy` mode) of the plain-HTTP registry at `upstream`
    /// (`host:port`), pulling from it as `user`/`password`. It asks its own clients for nothing.
    pub fn start_proxy(upstream: &str, user: &str, password: &str) -> Result<Self> {
        Self::start_mode(
            &[],
            Mode::Proxy {
                remote: format!("http://{upstream}"),
                username: user.to_string(),
                password: password.to_string(),
            },
        )
    }

    fn start_mode(users: &[(&str, &str)], mode: Mode) -> Result<Self> {
        let binary = require_binary("docker-registry", "docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("pullgate-registry-")
            .tempdir()?;
        let port = free_port()?;
        let mut registry = Self {
            dir,
            port,
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            child: None,
            binary,
            mode,
            tls: None,
        };
        registry.write_config()?;
        registry.launch()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the registry stores a blob (`sha256:…`): corrupt it to test digest verification.
    pub fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (its storage is kept): clients get "connection refused".
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(5));
        }
    }

    /// Starts it again on the same port, with the same storage.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.write_config()?;
        self.launch()
    }

    /// From now on (restarted: same port, same storage) served over TLS with `ca`'s server
    /// certificate, requiring a client certificate of `ca` when `require_client_cert`
    /// (`http.tls.clientcas`). Push images before: the test pusher speaks plain HTTP.
    pub fn serve_tls(&mut self, ca: &crate::tls::TestCa, require_client_cert: bool) -> Result<()> {
        let root = self.dir.path();
        std::fs::write(root.join("server.crt"), &ca.server_cert_pem)?;
        std::fs::write(root.join("server.key"), &ca.server_key_pem)?;
        std::fs::write(root.join("clientca.crt"), &ca.ca_pem)?;
        self.tls = Some(require_client_cert);
        self.restart()
    }

    /// Rotation: the user's password changes (htpasswd registries only: a token registry's
    /// passwords are its token server's, [`TokenServer::set_password`]). The registry reads htpasswd at start-up, so it is
    /// restarted (same port, same storage), as an operator's rollout of a new secret would.
    pub fn set_password(&mut self, user: &str, password: &str) -> Result<()> {
        for (u, p) in &mut self.users {
            if u == user {
                *p = password.to_string();
            }
        }
        self.restart()
    }

    fn write_config(&self) -> Result<()> {
        let root = self.dir.path();
        let mut htpasswd = String::new();
        for (user, password) in &self.users {
            let hash = bcrypt::hash(password, 5).context("bcrypt")?;
            htpasswd.push_str(&format!("{user}:{hash}\n"));
        }
        std::fs::write(root.join("htpasswd"), htpasswd)?;
        let auth = self.auth_config()?;
        let config = format!(
            r#"version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
{tls}{auth}"#,
            root = root.display(),
            port = self.port,
            tls = match self.tls {
                None => String::new(),
                Some(client) => format!(
                    "  tls:\n    certificate: {r}/server.crt\n    key: {r}/server.key\n{}",
                    if client {
                        format!("    clientcas:\n      - {}/clientca.crt\n", root.display())
                    } else {
                        String::new()
                    },
                    r = root.display()
                ),
            }
        );
        std::fs::write(root.join("config.yml"), config)?;
        Ok(())
    }

    /// The `auth:` section (and `proxy:` for a mirror) of the configuration.
    fn auth_config(&self) -> Result<String> {
        let root = self.dir.path();
        Ok(match &self.mode {
            Mode::Htpasswd => format!(
                "auth:\n  htpasswd:\n    realm: pullgate-test\n    path: {}/htpasswd\n",
                root.display()
            ),
            Mode::Token { realm, cert_pem } => {
                let bundle = root.join("token-root.pem");
                std::fs::write(&bundle, cert_pem)?;
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    token_server::SERVICE,
                    token_server::ISSUER,
                    bundle.display()
                )
            }
            Mode::Proxy {
                remote,
                username,
                password,
            } => format!(
                "proxy:\n  remoteurl: {remote}\n  username: {username}\n  password: {password}\n"
            ),
        })
    }

    /// What `GET /v2/` answers once it serves: 401 with auth, 200 for a mirror.
    fn ready_status(&self) -> &'static str {
        match self.mode {
            Mode::Proxy { .. } => " 200 ",
            Mode::Htpasswd | Mode::Token { .. } => " 401 ",
        }
    }

    fn launch(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command.arg("serve").arg(self.dir.path().join("config.yml"));
        let child = ChildGuard::spawn(
            "docker-registry",
            command,
            &self.dir.path().join("registry.log"),
        )?;
        self.child = Some(child);
        let addr = self.host();
        // Over TLS, a plain-HTTP request gets Go's `400 Bad Request`: the server is up.
        let ready = if self.tls.is_some() {
            " 400 "
        } else {
            self.ready_status()
        };
        wait_until("registry to answer /v2/", Duration::from_secs(20), || {
            probe(&addr).is_some_and(|status| status.contains(ready))
        })
        .with_context(|| format!("registry log:\n{}", self.log()))
    }
}

/// The status line of `GET /v2/`, if the registry answers.
fn probe(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()?
            .to_string(),
    )
}
