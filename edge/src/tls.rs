//! HTTPS at the edge: rustls with the given certificate chain and key (PEM), HTTP/2 and
//! HTTP/1.1 offered by ALPN. The files are read again on SIGHUP and whenever either one
//! changes, so a renewed certificate (certbot, cert-manager, ACM export) needs no
//! restart; a renewal that does not load keeps the certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The certificate chain and private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

pub struct Tls {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
    reloads: Family<OutcomeLabel, Counter>,
}

/// How often the files' modification times are compared.
const POLL: Duration = Duration::from_secs(5);

impl Tls {
    /// Reads both files; an unusable certificate or key stops the edge from starting.
    pub fn load(files: TlsFiles, registry: &mut Registry) -> Result<Tls, String> {
        let acceptor = acceptor(&files)?;
        let reloads = Family::default();
        registry.register(
            "tls_reloads",
            "Certificate reloads (on SIGHUP or a changed file), by outcome",
            reloads.clone(),
        );
        Ok(Tls {
            files,
            acceptor: RwLock::new(acceptor),
            reloads,
        })
    }

    /// The acceptor for a new connection (connections already open keep theirs).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("the TLS lock").clone()
    }

    fn reload(&self, why: &str) {
        match acceptor(&self.files) {
            Ok(acceptor) => {
                *self.acceptor.write().expect("the TLS lock") = acceptor;
                self.count("loaded");
                tracing::info!(why, cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.count("failed");
                tracing::error!(why, error = %e, "TLS certificate not reloaded; the current one stays");
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Reloads on SIGHUP and when a file's modification time changes.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; TLS files are still watched");
                None
            }
        };
        let mut seen = self.stamps();
        let mut every = tokio::time::interval(POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    seen = self.stamps();
                    self.reload("SIGHUP");
                }
                _ = every.tick() => {
                    let now = self.stamps();
                    if now != seen {
                        seen = now;
                        self.reload("file changed");
                    }
                }
            }
        }
    }

    fn stamps(&self) -> [Option<SystemTime>; 2] {
        [modified(&self.files.cert), modified(&self.files.key)]
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("the certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the certificate {} holds no CERTIFICATE block",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("the key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
