//! librdkafka client settings, in one order of precedence for every client, and the
//! client-error handling the producer and the consumer share.

use super::sign_in::SignIn;
use crate::config::Config;
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
};
use std::sync::atomic::{AtomicBool, Ordering};

/// librdkafka settings pcbridge relies on; applied after the user's passthrough
/// properties so the delivery guarantee cannot be configured away by accident.
const ENFORCED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// The producer's settings: pcbridge's defaults, then the user's passthrough
/// properties, then [`ENFORCED`] (with a warning when the user asked otherwise).
pub(super) fn producer_config(config: &Config, client_name: &str, sign_in: &SignIn) -> ClientConfig {
    let publish_timeout = config.ingress.publish_timeout().as_millis();
    // librdkafka gives up on a record when the ingress does, so a 503'd event is not
    // delivered later behind the sender's back.
    let defaults = [
        ("linger.ms", "1".to_string()),
        ("message.timeout.ms", publish_timeout.to_string()),
        ("request.timeout.ms", publish_timeout.clamp(1, 30_000).to_string()),
    ];
    client_config(config, client_name, sign_in, &defaults, ENFORCED)
}

/// A client's settings, in order of precedence: `bootstrap.servers` and `client.id`,
/// then the role's `defaults` and the Event Hubs sign-in, then the user's
/// `kafka.properties`, then `enforced` — what the delivery guarantee rests on, which the
/// user's properties cannot turn off.
pub(super) fn client_config(
    config: &Config,
    client_name: &str,
    sign_in: &SignIn,
    defaults: &[(&str, String)],
    enforced: &[(&str, &str)],
) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.bootstrap_servers).set("client.id", client_name);
    for (k, v) in defaults {
        cc.set(*k, v);
    }
    for (k, v) in sign_in.settings() {
        cc.set(k, v);
    }
    for (k, v) in config.kafka.normalized_properties() {
        cc.set(k, v);
    }
    for (k, v) in enforced {
        if cc.get(k).is_some_and(|set| set != *v) {
            tracing::warn!(
                property = k,
                enforced = v,
                "overriding kafka property: pcbridge needs it for at-least-once delivery"
            );
        }
        cc.set(*k, *v);
    }
    cc
}

/// Settings of the clients with no role-specific ones (admin, `check`).
pub(super) fn base_client_config(config: &Config, client_name: &str, sign_in: &SignIn) -> ClientConfig {
    client_config(config, client_name, sign_in, &[], &[])
}

/// A librdkafka client error: every broker down clears the readiness flag (set again
/// by the probe, a delivery or a poll); the rest is logged.
pub(super) fn client_error(ready: &AtomicBool, error: KafkaError, reason: &str, client: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
        ready.store(false, Ordering::Relaxed);
    }
    tracing::warn!(error = %error, reason, client, "kafka client error");
}
