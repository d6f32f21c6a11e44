//! HTTPS at the edge: the certificates of `[tls]`, read from PEM files (certbot's
//! `/etc/letsencrypt/live/...`) or from systemd credentials (`%d/NAME`, in
//! `$CREDENTIALS_DIRECTORY`, so that the key is readable by nobody else), chosen by SNI, and
//! replaced by a reload without touching a connection already open.
//!
//! rustls with its safe defaults: TLS 1.3 and 1.2 only, its cipher suites, session resumption
//! by a memory cache and by tickets (kept across reloads, so a reload costs no resumption).
//! ALPN offers `h2` and `http/1.1`. A certificate that does not parse, does not match its key,
//! is not valid yet or has expired is refused with that reason: at start, baton does not start;
//! at a reload, the reload fails and the certificates in force keep serving.
//!
//! With `[tls] acme`, one more certificate is not read from `[tls]` but installed by the
//! `acme` task ([`Certificates::install_managed`]), and the TLS-ALPN-01 challenge answers
//! ([`Certificates::set_challenge`]) are served here, to a client whose ALPN asks only for
//! `acme-tls/1`. A reload re-reads the files and leaves the ACME certificate as it is.

use crate::config::{CertificateConfig, TlsConfig};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why certificates could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] names no certificate (tls.certificates)")]
    NoCertificates,
    #[error("{0} is a systemd credential (%d/...), but $CREDENTIALS_DIRECTORY is not set")]
    NoCredentialsDirectory(PathBuf),
    #[error("cannot read a certificate from {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read a private key from {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the key in {key} cannot be used with the certificate in {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate in {path} is not valid X.509: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("the certificate in {path} expired on {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("the certificate in {path} is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("cannot set up TLS: {0}")]
    Setup(#[from] rustls::Error),
}

/// ALPN of the TLS-ALPN-01 challenge (RFC 8737): such a connection carries no HTTP.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One certificate in force, as the journal and `baton status` tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The names it is valid for (DNS names of its subjectAltName, else its CN).
    pub names: Vec<String>,
    /// When it expires (RFC 2822).
    pub not_after: String,
    pub cert: PathBuf,
    /// From when until when it is valid.
    pub validity: std::ops::Range<std::time::SystemTime>,
}

impl std::fmt::Display for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (until {}, {})",
            self.names.join(", "),
            self.not_after,
            self.cert.display()
        )
    }
}

/// The certificates in force, replaced whole by [`Certificates::reload`].
pub struct Certificates {
    current: RwLock<InForce>,
    /// Installed by the ACME task; outlives reloads.
    dynamic: Arc<Dynamic>,
    provider: Arc<CryptoProvider>,
    /// Kept across reloads: a client resumes its session after a reload too.
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

/// The certificates that are not read from `[tls]`'s files.
#[derive(Debug, Default)]
struct Dynamic {
    managed: RwLock<Option<(Arc<CertifiedKey>, Loaded)>>,
    /// TLS-ALPN-01 answers by name, while an order is being validated.
    challenges: RwLock<Vec<(String, Arc<CertifiedKey>)>>,
}

/// What new handshakes get, and what it was read from.
struct InForce {
    server: Arc<ServerConfig>,
    loaded: Vec<Loaded>,
}

/// Sessions kept for resumption (about 200 bytes each).
const SESSIONS: usize = 16 * 1024;

impl Certificates {
    /// Read the certificates `[tls]` names; any that cannot be used is an error.
    pub fn load(config: &TlsConfig) -> Result<Certificates, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let sessions: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(SESSIONS);
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        let dynamic = Arc::new(Dynamic::default());
        let current = in_force(config, &provider, &sessions, &ticketer, &dynamic)?;
        Ok(Certificates {
            current: RwLock::new(current),
            dynamic,
            provider,
            sessions,
            ticketer,
        })
    }

