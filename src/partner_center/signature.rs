//! Partner Center webhook signatures: header parsing, RSA-SHA256 verification over the
//! exact body bytes, and the reasons a request is refused.
//!
//! Usable on its own: build a [`Verifier`] from a [`SignatureConfig`], then
//! `verifier.verify(&SignatureHeaders::from_headers(&headers)?, &body)`.
//! Certificates come from [`super::certificate::CertificateStore`], which fetches only
//! trusted URLs, checks the chain and issuer, and caches the result.

use super::certificate::{CacheUse, CertificateStore};
use crate::config::SignatureConfig;
use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use http::HeaderMap;

/// The only signature algorithm Partner Center uses (and the only one accepted).
pub const ALGORITHM_RSA_SHA256: &str = "rsa-sha256";
pub const HEADER_AUTHORIZATION: &str = "authorization";
pub const HEADER_MS_SIGNATURE: &str = "x-ms-signature";
pub const HEADER_CERTIFICATE_URL: &str = "x-ms-certificate-url";
pub const HEADER_ALGORITHM: &str = "x-ms-signature-algorithm";

/// Why a signature was not accepted. Only [`VerifyError::CertificateUnavailable`] is
/// transient (the sender should retry); everything else is a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed signature header: {0}")]
    MalformedSignature(String),
    #[error("unsupported signature algorithm {0:?} (only rsa-sha256)")]
    UnsupportedAlgorithm(String),
    #[error("certificate URL is not trusted: {0}")]
    UntrustedCertificateUrl(String),
    #[error("certificate could not be fetched: {0}")]
    CertificateUnavailable(String),
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("certificate is expired or not yet valid: {0}")]
    CertificateExpired(String),
    #[error("certificate does not chain to a trusted root: {0}")]
    UntrustedChain(String),
    #[error("certificate issuer is not {0:?}")]
    WrongIssuer(String),
    #[error("signature does not match the body")]
    SignatureMismatch,
}

impl VerifyError {
    /// A short stable label (metrics, logs, error bodies).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::MalformedSignature(_) => "malformed_signature",
            VerifyError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            VerifyError::UntrustedCertificateUrl(_) => "untrusted_certificate_url",
            VerifyError::CertificateUnavailable(_) => "certificate_unavailable",
            VerifyError::BadCertificate(_) => "bad_certificate",
            VerifyError::CertificateExpired(_) => "certificate_expired",
            VerifyError::UntrustedChain(_) => "untrusted_chain",
            VerifyError::WrongIssuer(_) => "wrong_issuer",
            VerifyError::SignatureMismatch => "signature_mismatch",
        }
    }

    /// Whether trying again later could succeed (the certificate host was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, VerifyError::CertificateUnavailable(_))
    }
}

/// The signature headers of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// The base64 signature as sent (kept on the raw message as `pc-signature`).
    pub signature_text: String,
    pub certificate_url: String,
    pub algorithm: String,
}

/// Standard base64, padding optional (some senders strip it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl SignatureHeaders {
    /// Reads `Authorization: Signature …` (or `x-ms-signature`, used when the
    /// registration sets `SignatureTokenToMsSignatureHeader`), `X-MS-Certificate-Url`
    /// and `X-MS-Signature-Algorithm`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, VerifyError> {
        let text = |name: &'static str| -> Result<Option<&str>, VerifyError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| VerifyError::MalformedSignature(format!("{name} is not ASCII"))),
            }
        };
        let raw_signature = match text(HEADER_MS_SIGNATURE)? {
            Some(s) if !s.is_empty() => s,
            _ => text(HEADER_AUTHORIZATION)?.ok_or(VerifyError::MissingHeader("Authorization"))?,
        };
        let certificate_url = text(HEADER_CERTIFICATE_URL)?
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingHeader("X-MS-Certificate-Url"))?;
        let algorithm = text(HEADER_ALGORITHM)?
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingHeader("X-MS-Signature-Algorithm"))?;
        if !algorithm.eq_ignore_ascii_case(ALGORITHM_RSA_SHA256) {
            return Err(VerifyError::UnsupportedAlgorithm(algorithm.chars().take(40).collect()));
        }
        let signature_text = match raw_signature.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("Signature") => rest.trim(),
            Some(_) => {
                return Err(VerifyError::MalformedSignature("expected the Signature scheme".into()));
            }
            // x-ms-signature may carry the bare value.
            None if headers.contains_key(HEADER_MS_SIGNATURE) => raw_signature,
            None => {
                return Err(VerifyError::MalformedSignature("expected \"Signature <base64>\"".into()));
            }
        };
        let signature = BASE64
            .decode(signature_text)
            .map_err(|e| VerifyError::MalformedSignature(format!("signature is not base64: {e}")))?;
        if signature.is_empty() {
            return Err(VerifyError::MalformedSignature("signature is empty".into()));
        }
        Ok(SignatureHeaders {
            signature,
            signature_text: signature_text.to_string(),
            certificate_url: certificate_url.to_string(),
            algorithm: algorithm.to_ascii_lowercase(),
        })
    }
}

