//! Optional TLS on the links between workers, for machines on networks
//! where someone could read or rewrite packets.
//!
//! Configured with `--tls-cert PATH --tls-key PATH --tls-ca PATH` (PEM; all
//! three or none). With them, every control and data link, on the side that
//! connects and the side that accepts, runs TLS 1.3 (rustls with the ring
//! provider) with mutual authentication: the accepting side requires a
//! client certificate signed by `--tls-ca`, and the connecting side checks
//! the accepting side's certificate against `--tls-ca` and against the IP
//! address it connected to. So every worker's certificate names, as an IP
//! address subjectAltName, the address the others reach it at, and carries
//! both the serverAuth and clientAuth extended key usages (or none).
//!
//! Invariants:
//! - Without the flags nothing changes: links are the plain TCP streams
//!   they always were ([`LinkRead::Plain`], [`LinkWrite::Plain`]).
//! - With them, no byte of a link goes out in the clear except a refusal
//!   sent to a peer that opened in the clear (it names the flags to give).
//! - TLS does not replace the cluster-secret handshake of
//!   `quoll_core::handshake`: that still runs, inside TLS, so a worker
//!   needs both a certificate of the cluster's CA and the cluster's cookie.
//! - The TLS handshake counts within the link's handshake timeout and
//!   pending-handshake cap (see `links`), like the cookie handshake.
//! - A peer that speaks TLS when this worker doesn't, or the other way
//!   round, is told apart from a broken connection by its first byte, so
//!   both sides say which flags are missing.
//!
//! What it protects: the contents of control and data links (confidential
//! and tamper-proof in transit), and who may open one (a certificate of the
//! CA, on top of the cookie). What it does not: the sources and sinks
//! (`--in`, `--out`, connector sources), the `--external` channel, files on
//! disk (resilience files, the cookie, the key itself), and there is no
//! revocation (no CRL or OCSP): to shut out a leaked certificate, make a
//! new CA and new certificates.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// The first byte of a TLS handshake record (a ClientHello starts so);
/// a plain link starts with a frame length, whose first byte is 0.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The three flags, as named to the user.
const CERT: &str = "--tls-cert";
const KEY: &str = "--tls-key";
const CA: &str = "--tls-ca";

/// Why the TLS settings can't be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{missing} is missing: give all three of --tls-cert, --tls-key and --tls-ca, or none")]
    Incomplete { missing: &'static str },
    #[error("can't read {flag} {}: {source}", .path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{flag} {} holds no PEM certificate", .path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag} {} is not usable: {source}", .path.display())]
    Unusable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("--tls-ca {} can't be used to check other workers' certificates: {source}", .path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Why the TLS part of a link's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    #[error("the peer did not start TLS: this worker runs with --tls-cert, --tls-key and --tls-ca; give every worker of the cluster the same three flags")]
    PlainPeer,
    #[error("the peer speaks TLS and this worker has no --tls-cert, --tls-key and --tls-ca: give every worker of the cluster the same three flags")]
    TlsPeer,
    #[error("TLS: {0}{hint}", hint = hint(.0))]
    Rejected(rustls::Error),
    #[error("the TLS handshake broke off ({0}); does the peer run with --tls-cert, --tls-key and --tls-ca too?")]
    Broken(io::Error),
}

impl TlsFailure {
    /// True if trying again can't help (the peers disagree about TLS or
    /// certificates); a broken-off connection may just have been unlucky.
    pub fn is_final(&self) -> bool {
        !matches!(self, TlsFailure::Broken(_))
    }

    /// The TLS failure behind an I/O error of a TLS stream, if it is one.
    pub fn from_io(e: &io::Error) -> Option<TlsFailure> {
        let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(TlsFailure::Rejected(inner.clone()))
    }
}

/// What to tell the user about a TLS error, beyond rustls's words.
fn hint(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            " (the peer's certificate is not signed by this worker's --tls-ca)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            " (the peer's certificate must name the IP address it is reached at as a subjectAltName, e.g. IP:10.0.0.5)"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            " (the peer's certificate has expired)"
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            " (the peer refused this worker's certificate: is it signed by the peer's --tls-ca?)"
        }
        E::NoCertificatesPresented => " (the peer gave no certificate)",
        _ => "",
    }
}

