//! SMTP over TLS with a relay whose certificate a private authority signed
//! (`email.tls_ca_file`): STARTTLS (`?tls=required`) against a
//! mailin-embedded server, and implicit TLS (`smtps://`) through a TLS
//! front (tokio-rustls) to the same server. The daemon is the real binary;
//! the assertions are on what the server received. Without the authority
//! in the config the certificate is refused and nothing is delivered.

mod peers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use peers::{Daemon, Setup, case_on, eventually, listener, rules};

/// Every message the server accepted, raw.
#[derive(Clone, Default)]
struct Inbox {
    mails: Arc<Mutex<Vec<Vec<u8>>>>,
    buf: Vec<u8>,
}

impl Handler for Inbox {
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = std::mem::take(&mut self.buf);
        self.mails.lock().expect("inbox").push(mail);
        response::OK
    }
}

/// A certificate authority and a certificate it signed for `localhost`,
/// written as PEM files into `dir`: (ca.pem, cert.pem, key.pem).
fn private_pki(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tidings test CA");
    let ca = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(path("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(path("key.pem"), key.serialize_pem()).expect("write key");
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

/// mailin-embedded on a free port, offering STARTTLS with `cert`/`key`.
fn starttls_server(cert: &str, key: &str) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let inbox = Inbox::default();
    let mails = inbox.mails.clone();
    let listener = listener();
    let port = listener.local_addr().expect("addr").port();
    let mut server = Server::new(inbox);
    server
        .with_name("relay.test")
        .with_ssl(SslConfig::SelfSigned {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
        })
        .expect("TLS setup")
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, mails)
}

/// Implicit TLS on a free port, in front of the plain SMTP server on
/// `backend`: each connection is decrypted and relayed byte for byte.
async fn tls_front(cert: &str, key: &str, backend: u16) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

async fn daemon(smtp_url: &str, ca: Option<&str>) -> Daemon {
    let mut setup = Setup::new(rules("ack-only", &[]))
        .smtp_url(smtp_url)
        .email("timeout: 5s")
        .delivery(3, "200ms", "500ms");
    if let Some(ca) = ca {
        setup = setup.email(&format!("tls_ca_file: {ca:?}"));
    }
    setup.start().await
}

fn case() -> serde_json::Value {
    let mut case = case_on(&["email"]);
    case["subject"] = "Router over TLS".into();
    case
}

async fn wait_for_mail(mails: &Mutex<Vec<Vec<u8>>>, n: usize, what: &str) {
    eventually(Duration::from_secs(15), what, async || {
        match mails.lock().expect("inbox").len() {
            got if got >= n => Ok(()),
            got => Err(format!("{got} messages at the server")),
        }
    })
    .await;
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_a_private_authority() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = private_pki(pki.path());
    let (port, mails) = starttls_server(&cert, &key);
    let front = tls_front(&cert, &key, port).await;

    // STARTTLS, required: the acknowledgement arrives.
    let d = daemon(&format!("smtp://localhost:{port}?tls=required"), Some(&ca)).await;
    d.put_case("TLS-1", &case()).await;
    wait_for_mail(&mails, 1, "a message over STARTTLS").await;
    let got = String::from_utf8_lossy(&mails.lock().expect("inbox")[0]).into_owned();
    assert!(got.contains("[TLS-1]"), "{got}");

    // Implicit TLS through the front.
    let d2 = daemon(&format!("smtps://localhost:{front}"), Some(&ca)).await;
    d2.put_case("TLS-2", &case()).await;
    wait_for_mail(&mails, 2, "a message over smtps").await;

    // Without the authority the certificate is refused: nothing arrives,
    // the history says why (a TLS error, retried, then failed).
    let d3 = daemon(&format!("smtp://localhost:{port}?tls=required"), None).await;
    d3.put_case("TLS-3", &case()).await;
    let h = d3
        .wait_messages("TLS-3", Duration::from_secs(15), "failed", |h| {
            h[0]["status"] == "failed"
        })
        .await;
    let error = h[0]["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        mails.lock().expect("inbox").len(),
        2,
        "an untrusted relay got mail"
    );
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "the reason names the certificate: {error}"
    );
    println!(
        "smtp_tls: STARTTLS and smtps delivered with the private CA; without it: failed, `{error}`"
    );
    drop((d, d2));
}
