//! Throwaway certificate authorities for tests and local clusters: a CA and certificates it
//! issues, written as PEM files, made in process (`rcgen`) so no private key is ever checked in.
//!
//! A node certificate names `127.0.0.1`, `::1` and `localhost` and may serve and dial (both
//! extended key usages), so one certificate serves a node's client port, its peer port and its
//! own connections to other members, as etcd's examples do.

use std::path::Path;
use std::path::PathBuf;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096 (rcgen's defaults): valid for any test.
    Current,
    /// Throughout 2020 only: expired.
    Expired,
}

/// A CA whose key stays in memory; its certificate is written to `<dir>/<name>-ca.pem`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate (PEM), what peers and clients trust.
    pub ca_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, writing its files into `dir`.
    ///
    /// # Errors
    /// When a key cannot be made or a file written.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem())?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            ca_file,
        })
    }

    /// Issues a certificate with common name `name` for loopback addresses, valid as `validity`
    /// says, written to `<dir>/<name>.pem` and `<dir>/<name>-key.pem` (replacing earlier ones).
    ///
    /// # Errors
    /// When a key cannot be made or a file written.
    pub fn issue(&self, name: &str, validity: Validity) -> anyhow::Result<Identity> {
        let loopback = ["127.0.0.1", "::1", "localhost"].map(String::from);
        self.issue_for(name, &loopback, validity)
    }

    /// As [`TestCa::issue`], for the IP addresses and DNS names in `names`.
    ///
    /// # Errors
    /// When a key cannot be made or a file written.
    pub fn issue_for(
        &self,
        name: &str,
        names: &[String],
        validity: Validity,
    ) -> anyhow::Result<Identity> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let identity = Identity {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        // Key first: a reader that sees the new certificate finds its key already there.
        write_atomically(&identity.key, &key.serialize_pem())?;
        write_atomically(&identity.cert, &cert.pem())?;
        Ok(identity)
    }
}

/// Replaces `path` by renaming a complete file over it, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The `kv_server` flags of a node serving its client and peer ports in mutual TLS with
/// `identity`, trusting `ca_file` for both, requiring client certificates.
pub fn node_flags(ca_file: &Path, identity: &Identity) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--cert-file".into(),
        path(&identity.cert),
        "--key-file".into(),
        path(&identity.key),
        "--trusted-ca-file".into(),
        path(ca_file),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        path(&identity.cert),
        "--peer-key-file".into(),
        path(&identity.key),
        "--peer-trusted-ca-file".into(),
        path(ca_file),
    ]
}
