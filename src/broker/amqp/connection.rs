//! Reaching an AMQP 1.0 broker: the endpoint of `amqp.url` (TCP, or TLS through rustls
//! for `amqps://`), the SASL sign-in, the address of each destination, and — for Entra ID
//! — a token put on the broker's claims-based security node (`$cbs`) for every address a
//! link uses, renewed before it expires.

use crate::broker::SetupError;
use crate::broker::entra::{Identity, shared_tokens};
use crate::config::{AmqpSignIn, Config};
use crate::partner_center::token::{Grant, TokenProvider};
use fe2o3_amqp::{Connection, connection::ConnectionHandle, sasl_profile::SaslProfile, session::Session};
use fe2o3_amqp_cbs::{client::CbsClient, token::CbsToken};
use fe2o3_amqp_types::primitives::Timestamp;
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::net::TcpStream;

/// Longest wait for a TCP connection, the TLS handshake and the AMQP open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Tokens are put again this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Where and how to connect, read once from the configuration.
#[derive(Clone)]
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    /// `amqps://`: TLS with the web PKI roots, then AMQP without a TLS protocol header
    /// (what Service Bus and RabbitMQ's TLS listener expect).
    tls: bool,
    sasl: SaslProfile,
    /// Entra ID sign-in: the tokens to put on `$cbs`.
    cbs: Option<Arc<Cbs>>,
    /// `amqp.address`, with `{destination}` standing for the name.
    address: String,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_delay: Duration,
}

struct Cbs {
    tokens: TokenProvider,
    scope: String,
}

impl Endpoint {
    pub fn from_config(config: &Config) -> Result<Self, SetupError> {
        let a = &config.amqp;
        let bad = |why: String| SetupError::Config(format!("config key `amqp.url`: {why}"));
        let url = url::Url::parse(&a.url).map_err(|e| bad(format!("{:?}: {e}", a.url)))?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => return Err(bad(format!("scheme {other:?} is not amqp or amqps"))),
        };
        let host = url.host_str().ok_or_else(|| bad(format!("{:?} names no host", a.url)))?.to_string();
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        let secret = |r: Result<_, crate::config::ConfigError>| r.map_err(|e| SetupError::Config(e.to_string()));
        let (sasl, cbs) = match a.sign_in {
            AmqpSignIn::None => (SaslProfile::Anonymous, None),
            AmqpSignIn::Plain => {
                let password = secret(config.amqp_password())?;
                (SaslProfile::Plain { username: a.username.clone(), password: password.expose().to_string() }, None)
            }
            AmqpSignIn::EntraId => {
                let scope = a.entra_scope().ok_or_else(|| {
                    SetupError::Config("config key `amqp.scope`: empty and no host in amqp.url".into())
                })?;
                let identity = Identity {
                    section: "amqp",
                    secret_env: "PCBRIDGE_AMQP__CLIENT_SECRET",
                    credential: a.credential,
                    tenant_id: &a.tenant_id,
                    client_id: &a.client_id,
                    client_secret: Config::amqp_client_secret,
                };
                let tokens = shared_tokens(config, &identity, &scope)?;
                (SaslProfile::Anonymous, Some(Arc::new(Cbs { tokens, scope })))
            }
        };
        Ok(Self {
            host,
            port,
            tls,
            sasl,
            cbs,
            address: a.address.clone(),
            reconnect_max_delay: Duration::from_millis(a.reconnect_max_delay_ms.max(100)),
        })
    }

    /// The AMQP address of `destination`.
    pub fn address(&self, destination: &str) -> String {
        self.address.replace("{destination}", destination)
    }

    /// `amqp at host:port`, for messages.
    pub fn describe(&self) -> String {
        format!("amqp at {}:{}", self.host, self.port)
    }

    /// Opens a connection named `container_id`.
    pub async fn connect(&self, container_id: &str) -> Result<ConnectionHandle<()>, String> {
        let open = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let builder = Connection::builder()
                .container_id(container_id)
                .hostname(self.host.as_str())
                .sasl_hostname(self.host.as_str())
                .scheme("amqp")
                .sasl_profile(self.sasl.clone());
            if self.tls {
                let stream = tls_connector()?
                    .connect(self.server_name()?, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                builder.open_with_stream(stream).await.map_err(|e| e.to_string())
            } else {
                builder.open_with_stream(tcp).await.map_err(|e| e.to_string())
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(result) => result.map_err(|e| format!("{}: {e}", self.describe())),
            Err(_) => Err(format!("{}: no answer within {CONNECT_TIMEOUT:?}", self.describe())),
        }
    }

    fn server_name(&self) -> Result<rustls_pki_types::ServerName<'static>, String> {
        rustls_pki_types::ServerName::try_from(self.host.clone()).map_err(|e| format!("TLS server name: {e}"))
    }

    /// With the Entra ID sign-in, puts a token for each of `addresses` on `$cbs` (the
    /// claims-based security node) and says when they expire; otherwise does nothing.
    /// Links to an address may attach only after this succeeded.
    pub async fn authorize(
        &self,
        connection: &mut ConnectionHandle<()>,
        addresses: &[String],
    ) -> Result<Option<SystemTime>, String> {
        let Some(cbs) = &self.cbs else { return Ok(None) };
        let (token, expires_at) = cbs
            .tokens
            .token_expiring(Grant::ClientCredentials, &cbs.scope)
            .await
            .map_err(|e| format!("Entra ID token for {}: {e}", cbs.scope))?;
        let millis = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut session = Session::begin(connection).await.map_err(|e| format!("$cbs session: {e}"))?;
        let result = async {
            let mut client = CbsClient::attach(&mut session).await.map_err(|e| format!("$cbs attach: {e}"))?;
            for address in addresses {
                let audience = format!("amqp://{}/{}", self.host, address.trim_start_matches('/'));
                let token = CbsToken::new(token.expose(), "jwt", Timestamp::from_milliseconds(millis));
                client
                    .put_token(audience.as_str(), token)
                    .await
                    .map_err(|e| format!("$cbs put-token {audience}: {e}"))?;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
            Ok::<_, String>(())
        }
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
        result.map(|()| Some(expires_at))
    }
}

