//! Certificates obtained and renewed by baton itself (`[tls] acme`), from an ACME CA such as
//! Let's Encrypt (RFC 8555, through `instant-acme`), proven by the TLS-ALPN-01 challenge
//! (RFC 8737) on baton's own HTTPS socket: no other server, no port 80, no certbot.
//!
//! One task per app. It keeps the account and the certificate in its storage directory
//! (`$STATE_DIRECTORY/acme`, mode 0700, keys 0600), so a restart of baton serves the stored
//! certificate at once and asks the CA for nothing. It renews when a third of the lifetime is
//! left (or `renew_before`); while an attempt fails, the certificate in force keeps serving
//! and the attempt is retried with backoff (5 s, doubling, at most an hour). Every outcome is
//! in the journal with its `MESSAGE_ID`.

use crate::config::{AcmeConfig, AppName};
use crate::tls::{Certificates, Loaded, TlsError};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot use the ACME storage {path}: {source}")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ACME account in {path} cannot be read: {source}")]
    Account {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{step} at {directory}: {source}")]
    Protocol {
        step: &'static str,
        directory: String,
        source: instant_acme::Error,
    },
    #[error("the CA offers no tls-alpn-01 challenge for {0}")]
    NoChallenge(String),
    #[error("the CA did not validate {names}: the order is {status:?}{detail}")]
    NotValidated {
        names: String,
        status: OrderStatus,
        detail: String,
    },
    #[error("cannot make the TLS-ALPN-01 answer: {0}")]
    Answer(#[from] rcgen::Error),
    #[error("the certificate the CA issued cannot be used: {0}")]
    Issued(#[from] TlsError),
    #[error("no answer from the CA within {0:?}")]
    TimedOut(Duration),
}

/// An attempt to obtain a certificate gives up after this long.
const ATTEMPT: Duration = Duration::from_secs(300);
/// The first retry after a failed attempt; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// The ACME side of one app's HTTPS.
pub struct Acme {
    config: AcmeConfig,
    storage: PathBuf,
    certs: Arc<Certificates>,
    app: AppName,
}

/// What `account.json` holds: the credentials, and the directory they belong to (a new
/// directory URL means a new account).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl Acme {
    pub fn new(config: AcmeConfig, app: AppName, certs: Arc<Certificates>) -> Acme {
        let storage = config
            .storage
            .clone()
            .unwrap_or_else(|| default_storage(&app));
        Acme {
            config,
            storage,
            certs,
            app,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.storage.join("certificate.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.storage.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.storage.join("account.json")
    }

    /// Serve the certificate kept from an earlier run, if it is still valid; the reason it
    /// is not used otherwise (a new one is obtained then).
    pub fn restore(&self) -> Result<Option<Loaded>, AcmeError> {
        let path = self.cert_path();
        let chain = match std::fs::read(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AcmeError::Storage { path, source }),
        };
        let key = std::fs::read(self.key_path()).map_err(|source| AcmeError::Storage {
            path: self.key_path(),
            source,
        })?;
        Ok(Some(self.certs.install_managed(&chain, &key, &path)?))
    }

    /// Obtain and renew until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = match self.certs.managed() {
                Some(cert) if covers_all(&cert, &self.config.domains) => {
                    let at = renew_at(&cert, self.config.renew_before.map(|d| d.get()));
                    at.duration_since(SystemTime::now()).unwrap_or_default()
                }
                _ => Duration::ZERO,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            let renewal = self.certs.managed().is_some();
            let attempt = tokio::select! {
                r = tokio::time::timeout(ATTEMPT, self.obtain()) => r.unwrap_or(Err(AcmeError::TimedOut(ATTEMPT))),
                _ = stop.cancelled() => return,
            };
            self.withdraw_challenges();
            match attempt {
                Ok(cert) => {
                    failures = 0;
                    let at = renew_at(&cert, self.config.renew_before.map(|d| d.get()));
                    tracing::info!(
                        app = %self.app,
                        message_id = crate::journal::MSG_ACME_OBTAINED,
                        "certificate {} from {}: {cert}; renewal from {}",
                        if renewal { "renewed" } else { "obtained" },
                        self.config.directory,
                        humantime::format_rfc3339_seconds(at)
                    );
                }
                Err(e) => {
                    failures += 1;
                    let retry = backoff(failures);
                    let serving = match self.certs.managed() {
                        Some(c) => format!("{c} keeps serving"),
                        None => "no certificate of its own is served yet".into(),
                    };
                    tracing::error!(
                        app = %self.app,
                        message_id = crate::journal::MSG_ACME_FAILED,
                        "cannot {} a certificate for {} from {}: {e}; {serving}; next attempt in {}",
                        if renewal { "renew" } else { "obtain" },
                        self.config.domains.join(", "),
                        self.config.directory,
                        humantime::format_duration(retry)
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    fn withdraw_challenges(&self) {
        for d in &self.config.domains {
            let _ = self.certs.set_challenge(d, None);
        }
    }

    fn protocol(&self, step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
        let directory = self.config.directory.clone();
        move |source| AcmeError::Protocol {
            step,
            directory,
            source,
        }
    }

    /// The account: the stored one, else a new one (stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.account_path();
        if let Ok(text) = std::fs::read(&path) {
            let stored: StoredAccount =
                serde_json::from_slice(&text).map_err(|source| AcmeError::Account {
                    path: path.clone(),
                    source,
                })?;
            if stored.directory == self.config.directory {
                return self
                    .builder()?
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(self.protocol("cannot restore the account"));
            }
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await
            .map_err(self.protocol("cannot create an account"))?;
        let stored = StoredAccount {
            directory: self.config.directory.clone(),
            credentials,
        };
        let text = serde_json::to_vec_pretty(&stored).map_err(|source| AcmeError::Account {
            path: path.clone(),
            source,
        })?;
        self.write_private(&path, &text)?;
        tracing::info!(app = %self.app, "ACME account {} created at {}", account.id(), self.config.directory);
        Ok(account)
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        match &self.config.directory_ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        }
        .map_err(self.protocol("cannot set up the HTTPS client"))
    }

    /// One order, from the account to the certificate in force.
    async fn obtain(&self) -> Result<Loaded, AcmeError> {
        self.prepare_storage()?;
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let order = account.new_order(&NewOrder::new(&identifiers)).await;
        let mut order = match order {
            Err(instant_acme::Error::Api(p))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
            {
                // The CA forgot the account (a test CA restarted, an account deactivated):
                // make a new one the next attempt.
                let _ = std::fs::remove_file(self.account_path());
                return Err((self.protocol("the CA no longer knows the account"))(
                    instant_acme::Error::Api(p),
                ));
            }
            o => o.map_err(self.protocol("cannot place an order"))?,
        };
        self.answer_challenges(&mut order).await?;
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(self.protocol("no answer on the order"))?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default();
            return Err(AcmeError::NotValidated {
                names: self.config.domains.join(", "),
                status,
                detail,
            });
        }
        let key = order
            .finalize()
            .await
            .map_err(self.protocol("cannot finalize the order"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(self.protocol("cannot download the certificate"))?;
        // Checked before it is kept: a chain that cannot be served replaces nothing.
        let path = self.cert_path();
        let loaded = self
            .certs
            .install_managed(chain.as_bytes(), key.as_bytes(), &path)?;
        self.write_private(&self.key_path(), key.as_bytes())?;
        self.write_private(&path, chain.as_bytes())?;
        Ok(loaded)
    }

    /// Each pending authorization of the order answered by TLS-ALPN-01 on baton's own socket.
    async fn answer_challenges(&self, order: &mut instant_acme::Order) -> Result<(), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(self.protocol("cannot read an authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(AcmeError::NotValidated {
                        names: authz.identifier().to_string(),
                        status: OrderStatus::Invalid,
                        detail: format!(" (authorization {status:?})"),
                    });
                }
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoChallenge(name.clone()))?;
            let answer = answer(&name, challenge.key_authorization().digest().as_ref())?;
            self.certs.set_challenge(&name, Some(answer))?;
            challenge
                .set_ready()
                .await
                .map_err(self.protocol("cannot answer the challenge"))?;
        }
        Ok(())
    }

    fn prepare_storage(&self) -> Result<(), AcmeError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.storage)
            .map_err(|source| AcmeError::Storage {
                path: self.storage.clone(),
                source,
            })
    }

    /// Write whole or not at all (a temporary file renamed over), readable by baton alone.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
        use std::io::Write;
        let err = |source| AcmeError::Storage {
            path: path.to_owned(),
            source,
        };
        // tempfile creates with mode 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.storage).map_err(err)?;
        tmp.write_all(bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

/// `$STATE_DIRECTORY/acme` (the unit's `StateDirectory=`), else `/var/lib/baton/NAME/acme`.
fn default_storage(app: &AppName) -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd joins several directories with ':'; the first is this unit's own.
        Some(dirs) => {
            let dirs = dirs.to_string_lossy().into_owned();
            Path::new(dirs.split(':').next().unwrap_or(&dirs)).join("acme")
        }
        None => Path::new("/var/lib/baton").join(app.as_str()).join("acme"),
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for `name`: the
/// SHA-256 of the key authorization in its acmeIdentifier extension (RFC 8737).
fn answer(
    name: &str,
    digest: &[u8],
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// When to renew: `before` the end, else when a third of the lifetime is left.
fn renew_at(cert: &Loaded, before: Option<Duration>) -> SystemTime {
    let lifetime = cert
        .validity
        .end
        .duration_since(cert.validity.start)
        .unwrap_or_default();
    let before = before.unwrap_or(lifetime / 3).min(lifetime);
    cert.validity.end - before
}

fn covers_all(cert: &Loaded, domains: &[String]) -> bool {
    domains
        .iter()
        .all(|d| cert.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
}

/// The wait after the `failures`-th failed attempt in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(lifetime_s: u64, names: &[&str]) -> Loaded {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Loaded {
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: String::new(),
            cert: PathBuf::new(),
            validity: start..start + Duration::from_secs(lifetime_s),
        }
    }

    #[test]
    fn renewal_starts_when_a_third_of_the_lifetime_is_left() {
        let c = cert(90 * 86400, &["shop.example"]);
        assert_eq!(
            renew_at(&c, None),
            c.validity.end - Duration::from_secs(30 * 86400)
        );
        assert_eq!(
            renew_at(&c, Some(Duration::from_secs(86400))),
            c.validity.end - Duration::from_secs(86400)
        );
        // Asking for more than the lifetime renews at once, never before the start.
        assert_eq!(
            renew_at(&c, Some(Duration::from_secs(365 * 86400))),
            c.validity.start
        );
    }

    #[test]
    fn a_certificate_for_other_names_is_replaced() {
        let c = cert(60, &["shop.example", "www.shop.example"]);
        assert!(covers_all(&c, &["SHOP.example".into()]));
        assert!(!covers_all(
            &c,
            &["shop.example".into(), "api.shop.example".into()]
        ));
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits[..6], [5, 10, 20, 40, 80, 160]);
        assert_eq!(waits[11], 3600);
        assert_eq!(backoff(u32::MAX).as_secs(), 3600);
    }

    #[test]
    fn the_answer_carries_the_digest() {
        let digest = [7u8; 32];
        let (cert, _) = answer("shop.example", &digest).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32 bytes.
        assert_eq!(&ext.value[2..], &digest);
    }
}
