//! `pcbridge check`: validates the configuration and reaches every dependency it names —
//! the broker, the Entra ID token endpoint (when credentials are configured), the change
//! store, each forwarding receiver and, optionally, a certificate URL — printing one line
//! per check. Nothing is changed, and nothing is delivered.

use crate::broker;
use crate::config::Config;
use crate::partner_center::{
    certificate::CertificateStore,
    token::{Grant, TokenProvider},
};
use std::{fmt::Write as _, time::Duration};

/// One check's result.
pub struct Check {
    pub name: &'static str,
    /// `None`: not applicable with this configuration.
    pub ok: Option<bool>,
    pub detail: String,
}

impl Check {
    fn line(&self) -> String {
        let status = match self.ok {
            Some(true) => "ok  ",
            Some(false) => "FAIL",
            None => "skip",
        };
        format!("{status} {:<12} {}", self.name, self.detail)
    }
}

/// Runs every check. `certificate_url`, when given, is fetched and validated like a
/// webhook's X-MS-Certificate-Url.
pub async fn run(config: &Config, config_source: &str, certificate_url: Option<&str>) -> Vec<Check> {
    let mut checks = vec![Check {
        name: "config",
        ok: Some(true),
        detail: format!(
            "{config_source} is valid (broker: {}, prefix: {:?})",
            config.broker.kind, config.broker.prefix
        ),
    }];
    let broker = match broker::probe(config).await {
        Ok(detail) => Check { name: "broker", ok: Some(true), detail },
        Err(e) => Check { name: "broker", ok: Some(false), detail: e.to_string() },
    };
    let reachable = broker.ok == Some(true);
    checks.push(broker);
    if reachable {
        checks.push(destinations(config).await);
    }
    checks.push(tokens(config).await);
    checks.push(change_store(config).await);
    checks.extend(receivers(config).await);
    if let Some(url) = certificate_url {
        checks.push(certificate(config, url).await);
    }
    checks
}

/// The change store, when one is configured: connects and creates its table.
async fn change_store(config: &Config) -> Check {
    let r = &config.reconcile;
    if r.store_url.is_empty() {
        return Check { name: "store", ok: None, detail: "reconcile.store_url is not set".into() };
    }
    let detail = format!("{} table {}", r.store_url, r.table);
    match tokio::time::timeout(Duration::from_secs(15), crate::change_store::ChangeStore::open(config)).await {
        Ok(Ok(_)) => Check { name: "store", ok: Some(true), detail },
        Ok(Err(e)) => Check { name: "store", ok: Some(false), detail: format!("{detail}: {e}") },
        Err(_) => Check { name: "store", ok: Some(false), detail: format!("{detail}: no answer within 15 s") },
    }
}

/// Each `forward.receivers` entry: its `headers_file` is read and its URL reached with
/// the client `pcbridge forward` would use (see [`Receiver::probe`]).
///
/// [`Receiver::probe`]: crate::forward::send::Receiver::probe
async fn receivers(config: &Config) -> Vec<Check> {
    use crate::forward::send::Receiver;
    let forward = &config.forward;
    if forward.receivers.is_empty() {
        return vec![Check { name: "receiver", ok: None, detail: "no forward.receivers configured".into() }];
    }
    let mut checks = Vec::with_capacity(forward.receivers.len());
    for (name, r) in &forward.receivers {
        let check = match Receiver::new(name, r, forward) {
            Err(e) => Check { name: "receiver", ok: Some(false), detail: e.to_string() },
            Ok(receiver) => match receiver.probe().await {
                // The host alone, as in the forwarder's logs: the URL may carry a key.
                Ok(answer) => {
                    Check { name: "receiver", ok: Some(true), detail: format!("{name} at {}: {answer}", receiver.host) }
                }
                Err(why) => {
                    Check { name: "receiver", ok: Some(false), detail: format!("{name} at {}: {why}", receiver.host) }
                }
            },
        };
        checks.push(check);
    }
    checks
}

