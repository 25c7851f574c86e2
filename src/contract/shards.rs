//! How a raw destination is split into shards on RabbitMQ (`docs/message-contract.md`).
//!
//! A RabbitMQ queue has no partitions, so each raw destination is `N` queues,
//! `{destination}.0` … `{destination}.{N-1}`, each bound by its own name to the raw
//! exchange ([`raw_exchange`]).
//! The events of one ordering key (the CloudEvents `subject`, Kafka's message key) always
//! go to the same shard: FNV-1a (64-bit) of the key's UTF-8 bytes, modulo `N`. Anyone
//! publishing a raw event by hand computes the same, so it lands in order with the rest.
//! Each shard is consumed by one worker replica at a time, which is what keeps the events
//! of one resource in order across replicas.

use std::hash::Hasher;

/// The shard (`0..shards`) that holds the events of `key`.
pub fn shard_of(key: &str, shards: u16) -> u16 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    // The remainder is below `shards`, which is a u16.
    (hasher.finish() % u64::from(shards.max(1))) as u16
}

/// The direct exchange raw messages are published to, beside the topic exchange
/// `exchange` (`rabbitmq.exchange`), to which it forwards each shard's routing key.
pub fn raw_exchange(exchange: &str) -> String {
    format!("{exchange}.raw")
}

/// The queue (and routing key) of one shard of `destination`.
pub fn shard_name(destination: &str, shard: u16) -> String {
    format!("{destination}.{shard}")
}

/// Every shard queue of `destination`, in shard order.
pub fn shard_names(destination: &str, shards: u16) -> Vec<String> {
    (0..shards.max(1)).map(|i| shard_name(destination, i)).collect()
}

/// The destination a shard queue belongs to, and the shard's number; a name with no
/// numeric last part is not a shard.
pub fn parse_shard(name: &str) -> Option<(&str, u16)> {
    let (destination, number) = name.rsplit_once('.')?;
    if destination.is_empty() || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((destination, number.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_one_shard_and_keys_spread() {
        // FNV-1a 64 of "" is its offset basis; published so other publishers can check.
        assert_eq!(shard_of("", u16::MAX), (0xcbf2_9ce4_8422_2325u64 % 65_535) as u16);
        let key = "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s1";
        assert_eq!(shard_of(key, 12), shard_of(key, 12));
        let mut counts = [0u32; 12];
        for i in 0..12_000 {
            counts[usize::from(shard_of(&format!("/v1/customers/c/subscriptions/s{i}"), 12))] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "even spread: {counts:?}");
        assert_eq!(shard_of(key, 1), 0);
    }

    #[test]
    fn shard_names_round_trip() {
        assert_eq!(
            shard_names("pc.subscription-updated", 3),
            ["pc.subscription-updated.0", "pc.subscription-updated.1", "pc.subscription-updated.2"]
        );
        assert_eq!(parse_shard("pc.events.11"), Some(("pc.events", 11)));
        assert_eq!(parse_shard("pc.events.enriched"), None);
        assert_eq!(parse_shard("pc.events."), None);
        assert_eq!(parse_shard("7"), None);
    }
}
