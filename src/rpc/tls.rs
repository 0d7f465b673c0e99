//! Optional mutual TLS for peer traffic (DESIGN §1.7): what `--peer-tls-cert`, `--peer-tls-key`
//! and `--peer-tls-ca` turn into, and the endpoints every outgoing connection is made from.
//!
//! With a [`PeerTls`], the server accepts TLS only, and only from a client whose certificate
//! chains to the CA; every outgoing channel (peers, the CLI's `status`) speaks `https`,
//! presents this node's certificate and trusts the CA alone (no system roots). Peers are named
//! by their `HOST:PORT`, so a node's certificate must carry that host as a subject alternative
//! name (an IP SAN for an address such as `127.0.0.1`). The cluster token is still checked on
//! every RPC ([`super::peer`]): TLS adds who may connect, it does not replace who may act.
//!
//! Without TLS nothing changes: plaintext `http`, as before. This module reads the three files
//! and builds tonic's configurations; it owns no connections and checks no tokens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// How long the server waits for a client to finish its TLS handshake before dropping it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Some, but not all, of the three files were given.
    #[error("--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together: {missing} missing")]
    Incomplete {
        /// The flags that were not given.
        missing: String,
    },
    /// A file could not be read.
    #[error("cannot read the peer TLS {what} {}: {source}", path.display())]
    Read {
        /// Which file (certificate, key, CA).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("the peer TLS {what} {} holds no PEM '{label}' block", path.display())]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The PEM label looked for (`CERTIFICATE`, `PRIVATE KEY`).
        label: &'static str,
    },
    /// The files were read but rustls refused them (a key that does not match, a CA that is
    /// not a usable trust anchor, an unsupported key type).
    #[error("the peer TLS files are not usable: {0}")]
    Config(String),
}

/// This node's TLS identity and the cluster's CA, ready for the server and for channels.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// What the gRPC server accepts: TLS with a client certificate signed by the CA.
    server: ServerTlsConfig,
    /// What every outgoing channel presents and trusts.
    client: ClientTlsConfig,
}

impl PeerTls {
    /// From the three optional flags: `None` when none is given, an error when only some are.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<PeerTls>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => PeerTls::load(cert, key, ca).map(Some),
            _ => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--peer-tls-cert"),
                    (key.is_none(), "--peer-tls-key"),
                    (ca.is_none(), "--peer-tls-ca"),
                ]
                .into_iter()
                .filter_map(|(absent, flag)| absent.then_some(flag))
                .collect();
                Err(TlsError::Incomplete { missing: missing.join(", ") })
            }
        }
    }

    /// Reads a PEM certificate (chain), its PEM private key and the PEM CA certificate, and
    /// checks at once that rustls accepts them for both directions.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<PeerTls, TlsError> {
        let cert_pem = read_pem(cert, "certificate", "CERTIFICATE")?;
        let key_pem = read_pem(key, "key", "PRIVATE KEY")?;
        let ca_pem = read_pem(ca, "CA certificate", "CERTIFICATE")?;
        let identity = Identity::from_pem(cert_pem, key_pem);
        let ca = Certificate::from_pem(ca_pem);
        let tls = PeerTls {
            server: ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(ca.clone())
                .timeout(HANDSHAKE_TIMEOUT),
            client: ClientTlsConfig::new().identity(identity).ca_certificate(ca),
        };
        // tonic parses the PEM and builds the rustls configurations only here: do it now, so
        // a bad file stops the start instead of every connection.
        Server::builder().tls_config(tls.server.clone()).map_err(|e| TlsError::Config(error_chain(&e)))?;
        Endpoint::from_static("https://localhost")
            .tls_config(tls.client.clone())
            .map_err(|e| TlsError::Config(error_chain(&e)))?;
        Ok(tls)
    }

    /// The server side: require TLS and a client certificate signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        self.server.clone()
    }
}

/// The endpoint for `addr` (`HOST:PORT`): `https` with this node's identity and the CA as the
/// only root when `tls` is given (the certificate must name `HOST`), plaintext `http` otherwise.
pub fn endpoint(addr: &str, tls: Option<&PeerTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(tls.client.clone())
            .map_err(|e| format!("TLS for {addr}: {}", error_chain(&e))),
    }
}

/// The host of `addr` (`HOST:PORT`, `[V6]:PORT`), as a certificate must name it.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Checks that the certificate `der` (DER, as the TLS handshake delivered it; its chain was
/// verified there) is valid for `host`: a DNS SAN matching the name, or an IP SAN for an
/// address. The common name is not looked at, as in every TLS client since RFC 6125.
pub fn certificate_names(der: &[u8], host: &str) -> Result<(), String> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|e| format!("{host:?} is no DNS name or IP address: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("the certificate names no subject alternative name for {host} ({e})"))
}

/// Reads `path` and checks that it holds a PEM block whose label ends in `label`.
fn read_pem(path: &Path, what: &'static str, label: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes =
        std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if !found {
        return Err(TlsError::NotPem { what, path: path.to_owned(), label });
    }
    Ok(bytes)
}

/// An error and its sources, on one line (tonic's transport errors hide the cause otherwise).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_or_none() {
        assert!(PeerTls::from_flags(None, None, None).unwrap().is_none());
        let p = Path::new("/nonexistent");
        match PeerTls::from_flags(Some(p), None, Some(p)) {
            Err(TlsError::Incomplete { missing }) => assert_eq!(missing, "--peer-tls-key"),
            other => panic!("expected Incomplete, got {other:?}"),
        }
        match PeerTls::from_flags(None, Some(p), None) {
            Err(TlsError::Incomplete { missing }) => assert_eq!(missing, "--peer-tls-cert, --peer-tls-ca"),
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(matches!(PeerTls::from_flags(Some(p), Some(p), Some(p)), Err(TlsError::Read { .. })));
    }

    #[test]
    fn a_file_without_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        assert!(matches!(
            PeerTls::load(&file, &file, &file),
            Err(TlsError::NotPem { label: "CERTIFICATE", .. })
        ));
    }

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("node-1.example:7070"), "node-1.example");
        assert!(certificate_names(b"not der", "127.0.0.1").is_err());
    }

    #[test]
    fn plaintext_without_tls() {
        let e = endpoint("127.0.0.1:7070", None).unwrap();
        assert_eq!(e.uri().scheme_str(), Some("http"));
    }
}