/// When tokens that expire at `expires_at` should be put again.
pub(crate) fn renewal_due(expires_at: Option<SystemTime>) -> Option<tokio::time::Instant> {
    let left = expires_at?.duration_since(SystemTime::now()).unwrap_or_default();
    Some(tokio::time::Instant::now() + left.saturating_sub(RENEW_BEFORE).max(Duration::from_secs(5)))
}

/// TLS with the web PKI roots through ring (the crypto provider of the rest of the
/// process).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerKind, Secret};

    fn amqp(url: &str, sign_in: AmqpSignIn) -> Config {
        let mut c = Config::default();
        c.broker.kind = BrokerKind::Amqp;
        c.amqp.url = url.into();
        c.amqp.sign_in = sign_in;
        c
    }

    #[test]
    fn service_bus_with_a_shared_access_key_is_tls_and_sasl_plain() {
        let mut c = amqp("amqps://contoso.servicebus.windows.net", AmqpSignIn::Plain);
        c.amqp.username = "pcbridge-send-listen".into();
        c.amqp.password = Secret::new("key==");
        c.validate().expect("valid");
        let e = Endpoint::from_config(&c).expect("endpoint");
        assert_eq!((e.host.as_str(), e.port, e.tls), ("contoso.servicebus.windows.net", 5671, true));
        assert!(
            matches!(&e.sasl, SaslProfile::Plain { username, password } if username == "pcbridge-send-listen" && password == "key=="),
            "{:?}",
            e.sasl
        );
        assert!(e.cbs.is_none());
        assert_eq!(e.address("partnercenter.events"), "partnercenter.events");
        c.amqp.address = "/queue/{destination}".into();
        assert_eq!(Endpoint::from_config(&c).expect("endpoint").address("x.y"), "/queue/x.y");
    }

    #[test]
    fn entra_id_signs_in_anonymously_and_puts_tokens_for_the_namespace_scope() {
        crate::partner_center::install_crypto_provider();
        let mut c = amqp("amqps://contoso.servicebus.windows.net", AmqpSignIn::EntraId);
        c.partner_center.tenant_id = "tenant".into();
        c.partner_center.client_id = "app".into();
        c.partner_center.client_secret = Secret::new("s");
        let e = Endpoint::from_config(&c).expect("endpoint");
        assert!(matches!(e.sasl, SaslProfile::Anonymous));
        let cbs = e.cbs.as_ref().expect("tokens for $cbs");
        assert_eq!(cbs.scope, "https://contoso.servicebus.windows.net/.default");
        // Another app without its secret: no token to put.
        c.amqp.client_id = "another-app".into();
        assert!(matches!(Endpoint::from_config(&c), Err(SetupError::Config(_))));
    }

    #[test]
    fn urls_and_addresses_are_checked() {
        let mut c = amqp("amqp://127.0.0.1", AmqpSignIn::None);
        c.validate().expect("valid");
        let e = Endpoint::from_config(&c).expect("endpoint");
        assert_eq!((e.port, e.tls), (5672, false));
        assert!(matches!(e.sasl, SaslProfile::Anonymous));
        c.amqp.url = "amqp://user:pw@127.0.0.1".into();
        assert!(c.validate().is_err_and(|e| e.to_string().contains("credentials")));
        c.amqp.url = "http://127.0.0.1".into();
        assert!(c.validate().is_err());
        c.amqp.url = "amqp://127.0.0.1:5673".into();
        c.amqp.address = "/queue/fixed".into();
        assert!(c.validate().is_err_and(|e| e.to_string().contains("{destination}")));
    }

    #[test]
    fn tokens_are_put_again_five_minutes_before_they_expire() {
        let now = tokio::time::Instant::now();
        let due = renewal_due(Some(SystemTime::now() + Duration::from_secs(3600))).expect("due");
        let ahead = due.duration_since(now);
        assert!(ahead > Duration::from_secs(3290) && ahead < Duration::from_secs(3301), "{ahead:?}");
        assert_eq!(renewal_due(None), None);
    }
}
