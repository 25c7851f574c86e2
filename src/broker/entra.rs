//! Entra ID tokens for a broker sign-in (Event Hubs' OAUTHBEARER, AMQP 1.0 `$cbs`):
//! which app or workload identity asks, and one token cache per identity in the process,
//! all through the same token code as the Partner Center calls
//! (`partner_center::token`).

use crate::broker::SetupError;
use crate::config::{Config, ConfigError, EntraCredential, Secret};
use crate::partner_center::token::TokenProvider;
use std::time::Duration;

/// Who asks Entra ID for broker tokens: a section's own settings, each falling back to
/// the Partner Center app (client credentials) or the workload identity environment.
pub(crate) struct Identity<'a> {
    /// The config section, for messages (`kafka.event_hubs`, `amqp`).
    pub section: &'static str,
    /// The environment variable of the section's client secret, for messages.
    pub secret_env: &'static str,
    pub credential: EntraCredential,
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    /// The section's secret (its own, else the Partner Center app's when `client_id` is
    /// empty), read when needed.
    pub client_secret: fn(&Config) -> Result<Option<Secret>, ConfigError>,
}

/// The token source of `identity` for `scope`, one per identity in the process: a role
/// builds its publisher and its consumer separately, and a [`TokenProvider`] of their own
/// would make each fetch the same token.
pub(crate) fn shared_tokens(
    config: &Config,
    identity: &Identity<'_>,
    scope: &str,
) -> Result<TokenProvider, SetupError> {
    static SHARED: std::sync::Mutex<Vec<(String, TokenProvider)>> = std::sync::Mutex::new(Vec::new());
    let pc = &config.partner_center;
    let key = format!(
        "{:?}|{}|{}|{}|{}|{}|{}",
        identity.credential,
        pc.token_base_url,
        pc.tenant_id,
        pc.client_id,
        identity.tenant_id,
        identity.client_id,
        scope
    );
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, tokens)) = shared.iter().find(|(k, _)| *k == key) {
        return Ok(tokens.clone());
    }
    let tokens = entra_tokens(config, identity)?;
    shared.push((key, tokens.clone()));
    Ok(tokens)
}

/// The token source of an Entra ID sign-in: the Partner Center app (or another) with its
/// secret, or workload identity's federated token.
fn entra_tokens(config: &Config, identity: &Identity<'_>) -> Result<TokenProvider, SetupError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let or = |value: &str, fallback: Option<String>| if value.is_empty() { fallback } else { Some(value.to_string()) };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SetupError::Config(format!("{} sign-in HTTP client: {e}", identity.section)))?;
    let missing = |what: &str| SetupError::Config(format!("{}: {what}", identity.section));
    match identity.credential {
        EntraCredential::ClientCredentials => {
            let pc = &config.partner_center;
            let tenant = or(identity.tenant_id, Some(pc.tenant_id.clone()).filter(|t| !t.is_empty()))
                .ok_or_else(|| missing("no tenant (tenant_id, or partner_center.tenant_id)"))?;
            let client = or(identity.client_id, Some(pc.client_id.clone()).filter(|c| !c.is_empty()))
                .ok_or_else(|| missing("no app (client_id, or partner_center.client_id)"))?;
            let secret = (identity.client_secret)(config).map_err(|e| SetupError::Config(e.to_string()))?;
            let secret = secret.ok_or_else(|| {
                missing(&format!(
                    "no client secret ({}, client_secret_file, or the Partner Center app's)",
                    identity.secret_env
                ))
            })?;
            Ok(TokenProvider::new(http, &pc.token_base_url, &tenant, &client, Some(secret), None))
        }
        EntraCredential::WorkloadIdentity => {
            let tenant = or(identity.tenant_id, env("AZURE_TENANT_ID"))
                .ok_or_else(|| missing("no tenant (tenant_id or AZURE_TENANT_ID)"))?;
            let client = or(identity.client_id, env("AZURE_CLIENT_ID"))
                .ok_or_else(|| missing("no app (client_id or AZURE_CLIENT_ID)"))?;
            let file = env("AZURE_FEDERATED_TOKEN_FILE").ok_or_else(|| missing("workload identity needs AZURE_FEDERATED_TOKEN_FILE (the pod's service account must be labelled azure.workload.identity/use)"))?;
            let authority = env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| config.partner_center.token_base_url.clone());
            Ok(TokenProvider::new(http, &authority, &tenant, &client, None, None).with_federated_token_file(file))
        }
    }
}
