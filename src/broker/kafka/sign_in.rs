//! Signing in to Azure Event Hubs' Kafka endpoint (`kafka.event_hubs`, docs/azure.md):
//! SASL PLAIN with `$ConnectionString` and the namespace's connection string, or SASL
//! OAUTHBEARER with Entra ID tokens that pcbridge obtains and renews itself through the
//! same token code as the Partner Center calls (`partner_center::token`), handed to
//! librdkafka by its token callback.

use crate::broker::SetupError;
use crate::broker::entra::{Identity, shared_tokens};
use crate::config::{Config, EventHubsSignIn, Secret};
use crate::partner_center::token::{Grant, TokenProvider};
use rdkafka::{ClientContext, client::OAuthToken, consumer::ConsumerContext, producer::ProducerContext};
use std::{error::Error, sync::Arc, time::Duration, time::UNIX_EPOCH};

/// How long librdkafka's thread waits for a token before the sign-in fails (it asks
/// again, with back-off).
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// A Kafka client's sign-in: its librdkafka settings and, for Entra ID, the token source
/// the client's context calls. Clients signed in as the same identity share one token
/// cache ([`shared_tokens`]), so a worker's producer, admin client and consumer make one
/// token request between them.
#[derive(Clone, Default)]
pub(crate) struct SignIn {
    /// librdkafka settings, applied before `kafka.properties` (which may override them,
    /// e.g. `security.protocol` against a local broker).
    settings: Vec<(&'static str, Secret)>,
    /// Entra ID only.
    oauth: Option<Arc<OAuth>>,
}

/// Tokens for Event Hubs, fetched on the runtime that built the clients.
struct OAuth {
    tokens: TokenProvider,
    scope: String,
    runtime: tokio::runtime::Handle,
}

impl SignIn {
    /// The sign-in `config` asks for; reads the secrets it needs.
    pub(crate) fn from_config(config: &Config) -> Result<Self, SetupError> {
        let hubs = &config.kafka.event_hubs;
        let secret =
            |r: Result<Option<Secret>, crate::config::ConfigError>| r.map_err(|e| SetupError::Config(e.to_string()));
        match hubs.sign_in {
            EventHubsSignIn::None => Ok(Self::default()),
            EventHubsSignIn::ConnectionString => {
                let connection_string = secret(config.event_hubs_connection_string())?.ok_or_else(|| {
                    SetupError::Config("kafka.event_hubs: no connection string (PCBRIDGE_KAFKA__EVENT_HUBS__CONNECTION_STRING or connection_string_file)".into())
                })?;
                Ok(Self {
                    settings: vec![
                        ("security.protocol", Secret::new("SASL_SSL")),
                        ("sasl.mechanism", Secret::new("PLAIN")),
                        ("sasl.username", Secret::new("$ConnectionString")),
                        ("sasl.password", connection_string),
                    ],
                    oauth: None,
                })
            }
            EventHubsSignIn::EntraId => {
                let scope = config.kafka.event_hubs_scope().ok_or_else(|| {
                    SetupError::Config(
                        "kafka.event_hubs.scope: empty, and no Event Hubs namespace in kafka.bootstrap_servers".into(),
                    )
                })?;
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| SetupError::Runtime(format!("kafka sign-in needs the async runtime: {e}")))?;
                Ok(Self {
                    settings: vec![
                        ("security.protocol", Secret::new("SASL_SSL")),
                        ("sasl.mechanism", Secret::new("OAUTHBEARER")),
                    ],
                    oauth: Some(Arc::new(OAuth {
                        tokens: shared_tokens(config, &identity(config), &scope)?,
                        scope,
                        runtime,
                    })),
                })
            }
        }
    }

    /// The librdkafka settings of this sign-in.
    pub(super) fn settings(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.settings.iter().map(|(k, v)| (*k, v.expose()))
    }

    /// A token for librdkafka's OAUTHBEARER callback, from the cache or Entra ID. Runs on
    /// a librdkafka thread: the request runs on the runtime, this thread waits for it.
    pub(super) fn token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        let oauth =
            self.oauth.clone().ok_or("sasl.mechanism=OAUTHBEARER needs kafka.event_hubs.sign_in = \"entra-id\"")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let runtime = oauth.runtime.clone();
        runtime.spawn(async move {
            let _ = tx.send(oauth.tokens.token_expiring(Grant::ClientCredentials, &oauth.scope).await);
        });
        let (token, expires_at) = rx.recv_timeout(TOKEN_WAIT).map_err(|_| "no Entra ID token within 30 s")??;
        let lifetime_ms = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        tracing::debug!("event hubs token handed to librdkafka");
        Ok(OAuthToken { token: token.expose().to_string(), principal_name: String::new(), lifetime_ms })
    }
}

/// The Entra ID identity of `kafka.event_hubs`.
fn identity(config: &Config) -> Identity<'_> {
    let hubs = &config.kafka.event_hubs;
    Identity {
        section: "kafka.event_hubs",
        secret_env: "PCBRIDGE_KAFKA__EVENT_HUBS__CLIENT_SECRET",
        credential: hubs.credential,
        tenant_id: &hubs.tenant_id,
        client_id: &hubs.client_id,
        client_secret: Config::event_hubs_client_secret,
    }
}

/// The context of clients with no role-specific callbacks (the admin client, `check`,
/// `replay`'s reader): the sign-in only.
#[derive(Clone, Default)]
pub(crate) struct SignInContext(pub(crate) SignIn);

impl ClientContext for SignInContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        self.0.token()
    }
}

impl ConsumerContext for SignInContext {}

impl ProducerContext for SignInContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_hubs(sign_in: EventHubsSignIn) -> Config {
        let mut c = Config::default();
        c.kafka.bootstrap_servers = "contoso.servicebus.windows.net:9093".into();
        c.kafka.event_hubs.sign_in = sign_in;
        c
    }

    #[test]
    fn connection_string_is_sasl_plain_with_the_literal_user_name() {
        let mut c = event_hubs(EventHubsSignIn::ConnectionString);
        let text = "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k";
        c.kafka.event_hubs.connection_string = Secret::new(text);
        let s = SignIn::from_config(&c).expect("sign-in");
        let settings: Vec<(&str, &str)> = s.settings().collect();
        assert_eq!(
            settings,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "$ConnectionString"),
                ("sasl.password", text)
            ]
        );
        assert!(s.token().is_err(), "no OAUTHBEARER token without entra-id");
        // Without the string there is nothing to sign in with.
        c.kafka.event_hubs.connection_string = Secret::new("");
        assert!(matches!(SignIn::from_config(&c), Err(SetupError::Config(_))));
    }

    #[test]
    fn entra_id_scope_comes_from_the_namespace() {
        let mut c = event_hubs(EventHubsSignIn::EntraId);
        assert_eq!(c.kafka.event_hubs_scope().as_deref(), Some("https://contoso.servicebus.windows.net/.default"));
        c.kafka.event_hubs.scope = "api://other/.default".into();
        assert_eq!(c.kafka.event_hubs_scope().as_deref(), Some("api://other/.default"));
        c.kafka.event_hubs.scope.clear();
        c.kafka.bootstrap_servers = "localhost:9092".into();
        assert_eq!(c.kafka.event_hubs_scope(), None);
        assert!(c.validate().is_err(), "entra-id needs a scope or a namespace");
    }

    #[test]
    fn none_changes_nothing() {
        let s = SignIn::from_config(&Config::default()).expect("sign-in");
        assert_eq!(s.settings().count(), 0);
    }
}
