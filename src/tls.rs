//! Encrypted connections: the `[redis.tls]` settings and the rustls client every connection of
//! a deployment shares (the fred pool, the tracking connections and the topology polls).
//!
//! Rules this module enforces:
//! - **Never a downgrade.** A `rediss://`/`valkeys://` URL, or a `[redis.tls]` table, means
//!   TLS on every connection. A build without the `tls` cargo feature refuses such a
//!   configuration at validation time instead of connecting in clear.
//! - **Files are read at every handshake.** The CA bundle, the client certificate and its key
//!   are read from disk each time a connection is opened (first connect and every reconnect),
//!   so a certificate rotated on disk is used by the next connection without a restart.
//! - **Failures are named.** A handshake that fails records a [`ConnectFailure`] (untrusted
//!   certificate, name mismatch, expired, the peer does not speak TLS…) that calls refused while
//!   no connection is up carry in their `Unavailable` error.
//! - **Nothing secret is shown.** File paths appear in `Debug`; file contents, keys and
//!   passwords never do.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

pub use crate::connect_failure::ConnectFailure;

/// Whether this build can open TLS connections (the `tls` cargo feature, on by default).
pub const TLS_SUPPORTED: bool = cfg!(feature = "tls");

/// `[redis.tls]`: how connections are encrypted and authenticated.
///
/// With no `ca_file`, the server's certificate must chain to the trust roots chosen by
/// `roots` (the platform's store by default). With `ca_file`, it must chain to a certificate
/// of that bundle, and the default roots are not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM bundle of the certificate authorities to trust instead of the default roots.
    /// Read at every handshake.
    pub ca_file: Option<PathBuf>,
    /// The trust roots used when `ca_file` is not set (default `platform`).
    pub roots: TlsRoots,
    /// PEM client certificate chain for mutual TLS (needs `key_file`). Read at every handshake.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`. Read at every handshake.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry (and the SNI sent), instead of the host
    /// of the URL or of a discovered node. For a cluster whose nodes announce IP addresses.
    pub server_name: Option<String>,
    /// The lowest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
    /// Accept any server certificate, unverified. Dangerous: anyone on the path can read and
    /// change the traffic. Logs a warning at every connect. For throw-away test setups only.
    pub danger_accept_invalid_certs: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            roots: TlsRoots::Platform,
            cert_file: None,
            key_file: None,
            server_name: None,
            min_version: TlsVersion::V1_2,
            danger_accept_invalid_certs: false,
        }
    }
}

/// Which trust roots verify the server when no `ca_file` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRoots {
    /// The operating system's certificate store (read once, when the pool is built).
    #[default]
    Platform,
    /// The Mozilla root program, compiled into the binary (the `webpki-roots` crate).
    Webpki,
}

/// A TLS protocol version. TLS 1.0 and 1.1 are not offered: a setting that asks for them is
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.trim() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            "1.0" | "1.1" => Err(serde::de::Error::custom(
                "TLS 1.0 and 1.1 are not supported; the lowest version is \"1.2\"",
            )),
            other => Err(serde::de::Error::custom(format!(
                "unknown TLS version `{other}`; expected \"1.2\" or \"1.3\""
            ))),
        }
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

impl TlsConfig {
    /// Check the settings and that every file can be read and parsed now (a missing or
    /// unreadable file at start is a configuration error, not a connection failure later).
    /// `field` is the table's dotted path, for the error.
    #[doc(hidden)]
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::config(
                format!("{field}.cert_file"),
                "cert_file and key_file go together (mutual TLS needs both)",
            ));
        }
        if let Some(name) = &self.server_name {
            // What the handshake will check: a DNS name or an IP address, nothing else (no
            // port, no brackets), refused now rather than at every handshake.
            #[cfg(feature = "tls")]
            let unusable = rustls::pki_types::ServerName::try_from(name.as_str()).is_err();
            #[cfg(not(feature = "tls"))]
            let unusable = false;
            if unusable
                || name.is_empty()
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::config(
                    format!("{field}.server_name"),
                    "must be a host name or an IP address",
                ));
            }
        }
        #[cfg(feature = "tls")]
        imp::check_files(self, field)?;
        Ok(())
    }
}