/// The destinations of the layout, both roles' (raw, enriched, dead letter): which are
/// missing. Missing ones fail the check where pcbridge will not create them (Kafka with
/// `kafka.create_topics = false`, as on Event Hubs); otherwise the roles create them.
async fn destinations(config: &Config) -> Check {
    let d = config.broker.destinations();
    let mut names = d.all_raw();
    names.extend(d.outputs(&crate::worker::stems(config)));
    let layout = d.layout();
    match broker::missing(config, &names).await {
        Ok(missing) if missing.is_empty() => Check {
            name: "destinations",
            ok: Some(true),
            detail: format!("all {} of the {layout} layout exist", names.len()),
        },
        Ok(missing) => {
            use crate::config::BrokerKind;
            let created_by_roles = match config.broker.kind {
                BrokerKind::Rabbitmq => true,
                BrokerKind::Kafka => config.kafka.create_topics,
                BrokerKind::Amqp => false,
            };
            let what = match config.broker.kind {
                _ if created_by_roles => "the roles create them at start-up",
                BrokerKind::Amqp => "create them (on Service Bus, in Azure: docs/azure.md)",
                _ => "create them (kafka.create_topics is false: on Event Hubs, in Azure)",
            };
            Check {
                name: "destinations",
                ok: Some(created_by_roles),
                detail: format!(
                    "{} of {} in the {layout} layout missing, {what}: {}",
                    missing.len(),
                    names.len(),
                    missing.join(", ")
                ),
            }
        }
        Err(e) => Check { name: "destinations", ok: Some(false), detail: e.to_string() },
    }
}

/// The report: one line per check, and whether all passed.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut text = String::new();
    for c in checks {
        let _ = writeln!(text, "{}", c.line());
    }
    (text, checks.iter().all(|c| c.ok != Some(false)))
}

async fn tokens(config: &Config) -> Check {
    let pc = &config.partner_center;
    let secret = match config.client_secret() {
        Ok(s) => s,
        Err(e) => return Check { name: "token", ok: Some(false), detail: e.to_string() },
    };
    let (Some(secret), false, false) = (secret, pc.tenant_id.is_empty(), pc.client_id.is_empty()) else {
        return Check {
            name: "token",
            ok: None,
            detail:
                "no worker credentials (partner_center.tenant_id, client_id, PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET)"
                    .into(),
        };
    };
    crate::partner_center::install_crypto_provider();
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(h) => h,
        Err(e) => return Check { name: "token", ok: Some(false), detail: e.to_string() },
    };
    let refresh = config.refresh_token().ok().flatten();
    let has_refresh = refresh.is_some();
    let provider = TokenProvider::new(http, &pc.token_base_url, &pc.tenant_id, &pc.client_id, Some(secret), refresh);
    let mut got = Vec::new();
    for (grant, scope, label) in [
        (Grant::ClientCredentials, pc.scope.as_str(), "partner center"),
        (Grant::ClientCredentials, pc.graph_scope.as_str(), "graph"),
        (Grant::RefreshToken, pc.scope.as_str(), "app+user (fraud events)"),
    ] {
        if grant == Grant::RefreshToken && !has_refresh {
            got.push(format!("{label}: skipped, no refresh token"));
            continue;
        }
        if let Err(e) = provider.token(grant, scope).await {
            return Check { name: "token", ok: Some(false), detail: format!("{label}: {e}") };
        }
        got.push(format!("{label}: ok"));
    }
    Check { name: "token", ok: Some(true), detail: format!("{}: {}", pc.token_base_url, got.join(", ")) }
}

async fn certificate(config: &Config, url: &str) -> Check {
    let store = match CertificateStore::new(&config.signature) {
        Ok(s) => s,
        Err(e) => return Check { name: "certificate", ok: Some(false), detail: e.to_string() },
    };
    match store.get(url).await {
        Ok((key, _)) => {
            Check { name: "certificate", ok: Some(true), detail: format!("{url}: trusted ({})", key.subject) }
        }
        Err(e) => Check { name: "certificate", ok: Some(false), detail: format!("{url}: {e}") },
    }
}
