//! Certificates, TLS configs and persisted secrets.
//!
//! Why dev certificates look the way they do: browsers can reach a relay without a CA-signed
//! certificate only through WebTransport's `serverCertificateHashes`, which Chromium accepts for
//! ECDSA P-256 certificates valid for at most 14 days. So the dev certificate is P-256, valid 13
//! days, kept in `data_dir` so the hash stays stable across restarts, and rotated before it runs
//! out without breaking pages that hold its hash: 3 days before expiry the *next* certificate is
//! made and its hash offered beside the current one (`/v1/cert`); the relay switches to it 2 days
//! before expiry. A page that fetched the hashes during that day connects before and after the
//! switch. Everything here uses the ring provider explicitly (never a process-wide default), so
//! the library never depends on what else is linked in.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Total validity of a dev certificate (Chromium allows at most 14 days).
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(13 * 24 * 60 * 60);
/// When a dev certificate expires within this long, its successor is made and announced.
pub const DEV_CERT_RENEW_BEFORE: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// When a dev certificate expires within this long, the relay switches to its successor.
pub const DEV_CERT_SWITCH_BEFORE: Duration = Duration::from_secs(2 * 24 * 60 * 60);
/// Dev certificate file name inside the data dir.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
/// Dev key file name inside the data dir.
pub const DEV_KEY_FILE: &str = "dev-key.pem";
/// The announced successor of the dev certificate, and its key.
pub const DEV_CERT_NEXT_FILE: &str = "dev-cert-next.pem";
pub const DEV_KEY_NEXT_FILE: &str = "dev-key-next.pem";
/// Backdating of a new dev certificate, for clients whose clocks are slightly behind.
const DEV_CERT_BACKDATE: Duration = Duration::from_secs(60);

/// An error about certificates, keys or secrets. Names the file involved where there is one.
/// An underlying error is part of the message and not also `source()`, so a report of the
/// chain (`{:#}`) names it once.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// A file exists but its content is unusable.
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("generating dev certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> Self {
        TlsError::Rustls(error)
    }
}

/// `t` as an RFC 3339 UTC date, e.g. `2026-12-14T09:30:00Z` (whole seconds), for certificate
/// expiry in the banner and logs.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("unix {secs}"),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |error| TlsError::Io { path: path.to_path_buf(), error }
}

fn bad_file(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::BadFile { path: path.to_path_buf(), message: message.into() }
}

/// A certificate chain with its key, as served.
pub struct CertBundle {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate DER (what `serverCertificateHashes` pins).
    pub sha256: [u8; 32],
    /// Start of the end-entity certificate's validity (a dev certificate is not served before).
    not_before: SystemTime,
    pub not_after: SystemTime,
    /// A self-signed dev certificate.
    pub dev: bool,
}

impl Clone for CertBundle {
    fn clone(&self) -> Self {
        CertBundle {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            sha256: self.sha256,
            not_before: self.not_before,
            not_after: self.not_after,
            dev: self.dev,
        }
    }
}

// Hand-written so the key never reaches logs.
impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertBundle")
            .field("chain_len", &self.chain.len())
            .field("sha256", &self.sha256_hex())
            .field("not_after", &self.not_after)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

impl CertBundle {
    /// Lower-case hex of [`CertBundle::sha256`].
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Standard base64 (with padding) of [`CertBundle::sha256`], as browsers' JS APIs take it.
    pub fn sha256_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sha256)
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        dev: bool,
        path: &Path,
    ) -> Result<CertBundle, TlsError> {
        let end_entity = chain.first().ok_or_else(|| bad_file(path, "no certificate found"))?;
        let (not_before, not_after) =
            cert_validity(end_entity).ok_or_else(|| bad_file(path, "cannot read the certificate's validity"))?;
        Ok(CertBundle { sha256: sha256(end_entity), chain, key, not_before, not_after, dev })
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether `bundle` expires within [`DEV_CERT_RENEW_BEFORE`] of `now`.
pub fn needs_renewal(bundle: &CertBundle, now: SystemTime) -> bool {
    match now.checked_add(DEV_CERT_RENEW_BEFORE) {
        Some(deadline) => deadline >= bundle.not_after,
        None => true,
    }
}

/// Loads a PEM certificate chain (end-entity first) and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1).
pub fn load_cert_files(cert: &Path, key: &Path) -> Result<CertBundle, TlsError> {
    let (chain, key_der) = read_pems(cert, key)?;
    CertBundle::from_parts(chain, key_der, false, cert)
}

fn read_pems(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_pem = fs::read(cert).map_err(io_err(cert))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad_file(cert, "no CERTIFICATE block found"));
    }
    let key_pem = fs::read(key).map_err(io_err(key))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => bad_file(key, "no private key found"),
        e => bad_file(key, format!("bad PEM: {e}")),
    })?;
    Ok((chain, key_der))
}