/// Refuse TLS that this build cannot honour. `supported` is [`TLS_SUPPORTED`] except in tests.
pub(crate) fn refuse_unsupported(wanted: bool, supported: bool, field: &str) -> Result<()> {
    if wanted && !supported {
        return Err(Error::config(
            field,
            "TLS was asked for (a rediss:// or valkeys:// URL, or a [redis.tls] table) but this \
             build has no TLS support: enable the `tls` cargo feature. Refusing to connect \
             without encryption",
        ));
    }
    Ok(())
}

#[cfg(feature = "tls")]
pub use imp::TlsClient;

/// Without the `tls` feature there is no TLS client; configurations that need one are refused
/// by validation, so this type is never built.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub struct TlsClient {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "tls"))]
impl TlsClient {
    /// Never called: no value of this type exists.
    pub fn server_name_override(&self) -> Option<&str> {
        match self.never {}
    }

    /// Never called: no value of this type exists.
    pub async fn connect(
        &self,
        _host: &str,
        _announced: Option<&str>,
        _tcp: tokio::net::TcpStream,
    ) -> std::result::Result<tokio::net::TcpStream, ConnectFailure> {
        match self.never {}
    }
}

#[cfg(feature = "tls")]
mod imp {
    use std::fmt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::sign::CertifiedKey;
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    use super::{TlsConfig, TlsRoots, TlsVersion};
    use crate::connect_failure::{ConnectDiagnostics, ConnectFailure};
    use crate::error::{Error, Result};

    /// The rustls client of one deployment: one configuration shared by every connection, its
    /// verifier reading the CA bundle and its resolver reading the client certificate at each
    /// handshake. Cheap to clone.
    #[derive(Clone)]
    pub struct TlsClient {
        config: Arc<ClientConfig>,
        server_name: Option<String>,
    }