/// How a successful verification used the certificate cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub cache: CacheUse,
}

/// Verifies webhook signatures. Cheap to share: clone it or put it in an `Arc`.
#[derive(Clone)]
pub struct Verifier {
    certificates: CertificateStore,
}

impl Verifier {
    pub fn new(config: &SignatureConfig) -> Result<Self, super::BuildError> {
        Ok(Self { certificates: CertificateStore::new(config)? })
    }

    /// Verifies `body` against the signature headers.
    ///
    /// A signature that fails against a cached certificate is checked once more
    /// against a freshly fetched one (Microsoft rotates the certificate behind the same
    /// URL), at most once per `refetch_min_interval_secs` and URL.
    pub async fn verify(&self, headers: &SignatureHeaders, body: &[u8]) -> Result<Verified, VerifyError> {
        let (key, cache) = self.certificates.get(&headers.certificate_url).await?;
        if key.verify(body, &headers.signature) {
            return Ok(Verified { cache });
        }
        if cache == CacheUse::Hit && self.certificates.may_refetch(&key) {
            let fresh = self.certificates.refetch(&headers.certificate_url, &key).await?;
            if fresh.verify(body, &headers.signature) {
                return Ok(Verified { cache: CacheUse::Refetch });
            }
        }
        Err(VerifyError::SignatureMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const URL: &str = "https://3psostorageacct.blob.core.windows.net/cert/x.cer";

    #[test]
    fn reads_authorization_or_ms_signature() {
        let h = headers(&[
            ("authorization", "Signature AQID"),
            ("x-ms-certificate-url", URL),
            ("x-ms-signature-algorithm", "RSA-SHA256"),
        ]);
        let s = SignatureHeaders::from_headers(&h).unwrap();
        assert_eq!(s.signature, vec![1, 2, 3]);
        assert_eq!(s.algorithm, "rsa-sha256");
        let h = headers(&[
            ("x-ms-signature", "Signature AQIDBA"),
            ("x-ms-certificate-url", URL),
            ("x-ms-signature-algorithm", "rsa-sha256"),
        ]);
        assert_eq!(SignatureHeaders::from_headers(&h).unwrap().signature, vec![1, 2, 3, 4]);
    }

    #[test]
    fn refuses_bad_headers() {
        let ok = [
            ("authorization", "Signature AQID"),
            ("x-ms-certificate-url", URL),
            ("x-ms-signature-algorithm", "rsa-sha256"),
        ];
        for missing in 0..3 {
            let pairs: Vec<_> = ok.iter().enumerate().filter(|(i, _)| *i != missing).map(|(_, p)| *p).collect();
            assert!(matches!(SignatureHeaders::from_headers(&headers(&pairs)), Err(VerifyError::MissingHeader(_))));
        }
        let mut bad = ok;
        bad[2].1 = "rsa-sha1";
        assert!(matches!(SignatureHeaders::from_headers(&headers(&bad)), Err(VerifyError::UnsupportedAlgorithm(_))));
        bad = ok;
        bad[0].1 = "Signature !!notbase64!!";
        assert!(matches!(SignatureHeaders::from_headers(&headers(&bad)), Err(VerifyError::MalformedSignature(_))));
        bad[0].1 = "Bearer AQID";
        assert!(matches!(SignatureHeaders::from_headers(&headers(&bad)), Err(VerifyError::MalformedSignature(_))));
        bad[0].1 = "AQID";
        assert!(matches!(SignatureHeaders::from_headers(&headers(&bad)), Err(VerifyError::MalformedSignature(_))));
    }
}
