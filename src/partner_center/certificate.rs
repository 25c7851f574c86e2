//! Signing certificates: fetched only from trusted URL prefixes (bounded in time and
//! size, no redirects), chain-verified against the configured trust anchors, issuer
//! organization checked, and cached per URL until expiry.
//!
//! The hot path — a cache hit — is one read-locked `HashMap` lookup by the header's
//! `&str` and no allocation. Misses for one URL are merged into a single download
//! (single flight) that runs to completion even if the request that started it goes away.

use super::signature::VerifyError;
use super::{BodyError, BuildError, error_chain, read_limited};
use crate::config::{ConfigError, SignatureConfig};
use futures::{FutureExt, future::Shared};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject};
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use url::Url;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::{
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{OID_PKCS1_RSAENCRYPTION, OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS},
    prelude::{FromDer, X509Certificate},
};

/// How a lookup was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// From the cache, no network.
    Hit,
    /// Downloaded and validated now.
    Miss,
    /// Downloaded again after a signature failed against the cached certificate.
    Refetch,
}

/// A validated signing certificate, reduced to what verification needs.
#[derive(Debug)]
pub struct TrustedKey {
    /// The RSAPublicKey DER (the SubjectPublicKeyInfo's key bits), ready for ring.
    public_key: Vec<u8>,
    /// Subject of the certificate, for logs.
    pub subject: String,
    fetched_at: Instant,
    /// When the cache must stop using this key: the certificate's notAfter or the
    /// configured TTL, whichever comes first.
    valid_until: Instant,
}

impl TrustedKey {
    /// RSA PKCS#1 v1.5 SHA-256 verification of `signature` over `body`.
    pub fn verify(&self, body: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key).verify(body, signature).is_ok()
    }
}

type Loading = Shared<Pin<Box<dyn Future<Output = Result<Arc<TrustedKey>, VerifyError>> + Send>>>;

/// Fetches, validates and caches signing certificates. Clones share one cache.
#[derive(Clone)]
pub struct CertificateStore {
    inner: Arc<Inner>,
}

struct Inner {
    trusted_prefixes: Vec<Url>,
    aia_prefixes: Vec<Url>,
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    issuer_organization: String,
    http: reqwest::Client,
    max_bytes: usize,
    ttl: Duration,
    refetch_min_interval: Duration,
    max_entries: usize,
    /// Validated keys by the certificate URL exactly as it appeared in the header.
    /// Only URLs that passed the trusted-prefix check are ever inserted.
    cache: RwLock<HashMap<String, Arc<TrustedKey>>>,
    /// Downloads under way, by URL, so concurrent misses share one.
    loading: Mutex<HashMap<String, Loading>>,
}

