//! Why connections cannot be opened: the cause that calls refused while no connection is up
//! carry in their `Unavailable` error, so an operator reads "the server's certificate is not
//! signed by a trusted CA" instead of a bare "unavailable".
//!
//! Causes come from two places: the TLS verifier and client-certificate resolver record what
//! they meet during a handshake (exact), and the connection-error events of the driver are
//! classified here (from the driver's report of the TLS library's error). A successful
//! connection clears the cause.

use std::fmt;
use std::sync::Mutex;

/// Why the last attempt to open a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The server's certificate does not chain to a trusted certificate authority.
    TlsUntrustedCertificate,
    /// The server's certificate is not valid for the name we connected to.
    TlsNameMismatch,
    /// The server's certificate has expired or is not valid yet.
    TlsCertificateExpired,
    /// The server's certificate was refused for another reason (malformed, revoked, wrong use).
    TlsCertificateRejected,
    /// The peer did not answer in TLS: most likely a plain-TCP server behind a TLS URL.
    TlsNotTls,
    /// The server refused our client certificate, or required one and we have none.
    TlsClientCertificateRefused,
    /// No protocol version or cipher suite in common with the server.
    TlsIncompatible,
    /// A configured file (CA bundle, client certificate or key) could not be read or parsed.
    TlsFileUnreadable {
        /// Which setting: `ca_file` or `cert_file/key_file`.
        which: &'static str,
    },
    /// The configured or discovered host is not a valid TLS server name.
    TlsServerName,
    /// The TLS handshake failed for another reason.
    TlsHandshake,
    /// The connection was refused or reset (nothing listens there, or a firewall).
    Refused,
    /// The connection or its handshake did not complete in time (with TLS on, a plain-TCP
    /// server that waits for a command looks like this too).
    TimedOut,
    /// The server refused our credentials.
    AuthFailed,
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::TlsUntrustedCertificate => {
                f.write_str("TLS: the server's certificate is not signed by a trusted CA")
            }
            ConnectFailure::TlsNameMismatch => {
                f.write_str("TLS: the server's certificate does not match the server name")
            }
            ConnectFailure::TlsCertificateExpired => {
                f.write_str("TLS: the server's certificate has expired or is not valid yet")
            }
            ConnectFailure::TlsCertificateRejected => {
                f.write_str("TLS: the server's certificate was rejected")
            }
            ConnectFailure::TlsNotTls => f.write_str(
                "TLS: the server did not answer in TLS (a plain-TCP server behind a TLS URL?)",
            ),
            ConnectFailure::TlsClientCertificateRefused => {
                f.write_str("TLS: the server refused our client certificate (or required one)")
            }
            ConnectFailure::TlsIncompatible => {
                f.write_str("TLS: no protocol version or cipher suite in common with the server")
            }
            ConnectFailure::TlsFileUnreadable { which } => {
                write!(f, "TLS: redis.tls.{which} could not be read or parsed")
            }
            ConnectFailure::TlsServerName => f.write_str("TLS: the server name is not valid"),
            ConnectFailure::TlsHandshake => f.write_str("TLS: the handshake failed"),
            ConnectFailure::Refused => f.write_str("connection refused or reset"),
            ConnectFailure::TimedOut => f.write_str("connecting timed out"),
            ConnectFailure::AuthFailed => f.write_str("authentication failed"),
        }
    }
}

impl ConnectFailure {
    /// Whether the failure is about TLS (a certificate, the handshake, our TLS files).
    pub fn is_tls(&self) -> bool {
        !matches!(
            self,
            ConnectFailure::Refused | ConnectFailure::TimedOut | ConnectFailure::AuthFailed
        )
    }

    /// Classify an error of the TLS library.
    #[cfg(feature = "tls")]
    #[doc(hidden)]
    pub fn of_rustls(e: &rustls::Error) -> Self {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => ConnectFailure::TlsUntrustedCertificate,
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    ConnectFailure::TlsNameMismatch
                }
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => ConnectFailure::TlsCertificateExpired,
                _ => ConnectFailure::TlsCertificateRejected,
            },
            E::InvalidMessage(_) => ConnectFailure::TlsNotTls,
            E::AlertReceived(
                A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::AccessDenied,
            ) => ConnectFailure::TlsClientCertificateRefused,
            E::AlertReceived(A::ProtocolVersion | A::InsufficientSecurity)
            | E::PeerIncompatible(_) => ConnectFailure::TlsIncompatible,
            _ => ConnectFailure::TlsHandshake,
        }
    }

    /// Classify an I/O error of a connect or handshake (a TLS error travels inside it).
    #[cfg(feature = "tls")]
    #[doc(hidden)]
    pub fn of_io(e: &std::io::Error) -> Self {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Self::of_rustls(tls);
        }
        Self::of_io_kind(e.kind())
    }

    /// Classify a plain I/O failure by its kind.
    #[doc(hidden)]
    pub fn of_io_kind(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            K::TimedOut => ConnectFailure::TimedOut,
            // A peer that closes during the handshake is not speaking TLS with us (or
            // refused our certificate); the caller knows whether TLS was on.
            K::UnexpectedEof => ConnectFailure::TlsHandshake,
            _ => ConnectFailure::Refused,
        }
    }

    /// Classify the driver's report of a failed connection, from the text of the driver's
    /// error, which carries the TLS library's error name. Only ever used to name a cause for
    /// operators, never for control flow. `None` when the text names nothing we know.
    #[doc(hidden)]
    pub fn of_driver_report(tls: bool, report: &str) -> Option<Self> {
        const TABLE: &[(&str, ConnectFailure)] = &[
            ("UnknownIssuer", ConnectFailure::TlsUntrustedCertificate),
            ("NotValidForName", ConnectFailure::TlsNameMismatch),
            ("Expired", ConnectFailure::TlsCertificateExpired),
            ("NotValidYet", ConnectFailure::TlsCertificateExpired),
            ("InvalidCertificate", ConnectFailure::TlsCertificateRejected),
            ("InvalidMessage", ConnectFailure::TlsNotTls),
            ("CorruptMessage", ConnectFailure::TlsNotTls),
            (
                "CertificateRequired",
                ConnectFailure::TlsClientCertificateRefused,
            ),
            (
                "BadCertificate",
                ConnectFailure::TlsClientCertificateRefused,
            ),
            ("UnknownCA", ConnectFailure::TlsClientCertificateRefused),
            ("PeerIncompatible", ConnectFailure::TlsIncompatible),
            ("ProtocolVersion", ConnectFailure::TlsIncompatible),
            ("InvalidDnsName", ConnectFailure::TlsServerName),
            ("AlertReceived", ConnectFailure::TlsHandshake),
            ("WRONGPASS", ConnectFailure::AuthFailed),
            ("NOAUTH", ConnectFailure::AuthFailed),
            ("ConnectionRefused", ConnectFailure::Refused),
            ("Connection refused", ConnectFailure::Refused),
            ("ConnectionReset", ConnectFailure::Refused),
            ("TimedOut", ConnectFailure::TimedOut),
            ("timed out", ConnectFailure::TimedOut),
        ];
        if let Some((_, cause)) = TABLE.iter().find(|(needle, _)| report.contains(needle)) {
            return Some(*cause);
        }
        // A TLS peer that closes the connection mid-handshake.
        if tls && (report.contains("UnexpectedEof") || report.contains("unexpected EOF")) {
            return Some(ConnectFailure::TlsHandshake);
        }
        None
    }
}