/// The TLS side of every link of a worker (cheap to clone).
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Reads the flags' files; `Ok(None)` when none of the three is given.
    pub fn from_flags(
        cert: Option<&str>,
        key: Option<&str>,
        ca: Option<&str>,
    ) -> Result<Option<Tls>, TlsError> {
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return Ok(None),
            (Some(c), Some(k), Some(a)) => (Path::new(c), Path::new(k), Path::new(a)),
            (c, k, _) => {
                let missing = if c.is_none() {
                    CERT
                } else if k.is_none() {
                    KEY
                } else {
                    CA
                };
                return Err(TlsError::Incomplete { missing });
            }
        };
        Tls::load(cert, key, ca).map(Some)
    }

    fn load(cert_path: &Path, key_path: &Path, ca_path: &Path) -> Result<Tls, TlsError> {
        // rustls deprecates its ring provider for lacking post-quantum key
        // exchange; it is kept because it builds with a C compiler alone
        // (aws-lc-rs needs far more), and the limit is in docs/tls.md.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = certificates(CERT, cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Read {
            flag: KEY,
            path: key_path.to_path_buf(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(CA, ca_path)? {
            roots.add(ca).map_err(|source| TlsError::Unusable {
                flag: CA,
                path: ca_path.to_path_buf(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let unusable = |flag, path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Unusable { flag, path, source }
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|source| TlsError::Verifier {
                path: ca_path.to_path_buf(),
                source,
            })?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(unusable(CERT, cert_path))?
            .with_client_cert_verifier(verifier)
            // Fails if the key does not match the certificate.
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(unusable(KEY, key_path))?;
        // Links are long-lived and never resumed: no session tickets.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(unusable(CERT, cert_path))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(unusable(KEY, key_path))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first byte the peer sent on an accepted connection, without taking
/// it (`None` if it closed first).
async fn first_byte(stream: &TcpStream) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    Ok(match stream.peek(&mut b).await? {
        0 => None,
        _ => Some(b[0]),
    })
}

/// A TLS link's stream, cut in halves for its reader and writer.
fn split(stream: TlsStream<TcpStream>) -> (LinkRead, LinkWrite) {
    let (r, w) = tokio::io::split(stream);
    (LinkRead::Tls(r), LinkWrite::Tls(w))
}

/// Opens a new connection's TLS (or, without TLS, checks that the peer
/// does not expect it), as the side that connected (`initiator`) or
/// accepted. `peer` is the address connected to (its certificate must
/// name that IP address).
pub async fn open(
    stream: TcpStream,
    tls: Option<&Tls>,
    peer: IpAddr,
    initiator: bool,
) -> Result<(LinkRead, LinkWrite), OpenError> {
    match (tls, initiator) {
        (None, true) => Ok(plain(stream)),
        (None, false) => match first_byte(&stream).await? {
            Some(TLS_HANDSHAKE_RECORD) => Err(OpenError::Tls(TlsFailure::TlsPeer)),
            _ => Ok(plain(stream)),
        },
        (Some(tls), true) => {
            let stream = tls
                .connector
                .connect(ServerName::IpAddress(peer.into()), stream)
                .await
                .map_err(failure)?;
            Ok(split(stream.into()))
        }
        (Some(tls), false) => match first_byte(&stream).await? {
            None => Err(OpenError::Closed),
            Some(TLS_HANDSHAKE_RECORD) => {
                let stream = tls.acceptor.accept(stream).await.map_err(failure)?;
                Ok(split(stream.into()))
            }
            Some(_) => Err(OpenError::PlainPeer(stream)),
        },
    }
}

fn plain(stream: TcpStream) -> (LinkRead, LinkWrite) {
    let (r, w) = stream.into_split();
    (LinkRead::Plain(r), LinkWrite::Plain(w))
}

fn failure(e: io::Error) -> TlsFailure {
    TlsFailure::from_io(&e).unwrap_or(TlsFailure::Broken(e))
}

/// Why [`open`] failed.
#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    Closed,
    Tls(TlsFailure),
    /// A peer that opened in the clear on a TLS listener: its connection,
    /// to tell it why it is refused.
    PlainPeer(TcpStream),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

impl From<TlsFailure> for OpenError {
    fn from(e: TlsFailure) -> Self {
        OpenError::Tls(e)
    }
}

/// The read half of a link.
#[derive(Debug)]
pub enum LinkRead {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a link.
#[derive(Debug)]
pub enum LinkWrite {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl LinkWrite {
    /// Writes one whole frame and flushes it: TLS holds written bytes back
    /// until a flush (without TLS the flush does nothing), and every frame
    /// on a link is one the peer is waiting for.
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.write_all(frame).await?;
        self.flush().await
    }
}

impl AsyncRead for LinkRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            LinkRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_write(cx, buf),
            LinkWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            LinkWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LinkWrite::Plain(w) => w.is_write_vectored(),
            LinkWrite::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            LinkWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            LinkWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dir: &Path) -> (String, String, String) {
        let p = |n: &str| dir.join(n).display().to_string();
        (p("cert.pem"), p("key.pem"), p("ca.pem"))
    }

    #[test]
    fn no_flags_is_no_tls() {
        assert!(matches!(Tls::from_flags(None, None, None), Ok(None)));
    }

    #[test]
    fn a_missing_flag_is_named() {
        for (given, missing) in [
            ((None, Some("k"), Some("a")), CERT),
            ((Some("c"), None, Some("a")), KEY),
            ((Some("c"), Some("k"), None), CA),
            ((Some("c"), None, None), KEY),
        ] {
            let err = Tls::from_flags(given.0, given.1, given.2).err();
            assert!(
                matches!(err, Some(TlsError::Incomplete { missing: m }) if m == missing),
                "{given:?}: {err:?}"
            );
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.starts_with(missing), "{text}");
        }
    }

    #[test]
    fn an_unreadable_file_is_named_with_its_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, ca) = flags(dir.path());
        let err = Tls::from_flags(Some(&cert), Some(&key), Some(&ca)).err();
        assert!(
            matches!(&err, Some(TlsError::Read { flag: CERT, path, .. }) if path.display().to_string() == cert),
            "{err:?}"
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains(&format!("--tls-cert {cert}")), "{text}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, ca) = flags(dir.path());
        std::fs::write(&cert, "not a certificate\n").expect("write");
        let err = Tls::from_flags(Some(&cert), Some(&key), Some(&ca)).err();
        assert!(
            matches!(&err, Some(TlsError::NoCertificate { flag: CERT, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn only_an_io_error_of_rustls_is_a_tls_failure() {
        let rejected = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let rejection = TlsFailure::from_io(&rejected).expect("a TLS failure");
        assert!(rejection.is_final());
        assert!(rejection
            .to_string()
            .contains("not signed by this worker's --tls-ca"));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(TlsFailure::from_io(&reset).is_none());
        assert!(!failure(reset).is_final());
    }
}