impl CertificateStore {
    pub fn new(config: &SignatureConfig) -> Result<Self, BuildError> {
        super::install_crypto_provider();
        let parse_prefixes = |key: &str, list: &[String]| -> Result<Vec<Url>, ConfigError> {
            list.iter()
                .map(|p| {
                    Url::parse(p).map_err(|e| ConfigError::invalid(format!("signature.{key}"), format!("{p:?}: {e}")))
                })
                .collect()
        };
        let mut anchors: Vec<TrustAnchor<'static>> = Vec::new();
        if config.microsoft_roots {
            anchors.extend(microsoft_roots());
        }
        if !config.extra_trust_anchors_file.is_empty() {
            for der in read_pem_file(&config.extra_trust_anchors_file, "signature.extra_trust_anchors_file")? {
                let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| {
                    ConfigError::invalid(
                        "signature.extra_trust_anchors_file",
                        format!("a certificate is unusable: {e:?}"),
                    )
                })?;
                anchors.push(anchor.to_owned());
            }
        }
        let intermediates = if config.intermediates_file.is_empty() {
            Vec::new()
        } else {
            read_pem_file(&config.intermediates_file, "signature.intermediates_file")?
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.fetch_timeout_ms))
            .connect_timeout(Duration::from_millis(config.fetch_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("pcbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| BuildError::Http { what: "certificate", source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                trusted_prefixes: parse_prefixes(
                    "trusted_certificate_url_prefixes",
                    &config.trusted_certificate_url_prefixes,
                )?,
                aia_prefixes: parse_prefixes("aia_url_prefixes", &config.aia_url_prefixes)?,
                anchors,
                intermediates,
                issuer_organization: config.issuer_organization.clone(),
                http,
                max_bytes: config.max_certificate_bytes,
                ttl: Duration::from_secs(config.cache_ttl_secs),
                refetch_min_interval: Duration::from_secs(config.refetch_min_interval_secs),
                max_entries: config.cache_max_entries,
                cache: RwLock::new(HashMap::new()),
                loading: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The validated key for a certificate URL: from the cache, or downloaded.
    pub async fn get(&self, url: &str) -> Result<(Arc<TrustedKey>, CacheUse), VerifyError> {
        {
            let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(key) = cache.get(url)
                && Instant::now() < key.valid_until
            {
                return Ok((key.clone(), CacheUse::Hit));
            }
        }
        Ok((self.load(url, None).await?, CacheUse::Miss))
    }

    /// Whether `key` is old enough to be fetched again after a failed signature.
    pub fn may_refetch(&self, key: &TrustedKey) -> bool {
        key.fetched_at.elapsed() >= self.inner.refetch_min_interval
    }

    /// Downloads and validates the certificate again, replacing `stale` in the cache
    /// (unless another request already did: then that newer key is returned).
    pub async fn refetch(&self, url: &str, stale: &Arc<TrustedKey>) -> Result<Arc<TrustedKey>, VerifyError> {
        self.load(url, Some(stale)).await
    }

    /// The key for `url` from a download — one shared by every concurrent caller. A
    /// cached key other than `stale` is returned as it is: the download task caches its
    /// key *before* it leaves `loading`, so checking the cache under the `loading` lock
    /// closes the window in which a late caller would start a second download.
    async fn load(&self, url: &str, stale: Option<&Arc<TrustedKey>>) -> Result<Arc<TrustedKey>, VerifyError> {
        let parsed = self.inner.check_trusted(url)?;
        let loading = {
            let mut loading = self.inner.loading.lock().unwrap_or_else(|p| p.into_inner());
            let cached = self.inner.cache.read().unwrap_or_else(|p| p.into_inner()).get(url).cloned();
            if let Some(key) = cached
                && Instant::now() < key.valid_until
                && stale.is_none_or(|s| !Arc::ptr_eq(s, &key))
            {
                return Ok(key);
            }
            if let Some(l) = loading.get(url) {
                l.clone()
            } else {
                let inner = self.inner.clone();
                let key = url.to_string();
                // Spawned so the download finishes (and is cached) even if every
                // request waiting for it is cancelled.
                let task = tokio::spawn(async move {
                    let result = inner.download_and_validate(parsed).await;
                    if let Ok(k) = &result {
                        inner.insert(&key, k.clone());
                    }
                    inner.loading.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    result
                });
                let shared: Loading = async move {
                    task.await
                        .unwrap_or_else(|e| Err(VerifyError::CertificateUnavailable(format!("download task: {e}"))))
                }
                .boxed()
                .shared();
                loading.insert(url.to_string(), shared.clone());
                shared
            }
        };
        loading.await
    }
}

impl Inner {
    /// Parses the URL and checks it against the trusted prefixes: same scheme, host and
    /// port, path under the prefix's path (after `..` and `%2e` are resolved), and no
    /// userinfo (`https://trusted@evil/` is refused).
    fn check_trusted(&self, raw: &str) -> Result<Url, VerifyError> {
        let untrusted = |why: &str| VerifyError::UntrustedCertificateUrl(format!("{why}: {}", truncate(raw, 200)));
        let url = Url::parse(raw).map_err(|_| untrusted("not a URL"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(untrusted("userinfo is not allowed"));
        }
        if self.trusted_prefixes.iter().any(|p| under_prefix(&url, p)) {
            Ok(url)
        } else {
            Err(untrusted("outside the trusted prefixes"))
        }
    }

    fn insert(&self, url: &str, key: Arc<TrustedKey>) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.max_entries && !cache.contains_key(url) {
            let now = Instant::now();
            cache.retain(|_, k| k.valid_until > now);
            if cache.len() >= self.max_entries
                && let Some(oldest) = cache.iter().min_by_key(|(_, k)| k.fetched_at).map(|(u, _)| u.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(url.to_string(), key);
    }

    async fn download(&self, url: Url) -> Result<Vec<u8>, VerifyError> {
        let unavailable = |e: String| VerifyError::CertificateUnavailable(e);
        let mut response = self.http.get(url.clone()).send().await.map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(unavailable(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(VerifyError::BadCertificate(format!("{url} answered {status} (redirects are not followed)")));
        }
        let too_large = || VerifyError::BadCertificate(format!("{url} is larger than {} bytes", self.max_bytes));
        read_limited(&mut response, self.max_bytes).await.map_err(|e| match e {
            BodyError::TooLarge => too_large(),
            BodyError::Read(e) => unavailable(e),
        })
    }

    async fn download_and_validate(&self, url: Url) -> Result<Arc<TrustedKey>, VerifyError> {
        let bytes = self.download(url.clone()).await?;
        let mut certs = parse_certificates(&bytes)?;
        let leaf = certs.remove(0);
        let mut intermediates: Vec<CertificateDer<'static>> = self.intermediates.iter().cloned().chain(certs).collect();
        self.verify_chain(&leaf, &mut intermediates).await?;
        let key = self.trusted_key(&leaf)?;
        tracing::info!(url = %url, subject = %key.subject, "signing certificate fetched and validated");
        Ok(Arc::new(key))
    }

    /// Builds a path from `leaf` to a trust anchor; when an issuer is missing, fetches
    /// it from an allowed Authority Information Access URL (at most three levels).
    async fn verify_chain(
        &self,
        leaf: &CertificateDer<'static>,
        intermediates: &mut Vec<CertificateDer<'static>>,
    ) -> Result<(), VerifyError> {
        let ee = EndEntityCert::try_from(leaf).map_err(|e| VerifyError::BadCertificate(format!("{e:?}")))?;
        let mut fetched: Vec<String> = Vec::new();
        for _ in 0..4 {
            let result = ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                intermediates,
                UnixTime::now(),
                KeyUsage::server_auth(),
                None,
                None,
            );
            let error = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            match error {
                webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                    return Err(VerifyError::CertificateExpired(format!("{error:?}")));
                }
                webpki::Error::UnknownIssuer => {}
                other => return Err(VerifyError::UntrustedChain(format!("{other:?}"))),
            }
            let candidates: Vec<String> = std::iter::once(leaf)
                .chain(intermediates.iter())
                .flat_map(|c| ca_issuer_urls(c))
                .filter(|u| !fetched.contains(u))
                .collect();
            let Some(next) = candidates.into_iter().find(|u| {
                Url::parse(u).is_ok_and(|url| {
                    url.username().is_empty() && self.aia_prefixes.iter().any(|p| under_prefix(&url, p))
                })
            }) else {
                return Err(VerifyError::UntrustedChain("UnknownIssuer".into()));
            };
            fetched.push(next.clone());
            let url = Url::parse(&next).map_err(|e| VerifyError::UntrustedChain(e.to_string()))?;
            tracing::debug!(url = %url, "fetching issuer certificate from AIA");
            let bytes = self.download(url).await?;
            intermediates.extend(parse_certificates(&bytes)?);
        }
        Err(VerifyError::UntrustedChain("chain too long".into()))
    }

    /// Checks the issuer organization and extracts the RSA public key.
    fn trusted_key(&self, leaf: &CertificateDer<'static>) -> Result<TrustedKey, VerifyError> {
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| VerifyError::BadCertificate(e.to_string()))?;
        let issuer_ok =
            cert.issuer().iter_organization().any(|o| o.as_str().is_ok_and(|s| s == self.issuer_organization));
        if !issuer_ok {
            return Err(VerifyError::WrongIssuer(self.issuer_organization.clone()));
        }
        let spki = cert.public_key();
        if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
            return Err(VerifyError::BadCertificate("the certificate's key is not RSA".into()));
        }
        let now = Instant::now();
        let remaining =
            u64::try_from(cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp())
                .unwrap_or(0);
        Ok(TrustedKey {
            public_key: spki.subject_public_key.data.to_vec(),
            subject: cert.subject().to_string(),
            fetched_at: now,
            valid_until: now + self.ttl.min(Duration::from_secs(remaining)),
        })
    }
}