    impl fmt::Debug for TlsClient {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TlsClient")
                .field("server_name", &self.server_name)
                .finish_non_exhaustive()
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    impl TlsClient {
        /// Build the client for `cfg`. Failures that concern the server's certificate or
        /// our own files are recorded in `diag` when a handshake meets them.
        pub fn new(cfg: &TlsConfig, diag: Arc<ConnectDiagnostics>) -> Result<Self> {
            let provider = provider();
            let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
                TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
                TlsVersion::V1_3 => &[&rustls::version::TLS13],
            };
            let roots = match (&cfg.ca_file, cfg.roots) {
                (Some(path), _) => Roots::File(path.clone()),
                (None, TlsRoots::Platform) => {
                    Roots::Fixed(verifier_for(platform_roots()?, &provider)?)
                }
                (None, TlsRoots::Webpki) => {
                    let store = RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    };
                    Roots::Fixed(verifier_for(store, &provider)?)
                }
            };
            let verifier = Arc::new(Verifier {
                roots,
                provider: provider.clone(),
                danger: cfg.danger_accept_invalid_certs,
                diag: diag.clone(),
            });
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| Error::config("redis.tls.min_version", format!("{e}")))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let config = match (&cfg.cert_file, &cfg.key_file) {
                (Some(cert), Some(key)) => {
                    builder.with_client_cert_resolver(Arc::new(FileClientCert {
                        cert: cert.clone(),
                        key: key.clone(),
                        provider,
                        diag,
                    }))
                }
                _ => builder.with_no_client_auth(),
            };
            let mut config = config;
            // Every connection runs a full handshake: a resumed session would skip the
            // verifier and the client-certificate resolver, so a CA removed from the bundle or
            // a rotated client certificate would not apply to it. Connections are long-lived;
            // the saving would be small.
            config.resumption = rustls::client::Resumption::disabled();
            Ok(TlsClient {
                config: Arc::new(config),
                server_name: cfg.server_name.clone(),
            })
        }

        /// The rustls configuration, for fred.
        pub(crate) fn rustls_config(&self) -> Arc<ClientConfig> {
            self.config.clone()
        }

        /// The server-name override, if any.
        pub fn server_name_override(&self) -> Option<&str> {
            self.server_name.as_deref()
        }

        /// Run the handshake on `tcp`, verifying the server as the host name it `announced`
        /// (a cluster node's), else the configured override, else `host`.
        /// A failure is classified, recorded in the diagnostics the client was built with by
        /// its verifier where it concerns the certificate, and returned.
        pub async fn connect(
            &self,
            host: &str,
            announced: Option<&str>,
            tcp: TcpStream,
        ) -> std::result::Result<TlsStream<TcpStream>, ConnectFailure> {
            let name = announced.or(self.server_name.as_deref()).unwrap_or(host);
            let server_name = ServerName::try_from(name.to_string())
                .map_err(|_| ConnectFailure::TlsServerName)?;
            TlsConnector::from(self.config.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|e| ConnectFailure::of_io(&e))
        }
    }

    /// Read every configured file now, so a typo fails at start.
    pub(super) fn check_files(cfg: &TlsConfig, field: &str) -> Result<()> {
        if let Some(path) = &cfg.ca_file {
            read_roots(path).map_err(|why| Error::config(format!("{field}.ca_file"), why))?;
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            load_certified_key(cert, key, &provider())
                .map_err(|why| Error::config(format!("{field}.cert_file"), why))?;
        }
        Ok(())
    }

    /// The platform's roots, read once per process: the store is large, and pools are built
    /// on callers' tasks (routed endpoints) where a disk scan would stall them.
    fn platform_roots() -> Result<RootCertStore> {
        static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
        let store = ROOTS.get_or_init(|| {
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            store
        });
        if store.is_empty() {
            return Err(Error::config(
                "redis.tls.roots",
                "the platform certificate store holds no usable certificate: set \
                 redis.tls.ca_file, or roots = \"webpki\"",
            ));
        }
        Ok(store.clone())
    }

    /// The certificates of a PEM bundle, as a root store. The message names the path only.
    fn read_roots(path: &Path) -> std::result::Result<RootCertStore, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), pem_error(&e)))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("cannot parse {}: {}", path.display(), pem_error(&e)))?;
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("{} holds no usable certificate", path.display()));
        }
        Ok(store)
    }

    /// The client certificate chain and key. The message names the paths only, never the
    /// contents.
    fn load_certified_key(
        cert: &Path,
        key: &Path,
        provider: &CryptoProvider,
    ) -> std::result::Result<CertifiedKey, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("cannot read {}: {}", cert.display(), pem_error(&e)))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("cannot parse {}: {}", cert.display(), pem_error(&e)))?;
        if chain.is_empty() {
            return Err(format!("{} holds no certificate", cert.display()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            format!(
                "cannot read a private key from {}: {}",
                key.display(),
                pem_error(&e)
            )
        })?;
        let signing = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|_| format!("{} is not a supported private key", key.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => Ok(certified),
            // A key whose public half cannot be derived cannot be checked; rustls proves
            // possession during the handshake anyway.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(_) => Err(format!(
                "the key in {} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            )),
        }
    }

    /// A PEM error without any file content.
    fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
        use rustls::pki_types::pem::Error as E;
        match e {
            E::Io(io) => io.kind().to_string(),
            E::NoItemsFound => "no PEM item found".into(),
            _ => "malformed PEM".into(),
        }
    }

    fn verifier_for(
        store: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>> {
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| Error::config("redis.tls", format!("cannot build the verifier: {e}")))
    }

    enum Roots {
        /// A CA bundle read at every handshake.
        File(PathBuf),
        /// Roots read once (platform store or the compiled-in Mozilla roots).
        Fixed(Arc<WebPkiServerVerifier>),
    }

    /// Verifies the server's certificate against the current roots, recording why it fails.
    struct Verifier {
        roots: Roots,
        provider: Arc<CryptoProvider>,
        danger: bool,
        diag: Arc<ConnectDiagnostics>,
    }

    impl fmt::Debug for Verifier {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let roots = match &self.roots {
                Roots::File(p) => format!("file {}", p.display()),
                Roots::Fixed(_) => "default roots".into(),
            };
            f.debug_struct("Verifier")
                .field("roots", &roots)
                .field("danger", &self.danger)
                .finish()
        }
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            if self.danger {
                tracing::warn!(
                    server = ?server_name,
                    "TLS certificate NOT verified (redis.tls.danger_accept_invalid_certs): \
                     this connection can be read and changed by anyone on the path"
                );
                return Ok(ServerCertVerified::assertion());
            }
            let verifier = match &self.roots {
                Roots::Fixed(v) => v.clone(),
                Roots::File(path) => {
                    let store = read_roots(path).map_err(|why| {
                        tracing::warn!(%why, "TLS CA bundle unreadable");
                        self.diag
                            .record(ConnectFailure::TlsFileUnreadable { which: "ca_file" });
                        rustls::Error::General("CA bundle unreadable".into())
                    })?;
                    verifier_for(store, &self.provider).map_err(|_| {
                        self.diag
                            .record(ConnectFailure::TlsFileUnreadable { which: "ca_file" });
                        rustls::Error::General("CA bundle unusable".into())
                    })?
                }
            };
            verifier
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .inspect_err(|e| self.diag.record(ConnectFailure::of_rustls(e)))
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// The client certificate, read from disk when a server asks for it.
    struct FileClientCert {
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
        diag: Arc<ConnectDiagnostics>,
    }

    impl fmt::Debug for FileClientCert {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("FileClientCert")
                .field("cert", &self.cert)
                .field("key", &self.key)
                .finish()
        }
    }

    impl ResolvesClientCert for FileClientCert {
        fn resolve(
            &self,
            _root_hint_subjects: &[&[u8]],
            sigschemes: &[SignatureScheme],
        ) -> Option<Arc<CertifiedKey>> {
            match load_certified_key(&self.cert, &self.key, &self.provider) {
                Ok(key) if key.key.choose_scheme(sigschemes).is_some() => Some(Arc::new(key)),
                Ok(_) => {
                    tracing::warn!("TLS client key offers no signature scheme the server accepts");
                    self.diag
                        .record(ConnectFailure::TlsClientCertificateRefused);
                    None
                }
                Err(why) => {
                    tracing::warn!(%why, "TLS client certificate unreadable");
                    self.diag.record(ConnectFailure::TlsFileUnreadable {
                        which: "cert_file/key_file",
                    });
                    None
                }
            }
        }

        fn has_certs(&self) -> bool {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_refused_by_a_build_without_support_and_accepted_with_it() {
        let e = refuse_unsupported(true, false, "redis.url").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.to_string().contains("`tls` cargo feature"), "{e}");
        refuse_unsupported(true, true, "redis.url").unwrap();
        refuse_unsupported(false, false, "redis.url").unwrap();
    }

    #[test]
    fn old_protocol_versions_are_refused() {
        #[derive(Deserialize, Debug)]
        struct W {
            #[allow(dead_code)]
            v: TlsVersion,
        }
        for bad in ["1.0", "1.1", "2", ""] {
            assert!(
                toml::from_str::<W>(&format!("v = \"{bad}\"")).is_err(),
                "{bad}"
            );
        }
        let w: W = toml::from_str("v = \"1.3\"").unwrap();
        assert_eq!(w.v, TlsVersion::V1_3);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_server_name_is_a_host_name_or_an_ip_address() {
        for bad in ["redis.internal:6380", "[::1]", "", "a b"] {
            let cfg = TlsConfig {
                server_name: Some(bad.into()),
                ..TlsConfig::default()
            };
            let e = cfg.validate("redis.tls").unwrap_err();
            assert!(
                e.to_string().contains("redis.tls.server_name"),
                "{bad}: {e}"
            );
        }
        for good in ["redis.internal", "10.0.0.7", "::1"] {
            let cfg = TlsConfig {
                server_name: Some(good.into()),
                ..TlsConfig::default()
            };
            cfg.validate("redis.tls").unwrap();
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cfg = TlsConfig {
            cert_file: Some("/nonexistent/client.pem".into()),
            ..TlsConfig::default()
        };
        let e = cfg.validate("redis.tls").unwrap_err();
        assert!(e.to_string().contains("redis.tls.cert_file"), "{e}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn unreadable_files_are_config_errors_naming_the_field() {
        let cfg = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let e = cfg.validate("redis.tls").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.to_string().contains("redis.tls.ca_file"), "{e}");
    }
}
