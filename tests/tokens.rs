//! Entra ID tokens: one request for a burst of callers, a new one before the old expires,
//! one per grant and scope; and the worker consuming only the events it is told to.

mod common;

use common::pc_api::{self, PcApi};
use pcbridge::{
    config::{Config, Secret},
    partner_center::token::{Grant, TokenProvider},
};
use std::time::Duration;

fn provider(api: &PcApi) -> TokenProvider {
    pcbridge::partner_center::install_crypto_provider();
    TokenProvider::new(
        reqwest::Client::new(),
        &api.base,
        "tenant-1",
        pc_api::CLIENT_ID,
        Some(Secret::new(pc_api::CLIENT_SECRET)),
        Some(Secret::new(pc_api::REFRESH_TOKEN)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_per_scope_and_refresh_before_expiry() {
    let api = PcApi::start().await;
    api.set_token_lifetime(2);
    let tokens = provider(&api);
    let calls = (0..50).map(|_| tokens.token(Grant::ClientCredentials, pc_api::PC_SCOPE));
    let got: Vec<_> = futures::future::join_all(calls).await.into_iter().map(|r| r.expect("token")).collect();
    assert_eq!(api.token_requests().len(), 1, "50 concurrent callers, one token request");
    assert!(got.windows(2).all(|w| w[0] == w[1]));

    // Another scope and another grant are tokens of their own.
    tokens.token(Grant::ClientCredentials, pc_api::GRAPH_SCOPE).await.expect("graph token");
    tokens.token(Grant::RefreshToken, pc_api::PC_SCOPE).await.expect("app+user token");
    assert_eq!(api.token_requests().len(), 3);

    // A 2 s token is replaced once half its life is gone, before it expires.
    let first = got[0].clone();
    assert_eq!(tokens.token(Grant::ClientCredentials, pc_api::PC_SCOPE).await.expect("cached"), first);
    // Not an ordering sleep: the renewal falls due on the token's own clock (half its 2 s life).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let renewed = tokens.token(Grant::ClientCredentials, pc_api::PC_SCOPE).await.expect("renewed");
    assert_ne!(renewed, first, "refreshed before expiry");
    assert_eq!(api.token_requests().len(), 4);
    // A forgotten token (the API said 401) is fetched again at once.
    tokens.invalidate(Grant::ClientCredentials, pc_api::PC_SCOPE);
    tokens.token(Grant::ClientCredentials, pc_api::PC_SCOPE).await.expect("after invalidate");
    assert_eq!(api.token_requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_problems_are_reported_not_retried_forever() {
    let api = PcApi::start().await;
    pcbridge::partner_center::install_crypto_provider();
    let wrong =
        TokenProvider::new(reqwest::Client::new(), &api.base, "t", "someone-else", Some(Secret::new("nope")), None);
    let e = wrong.token(Grant::ClientCredentials, pc_api::PC_SCOPE).await.expect_err("refused");
    assert!(!e.transient && e.to_string().contains("401"), "{e}");
    let e = wrong.token(Grant::RefreshToken, pc_api::PC_SCOPE).await.expect_err("no refresh token");
    assert!(!e.transient && e.to_string().contains("REFRESH_TOKEN"), "{e}");
    api.fail_token_endpoint(1);
    let e = provider(&api).token(Grant::ClientCredentials, pc_api::PC_SCOPE).await.expect_err("503");
    assert!(e.transient, "{e}");
}

#[test]
fn the_worker_consumes_the_configured_subset() {
    let mut c = Config::default();
    assert_eq!(pcbridge::worker::sources(&c).len(), 25, "the catalogue plus unrecognized");
    c.worker.events = vec!["subscription-updated".into(), " referral-created ".into(), "subscription-updated".into()];
    assert_eq!(
        pcbridge::worker::sources(&c),
        vec!["partnercenter.referral-created".to_string(), "partnercenter.subscription-updated".to_string()]
    );
}

/// Workload identity: the federated token file is the client assertion, read again for
/// every request (Kubernetes rotates it); the token comes with its expiry (what
/// librdkafka's OAUTHBEARER callback needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_signs_in_with_the_federated_token_file() {
    let api = PcApi::start().await;
    pcbridge::partner_center::install_crypto_provider();
    let file = common::app::temp_file("federated-token", "stale-token");
    let tokens = TokenProvider::new(reqwest::Client::new(), &api.base, "tenant-1", pc_api::CLIENT_ID, None, None)
        .with_federated_token_file(&file);
    let scope = "https://ns.servicebus.windows.net/.default";
    let e = tokens.token(Grant::ClientCredentials, scope).await.expect_err("a stale assertion is refused");
    assert!(!e.transient, "{e}");
    std::fs::write(&file, format!("{}\n", pc_api::FEDERATED_TOKEN)).expect("rotate the file");
    let (token, expires_at) = tokens.token_expiring(Grant::ClientCredentials, scope).await.expect("token");
    assert!(token.expose().starts_with("tok-"));
    let lifetime = expires_at.duration_since(std::time::SystemTime::now()).expect("in the future");
    assert!(lifetime > Duration::from_secs(3500) && lifetime <= Duration::from_secs(3599), "{lifetime:?}");
    assert_eq!(api.token_requests(), vec![("client_credentials".to_string(), scope.to_string()); 2]);
}

/// Event Hubs with Entra ID: librdkafka's OAUTHBEARER callback gets its token from the
/// same token code, from Entra ID (the stand-in) for the Event Hubs scope. librdkafka's
/// mock cluster has no SASL (no SaslHandshake handler in librdkafka 2.12), so the sign-in
/// itself cannot complete here: what is checked end to end is that creating pcbridge's
/// Kafka clients asks Entra ID for the token, once for all of them (cached), and that
/// the publisher does not turn ready against a broker that cannot authenticate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_oauthbearer_tokens_come_from_entra_id() {
    let api = PcApi::start().await;
    pcbridge::partner_center::install_crypto_provider();
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock");
    let scope = "https://contoso.servicebus.windows.net/.default";
    let mut c = Config::default();
    c.kafka.bootstrap_servers = mock.bootstrap_servers();
    c.kafka.create_topics = false;
    c.kafka.event_hubs.sign_in = pcbridge::config::EventHubsSignIn::EntraId;
    c.kafka.event_hubs.scope = scope.into();
    // The mock listens in plain TCP; Event Hubs would be SASL_SSL.
    c.kafka.properties.insert("security.protocol".into(), "SASL_PLAINTEXT".into());
    c.partner_center.token_base_url = api.base.clone();
    c.partner_center.tenant_id = "tenant-1".into();
    c.partner_center.client_id = pc_api::CLIENT_ID.into();
    c.partner_center.client_secret = Secret::new(pc_api::CLIENT_SECRET);
    let metrics = std::sync::Arc::new(pcbridge::telemetry::Metrics::new());
    let publisher = pcbridge::broker::connect(&c, "event-hubs-test", metrics).await.expect("clients are built");
    common::wait::until("librdkafka asked for a token", Duration::from_secs(10), async || {
        !api.token_requests().is_empty()
    })
    .await;
    // The producer and the admin client both sign in: one token request serves them.
    tokio::time::sleep(Duration::from_millis(500)).await; // Not an ordering sleep: lets a second request show up.
    assert_eq!(api.token_requests(), vec![("client_credentials".to_string(), scope.to_string())]);
    assert_eq!(api.issued_tokens().len(), 1);
    assert!(!publisher.is_ready(), "the mock cannot authenticate anyone");
    publisher.close(Duration::from_millis(100)).await;
}