/// Whether `url` lies under `prefix` (scheme, host, port, path prefix).
fn under_prefix(url: &Url, prefix: &Url) -> bool {
    url.scheme() == prefix.scheme()
        && url.host_str() == prefix.host_str()
        && url.port_or_known_default() == prefix.port_or_known_default()
        && url.path().starts_with(prefix.path())
}

/// DER, or PEM holding one or more certificates (leaf first).
fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, VerifyError> {
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| VerifyError::BadCertificate(format!("PEM: {e}")))?;
        if certs.is_empty() {
            return Err(VerifyError::BadCertificate("no certificate in the PEM".into()));
        }
        Ok(certs)
    } else if bytes.is_empty() {
        Err(VerifyError::BadCertificate("empty certificate".into()))
    } else {
        Ok(vec![CertificateDer::from(bytes.to_vec())])
    }
}

/// The caIssuers URLs of a certificate's Authority Information Access extension.
fn ca_issuer_urls(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    cert.extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => Some(aia),
            _ => None,
        })
        .flat_map(|aia| aia.accessdescs.iter())
        .filter(|d| d.access_method == OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS)
        .filter_map(|d| match &d.access_location {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Microsoft's roots, and the DigiCert roots its TLS issuing CAs chain to, from the
/// Mozilla root store bundled by `webpki-roots`.
fn microsoft_roots() -> impl Iterator<Item = TrustAnchor<'static>> {
    const NAMES: [&[u8]; 3] = [b"Microsoft Corporation", b"DigiCert Global Root G2", b"DigiCert Global Root G3"];
    webpki_roots::TLS_SERVER_ROOTS
        .iter()
        .filter(|a| NAMES.iter().any(|n| a.subject.as_ref().windows(n.len()).any(|w| w == *n)))
        .cloned()
}

fn read_pem_file(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::invalid(key, format!("cannot read {path:?}: {e}")))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::invalid(key, format!("{path:?} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(key, format!("{path:?} holds no certificate")));
    }
    Ok(certs)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefixes: &[&str]) -> CertificateStore {
        let config = SignatureConfig {
            trusted_certificate_url_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        CertificateStore::new(&config).unwrap()
    }

    #[test]
    fn trusted_prefix_check_resists_tricks() {
        let s = store(&["https://3psostorageacct.blob.core.windows.net/cert/"]);
        let ok = |u: &str| s.inner.check_trusted(u).is_ok();
        assert!(ok("https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer"));
        assert!(ok("https://3PSOSTORAGEACCT.blob.core.windows.net:443/cert/x.cer"));
        assert!(!ok("http://3psostorageacct.blob.core.windows.net/cert/x.cer"));
        assert!(!ok("https://3psostorageacct.blob.core.windows.net/cert/../other/x.cer"));
        assert!(!ok("https://3psostorageacct.blob.core.windows.net/cert/%2e%2e/other/x.cer"));
        assert!(!ok("https://3psostorageacct.blob.core.windows.net/certs/x.cer"));
        assert!(!ok("https://3psostorageacct.blob.core.windows.net@evil.example/cert/x.cer"));
        assert!(!ok("https://u:p@3psostorageacct.blob.core.windows.net/cert/x.cer"));
        assert!(!ok("https://3psostorageacct.blob.core.windows.net.evil.example/cert/x.cer"));
        assert!(!ok("https://3psostorageacct.blob.core.windows.net:8443/cert/x.cer"));
        assert!(!ok("https://20.60.0.1/cert/x.cer"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("not a url"));
    }

    #[test]
    fn microsoft_roots_are_found() {
        let names: Vec<String> =
            microsoft_roots().map(|a| String::from_utf8_lossy(a.subject.as_ref()).into_owned()).collect();
        assert!(names.iter().any(|n| n.contains("Microsoft RSA Root Certificate Authority 2017")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("DigiCert Global Root G2")), "{names:?}");
    }
}