    /// Read the certificates again (a renewed file, a new `[tls]`): new handshakes get them,
    /// connections already open keep theirs. On an error nothing changes.
    pub fn reload(&self, config: &TlsConfig) -> Result<Vec<Loaded>, TlsError> {
        let new = in_force(
            config,
            &self.provider,
            &self.sessions,
            &self.ticketer,
            &self.dynamic,
        )?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(self.loaded())
    }

    /// Check a certificate chain and its key (PEM, as an ACME CA issues them) and serve it
    /// to new handshakes, beside the files of `[tls]`; `path` is where it is kept.
    pub fn install_managed(
        &self,
        chain_pem: &[u8],
        key_pem: &[u8],
        path: &Path,
    ) -> Result<Loaded, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Certificate {
                path: path.to_owned(),
                source,
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key {
            path: path.to_owned(),
            source,
        })?;
        let (certified, info) = certified(chain, key, path, path, &self.provider)?;
        *self
            .dynamic
            .managed
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some((Arc::new(certified), info.clone()));
        Ok(info)
    }

    /// The certificate the ACME task installed, if any.
    pub fn managed(&self) -> Option<Loaded> {
        let managed = self
            .dynamic
            .managed
            .read()
            .unwrap_or_else(|e| e.into_inner());
        managed.as_ref().map(|(_, info)| info.clone())
    }

    /// Answer the TLS-ALPN-01 challenge for `name` with this self-signed certificate (DER)
    /// and key (PKCS#8 DER); `None` withdraws it.
    pub fn set_challenge(
        &self,
        name: &str,
        answer: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> Result<(), TlsError> {
        let mut challenges = self
            .dynamic
            .challenges
            .write()
            .unwrap_or_else(|e| e.into_inner());
        challenges.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some((cert, key)) = answer {
            let key = self.provider.key_provider.load_private_key(key)?;
            challenges.push((
                name.to_ascii_lowercase(),
                Arc::new(CertifiedKey::new(vec![cert], key)),
            ));
        }
        Ok(())
    }

    /// What new handshakes get now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(current.server.clone())
    }

    /// The certificates in force: the files', then the ACME one.
    pub fn loaded(&self) -> Vec<Loaded> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let mut loaded = current.loaded.clone();
        loaded.extend(self.managed());
        loaded
    }
}

/// Read every certificate of `config` and make the server's TLS configuration of them.
fn in_force(
    config: &TlsConfig,
    provider: &Arc<CryptoProvider>,
    sessions: &Arc<dyn StoresServerSessions>,
    ticketer: &Arc<dyn ProducesTickets>,
    dynamic: &Arc<Dynamic>,
) -> Result<InForce, TlsError> {
    if !config.enabled() {
        return Err(TlsError::NoCertificates);
    }
    let mut keys = Vec::new();
    let mut loaded = Vec::new();
    for c in &config.certificates {
        let (key, info) = read(c, provider)?;
        keys.push((info.names.clone(), Arc::new(key)));
        loaded.push(info);
    }
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByName {
            files: keys,
            dynamic: dynamic.clone(),
        }));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if config.acme.is_some() {
        // Last: the server's order wins, so only a validator that offers nothing else gets it.
        server.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    // The strongest suite both sides have, not the client's first pick (TLS 1.2).
    server.ignore_client_order = true;
    server.session_storage = sessions.clone();
    server.ticketer = ticketer.clone();
    Ok(InForce {
        server: Arc::new(server),
        loaded,
    })
}

/// `%d/NAME`: systemd's credentials directory, as unit files spell it.
fn resolve(path: &Path) -> Result<PathBuf, TlsError> {
    match path.strip_prefix("%d") {
        Ok(rest) => std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join(rest))
            .ok_or_else(|| TlsError::NoCredentialsDirectory(path.to_owned())),
        Err(_) => Ok(path.to_owned()),
    }
}