/// The dev certificate being served, and its announced successor during the rotation window.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub current: CertBundle,
    pub next: Option<CertBundle>,
}

impl DevCerts {
    /// SHA-256 of every certificate a client should accept now: the current one first.
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        std::iter::once(self.current.sha256).chain(self.next.as_ref().map(|next| next.sha256)).collect()
    }
}

/// Loads `<dir>/dev-cert.pem` + `<dir>/dev-key.pem`, or (re)creates them when they are missing,
/// unreadable, not yet valid, or expire within [`DEV_CERT_SWITCH_BEFORE`] of `now` (promoting the
/// announced successor when there is a usable one). Within [`DEV_CERT_RENEW_BEFORE`] of expiry,
/// also loads or creates the successor (`dev-cert-next.pem`).
pub fn load_or_create_dev_certs(dir: &Path, now: SystemTime) -> Result<DevCerts, TlsError> {
    let (cert_path, key_path) = (dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE));
    let (next_cert, next_key) = (dir.join(DEV_CERT_NEXT_FILE), dir.join(DEV_KEY_NEXT_FILE));
    let current = match load_dev_cert(&cert_path, &key_path, now) {
        Ok(Some(bundle)) => bundle,
        found => {
            match found {
                Ok(_) => tracing::info!(path = %cert_path.display(), "switching to the next dev certificate"),
                Err(TlsError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                    tracing::info!(path = %cert_path.display(), "creating dev certificate")
                }
                Err(e) => tracing::warn!(error = %e, "replacing unusable dev certificate"),
            }
            match load_dev_cert(&next_cert, &next_key, now) {
                Ok(Some(next)) => {
                    // Key first, as when creating: a certificate never sits beside a foreign key
                    // for longer than the two renames.
                    fs::rename(&next_key, &key_path).map_err(io_err(&key_path))?;
                    fs::rename(&next_cert, &cert_path).map_err(io_err(&cert_path))?;
                    next
                }
                _ => create_dev_cert(dir, &cert_path, &key_path, now)?,
            }
        }
    };
    if !needs_renewal(&current, now) {
        return Ok(DevCerts { current, next: None });
    }
    let next = match load_dev_cert(&next_cert, &next_key, now) {
        Ok(Some(next)) if !needs_renewal(&next, now) => next,
        _ => {
            tracing::info!(path = %next_cert.display(), "creating the next dev certificate (its hash is announced)");
            create_dev_cert(dir, &next_cert, &next_key, now)?
        }
    };
    Ok(DevCerts { current, next: Some(next) })
}

/// The current dev certificate of [`load_or_create_dev_certs`].
pub fn load_or_create_dev_cert(dir: &Path, now: SystemTime) -> Result<CertBundle, TlsError> {
    load_or_create_dev_certs(dir, now).map(|certs| certs.current)
}

/// The stored dev cert if it can be served at `now` (`None` if it is not valid yet or expires
/// within [`DEV_CERT_SWITCH_BEFORE`]).
fn load_dev_cert(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<Option<CertBundle>, TlsError> {
    let (chain, key) = read_pems(cert_path, key_path)?;
    let bundle = CertBundle::from_parts(chain, key, true, cert_path)?;
    // Also catches a key that does not belong to the certificate.
    server_config(&bundle, &[])?;
    let switch_at = now.checked_add(DEV_CERT_SWITCH_BEFORE);
    if now < bundle.not_before || switch_at.is_none_or(|at| at >= bundle.not_after) {
        return Ok(None);
    }
    Ok(Some(bundle))
}

fn create_dev_cert(dir: &Path, cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<CertBundle, TlsError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key_pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "edgerelay dev");
    let not_before =
        now.checked_sub(DEV_CERT_BACKDATE).ok_or_else(|| TlsError::Generate("`now` is before the epoch".into()))?;
    let not_after = not_before + DEV_CERT_VALIDITY;
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let cert = params.self_signed(&key_pair).map_err(|e| TlsError::Generate(e.to_string()))?;

    // Key first: a cert on disk without its key would be replaced on the next start anyway.
    write_atomic(key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, cert.pem().as_bytes(), 0o644)?;

    let der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    // Read the validity back from the DER so it matches what a reload would see.
    CertBundle::from_parts(vec![der], key, true, cert_path)
}

