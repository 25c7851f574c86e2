//! The simulator's own PKI: a root CA and an RSA signing certificate issued by it, made
//! with OpenSSL (already linked for librdkafka's TLS). Partner Center signs webhooks with
//! RSA PKCS#1 v1.5 over SHA-256; so does [`Pki::sign`].
//!
//! The CA is *not* Microsoft's and does not pretend to be: its organization is
//! [`ORGANIZATION`], so an ingress accepts the simulator's events only when an operator
//! trusts this CA (`signature.extra_trust_anchors_file`) and this issuer
//! (`signature.issuer_organization`) on purpose.

use base64::Engine;
use openssl::{
    asn1::Asn1Time,
    bn::{BigNum, MsbOption},
    hash::MessageDigest,
    pkey::{PKey, Private},
    rsa::Rsa,
    sign::Signer,
    x509::{
        X509, X509Builder, X509NameBuilder,
        extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier},
    },
};
use std::path::Path;

/// Organization (`O=`) of the simulator's CA, the issuer of its signing certificate.
pub const ORGANIZATION: &str = "pcbridge simulator";

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SIGNING_CERT: &str = "signing.pem";
const SIGNING_KEY: &str = "signing-key.pem";

/// A PKI problem (key generation, a file that cannot be read or written).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(String);

impl PkiError {
    pub(crate) fn new(message: String) -> Self {
        PkiError(message)
    }
}

impl From<openssl::error::ErrorStack> for PkiError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        PkiError(format!("OpenSSL: {e}"))
    }
}

/// The CA and the signing certificate with its key.
pub struct Pki {
    ca: X509,
    signing_cert: X509,
    signing_key: PKey<Private>,
}

impl Pki {
    /// A fresh CA (valid 10 years) and signing certificate (valid 1 year).
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self::generate_with_ca_key()?.0)
    }

    fn generate_with_ca_key() -> Result<(Self, PKey<Private>), PkiError> {
        let ca_key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let ca = build(&ca_key, None, "pcbridge simulator root CA", 3650)?;
        let pki = Self::issue(ca, &ca_key)?;
        Ok((pki, ca_key))
    }

    /// A new signing key and certificate from `ca`.
    fn issue(ca: X509, ca_key: &PKey<Private>) -> Result<Self, PkiError> {
        let signing_key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let signing_cert = build(&signing_key, Some((&ca, ca_key)), "pcnotifications-dispatch.simulator", 365)?;
        Ok(Self { ca, signing_cert, signing_key })
    }

    /// Loads the PKI kept in `dir`, or generates one and keeps it there, so that a CA an
    /// operator trusted once stays valid across runs. A signing certificate that expires
    /// within a week is reissued by the same CA.
    pub fn load_or_generate(dir: &Path) -> Result<Self, PkiError> {
        let io = |what: &str, p: &Path, e: std::io::Error| PkiError(format!("{what} {}: {e}", p.display()));
        let ca_path = dir.join(CA_CERT);
        if !ca_path.exists() {
            let (pki, ca_key) = Self::generate_with_ca_key()?;
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
            write_private(&dir.join(CA_KEY), &ca_key.private_key_to_pem_pkcs8()?)?;
            std::fs::write(&ca_path, pki.ca.to_pem()?).map_err(|e| io("cannot write", &ca_path, e))?;
            pki.store_signing(dir)?;
            return Ok(pki);
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| io("cannot read", &p, e))
        };
        let ca = X509::from_pem(&read(CA_CERT)?)?;
        let signing = (read(SIGNING_CERT), read(SIGNING_KEY));
        if let (Ok(cert), Ok(key)) = signing {
            let (cert, key) = (X509::from_pem(&cert)?, PKey::private_key_from_pem(&key)?);
            if cert.not_after() > Asn1Time::days_from_now(7)? {
                return Ok(Self { ca, signing_cert: cert, signing_key: key });
            }
        }
        let ca_key = PKey::private_key_from_pem(&read(CA_KEY)?)?;
        let pki = Self::issue(ca, &ca_key)?;
        pki.store_signing(dir)?;
        Ok(pki)
    }

    /// The CA certificate, PEM: what an ingress must trust.
    pub fn ca_pem(&self) -> Result<String, PkiError> {
        Ok(String::from_utf8_lossy(&self.ca.to_pem()?).into_owned())
    }

    /// The signing certificate, DER: what the certificate URL serves (like the `.cer`
    /// Partner Center publishes).
    pub fn signing_cert_der(&self) -> Result<Vec<u8>, PkiError> {
        Ok(self.signing_cert.to_der()?)
    }

    /// The base64 RSA-SHA256 signature of `body`, as in `Authorization: Signature …`.
    pub fn sign(&self, body: &[u8]) -> Result<String, PkiError> {
        let mut signer = Signer::new(MessageDigest::sha256(), &self.signing_key)?;
        signer.update(body)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec()?))
    }

    fn store_signing(&self, dir: &Path) -> Result<(), PkiError> {
        let p = dir.join(SIGNING_CERT);
        std::fs::write(&p, self.signing_cert.to_pem()?)
            .map_err(|e| PkiError(format!("cannot write {}: {e}", p.display())))?;
        write_private(&dir.join(SIGNING_KEY), &self.signing_key.private_key_to_pem_pkcs8()?)
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| PkiError(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(pem).map_err(|e| PkiError(format!("cannot write {}: {e}", path.display())))
}

/// A certificate for `key`: self-signed CA when `issuer` is `None`, else a leaf.
fn build(key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>, cn: &str, days: u32) -> Result<X509, PkiError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("O", ORGANIZATION)?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(days)?);
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))?;
    b.append_extension(ski)?;
    let signer = match issuer {
        None => {
            b.set_issuer_name(&name)?;
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
            key
        }
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name())?;
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
            b.append_extension(ExtendedKeyUsage::new().server_auth().client_auth().build()?)?;
            ca_key
        }
    };
    b.sign(signer, MessageDigest::sha256())?;
    Ok(b.build())
}
