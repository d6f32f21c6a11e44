//! Certificates for the HTTPS tests (rcgen: ECDSA P-256, self-signed) and the `[tls]` section
//! that serves them.

use std::path::{Path, PathBuf};

/// A self-signed certificate for `names`, written to `DIR/NAME.crt` and `DIR/NAME.key`;
/// `expired` makes one that ended in 2021.
pub fn certificate(dir: &Path, name: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// `[tls]` serving `cert` on 127.0.0.1:`port`.
pub fn tls_section(port: u16, cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\naddress = \"127.0.0.1:{port}\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        cert.display(),
        key.display()
    )
}

/// A TLS client configuration that trusts the certificates in `trusted` (PEM files), offers
/// `alpn`, and resumes no session: each connection makes a full handshake, so it sees the
/// certificate a new client gets.
pub fn client_config(trusted: &[&Path], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for path in trusted {
        for cert in rustls::pki_types::pem::PemObject::pem_file_iter(path).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    config
}