/// One certificate chain and its key, checked.
fn read(
    c: &CertificateConfig,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Loaded), TlsError> {
    let cert_path = resolve(&c.cert)?;
    let key_path = resolve(&c.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert_path.clone(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| TlsError::Key {
        path: key_path.clone(),
        source,
    })?;
    certified(chain, key, &cert_path, &key_path, provider)
}

/// A chain (leaf first) and its key, checked: the leaf valid now, the key its own.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Loaded), TlsError> {
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Certificate {
            path: cert_path.to_owned(),
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    };
    let info = inspect(leaf, cert_path)?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })?;
    Ok((certified, info))
}

/// The names and validity of a leaf certificate; an expired one, or one not valid yet, is
/// an error.
fn inspect(leaf: &CertificateDer<'_>, path: &Path) -> Result<Loaded, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| TlsError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let validity = cert.validity();
    let now = ASN1Time::now();
    let time = |t: ASN1Time| t.to_rfc2822().unwrap_or_else(|_| t.timestamp().to_string());
    if validity.not_after < now {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: time(validity.not_after),
        });
    }
    if validity.not_before > now {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: time(validity.not_before),
        });
    }
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let system = |t: ASN1Time| {
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok(Loaded {
        names,
        not_after: time(validity.not_after),
        cert: path.to_owned(),
        validity: system(validity.not_before)..system(validity.not_after),
    })
}

/// Chooses by SNI: the first certificate valid for the name the client asked for (a
/// wildcard covers one label), the files' before the ACME one, else the first one. A
/// TLS-ALPN-01 validator (ALPN `acme-tls/1` alone) gets the challenge answer for its name
/// and nothing else.
#[derive(Debug)]
struct ByName {
    files: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    dynamic: Arc<Dynamic>,
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello.server_name();
        let validator = hello
            .alpn()
            .map(|mut offered| offered.all(|p| p == ACME_TLS_ALPN))
            .unwrap_or(false);
        if validator {
            let challenges = self
                .dynamic
                .challenges
                .read()
                .unwrap_or_else(|e| e.into_inner());
            return challenges
                .iter()
                .find(|(n, _)| asked.is_some_and(|a| n.eq_ignore_ascii_case(a)))
                .map(|(_, key)| key.clone());
        }
        let managed = self
            .dynamic
            .managed
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let candidates = || {
            self.files
                .iter()
                .map(|(n, k)| (n, k))
                .chain(managed.iter().map(|(k, info)| (&info.names, k)))
        };
        let chosen = asked.and_then(|asked| {
            candidates().find(|(names, _)| names.iter().any(|n| covers(n, asked)))
        });
        chosen
            .or_else(|| candidates().next())
            .map(|(_, key)| key.clone())
    }
}

fn covers(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(domain), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(domain)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_one_label() {
        assert!(covers("shop.example", "SHOP.example"));
        assert!(covers("*.example", "shop.example"));
        assert!(!covers("*.example", "a.shop.example"));
        assert!(!covers("*.example", "example"));
        assert!(!covers("shop.example", "other.example"));
    }

    #[test]
    fn a_credential_is_read_from_the_credentials_directory() {
        // SAFETY: changing the environment races only with a read of it outside std's lock (a C
        // library's getenv on another thread). The other tests of this binary read it only
        // through std (env::var, Command::spawn), which takes the same lock, and none reads
        // this variable, so none sees it change.
        unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
        assert!(matches!(
            resolve(Path::new("%d/shop.key")),
            Err(TlsError::NoCredentialsDirectory(_))
        ));
        assert_eq!(
            resolve(Path::new("/etc/ssl/shop.key")).unwrap(),
            PathBuf::from("/etc/ssl/shop.key")
        );
        // SAFETY: as for the remove_var above.
        unsafe {
            std::env::set_var(
                "CREDENTIALS_DIRECTORY",
                "/run/credentials/baton@shop.service",
            )
        };
        assert_eq!(
            resolve(Path::new("%d/shop.key")).unwrap(),
            PathBuf::from("/run/credentials/baton@shop.service/shop.key")
        );
        // SAFETY: as for the first remove_var.
        unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
    }
}
