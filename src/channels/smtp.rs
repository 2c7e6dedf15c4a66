//! SMTP connections for the mailer. lettre speaks the protocol; this module
//! opens the sockets, keeps a few idle connections for reuse, and bounds
//! every exchange by `email.timeout`.
//!
//! lettre's own pool leaves Nagle's algorithm on, and lettre writes the
//! DATA terminator (`CRLF . CRLF`) apart from the body. Nagle then holds
//! those five bytes until the server acknowledges the body, which servers
//! delay by up to 40 ms: every message waited there, finished but unsent.
//! A daemon killed in that wait still delivered the message (the kernel
//! flushes a dead process's socket) without a record of it, so the restart
//! sent it again. Here every socket has `TCP_NODELAY`: the terminator
//! leaves the moment it is written.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

/// How long an idle connection is kept before it is closed rather than
/// reused (servers drop idle clients after a few minutes).
const IDLE_FOR: Duration = Duration::from_secs(60);

/// How the connection is secured, as lettre reads `smtp_url`.
#[derive(Clone)]
enum Security {
    None,
    /// STARTTLS when the server offers it.
    Opportunistic(TlsParameters),
    /// STARTTLS, or no mail at all.
    Required(TlsParameters),
    /// TLS from the first byte (`smtps://`).
    Wrapper(Arc<rustls::ClientConfig>),
}

/// Why a send did not get the server's acceptance.
#[derive(Debug)]
pub enum SendError {
    /// The server refused, or the session broke (lettre's error).
    Smtp(lettre::transport::smtp::Error),
    /// No connection could be opened.
    Connect(String),
    /// The server did not answer within `email.timeout`.
    Timeout(Duration),
}

/// A relay and its idle connections.
pub struct Relay {
    host: String,
    port: u16,
    security: Security,
    hello: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Reads `smtp://host[:port][/helo]`, `?tls=required|opportunistic`,
    /// `smtps://`, and user and password in the URL (as lettre does);
    /// `credentials`, when given, win over the URL's. `extra_roots` are
    /// trusted besides the Mozilla roots.
    pub fn new(
        url: &str,
        credentials: Option<Credentials>,
        extra_roots: &[CertificateDer<'static>],
        max_idle: usize,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let params = || {
            let mut b = TlsParameters::builder(host.clone());
            for der in extra_roots {
                let cert = lettre::transport::smtp::client::Certificate::from_der(der.to_vec())
                    .map_err(|e| e.to_string())?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls().map_err(|e| e.to_string())
        };
        let (security, default_port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => (Security::None, 25),
            ("smtp", Some("required")) => (Security::Required(params()?), 587),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic(params()?), 587),
            ("smtps", None) => (Security::Wrapper(tls_config(extra_roots)?), 465),
            (scheme, tls) => {
                return Err(format!(
                    "unknown scheme `{scheme}` or tls `{}` (smtp://, smtp://…?tls=required, smtp://…?tls=opportunistic or smtps://)",
                    tls.unwrap_or_default()
                ));
            }
        };
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once decoded".to_owned())
        };
        let from_url = match url.password() {
            Some(password) => Some(Credentials::new(decode(url.username())?, decode(password)?)),
            None => None,
        };
        Ok(Self {
            port: url.port().unwrap_or(default_port),
            host,
            security,
            hello,
            credentials: credentials.or(from_url),
            timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Hands one message to the server; `Ok` once it accepted it.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SendError> {
        let mut conn = match self.reuse().await {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        match tokio::time::timeout(self.timeout, conn.send(envelope, message)).await {
            Ok(Ok(_)) => {
                self.keep(conn);
                Ok(())
            }
            // lettre closed the session on its error.
            Ok(Err(e)) => Err(SendError::Smtp(e)),
            // Dropping the connection closes it mid-exchange.
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }

    /// An idle connection that still answers NOOP.
    async fn reuse(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut conn, since) = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if since.elapsed() < IDLE_FOR
                && tokio::time::timeout(self.timeout, conn.test_connected())
                    .await
                    .unwrap_or(false)
            {
                return Some(conn);
            }
            quit(conn, self.timeout);
        }
    }

    fn keep(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        } else {
            drop(idle);
            quit(conn, self.timeout);
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let timeout = self.timeout;
        let within = |what: &'static str| {
            move |_| SendError::Connect(format!("{what}: no answer within {timeout:?}"))
        };
        let tcp = tokio::time::timeout(timeout, open(&self.host, self.port))
            .await
            .map_err(within("connecting"))??;
        let stream: Box<dyn AsyncTokioStream> = match &self.security {
            Security::Wrapper(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| SendError::Connect(format!("TLS name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
                let tls = tokio::time::timeout(timeout, tls)
                    .await
                    .map_err(within("TLS handshake"))?
                    .map_err(|e| SendError::Connect(format!("TLS handshake: {e}")))?;
                Box::new(Tls(tls))
            }
            _ => Box::new(tcp),
        };
        let hello = &self.hello;
        let setup = async {
            let mut conn = AsyncSmtpConnection::connect_with_transport(stream, hello).await?;
            match &self.security {
                Security::Required(params) => conn.starttls(params.clone(), hello).await?,
                Security::Opportunistic(params) if conn.can_starttls() => {
                    conn.starttls(params.clone(), hello).await?;
                }
                _ => {}
            }
            if let Some(credentials) = &self.credentials {
                conn.auth(DEFAULT_MECHANISMS, credentials).await?;
            }
            Ok::<_, lettre::transport::smtp::Error>(conn)
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| SendError::Timeout(timeout))?
            .map_err(SendError::Smtp)
    }
}

/// A TCP connection to the first address of `host` that answers (tokio
/// tries each in turn), with Nagle's algorithm off.
async fn open(host: &str, port: u16) -> Result<TcpStream, SendError> {
    let connect = async {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    };
    connect.await.map_err(|e| SendError::Connect(e.to_string()))
}

/// Says goodbye to a connection in the background.
fn quit(mut conn: AsyncSmtpConnection, timeout: Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, conn.quit()).await;
    });
}

/// Certificates checked against the Mozilla roots (webpki-roots) and
/// `extra`, as lettre does for STARTTLS.
fn tls_config(extra: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS stream lettre can drive.
#[derive(Debug)]
struct Tls(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for Tls {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for Tls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tls {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(url: &str) -> Result<Relay, String> {
        Relay::new(url, None, &[], 4, Duration::from_secs(5))
    }

    #[test]
    fn reads_the_url_as_lettre_does() {
        let r = relay("smtp://127.0.0.1:2525").expect("plain");
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 2525));
        assert!(matches!(r.security, Security::None));
        let r = relay("smtp://user:p%40ss@mail.example.com?tls=required").expect("starttls");
        assert_eq!(r.port, 587);
        assert!(matches!(r.security, Security::Required(_)));
        let c = r.credentials.expect("credentials from the URL");
        assert_eq!(c, Credentials::new("user".to_owned(), "p@ss".to_owned()));
        assert!(matches!(
            relay("smtp://mail.example.com?tls=opportunistic")
                .expect("opportunistic")
                .security,
            Security::Opportunistic(_)
        ));
        let r = relay("smtps://mail.example.com/tidings.example.com").expect("implicit TLS");
        assert_eq!(r.port, 465);
        assert!(matches!(r.security, Security::Wrapper(_)));
        assert!(matches!(&r.hello, ClientId::Domain(d) if d == "tidings.example.com"));
        assert!(relay("http://mail.example.com").is_err());
        assert!(relay("smtp://mail.example.com?tls=sometimes").is_err());
        assert!(relay("not a url").is_err());
    }
}
