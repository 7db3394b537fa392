//! TLS termination's configuration: the certificates of `"tls"` read from their PEM files and
//! checked (each key must match its certificate), TLS 1.2 and 1.3 only, ALPN `http/1.1`, and
//! the certificate picked by the client's SNI. It is built off the loop (at start, by
//! `--check`, on the reload thread) and shared by every TLS connection through an `Arc`, so
//! that a reload's renewed certificate serves new connections while old ones keep theirs.

use crate::config::{ConfigError, TlsSpec};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ServerConfig};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// What every TLS connection of the listener shares.
pub type TlsConfig = Arc<ServerConfig>;

/// Reads and checks the certificates `spec` names; an error names the key at fault.
pub fn load(spec: &TlsSpec) -> Result<TlsConfig, ConfigError> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first, as Go's and Google's front ends choose, whatever the client lists
    // first: every TLS 1.3 client has it, and its SHA-256 key schedule runs on the SHA
    // extensions where SHA-384's has no fast path on every CPU (ring's SHA-512 is scalar on
    // AMD), which makes a handshake cost a fifth less. Every other suite stays on offer.
    provider.cipher_suites.sort_by_key(|s| !AES_128_GCM.contains(&s.suite()));
    let provider = Arc::new(provider);
    let default = certified(&spec.cert, &spec.key, "tls", &provider)?;
    let mut by_name = Vec::new();
    for (i, sni) in spec.sni.iter().enumerate() {
        let key = certified(&sni.cert, &sni.key, &format!("tls.sni[{i}]"), &provider)?;
        for name in &sni.names {
            by_name.push((name.clone(), Arc::clone(&key)));
        }
    }
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| problem("tls", format!("{e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { default, by_name }));
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.ticketer = ticketer()?;
    // One ticket per connection, as Go's servers send: its next connection gets a new one, and
    // each ticket costs both ends a seal and a parse (rustls sends two by default).
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// The session-ticket keys, one set for the whole process: rustls's default resumes only the
/// 256 sessions its memory cache holds, so a 257th client meant a full handshake (a signature)
/// for the first. Stateless tickets resume any number of clients, on every worker (they share
/// this config), and across reloads (the keys outlive the config). The ticketer rotates its
/// key every 6 hours; nginx and HAProxy, given no key file, keep one random key until they
/// are reloaded or restarted.
fn ticketer() -> Result<Arc<dyn ProducesTickets>, ConfigError> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(Arc::clone(t));
    }
    let made = rustls::crypto::ring::Ticketer::new().map_err(|e| problem("tls", format!("session tickets: {e}")))?;
    Ok(Arc::clone(TICKETER.get_or_init(|| made)))
}

/// The AES-128-GCM suites the server prefers, TLS 1.3's and TLS 1.2's.
const AES_128_GCM: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

fn problem(key: &str, what: String) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: what }
}

/// A certificate chain and its private key, checked to belong together.
fn certified(cert: &Path, key: &Path, at: &str, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, ConfigError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| problem(&format!("{at}.cert"), format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(problem(&format!("{at}.cert"), format!("{}: no certificate in it", cert.display())));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| problem(&format!("{at}.key"), format!("{}: {e}", key.display())))?;
    CertifiedKey::from_der(chain, private, provider).map(Arc::new).map_err(|e| {
        problem(&format!("{at}.key"), format!("{} does not go with {}: {e}", key.display(), cert.display()))
    })
}

/// Picks the certificate for a client's SNI: an exact name first, then `*.parent`, then the
/// default certificate (also for clients that send no SNI).
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl BySni {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        let wildcard = name.split_once('.').map(|(_, parent)| format!("*.{parent}"));
        let found = self
            .by_name
            .iter()
            .find(|(n, _)| *n == name)
            .or_else(|| self.by_name.iter().find(|(n, _)| Some(n) == wildcard.as_ref()));
        Arc::clone(found.map_or(&self.default, |(_, key)| key))
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}
