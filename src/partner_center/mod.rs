//! What Partner Center is, knowing nothing of brokers: the webhook event and its
//! destination names ([`event`]), signature verification ([`signature`]) and the
//! signing-certificate store behind it ([`certificate`]); the APIs the worker calls
//! ([`client`], [`token`], [`resource`], [`fraud`]) and the webhook registration API
//! ([`registration`], for `pcbridge register`).

pub mod certificate;
pub mod client;
pub mod event;
pub mod fraud;
pub mod registration;
pub mod resource;
pub mod signature;
pub mod token;

/// Why a Partner Center client (the certificate store, the API client) cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A key names something unusable (a URL, a trust-anchor file, a secret file).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The HTTP client's TLS stack could not be set up.
    #[error("{what} HTTP client: {source}")]
    Http {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// Makes *ring* the process-wide rustls crypto provider (reqwest is built without a
/// default one, to avoid a second crypto library). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error with its sources, on one line (reqwest keeps the interesting part in them).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Why a response body could not be read in full.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Larger than the limit (declared or actual); reading stopped there.
    TooLarge,
    /// The connection failed while reading.
    Read(String),
}

/// Reads a response body, refusing more than `limit` bytes without buffering them.
pub(crate) async fn read_limited(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read(error_chain(&e)))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
