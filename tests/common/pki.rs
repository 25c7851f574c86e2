//! A throwaway PKI for tests: CAs made with rcgen, RSA signing certificates, and a
//! signer that signs bodies the way Partner Center does (RSA PKCS#1 v1.5, SHA-256,
//! base64 in `Authorization: Signature …`).

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::sync::OnceLock;
use time::{Duration, OffsetDateTime};

/// A fresh RSA-2048 private key, PKCS#8 DER (OpenSSL). Tests share a few.
pub fn rsa_key(slot: usize) -> Vec<u8> {
    static KEYS: [OnceLock<Vec<u8>>; 4] = [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[slot]
        .get_or_init(|| {
            let key =
                openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa keygen")).expect("pkey");
            key.private_key_to_pkcs8().expect("pkcs8")
        })
        .clone()
}

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root whose subject organization is `org`.
    pub fn new(org: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::CommonName, format!("{org} Test Root"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(30);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        let key = KeyPair::generate().expect("ca key");
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// An RSA signing certificate for key `slot`, valid from `from` to `until`
    /// (days relative to now), issued by this CA.
    pub fn signing_cert(&self, slot: usize, from_days: i64, until_days: i64) -> SigningCert {
        let pkcs8 = rsa_key(slot);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &rcgen::PKCS_RSA_SHA256)
            .expect("rcgen rsa key");
        let mut params = CertificateParams::new(vec!["pcnotifications-dispatch.test".to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "pcnotifications-dispatch.test");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = OffsetDateTime::now_utc() + Duration::days(from_days);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(until_days);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        SigningCert { der: cert.der().to_vec(), signer: Signer::new(&pkcs8) }
    }
}

/// A certificate (DER) and the key that signs with it.
pub struct SigningCert {
    pub der: Vec<u8>,
    pub signer: Signer,
}

/// Signs bodies like Partner Center.
pub struct Signer {
    key: ring::signature::RsaKeyPair,
}

impl Signer {
    pub fn new(pkcs8: &[u8]) -> Self {
        Self { key: ring::signature::RsaKeyPair::from_pkcs8(pkcs8).expect("ring rsa key") }
    }

    /// The base64 signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), body, &mut sig)
            .expect("sign");
        base64::engine::general_purpose::STANDARD.encode(sig)
    }
}
