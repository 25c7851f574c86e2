//! What Partner Center is, knowing nothing of brokers: the webhook event and its
//! destination names ([`event`]), signature verification ([`signature`]) and the
//! signing-certificate store behind it ([`certificate`]).

pub mod certificate;
pub mod client;
pub mod event;
pub mod fraud;
pub mod resource;
pub mod signature;
pub mod token;

/// Makes *ring* the process-wide rustls crypto provider (reqwest is built without a
/// default one, to avoid a second crypto library). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
