//! TLS for the Cap'n Proto transport: rustls through futures-rustls (no tokio), with ring as
//! the crypto provider, TLS 1.3 only, certificates and keys from PEM files.
//!
//! A server with TLS serves only TLS, and tells a plaintext client so: it looks at the
//! first byte (a TLS record starts with 0x16, a Cap'n Proto frame never does on our wire)
//! and answers a plaintext client's login with a refusal that says the node requires TLS.
//! With a client CA, the server requires a client certificate signed by it (mutual TLS).

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shoal_core::api::ApiError;

/// The read half of a connection, plaintext or TLS.
pub(crate) type BoxRead = Box<dyn AsyncRead + Unpin>;
/// The write half of a connection, plaintext or TLS.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Unpin>;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why TLS could not be set up from the given files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("TLS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A file held nothing usable.
    #[error("TLS file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    /// Never: the files must be fixed first.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |message: String| TlsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no certificate".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // The error names the file only: key material never goes into a message.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Invalid {
        path: path.to_path_buf(),
        message: "holds no PEM private key".into(),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A server's TLS identity and, for mutual TLS, the CA its clients' certificates must be
/// signed by.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish()
    }
}

/// A connection accepted on a TLS port.
pub(crate) enum Accepted {
    /// The handshake succeeded.
    Tls(Box<futures_rustls::server::TlsStream<smol::net::TcpStream>>),
    /// The client spoke plaintext.
    Plaintext(smol::net::TcpStream),
}

impl ServerTls {
    /// The certificate chain in `cert` and the key in `key` (PEM); with `client_ca`, every
    /// client must present a certificate signed by it.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let chain = read_certs(cert)?;
        let key = read_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(read_roots(ca)?.into(), provider())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// Runs the handshake, or recognises a plaintext client by its first byte.
    pub(crate) async fn accept(&self, stream: smol::net::TcpStream) -> io::Result<Accepted> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before sending anything",
            ));
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Ok(Accepted::Plaintext(stream));
        }
        let tls = self.acceptor.accept(stream).await?;
        Ok(Accepted::Tls(Box::new(tls)))
    }
}

/// What a client trusts (the cluster's CA) and, for mutual TLS, the certificate it shows.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trusts servers whose certificate `ca` signed (and that name the dialled host); with
    /// `identity` (certificate chain, key), presents it to servers that ask.
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(read_roots(ca)?);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| TlsError::Config(e.to_string()))?,
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the handshake with the node at `address` (`host:port`; the certificate must
    /// name `host`). Returns the stream and a tap that keeps the TLS error the connection
    /// ends with, to explain a refusal the server sends after the handshake.
    pub(crate) async fn connect(
        &self,
        address: &str,
        stream: smol::net::TcpStream,
    ) -> Result<(BoxRead, BoxWrite, TlsTap), ApiError> {
        let host = host_of(address);
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            ApiError::Refused(format!(
                "TLS: {address}: {host:?} is not a host name or address"
            ))
        })?;
        let tls = self
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| handshake_error(address, &e))?;
        let tap = TlsTap::default();
        let (r, w) = futures_lite::io::split(tls);
        let reader = TappedRead {
            inner: r,
            tap: tap.clone(),
        };
        Ok((
            Box::new(futures_lite::io::BufReader::new(reader)),
            Box::new(futures_lite::io::BufWriter::new(w)),
            tap,
        ))
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The TLS error inside an I/O error, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// A handshake failure as a typed error: a certificate problem on either side is a refusal
/// (retrying cannot fix it); a lost connection is unreachable.
pub(crate) fn handshake_error(address: &str, e: &io::Error) -> ApiError {
    match rustls_error(e) {
        Some(tls) => explain(address, tls)
            .unwrap_or_else(|| ApiError::Refused(format!("TLS handshake with {address}: {tls}"))),
        None => ApiError::Unreachable(format!(
            "TLS handshake with {address}: {e} (does the node serve TLS?)"
        )),
    }
}

/// The one line that explains a certificate failure, if `tls` is one.
fn explain(address: &str, tls: &rustls::Error) -> Option<ApiError> {
    match tls {
        rustls::Error::InvalidCertificate(why) => Some(ApiError::Refused(format!(
            "TLS: {address} presented a certificate this client does not trust ({why:?}): is \
             --tls-ca the CA that signed the cluster's certificates?"
        ))),
        rustls::Error::AlertReceived(alert) => Some(ApiError::Refused(format!(
            "TLS: {address} refused this client's certificate ({alert:?}): present one \
             signed by the cluster's CA (--tls-cert, --tls-key)"
        ))),
        _ => None,
    }
}

/// Keeps the last TLS error a connection's reads ended with.
#[derive(Clone, Default)]
pub(crate) struct TlsTap(Rc<RefCell<Option<rustls::Error>>>);

impl TlsTap {
    /// A refusal explaining the TLS error the connection ended with, if it ended with one
    /// about certificates.
    pub(crate) fn explain(&self, address: &str) -> Option<ApiError> {
        self.0.borrow().as_ref().and_then(|e| explain(address, e))
    }
}

struct TappedRead<R> {
    inner: R,
    tap: TlsTap,
}

impl<R: AsyncRead + Unpin> AsyncRead for TappedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &polled {
            if let Some(tls) = rustls_error(e) {
                *self.tap.0.borrow_mut() = Some(tls.clone());
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_is_the_address_without_port_or_brackets() {
        assert_eq!(host_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("node-1.example:1"), "node-1.example");
    }
}