/// Writes `data` to a temp file beside `path` with `mode`, then renames it over `path`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = write_temp(path, data, mode)?;
    let renamed = fs::rename(&tmp, path);
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed.map_err(io_err(path))
}

/// Writes `data`, synced, to a temp file beside `path` with exactly `mode`, and returns the
/// temp file's path. Nothing is left behind on error (reported against `path`).
fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // `mode` is masked by the umask on create; make it exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err(path)(e))
        }
    }
}

/// A random secret of `len` bytes persisted at `path` (mode 0600, parent dirs created), read
/// back on later calls. The file holds the raw bytes. Concurrent first calls agree on one secret.
pub fn load_or_create_secret(path: &Path, len: usize) -> Result<Vec<u8>, TlsError> {
    match fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => return Ok(bytes),
        Ok(_) => tracing::warn!(path = %path.display(), "empty secret file, regenerating"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    if len == 0 {
        return Err(bad_file(path, "secret length must be greater than 0"));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut secret = vec![0u8; len];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| bad_file(path, "system random generator failed"))?;

    // Write a complete temp file, then link it into place: the secret appears whole or not at
    // all, and if another process won the race we use its secret.
    let tmp = write_temp(path, &secret, 0o600)?;
    let linked = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Either another process won, or an empty file is in the way.
            if fs::metadata(path).map(|m| m.len() == 0).unwrap_or(false) {
                fs::rename(&tmp, path).map(|()| true)
            } else {
                Ok(false)
            }
        }
        Err(e) => Err(e),
    };
    let _ = fs::remove_file(&tmp);
    match linked.map_err(io_err(path))? {
        true => Ok(secret),
        false => fs::read(path).map_err(io_err(path)),
    }
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ring provider for this crate's clients, offering `TLS13_AES_128_GCM_SHA256` first
/// (ring's default offers AES-256 first, and the relay follows the client's order): its key
/// schedule is SHA-256, which CPUs with SHA extensions run in hardware where SHA-384 runs in
/// software, and AES-128 takes 10 rounds per block where AES-256 takes 14. Browsers offer it
/// first too. Every QUIC handshake and packet of the Rust client and the load generator is
/// cheaper on both sides (docs/decisions.md, "The Rust client offers AES-128-GCM first").
fn client_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// A rustls server config: ring provider, TLS 1.3 only, the bundle's chain and key, these ALPN
/// protocols.
pub fn server_config(bundle: &CertBundle, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(bundle.chain.clone(), bundle.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// ALPN offered on the TCP listener's TLS: HTTP/1.1 is all it serves (WebSocket included).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The server config new TLS connections on the TCP listener are accepted with. Certificate
/// reloads replace it; connections already accepted keep the one they started with.
pub struct SharedServerConfig(RwLock<Arc<rustls::ServerConfig>>);

impl SharedServerConfig {
    /// A config for `bundle` (TLS 1.3 and 1.2, ALPN `http/1.1`).
    pub fn new(bundle: &CertBundle) -> Result<SharedServerConfig, TlsError> {
        Ok(SharedServerConfig(RwLock::new(Arc::new(tcp_server_config(bundle)?))))
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `bundle` to connections accepted from now on.
    pub fn replace(&self, bundle: &CertBundle) -> Result<(), TlsError> {
        let config = Arc::new(tcp_server_config(bundle)?);
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }
}

/// The TCP listener's server config: ring provider, TLS 1.3 and 1.2 (the TCP side also serves
/// older HTTPS clients and proxies; QUIC is 1.3 by definition), ALPN `http/1.1`.
fn tcp_server_config(bundle: &CertBundle) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(bundle.chain.clone(), bundle.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A rustls client config (ring provider, TLS 1.3) that accepts a server only if the SHA-256 of
/// its end-entity certificate is one of `pins`; handshake signatures are still verified. Neither
/// the name nor the validity dates are checked: the pin is the trust, as with browsers'
/// `serverCertificateHashes`.
pub fn pinned_client_config(pins: Vec<[u8; 32]>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    pinned_config_with(client_provider(), pins, alpn)
}

/// [`pinned_client_config`] with another provider (its tests compare ring's default order).
fn pinned_config_with(provider: Arc<CryptoProvider>, pins: Vec<[u8; 32]>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let verifier = PinnedVerifier { pins, algorithms: provider.signature_verification_algorithms };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        // The ring provider always supports TLS 1.3 suites; this cannot fail.
        .expect("ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A rustls client config (ring provider, TLS 1.3) with standard webpki verification against the
/// root certificates in `roots_pem` (PEM file contents).
pub fn roots_client_config(roots_pem: &[u8], alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let roots_path = Path::new("<roots>");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        let cert = cert.map_err(|e| bad_file(roots_path, format!("bad PEM: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(bad_file(roots_path, "no CERTIFICATE block found"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(client_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let hash = sha256(end_entity);
        // Constant-time compare is not needed: the hash is of a public certificate.
        if self.pins.contains(&hash) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// --- Minimal DER reading, just enough for a certificate's validity. ---

/// Splits one DER TLV off `input`: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// (notBefore, notAfter) of an X.509 certificate.
fn cert_validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = der_tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // Optional explicit version [0].
    let (tag, _, after) = der_tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = der_tlv(rest)?.2;
    }
    let (tag, validity, _) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (t1, nb, rest) = der_tlv(validity)?;
    let (t2, na, _) = der_tlv(rest)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, content: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(content).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let num = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let month = time::Month::try_from(num(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(2)?).ok()?;
    let t = time::Time::from_hms(num(4)?, num(6)?, num(8)?).ok()?;
    let secs = date.with_time(t).assume_utc().unix_timestamp();
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn expiry_prints_as_an_rfc3339_utc_date() {
        assert_eq!(rfc3339_utc(at(1_765_000_000)), "2025-12-06T05:46:40Z");
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn dev_cert_is_created_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let a = load_or_create_dev_cert(&data, at(NOW)).unwrap();
        assert!(a.dev);
        assert_eq!(a.not_after, at(NOW) - DEV_CERT_BACKDATE + DEV_CERT_VALIDITY);
        let key_mode = fs::metadata(data.join(DEV_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);

        let b = load_or_create_dev_cert(&data, at(NOW + 3600)).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.sha256_hex(), b.sha256_hex());
        assert_eq!(a.sha256_hex().len(), 64);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(a.sha256_base64()).unwrap(), a.sha256);
    }

    #[test]
    fn dev_cert_rotation_announces_the_next_hash_before_switching() {
        const DAY: u64 = 24 * 3600;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_dev_certs(dir.path(), at(NOW)).unwrap();
        assert!(a.next.is_none(), "a fresh certificate has no successor");
        assert_eq!(a.hashes(), vec![a.current.sha256]);
        // 10.5 days later: 2.5 days left. Same certificate served, successor announced.
        let announce = at(NOW + 10 * DAY + DAY / 2);
        let b = load_or_create_dev_certs(dir.path(), announce).unwrap();
        assert_eq!(b.current.sha256, a.current.sha256);
        let next = b.next.clone().expect("successor announced");
        assert_eq!(b.hashes(), vec![a.current.sha256, next.sha256]);
        // A restart in the window keeps both (nothing is regenerated).
        let again = load_or_create_dev_certs(dir.path(), announce + Duration::from_secs(3600)).unwrap();
        assert_eq!(again.hashes(), b.hashes());
        // 11.5 days later: 1.5 days left. The relay switches to the announced successor, whose
        // hash pages fetched a day ago already hold.
        let switch = at(NOW + 11 * DAY + DAY / 2);
        let c = load_or_create_dev_certs(dir.path(), switch).unwrap();
        assert_eq!(c.current.sha256, next.sha256);
        assert!(c.next.is_none());
        assert!(!dir.path().join(DEV_CERT_NEXT_FILE).exists());
        assert_eq!(load_or_create_dev_cert(dir.path(), switch).unwrap().sha256, next.sha256, "reload sees it");
    }

    #[test]
    fn dev_cert_long_expired_without_successor_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_dev_cert(dir.path(), at(NOW)).unwrap();
        let much_later = at(NOW + 30 * 24 * 3600);
        let b = load_or_create_dev_certs(dir.path(), much_later).unwrap();
        assert_ne!(a.sha256, b.current.sha256);
        assert!(!needs_renewal(&b.current, much_later));
        assert!(b.next.is_none());
    }

    #[test]
    fn unreadable_dev_cert_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DEV_CERT_FILE), "garbage").unwrap();
        fs::write(dir.path().join(DEV_KEY_FILE), "garbage").unwrap();
        let a = load_or_create_dev_cert(dir.path(), at(NOW)).unwrap();
        assert!(a.dev);
    }

    #[test]
    fn dev_cert_meets_chromium_hash_rules() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = load_or_create_dev_cert(dir.path(), at(NOW)).unwrap();
        let (not_before, not_after) = cert_validity(&bundle.chain[0]).unwrap();
        let validity = not_after.duration_since(not_before).unwrap();
        assert!(validity <= Duration::from_secs(14 * 24 * 3600));
        assert_eq!(validity, DEV_CERT_VALIDITY);

        let pem = fs::read_to_string(dir.path().join(DEV_KEY_FILE)).unwrap();
        let key = rcgen::KeyPair::from_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        // The served key is the same one.
        assert_eq!(bundle.key.secret_der(), key.serialized_der());
    }

    #[test]
    fn load_cert_files_reads_pems() {
        let dir = tempfile::tempdir().unwrap();
        let dev = load_or_create_dev_cert(dir.path(), at(NOW)).unwrap();
        let b = load_cert_files(&dir.path().join(DEV_CERT_FILE), &dir.path().join(DEV_KEY_FILE)).unwrap();
        assert!(!b.dev);
        assert_eq!(b.sha256, dev.sha256);
        assert_eq!(b.not_after, dev.not_after);

        let missing = load_cert_files(&dir.path().join("nope.pem"), &dir.path().join(DEV_KEY_FILE));
        let err = missing.unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }

    /// Runs a handshake in memory; Ok(negotiated ALPN) or the first error.
    fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<Option<Vec<u8>>, rustls::Error> {
        handshaken(client, server).map(|c| c.alpn_protocol().map(<[u8]>::to_vec))
    }

    /// Runs a handshake in memory; Ok(the client's side of it) or the first error.
    fn handshaken(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<ClientConnection, rustls::Error> {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name)?;
        let mut s = ServerConnection::new(Arc::new(server))?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c);
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn the_clients_negotiate_aes_128_gcm_with_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = load_or_create_dev_cert(dir.path(), SystemTime::now()).unwrap();
        let server = server_config(&bundle, &[b"h3"]).unwrap();
        let pem = fs::read(dir.path().join(DEV_CERT_FILE)).unwrap();
        for client in
            [pinned_client_config(vec![bundle.sha256], &[b"h3"]), roots_client_config(&pem, &[b"h3"]).unwrap()]
        {
            let suite = handshaken(client, server.clone()).unwrap().negotiated_cipher_suite().map(|s| s.suite());
            assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        }
        // A client that offers AES-256 first still gets it: the relay follows the client's order.
        let ring_default = pinned_config_with(ring_provider(), vec![bundle.sha256], &[b"h3"]);
        let suite = handshaken(ring_default, server).unwrap().negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }

    #[test]
    fn pinned_client_handshakes_only_with_matching_pin() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = load_or_create_dev_cert(dir.path(), SystemTime::now()).unwrap();
        let server = server_config(&bundle, &[b"h3"]).unwrap();

        let ok = handshake(pinned_client_config(vec![bundle.sha256], &[b"h3"]), server.clone());
        assert_eq!(ok.unwrap(), Some(b"h3".to_vec()));

        let err = handshake(pinned_client_config(vec![[7u8; 32]], &[b"h3"]), server).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }

    #[test]
    fn roots_client_trusts_given_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = load_or_create_dev_cert(dir.path(), SystemTime::now()).unwrap();
        let server = server_config(&bundle, &[b"h3"]).unwrap();
        // webpki takes a self-signed certificate given as a root as its own trust anchor.
        let pem = fs::read(dir.path().join(DEV_CERT_FILE)).unwrap();
        let client = roots_client_config(&pem, &[b"h3"]).unwrap();
        assert_eq!(handshake(client, server.clone()).unwrap(), Some(b"h3".to_vec()));

        let other = tempfile::tempdir().unwrap();
        load_or_create_dev_cert(other.path(), SystemTime::now()).unwrap();
        let other_pem = fs::read(other.path().join(DEV_CERT_FILE)).unwrap();
        let client = roots_client_config(&other_pem, &[b"h3"]).unwrap();
        assert!(handshake(client, server).is_err());

        assert!(roots_client_config(b"not pem", &[]).is_err());
    }

    #[test]
    fn secret_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/dev-token-secret");
        let s1 = load_or_create_secret(&path, 32).unwrap();
        assert_eq!(s1.len(), 32);
        let s2 = load_or_create_secret(&path, 32).unwrap();
        assert_eq!(s1, s2);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temp files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

        let other = load_or_create_secret(&dir.path().join("other"), 32).unwrap();
        assert_ne!(s1, other);
    }

    #[test]
    fn der_time_parses_both_forms() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(UNIX_EPOCH));
        assert_eq!(der_time(0x18, b"20500101000000Z"), Some(at(2_524_608_000)));
        assert_eq!(der_time(0x17, b"7001010000Z"), None);
        assert_eq!(der_time(0x17, b"701301000000Z"), None);
    }
}
