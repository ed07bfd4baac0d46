//! TLS on loopback with certificates made in code (rcgen): a private CA and a server certificate
//! for `127.0.0.1` it signs. [`UntrustedTlsServer`] presents that certificate to clients that do
//! not trust the CA, which is how a node meets a registry whose CA it was never given.

use anyhow::{Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A private CA and a server certificate for `127.0.0.1` and `localhost` it signed.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate (DER) and its PKCS#8 key.
    server_der: Vec<u8>,
    server_key_der: Vec<u8>,
    /// The server certificate and its key, PEM (for a real registry's `http.tls`).
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// A client certificate (`pullgate-test-client`) the CA signed, and its key, PEM: for a
    /// registry that requires one (`http.tls.clientcas`).
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestCa {
    pub fn generate(name: &str) -> Result<Self> {
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca_params.self_signed(&ca_key).context("CA certificate")?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().context("server key")?;
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test server"));
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .context("server certificate")?;
        let client_key = KeyPair::generate().context("client key")?;
        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "pullgate-test-client");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .context("client certificate")?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_der: server_cert.der().to_vec(),
            server_key_der: server_key.serialize_der(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.server_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
            )?;
        Ok(Arc::new(config))
    }
}

/// A TLS server on 127.0.0.1 with a certificate from a CA of its own that nobody is given. A
/// client that verifies certificates aborts the handshake; one that somehow completes it gets a
/// `503`. Stops accepting when dropped.
pub struct UntrustedTlsServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl UntrustedTlsServer {
    pub fn start() -> Result<Self> {
        let config = TestCa::generate("untrusted")?.server_config()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let config = config.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                            let Ok(connection) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            let mut tls = rustls::StreamOwned::new(connection, stream);
                            let mut buf = [0u8; 1024];
                            if tls.read(&mut buf).is_ok() {
                                let _ = tls.write_all(
                                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                );
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self { port, stop })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for UntrustedTlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
