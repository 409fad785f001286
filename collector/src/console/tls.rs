//! TLS on the HTTP port (`--http-tls-cert`, `--http-tls-key`): the HTTP listener with an
//! optional rustls acceptor. The connection limits and idle timeout of
//! [`crate::conn::HttpListener`] apply before and during the handshake; the handshake runs
//! in the connection's own task (on its first read or write), so a slow client never holds
//! up accepting others.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{Accept, TlsAcceptor};

use crate::conn::{HttpListener, Limited, Peer};

/// Builds the acceptor from PEM files (a certificate chain and its private key).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading HTTP TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("HTTP TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("HTTP TLS certificate {}: no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading HTTP TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("HTTP TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("HTTP TLS certificate and key")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The HTTP listener, plain or TLS.
pub struct MaybeTlsListener {
    /// The limited TCP listener.
    pub inner: HttpListener,
    /// Set for TLS.
    pub tls: Option<TlsAcceptor>,
}

/// A connection of [`MaybeTlsListener`].
pub enum MaybeTls {
    /// Plain HTTP.
    Plain(Limited),
    /// TLS, handshake in progress.
    Handshake(Box<Accept<Limited>>),
    /// TLS, established.
    Tls(Box<TlsStream<Limited>>),
    /// The handshake failed.
    Failed,
}

impl MaybeTls {
    /// Drives the handshake; `Ready(Ok)` once the stream is plain or established.
    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let MaybeTls::Handshake(accept) = self {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Ready(Ok(s)) => *self = MaybeTls::Tls(Box::new(s)),
                Poll::Ready(Err(e)) => {
                    *self = MaybeTls::Failed;
                    log::debug!("HTTP TLS handshake failed: {e}");
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match self {
            MaybeTls::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS handshake failed",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

macro_rules! ready_or_return {
    ($self:ident, $cx:ident) => {
        match $self.ready($cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready_or_return!(this, cx);
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready_or_return!(this, cx);
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, data),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready_or_return!(this, cx);
        match this {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl axum::serve::Listener for MaybeTlsListener {
    type Io = MaybeTls;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (conn, peer) = axum::serve::Listener::accept(&mut self.inner).await;
        let io = match &self.tls {
            Some(acceptor) => MaybeTls::Handshake(Box::new(acceptor.accept(conn))),
            None => MaybeTls::Plain(conn),
        };
        (io, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        axum::serve::Listener::local_addr(&self.inner)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, MaybeTlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, MaybeTlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}
