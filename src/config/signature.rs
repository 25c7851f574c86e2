//! The `[signature]` section: which certificate URLs are fetched, what is trusted, and
//! the certificate cache.

use super::{ConfigError, file_exists, invalid, is_http_url};
use serde::{Deserialize, Serialize};

/// The Microsoft blob container that serves Partner Center's signing certificate.
pub const MICROSOFT_CERTIFICATE_PREFIX: &str = "https://3psostorageacct.blob.core.windows.net/cert/";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignatureConfig {
    /// Certificate URLs are fetched only when they start with one of these (compared
    /// after parsing: scheme, host, port and path prefix; userinfo is refused).
    pub trusted_certificate_url_prefixes: Vec<String>,
    /// The certificate's issuer must carry this organization (O=) name.
    pub issuer_organization: String,
    /// Trust Microsoft's roots (and the DigiCert roots Microsoft's TLS CAs chain to).
    pub microsoft_roots: bool,
    /// A PEM file of extra trust anchors (tests, sovereign clouds). Empty: none.
    pub extra_trust_anchors_file: String,
    /// A PEM file of intermediate CA certificates used to build chains. Empty: none.
    pub intermediates_file: String,
    /// When the chain lacks an intermediate, its issuer certificate is downloaded from
    /// the certificate's Authority Information Access URL, but only under these
    /// prefixes. (Fetched issuers still have to chain to a trust anchor.)
    pub aia_url_prefixes: Vec<String>,
    /// Time limit for fetching one certificate.
    pub fetch_timeout_ms: u64,
    /// Largest certificate (or PEM bundle) accepted from a certificate URL.
    pub max_certificate_bytes: usize,
    /// How many certificate URLs are cached at most.
    pub cache_max_entries: usize,
    /// A cached certificate is used at most this long, even if it expires later.
    pub cache_ttl_secs: u64,
    /// After a signature fails against a cached certificate, the certificate is fetched
    /// again, but at most once per this interval and URL (so forged requests cannot make
    /// us hammer Microsoft's storage).
    pub refetch_min_interval_secs: u64,
}

impl Default for SignatureConfig {
    fn default() -> Self {
        Self {
            trusted_certificate_url_prefixes: vec![MICROSOFT_CERTIFICATE_PREFIX.into()],
            issuer_organization: "Microsoft Corporation".into(),
            microsoft_roots: true,
            extra_trust_anchors_file: String::new(),
            intermediates_file: String::new(),
            aia_url_prefixes: vec![
                "http://www.microsoft.com/pkiops/certs/".into(),
                "http://cacerts.digicert.com/".into(),
            ],
            fetch_timeout_ms: 3_000,
            max_certificate_bytes: 64 * 1024,
            cache_max_entries: 32,
            cache_ttl_secs: 24 * 3600,
            refetch_min_interval_secs: 60,
        }
    }
}

impl SignatureConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.trusted_certificate_url_prefixes.is_empty() {
            return invalid("signature.trusted_certificate_url_prefixes", "needs at least one URL prefix");
        }
        for (key, prefixes) in [
            ("signature.trusted_certificate_url_prefixes", &self.trusted_certificate_url_prefixes),
            ("signature.aia_url_prefixes", &self.aia_url_prefixes),
        ] {
            if let Some(prefix) = prefixes.iter().find(|p| !is_http_url(p) || !p.ends_with('/')) {
                return invalid(key, format!("{prefix:?} must be an http(s) URL ending in '/'"));
            }
        }
        if !self.microsoft_roots && self.extra_trust_anchors_file.is_empty() {
            return invalid(
                "signature.extra_trust_anchors_file",
                "is empty while signature.microsoft_roots is false: no certificate could ever be trusted",
            );
        }
        file_exists("signature.extra_trust_anchors_file", &self.extra_trust_anchors_file)?;
        file_exists("signature.intermediates_file", &self.intermediates_file)?;
        if self.fetch_timeout_ms == 0 || self.max_certificate_bytes == 0 {
            return invalid("signature.fetch_timeout_ms", "and signature.max_certificate_bytes must be > 0");
        }
        if self.cache_max_entries == 0 {
            return invalid("signature.cache_max_entries", "must be greater than 0");
        }
        Ok(())
    }
}