/// The last connection failure of one deployment (pool, tracking and topology connections
/// share it), cleared by the next successful connection.
#[derive(Debug, Default)]
pub struct ConnectDiagnostics {
    last: Mutex<Option<ConnectFailure>>,
}

impl ConnectDiagnostics {
    /// Remember `cause` as the reason connections cannot be opened. A TLS cause the verifier
    /// recorded is more precise than what the driver reports of the same handshake, so a TLS
    /// cause is never replaced by a generic handshake failure.
    pub fn record(&self, cause: ConnectFailure) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let keep = matches!(
            (*last, cause),
            (Some(prev), ConnectFailure::TlsHandshake) if prev.is_tls()
        );
        if !keep {
            if *last != Some(cause) {
                tracing::warn!(%cause, "redis connection failed");
            }
            *last = Some(cause);
        }
    }

    /// A connection opened: no cause any more.
    pub fn clear(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The last recorded cause, if connections are failing.
    pub fn last(&self) -> Option<ConnectFailure> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_reports_of_tls_failures_name_the_cause() {
        // What fred 10.1 reports (its `Debug` of the rustls error) for each failure.
        for (report, cause) in [
            (
                "IO: Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
                ConnectFailure::TlsUntrustedCertificate,
            ),
            (
                "InvalidCertificate(NotValidForNameContext { expected: IpAddress(..), presented: [] })",
                ConnectFailure::TlsNameMismatch,
            ),
            (
                "InvalidCertificate(ExpiredContext { time: .. })",
                ConnectFailure::TlsCertificateExpired,
            ),
            (
                "Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }",
                ConnectFailure::TlsNotTls,
            ),
            (
                "AlertReceived(CertificateRequired)",
                ConnectFailure::TlsClientCertificateRefused,
            ),
            ("WRONGPASS invalid username-password pair", ConnectFailure::AuthFailed),
            ("Connection refused (os error 111)", ConnectFailure::Refused),
        ] {
            assert_eq!(
                ConnectFailure::of_driver_report(true, report),
                Some(cause),
                "{report}"
            );
        }
        assert_eq!(
            ConnectFailure::of_driver_report(false, "something else"),
            None
        );
    }

    #[test]
    fn a_precise_tls_cause_is_not_replaced_by_a_generic_one() {
        let d = ConnectDiagnostics::default();
        d.record(ConnectFailure::TlsUntrustedCertificate);
        d.record(ConnectFailure::TlsHandshake);
        assert_eq!(d.last(), Some(ConnectFailure::TlsUntrustedCertificate));
        d.record(ConnectFailure::Refused);
        assert_eq!(d.last(), Some(ConnectFailure::Refused));
        d.clear();
        assert_eq!(d.last(), None);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rustls_errors_are_classified() {
        use rustls::{AlertDescription, CertificateError, Error as E, InvalidMessage};
        assert_eq!(
            ConnectFailure::of_rustls(&E::InvalidCertificate(CertificateError::UnknownIssuer)),
            ConnectFailure::TlsUntrustedCertificate
        );
        assert_eq!(
            ConnectFailure::of_rustls(&E::InvalidCertificate(CertificateError::NotValidForName)),
            ConnectFailure::TlsNameMismatch
        );
        assert_eq!(
            ConnectFailure::of_rustls(&E::InvalidMessage(InvalidMessage::InvalidContentType)),
            ConnectFailure::TlsNotTls
        );
        assert_eq!(
            ConnectFailure::of_rustls(&E::AlertReceived(AlertDescription::CertificateRequired)),
            ConnectFailure::TlsClientCertificateRefused
        );
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            E::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(
            ConnectFailure::of_io(&io),
            ConnectFailure::TlsCertificateExpired
        );
    }
}
